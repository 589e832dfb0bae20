"""The pretraining engine on a tiny fake pretext task: learning, exact resume, divergence."""

from __future__ import annotations

import hashlib
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from jigsawkit.errors import CheckpointError, TrainingDivergedError
from jigsawkit.training.checkpoint import load_checkpoint
from jigsawkit.training.engine import pretrain, topk_correct
from jigsawkit.training.settings import PretrainSettings

SIZE = 16
BATCH = 16


@pytest.fixture(autouse=True)
def _one_thread_and_restored_flags():
    """One thread: tiny ops on a shared 2-core machine are many times slower with two.
    The engine turns on deterministic kernels for CPU runs; do not leak that to other tests."""
    threads = torch.get_num_threads()
    enabled = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(enabled, warn_only=warn_only)


class TinyBackbone(nn.Module):
    """Conv + BatchNorm + 2x2 pooling: enough to tell which way an image is rotated."""

    def __init__(self, width: int = 8):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, width, 3, stride=2, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(2),
            nn.Flatten(),
        )
        self.out_dim = width * 4
        self.input_size = SIZE

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class RotationTask(nn.Module):
    """Fake pretext task: which of 4 quarter turns was applied to the image."""

    num_classes = 4
    chance = 0.25
    image_size = SIZE

    def __init__(self, backbone: nn.Module, nan_after: int | None = None):
        super().__init__()
        self.backbone = backbone
        # Dropout makes the global torch RNG part of what a resume must restore.
        self.head = nn.Sequential(nn.Dropout(0.1), nn.Linear(backbone.out_dim, 4))
        self.nan_after = nan_after
        self.train_losses = 0

    def prepare(self, images, generator, train):
        k = torch.randint(0, 4, (images.shape[0],), generator=generator, device=images.device)
        turns = torch.stack([torch.rot90(images, r, dims=(2, 3)) for r in range(4)], dim=1)
        return turns[torch.arange(images.shape[0]), k], k

    def forward(self, inputs):
        return self.head(self.backbone(inputs))

    def loss(self, logits, targets):
        loss = F.cross_entropy(logits, targets)
        if self.training:
            self.train_losses += 1
            if self.nan_after is not None and self.train_losses > self.nan_after:
                loss = loss * math.nan
        return loss


def make_images(count: int, seed: int) -> torch.Tensor:
    """Images with an 'up': bright at the top, dark at the bottom, random colour and noise."""
    gen = torch.Generator().manual_seed(seed)
    colour = 0.4 + 0.6 * torch.rand(count, 3, 1, 1, generator=gen)
    ramp = torch.linspace(1.0, 0.0, SIZE).view(1, 1, SIZE, 1)
    noise = 0.3 * torch.rand(count, 3, SIZE, SIZE, generator=gen)
    return (0.7 * colour * ramp + noise).clamp(0, 1)


SPLITS = {"train": make_images(128, 1), "val": make_images(48, 2), "test": make_images(48, 3)}


def make_loader_factory(seed: int = 0, fail_at_train_epoch: int | None = None, seen=None):
    """Batches whose shuffle order depends only on seed and epoch (the loader contract)."""

    def make_loader(split: str, epoch: int):
        if seen is not None:
            seen.append((split, epoch))
        if split == "train" and epoch == fail_at_train_epoch:
            raise KeyboardInterrupt("simulated interruption")
        data = SPLITS[split]
        if split == "train":
            order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed + epoch))
            stop = len(data) - BATCH + 1  # drop_last
        else:
            order, stop = torch.arange(len(data)), len(data)
        return [(data[order[i : i + BATCH]], None) for i in range(0, stop, BATCH)]

    return make_loader


def build_task(nan_after: int | None = None) -> RotationTask:
    torch.manual_seed(0)
    return RotationTask(TinyBackbone(), nan_after=nan_after)


class Recorder:
    def __init__(self):
        self.records: list[tuple[dict, int]] = []

    def __call__(self, metrics: dict, step: int) -> None:
        self.records.append((dict(metrics), step))

    def values(self, key: str) -> list[tuple[int, float]]:
        return [(step, m[key]) for m, step in self.records if key in m]


