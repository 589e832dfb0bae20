"""The engine's callback hooks: what on_epoch_end sees, metrics a callback adds, stopping."""

from __future__ import annotations

from test_engine import Recorder, _one_thread_and_restored_flags, run  # noqa: F401

from jigsawkit.callbacks import Callback, EpochEnd
from jigsawkit.training.checkpoint import load_checkpoint


class StopAt(Callback):
    """Adds a metric every epoch and asks to stop after epoch ``stop_epoch``."""

    def __init__(self, stop_epoch: int):
        self.stop_epoch = stop_epoch
        self.events: list[EpochEnd] = []
        self.calls: list[str] = []

    def on_stage_start(self, stage, epochs):
        self.calls.append(f"start {stage} {epochs}")

    def on_epoch_end(self, event):
        self.events.append(event)
        event.metrics["pretrain/extra"] = float(event.epoch) * 10
        if event.epoch == self.stop_epoch:
            event.request_stop(f"enough at {event.epoch}")

    def on_stage_end(self, stage, metrics):
        self.calls.append(f"end {stage} {metrics['epochs']}")


def test_a_callback_sees_each_epoch_adds_a_logged_metric_and_stops_the_stage(tmp_path):
    log, callback = Recorder(), StopAt(stop_epoch=2)
    metrics = run(tmp_path, epochs=4, log=log, callbacks=[callback])
    assert [e.epoch for e in callback.events] == [1, 2]
    assert all(e.stage == "pretrain" and e.model is not None for e in callback.events)
    assert callback.events[0].step == 8 and "pretrain/val_top1" in callback.events[0].metrics
    assert log.values("pretrain/extra") == [(8, 10.0), (16, 20.0)]
    assert metrics["epochs"] == 2 and metrics["stop_reason"] == "enough at 2"
    assert "test_top1" in metrics  # the stage ends normally: tested and returned
    assert callback.calls == ["start pretrain 4", "end pretrain 2"]
    assert load_checkpoint(tmp_path / "checkpoints" / "last.pt")["stop_reason"] == "enough at 2"


def test_a_run_resumed_after_a_stop_does_not_train_on(tmp_path):
    run(tmp_path, epochs=4, callbacks=[StopAt(stop_epoch=1)])
    resumed = run(tmp_path, epochs=4, resume_from=tmp_path / "checkpoints" / "last.pt")
    assert resumed["epochs"] == 1 and resumed["stop_reason"] == "enough at 1"


def test_without_callbacks_nothing_changes(tmp_path):
    metrics = run(tmp_path, epochs=1)
    assert "stop_reason" not in metrics and metrics["epochs"] == 1


class EndRunAt(Callback):
    name = "ender"

    def on_epoch_end(self, event):
        if event.epoch == 2:
            event.request_stop("the run is over", end_run=True)


def test_a_callback_can_end_the_run_from_pretraining(tmp_path):
    metrics = run(tmp_path, epochs=4, callbacks=[EndRunAt()])
    assert metrics["epochs"] == 2 and metrics["stop_reason"] == "the run is over"
    assert metrics["end_run"] == {"reason": "the run is over", "by": "ender"}
    assert "test_top1" in metrics  # the stage itself still ends normally


def test_the_first_stop_reason_is_kept_and_end_run_is_sticky():
    event = EpochEnd(stage="pretrain", epoch=1, step=1, metrics={})
    event.request_stop("first\nline", end_run=False)
    event.request_stop("second", end_run=True)
    assert event.stop_reason == "first line" and event.end_run
