"""The online kNN monitor (pretrain.monitor): what it measures, what it must leave alone
(BatchNorm statistics, train/eval modes, the run's random streams and so its numbers), its
early stop (also across a resume), and its place in a run (summary, bad input, exit 2)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from test_engine import (  # noqa: F401 - the fixture is used by every test here
    SIZE,
    Recorder,
    RotationTask,
    TinyBackbone,
    _one_thread_and_restored_flags,
    comparable,
    make_loader_factory,
    run,
)

from jigsawkit.callbacks import EpochEnd
from jigsawkit.callbacks.knn_monitor import METRIC, SECONDS, KNNMonitor, fixed_subset
from jigsawkit.cli import main
from jigsawkit.data.base import ImageSplit


class ProbedBackbone(TinyBackbone):
    """The engine tests' backbone with one declared probe layer."""

    feature_layers = {"body": 32}
    default_probe_layer = "body"

    def probe_features(self, x: torch.Tensor, layers: list[str]) -> dict[str, torch.Tensor]:
        return {"body": self.body(x)}


def build_task() -> RotationTask:
    torch.manual_seed(0)
    return RotationTask(ProbedBackbone())


def labelled_split(count: int, seed: int) -> ImageSplit:
    """Three classes told apart by which colour channel is brightest, plus noise."""
    rng = np.random.default_rng(seed)
    labels = np.arange(count) % 3
    images = rng.integers(0, 120, size=(count, SIZE, SIZE, 3))
    images[np.arange(count), :, :, labels] += 120
    return ImageSplit(images.astype(np.uint8), labels.astype(np.int64), num_classes=3)


def make_monitor(early_stop: dict | None = None, every: int = 1) -> KNNMonitor:
    return KNNMonitor(
        labelled_split(60, 1),
        labelled_split(30, 2),
        3,
        layer="body",
        image_size=SIZE,
        normalize="none",
        k=5,
        temperature=0.07,
        batch_size=256,
        every=every,
        early_stop=early_stop,
        precision="fp32",
    )


def batchnorm_buffers(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: value.clone() for name, value in module.named_buffers()}


def test_it_measures_without_touching_batchnorm_modes_or_the_random_streams():
    task = build_task()
    task.train()
    task.head.eval()  # a mix of modes, each to be restored as it was
    modes = {name: m.training for name, m in task.named_modules()}
    buffers = batchnorm_buffers(task)
    assert {"running_mean", "running_var", "num_batches_tracked"} <= {
        name.rsplit(".", 1)[-1] for name in buffers
    }
    rng = torch.get_rng_state()
    event = EpochEnd(stage="pretrain", epoch=1, step=10, metrics={}, model=task, device="cpu")
    make_monitor().on_epoch_end(event)
    after = batchnorm_buffers(task)
    assert all(torch.equal(buffers[name], after[name]) for name in buffers)
    assert {name: m.training for name, m in task.named_modules()} == modes
    assert torch.equal(torch.get_rng_state(), rng)
    assert 0.0 <= event.metrics[METRIC] <= 1.0 and event.metrics[SECONDS] > 0
    # Colour classes: even random conv features separate them well above chance (1/3).
    assert event.metrics[METRIC] > 0.6


def test_a_run_has_the_same_numbers_with_the_monitor_as_without(tmp_path):
    plain_task, monitored_task = build_task(), build_task()
    plain = run(tmp_path / "plain", task=plain_task, epochs=2)
    log, monitor = Recorder(), make_monitor()
    monitored = run(tmp_path / "mon", task=monitored_task, epochs=2, log=log, callbacks=[monitor])
    assert comparable(plain) == comparable(monitored)
    for (name, a), b in zip(plain_task.state_dict().items(), monitored_task.state_dict().values()):
        assert torch.equal(a, b), name
    # One value per epoch, in the same row as the epoch's val metrics.
    rows = [(step, m) for m, step in log.records if METRIC in m]
    assert [m["pretrain/epoch"] for _, m in rows] == [1, 2]
    assert all("pretrain/val_top1" in m and SECONDS in m for _, m in rows)
    assert [v for _, v in monitor.history] == [m[METRIC] for _, m in rows]


def test_every_n_epochs_and_always_the_last(tmp_path):
    monitor = make_monitor(every=2)
    run(tmp_path, task=build_task(), epochs=3, callbacks=[monitor])
    assert [epoch for epoch, _ in monitor.history] == [2, 3]


def test_early_stop_after_patience_evaluations_without_improvement(tmp_path):
    # min_delta 1.0: nothing after the first evaluation can count as an improvement.
    monitor = make_monitor(early_stop={"patience": 2, "min_delta": 1.0})
    metrics = run(tmp_path, task=build_task(), epochs=5, callbacks=[monitor])
    assert metrics["epochs"] == 3
    assert metrics["stop_reason"].startswith("pretrain.monitor.early_stop: kNN top-1 did not")
    assert "test_top1" in metrics  # the stage ended normally
    best, epoch = monitor.best()
    assert best == max(v for _, v in monitor.history) and 1 <= epoch <= 3
    summary = monitor.summary()
    assert summary["monitor_evaluations"] == 3 and summary["monitor_knn_top1_best"] == best


def test_no_early_stop_while_it_improves(tmp_path):
    monitor = make_monitor(early_stop={"patience": 1, "min_delta": 0.0})
    values = iter([0.2, 0.3, 0.4])
    monitor.measure = lambda backbone, device: next(values)  # type: ignore[method-assign]
    metrics = run(tmp_path, task=build_task(), epochs=3, callbacks=[monitor])
    assert metrics["epochs"] == 3 and "stop_reason" not in metrics
    assert monitor.best() == (0.4, 3)