def settings(**overrides) -> PretrainSettings:
    values = {
        "epochs": 3,
        "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
        "schedule": {"name": "cosine", "warmup_epochs": 0.5},
        "precision": "fp32",
        "seed": 7,
        "grad_clip": 5.0,
    }
    values.update(overrides)
    return PretrainSettings(**values)


def run(tmp_path, task=None, resume_from=None, log=None, loader=None, callbacks=(), **overrides):
    """``overrides``: PretrainSettings fields (``epochs=1``) or ``progress``."""
    progress = overrides.pop("progress", False)
    return pretrain(
        task or build_task(),
        loader or make_loader_factory(),
        settings(**overrides),
        device="cpu",
        run_dir=tmp_path,
        log=log or Recorder(),
        callbacks=callbacks,
        resume_from=resume_from,
        progress=progress,
    )


TIMING_KEYS = {"images_per_second", "wall_seconds"}


def comparable(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k not in TIMING_KEYS}


def test_learns_a_trivial_task_above_chance_and_reports_every_metric(tmp_path):
    log = Recorder()
    metrics = run(
        tmp_path,
        epochs=2,
        log=log,
        optimizer={"name": "adam", "lr": 0.01},
        schedule={"name": "constant"},
    )
    expected = {
        "train_loss",
        "train_top1",
        "val_loss",
        "val_top1",
        "val_top5",
        "test_loss",
        "test_top1",
        "test_top5",
        "num_classes",
        "num_permutations",
        "chance",
        "images_per_second",
        "epochs",
        "steps",
        "wall_seconds",
    }
    assert expected <= set(metrics)
    assert metrics["num_classes"] == 4 and metrics["chance"] == 0.25
    assert metrics["num_permutations"] == 4  # the deprecated alias, still written
    assert metrics["epochs"] == 2 and metrics["steps"] == 2 * (128 // BATCH)
    assert metrics["val_top1"] > 0.6 and metrics["test_top1"] > 0.6
    assert metrics["val_top5"] == 1.0  # k = min(5, num_classes) covers all 4 classes
    assert metrics["images_per_second"] > 0
    # Train metrics every 10 steps and at each epoch end; val once per epoch.
    assert [s for s, _ in log.values("pretrain/train_loss")] == [8, 10, 16]
    assert [s for s, _ in log.values("pretrain/val_top1")] == [8, 16]
    assert [v for _, v in log.values("pretrain/epoch")] == [1, 2]
    assert log.values("pretrain/test_top1") == [(16, metrics["test_top1"])]
    assert all(k in log.records[0][0] for k in ("pretrain/lr", "pretrain/images_per_second"))
    assert load_checkpoint(tmp_path / "checkpoints" / "last.pt")["epoch"] == 2


def test_resume_after_interruption_matches_an_uninterrupted_run(tmp_path):
    straight_task = build_task()
    straight = run(tmp_path / "straight", task=straight_task)

    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "cut", loader=make_loader_factory(fail_at_train_epoch=1))
    last = tmp_path / "cut" / "checkpoints" / "last.pt"
    assert load_checkpoint(last)["epoch"] == 1

    resumed_log = Recorder()
    resumed_task = build_task()
    resumed = run(tmp_path / "cut", task=resumed_task, resume_from=last, log=resumed_log)

    assert comparable(resumed) == comparable(straight)
    for key, value in straight_task.state_dict().items():
        assert torch.equal(value, resumed_task.state_dict()[key]), key
    assert [s for s, _ in resumed_log.values("pretrain/val_top1")] == [16, 24]


def test_resume_can_extend_a_finished_run(tmp_path):
    constant = {"schedule": {"name": "constant"}}
    straight = run(tmp_path / "straight", epochs=3, **constant)
    run(tmp_path / "short", epochs=1, **constant)
    longer = run(
        tmp_path / "short",
        epochs=3,
        resume_from=tmp_path / "short" / "checkpoints" / "last.pt",
        **constant,
    )
    assert comparable(longer) == comparable(straight)


