"""Optimizers and per-step learning-rate schedules built from the ``pretrain`` config.

Weight decay applies only to weight matrices and convolution kernels: parameters with at most
one dimension (biases, BatchNorm/LayerNorm scales and shifts) go to a group without decay,
because decaying them pulls normalisation layers towards zero and only hurts.

Schedules are ``LambdaLR`` over optimizer steps (not epochs), so fractional warm-up works and
the scheduler's ``state_dict`` (its step counter and base lrs) is all a resume needs: the
lambda itself is rebuilt from the same config.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from jigsawkit.errors import UserError
from jigsawkit.training.schemas import (
    OPTIMIZER_NAMES,
    OPTIMIZER_SCHEMA,
    SCHEDULE_NAMES,
    SCHEDULE_SCHEMA,
)


def _with_defaults(schema: dict, cfg: dict | None) -> dict:
    filled = {key: prop["default"] for key, prop in schema["properties"].items()}
    filled.update(cfg or {})
    return filled


def optimizer_config(cfg: dict | None) -> dict:
    """The optimizer section with every missing key set to its schema default."""
    return _with_defaults(OPTIMIZER_SCHEMA, cfg)


def schedule_config(cfg: dict | None) -> dict:
    """The schedule section with every missing key set to its schema default."""
    return _with_defaults(SCHEDULE_SCHEMA, cfg)


def _named_parameters(params: nn.Module | Iterable[Any]) -> list[tuple[str, nn.Parameter]]:
    if isinstance(params, nn.Module):
        return list(params.named_parameters())
    named = []
    for index, item in enumerate(params):
        if isinstance(item, tuple):
            named.append(item)
        else:
            named.append((str(index), item))
    return named


def parameter_groups(
    params: nn.Module | Iterable[Any], weight_decay: float
) -> list[dict[str, Any]]:
    """Split trainable parameters into a decayed group and a no-decay group (ndim <= 1)."""
    decay, no_decay = [], []
    for _, param in _named_parameters(params):
        if not param.requires_grad:
            continue
        (no_decay if param.ndim <= 1 else decay).append(param)
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return [group for group in groups if group["params"]]


def build_optimizer(params: nn.Module | Iterable[Any], cfg: dict | None) -> torch.optim.Optimizer:
    """An optimizer from ``pretrain.optimizer`` (``sgd``, ``adam`` or ``adamw``).

    ``params`` is a module, or an iterable of parameters or of ``(name, parameter)`` pairs.
    """
    cfg = optimizer_config(cfg)
    groups = parameter_groups(params, float(cfg["weight_decay"]))
    if not groups:
        raise UserError("pretrain.optimizer: the model has no trainable parameters")
    name, lr = cfg["name"], float(cfg["lr"])
    if name == "sgd":
        return torch.optim.SGD(
            groups, lr=lr, momentum=float(cfg["momentum"]), nesterov=bool(cfg["nesterov"])
        )
    betas = (float(cfg["betas"][0]), float(cfg["betas"][1]))
    if name == "adam":
        return torch.optim.Adam(groups, lr=lr, betas=betas)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=betas)
    raise UserError(
        f"pretrain.optimizer.name: unknown optimizer '{name}'; expected one of "
        + ", ".join(OPTIMIZER_NAMES)
    )


def _after_warmup(cfg: dict, steps_per_epoch: int, total_steps: int, warmup_steps: int):
    name = cfg["name"]
    if name == "constant":
        return lambda step: 1.0
    if name == "cosine":
        min_lr = float(cfg["min_lr"])
        span = max(total_steps - warmup_steps, 1)

        def cosine(step: int) -> float:
            progress = min(max(step - warmup_steps, 0) / span, 1.0)
            return min_lr + (1.0 - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))

        return cosine
    if name == "step":
        boundaries = sorted(round(float(e) * steps_per_epoch) for e in cfg["step_epochs"])
        gamma = float(cfg["gamma"])
        return lambda step: gamma ** sum(step >= b for b in boundaries)
    raise UserError(
        f"pretrain.schedule.name: unknown schedule '{name}'; expected one of "
        + ", ".join(SCHEDULE_NAMES)
    )


def lr_factor(cfg: dict | None, steps_per_epoch: int, epochs: int) -> Callable[[int], float]:
    """The lr multiplier at each optimizer step (0-based) for the schedule ``cfg``.

    Warm-up is linear over ``round(warmup_epochs * steps_per_epoch)`` steps: step ``s`` gets
    ``(s + 1) / warmup_steps`` so the first step already moves and the last warm-up step
    reaches the full lr. Cosine then decays from 1 to ``min_lr`` over the remaining steps;
    ``step`` multiplies by ``gamma`` at the start of each epoch listed in ``step_epochs``.
    """
    cfg = schedule_config(cfg)
    steps_per_epoch = max(int(steps_per_epoch), 1)
    total_steps = steps_per_epoch * max(int(epochs), 1)
    warmup_steps = round(float(cfg["warmup_epochs"]) * steps_per_epoch)
    main = _after_warmup(cfg, steps_per_epoch, total_steps, warmup_steps)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        return main(step)

    return factor


def build_schedule(
    optimizer: torch.optim.Optimizer, cfg: dict | None, steps_per_epoch: int, epochs: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-step schedule (call ``.step()`` after every optimizer step)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(cfg, steps_per_epoch, epochs))