def test_its_state_survives_a_resume(tmp_path):
    """Killed after epoch 2, resumed with a fresh monitor: it stops at the same epoch, for
    the same reason, with the same history as the run that was never interrupted."""
    early = {"patience": 2, "min_delta": 1.0}
    straight_monitor = make_monitor(early_stop=early)
    straight = run(tmp_path / "a", task=build_task(), epochs=4, callbacks=[straight_monitor])
    with pytest.raises(KeyboardInterrupt):
        run(
            tmp_path / "b",
            task=build_task(),
            epochs=4,
            callbacks=[make_monitor(early_stop=early)],
            loader=make_loader_factory(fail_at_train_epoch=2),
        )
    resumed_monitor = make_monitor(early_stop=early)
    resumed = run(
        tmp_path / "b",
        task=build_task(),
        epochs=4,
        callbacks=[resumed_monitor],
        resume_from=tmp_path / "b" / "checkpoints" / "last.pt",
    )
    assert resumed["epochs"] == straight["epochs"] == 3
    assert resumed["stop_reason"] == straight["stop_reason"]
    assert resumed_monitor.history == straight_monitor.history


def test_fixed_subset_is_seeded_in_file_order_and_capped():
    split = labelled_split(50, 0)
    a, b = fixed_subset(split, 20, 7, 11), fixed_subset(split, 20, 7, 11)
    assert np.array_equal(a.images, b.images) and len(a) == 20
    assert not np.array_equal(a.images, fixed_subset(split, 20, 8, 11).images)
    assert len(fixed_subset(split, 500, 7, 11)) == 50


# -- in a run, through the CLI -------------------------------------------------------------


def experiment_text() -> str:
    """The bad-input corpus's tiny experiment, pretraining 3 epochs with the monitor on."""
    import yaml
    from test_bad_inputs_runtime import EXPERIMENT

    config = yaml.safe_load(EXPERIMENT)
    data = {"name": "synthetic", "seed": 1, "train_size": 40, "val_size": 20, "test_size": 8}
    config["pretrain"]["epochs"] = 3
    config["pretrain"]["monitor"] = {"data": data, "bank_images": 30, "query_images": 20, "k": 5}
    config["evaluate"] = [{"name": "knn", "data": data}]
    return yaml.safe_dump(config)


def cli_run(tmp_path: Path, *sets: str) -> tuple[int, str]:
    path = tmp_path / "e.yaml"
    path.write_text(experiment_text())
    args = ["run", str(path), "--out", str(tmp_path / "out"), "--no-progress"]
    for item in sets:
        args += ["--set", item]
    return main(args), str(tmp_path / "out")


def test_a_run_logs_it_every_epoch_and_summarises_it(tmp_path, capsys):
    rc, out = cli_run(tmp_path)
    assert rc == 0, capsys.readouterr().err
    rows = [json.loads(line) for line in Path(out, "metrics.jsonl").read_text().splitlines()]
    monitored = [row for row in rows if METRIC in row]
    assert [row["pretrain/epoch"] for row in monitored] == [1, 2, 3]
    assert all("pretrain/val_top1" in row and SECONDS in row for row in monitored)
    summary = json.loads(Path(out, "summary.json").read_text())
    values = [row[METRIC] for row in monitored]
    assert summary["pretrain.monitor_knn_top1_best"] == max(values)
    assert summary["pretrain.monitor_best_epoch"] == 1 + values.index(max(values))
    assert summary["pretrain.monitor_evaluations"] == 3
    assert summary["pretrain.monitor_bank_images"] == 30
    assert summary["pretrain.monitor_query_images"] == 20
    assert summary["pretrain.monitor_seconds"] > 0
    assert "pretrain.stop_reason" not in summary


def test_an_early_stop_is_in_the_summary_and_the_run_goes_on(tmp_path, capsys):
    rc, out = cli_run(tmp_path, "pretrain.monitor.early_stop={patience: 1, min_delta: 1.0}")
    assert rc == 0, capsys.readouterr().err
    summary = json.loads(Path(out, "summary.json").read_text())
    assert summary["pretrain.epochs"] == 2
    assert summary["pretrain.stop_reason"].startswith("pretrain.monitor.early_stop")
    assert Path(out, "feature_extractor.pt").is_file()  # exported ...
    assert math.isfinite(summary["probe.knn.test_top1"])  # ... and evaluated
    assert summary["run.state"] == "finished"


@pytest.mark.parametrize(
    ("setting", "expected"),
    [
        (
            "pretrain.monitor.data={name: image_folder, root: /nonexistent/monitor}",
            "pretrain.monitor.data: image_folder",
        ),
        ("pretrain.monitor.data={name: image_folder, root: ., labelled: false}", "has no labels"),
        ("pretrain.monitor.layer=conv9", "pretrain.monitor.layer: the backbone has no"),
        ("pretrain.monitor.bank_images=5001", "pretrain.monitor.bank_images"),
        ("pretrain.monitor.early_stop={patience: 0}", "pretrain.monitor.early_stop.patience"),
    ],
)
def test_bad_monitor_input_is_one_line_exit_2_and_nothing_written(
    tmp_path, capsys, setting, expected
):
    rc, out = cli_run(tmp_path, setting)
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], err
    assert not Path(out).exists()