def test_resume_with_other_settings_is_refused(tmp_path):
    run(tmp_path, epochs=1)
    with pytest.raises(CheckpointError, match=r"different training settings \(optimizer\)"):
        run(
            tmp_path,
            epochs=2,
            resume_from=tmp_path / "checkpoints" / "last.pt",
            optimizer={"name": "sgd", "lr": 0.5},
        )


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    last = tmp_path / "checkpoints" / "last.pt"
    digests = {}

    def loader(split, epoch):
        if split == "train" and epoch == 1:
            digests["before"] = hashlib.sha256(last.read_bytes()).hexdigest()
        return make_loader_factory()(split, epoch)

    # 8 steps per epoch: the 11th training loss (epoch 2) is NaN.
    with pytest.raises(TrainingDivergedError) as caught:
        run(tmp_path, task=build_task(nan_after=10), loader=loader)
    message = str(caught.value)
    assert "\n" not in message
    assert "step 11" in message and "epoch 2" in message and str(last) in message
    assert "lr" in message
    assert hashlib.sha256(last.read_bytes()).hexdigest() == digests["before"]
    assert load_checkpoint(last)["epoch"] == 1


def test_nan_in_the_first_epoch_says_there_is_no_checkpoint_yet(tmp_path):
    with pytest.raises(TrainingDivergedError, match="step 3 .*none yet"):
        run(tmp_path, task=build_task(nan_after=2))
    assert not (tmp_path / "checkpoints" / "last.pt").exists()


def test_bf16_and_max_steps_per_epoch(tmp_path):
    metrics = run(tmp_path, epochs=1, precision="bf16", max_steps_per_epoch=3)
    assert metrics["steps"] == 3
    assert math.isfinite(metrics["train_loss"]) and math.isfinite(metrics["test_loss"])


class RecordingTask(RotationTask):
    def __init__(self, backbone):
        super().__init__(backbone)
        self.eval_targets: list[torch.Tensor] = []

    def prepare(self, images, generator, train):
        inputs, targets = super().prepare(images, generator, train)
        if not train:
            self.eval_targets.append(targets)
        return inputs, targets


def test_validation_draws_the_same_puzzles_every_epoch(tmp_path):
    seen: list = []
    torch.manual_seed(0)
    task = RecordingTask(TinyBackbone())
    run(tmp_path, task=task, epochs=2, loader=make_loader_factory(seen=seen))
    batches = len(SPLITS["val"]) // BATCH
    first, second = task.eval_targets[:batches], task.eval_targets[batches : 2 * batches]
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    assert ("val", 0) in seen and ("val", 1) in seen and ("test", 1) in seen


@pytest.mark.progress_bars
def test_plain_progress_lines(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("JIGSAWKIT_PLAIN_PROGRESS", "1")
    run(tmp_path, epochs=1, max_steps_per_epoch=2, progress=True)
    err = capsys.readouterr().err
    assert "pretrain epoch 1/1: 2/2 step" in err and "loss=" in err and "img_s=" in err
    assert "validate:" in err and "test:" in err


def test_topk_correct():
    logits = torch.tensor([[0.0, 1, 2, 3, 4, 5, 6], [6.0, 5, 4, 3, 2, 1, 0]])
    targets = torch.tensor([6, 6])
    assert int(topk_correct(logits, targets, 1)) == 1
    assert int(topk_correct(logits, targets, 5)) == 1
    assert int(topk_correct(logits, targets, 7)) == 2
    assert int(topk_correct(logits, targets, 50)) == 2


def test_settings_come_from_the_experiments_pretrain_section():
    from jigsawkit.training.seeding import resolve_precision

    section = {
        "epochs": 2,
        "optimizer": {"name": "adam", "lr": 0.01},
        "schedule": {"name": "constant"},
        "precision": "auto",
        "max_steps_per_epoch": 5,
        "grad_clip": None,
        "sync_batchnorm": True,
        "batch_size": 64,  # the loader's business, not the engine's
    }
    made = PretrainSettings.from_experiment({"seed": 11, "pretrain": section}, "cpu")
    assert made == PretrainSettings(
        epochs=2,
        optimizer={"name": "adam", "lr": 0.01},
        schedule={"name": "constant"},
        precision=resolve_precision("auto", "cpu"),
        seed=11,
        max_steps_per_epoch=5,
        grad_clip=None,
        sync_batchnorm=True,
    )
    with pytest.raises(AttributeError):
        made.epochs = 3  # frozen: what a run was started with does not change under it
