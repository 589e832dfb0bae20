"""Pretraining engine: optimizers, schedules, checkpoints, export."""
