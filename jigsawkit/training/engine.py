"""The pretraining loop: a pretext task on unlabelled images, with exact resume on CPU.

The engine knows nothing about datasets: it asks ``make_loader(split, epoch)`` for an iterable
of ``(images, labels)`` batches (labels are ignored). Each epoch trains on ``train``,
validates on ``val`` and writes ``run_dir/checkpoints/last.pt`` atomically; the end of the
run tests on ``test``.

Determinism: the task draws from a generator of its own (seeded from ``seed``), the global
torch RNG is seeded at the start, and both are saved in every checkpoint with the model,
optimizer and schedule. Given a loader whose order depends only on ``seed`` and ``epoch``, a
run resumed from a checkpoint on CPU ends with the same numbers as one never interrupted.
Validation and test use a freshly seeded generator each time, so their numbers are
comparable across epochs and runs.

Data-parallel runs (see ``jigsawkit.training.distributed``): the loader gives each rank its
shard of the global batch, the train step goes through DistributedDataParallel, each rank
draws puzzles from its own stream (rank 0 keeps the single-process one), metrics are summed
over the ranks, and rank 0 alone writes checkpoints, which carry every rank's generator
states so a resume with the same world size continues exactly.

Accuracy: ``top1`` compares the arg-max of the logits with the targets; ``top5`` is top-k
accuracy with ``k = min(5, num_classes)``, so it is trivially 1.0 for tasks with fewer than
five classes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from jigsawkit.callbacks import CallbackList, EpochEnd
from jigsawkit.errors import CheckpointError, TrainingDivergedError, UserError, one_line
from jigsawkit.killpoints import kill_point
from jigsawkit.progress import progress_bar
from jigsawkit.training import distributed
from jigsawkit.training.checkpoint import load_checkpoint, save_checkpoint
from jigsawkit.training.optim import (
    build_optimizer,
    build_schedule,
    optimizer_config,
    schedule_config,
)
from jigsawkit.training.seeding import configure_determinism, make_generator
from jigsawkit.training.settings import PretrainSettings

LOG_EVERY = 10  # optimizer steps between train-metric logs (each log syncs the device)

# Independent random streams derived from the run's seed.
_TRAIN_STREAM, _VAL_STREAM, _TEST_STREAM = 1, 2, 3

MakeLoader = Callable[[str, int], Iterable[Any]]
LogFn = Callable[[dict, int], None]


def stream_seed(seed: int, stream: int) -> int:
    """A seed for one of the run's random streams, distinct from the global seed."""
    return (int(seed) * 1_000_003 + stream * 7_919) % (2**63 - 1)


def topk_correct(logits: torch.Tensor, targets: torch.Tensor, k: int) -> torch.Tensor:
    """How many rows have their target among the ``k`` largest logits (a 0-d tensor)."""
    k = min(k, logits.shape[-1])
    top = logits.topk(k, dim=-1).indices
    return (top == targets.unsqueeze(-1)).any(dim=-1).sum()


@dataclass
class _Progress:
    """What a checkpoint carries besides the model, optimizer, schedule and RNG states."""

    epoch: int = 0
    global_step: int = 0
    train_images: int = 0
    train_seconds: float = 0.0
    wall_seconds: float = 0.0
    last: dict = field(default_factory=dict)
    best: dict = field(default_factory=dict)
    stop_reason: str | None = None  # a callback ended the stage early (kept across resume)


@dataclass
class _Run:
    """Everything the loop needs, built once."""

    task: Any
    model: Any  # the task, or its DistributedDataParallel wrapper: what the train step calls
    make_loader: MakeLoader
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    generator: torch.Generator
    device: torch.device
    precision: str
    seed: int
    epochs: int
    steps_per_epoch: int
    grad_clip: float | None
    log: LogFn
    progress: bool
    checkpoint_path: Path
    settings: dict
    state: _Progress
    callbacks: CallbackList = field(default_factory=CallbackList)
    last_good: Path | None = None
    end_run: dict | None = None  # a callback asked to end the whole run: reason and by whom

    def autocast(self) -> Any:
        if self.precision == "bf16":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()


def _steps_per_epoch(loader: Iterable[Any], max_steps: int | None) -> int:
    try:
        count: int | None = len(loader)  # type: ignore[arg-type]
    except TypeError:
        count = None
    if count is None:
        if max_steps is None:
            raise UserError(
                "pretrain: the train loader has no length; set pretrain.max_steps_per_epoch"
            )
        return int(max_steps)
    if max_steps is not None:
        count = min(count, int(max_steps))
    if count <= 0:
        raise UserError(
            "pretrain: the train split gives no batch (fewer images than pretrain.batch_size?)"
        )
    return count


def _settings_hash(settings: dict) -> str:
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _rng_state(run: _Run) -> dict:
    rng = {"torch_cpu": torch.get_rng_state(), "generator": run.generator.get_state()}
    if run.device.type == "cuda":
        rng["torch_cuda"] = torch.cuda.get_rng_state(run.device)
    return rng


def _save(run: _Run) -> None:
    world = distributed.current()
    # Every rank's streams go into rank 0's checkpoint (a collective: all ranks take part).
    ranks = distributed.all_gather_object({k: v.cpu() for k, v in _rng_state(run).items()})
    if not world.is_main:
        run.last_good = run.checkpoint_path
        return
    rng = dict(ranks[0])
    if world.distributed:
        rng["ranks"] = ranks
    state = run.state
    save_checkpoint(
        run.checkpoint_path,
        {
            "model": run.task.state_dict(),
            "optimizer": run.optimizer.state_dict(),
            "scheduler": run.scheduler.state_dict(),
            "epoch": state.epoch,
            "global_step": state.global_step,
            "rng": rng,
            "world_size": world.size,
            "metrics": dict(state.last),
            "best_metrics": dict(state.best),
            "train_images": state.train_images,
            "train_seconds": state.train_seconds,
            "wall_seconds": state.wall_seconds,
            "stop_reason": state.stop_reason,
            "callbacks": run.callbacks.state_dict(),
            "config_hash": _settings_hash(run.settings),
            "settings": json.dumps(run.settings, sort_keys=True, default=str),
        },
    )
    run.last_good = run.checkpoint_path


def _check_settings(path: Path, ckpt: dict, settings: dict) -> None:
    if ckpt.get("config_hash") == _settings_hash(settings):
        return
    try:
        saved = json.loads(ckpt.get("settings") or "{}")
    except (TypeError, ValueError):
        saved = {}
    current = json.loads(json.dumps(settings, default=str))
    keys = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
    raise CheckpointError(
        f"{path}: written with different training settings ({', '.join(keys) or 'unknown'}); "
        "resume with the settings the run started with"
    )


def _restore(run: _Run, path: Path, ckpt: dict) -> None:
    _check_settings(path, ckpt, run.settings)
    world = distributed.current()
    saved_world = int(ckpt.get("world_size", 1))
    if saved_world != world.size:
        raise CheckpointError(
            f"{path}: written by {saved_world} process(es), resumed with {world.size}; "
            f"resume with the same world size ({saved_world}), since each rank's random "
            "streams continue from the checkpoint"
        )
    try:
        run.task.load_state_dict(ckpt["model"])
        run.optimizer.load_state_dict(ckpt["optimizer"])
        run.scheduler.load_state_dict(ckpt["scheduler"])
        rng = ckpt["rng"]["ranks"][world.rank] if world.distributed else ckpt["rng"]
        torch.set_rng_state(rng["torch_cpu"])
        run.generator.set_state(rng["generator"])
        if run.device.type == "cuda" and "torch_cuda" in rng:
            torch.cuda.set_rng_state(rng["torch_cuda"], run.device)
    except (KeyError, RuntimeError, ValueError, TypeError) as error:
        first = one_line(error, first_line=True)[:160]
        raise CheckpointError(f"{path}: does not fit this model or run ({first})") from None
    run.state = _Progress(
        epoch=int(ckpt["epoch"]),
        global_step=int(ckpt["global_step"]),
        train_images=int(ckpt.get("train_images", 0)),
        train_seconds=float(ckpt.get("train_seconds", 0.0)),
        wall_seconds=float(ckpt.get("wall_seconds", 0.0)),
        last=dict(ckpt.get("metrics") or {}),
        best=dict(ckpt.get("best_metrics") or {}),
        stop_reason=ckpt.get("stop_reason"),
    )
    run.callbacks.load_state_dict(ckpt.get("callbacks") or {})
    run.last_good = path


def _diverged(run: _Run, step: int, epoch: int, value: float) -> TrainingDivergedError:
    where = f"{run.last_good}" if run.last_good else "none yet (it diverged in the first epoch)"
    return TrainingDivergedError(
        f"pretraining diverged: loss is {value} at step {step} (epoch {epoch + 1}); "
        f"last good checkpoint: {where}; try a lower pretrain.optimizer.lr, "
        "pretrain.schedule.warmup_epochs or pretrain.grad_clip"
    )


class _Window:
    """Train metrics since the last log, kept on the device so steps do not sync."""

    def __init__(self, device: torch.device):
        self.device = device
        self.reset(0)

    def reset(self, first_step: int) -> None:
        self.first_step = first_step
        self.losses: list[torch.Tensor] = []
        self.correct = torch.zeros((), dtype=torch.long, device=self.device)
        self.images = 0
        self.started = time.perf_counter()

    def add(self, loss: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor) -> None:
        self.losses.append(loss.detach().float())
        self.correct += topk_correct(logits.detach(), targets, 1)
        self.images += int(targets.shape[0])


def _train_step(run: _Run, images: torch.Tensor) -> tuple[torch.Tensor, Any, Any]:
    inputs, targets = run.task.prepare(images, run.generator, True)
    with run.autocast():
        logits = run.model(inputs)
    loss = run.task.loss(logits.float(), targets)
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if run.grad_clip:
        torch.nn.utils.clip_grad_norm_(run.task.parameters(), run.grad_clip)
    run.optimizer.step()
    run.scheduler.step()
    return loss, logits, targets


def _flush(run: _Run, window: _Window, epoch: int, lr: float, bar: Any, totals: dict) -> None:
    """Check the window's losses are finite, add them to the epoch totals and log them."""
    if not window.losses:
        return
    world = distributed.current()
    # Sums over the ranks: each step's loss is the mean of the ranks' (equal-sized) shards.
    losses = distributed.all_reduce_sum(torch.stack(window.losses).double()) / world.size
    counts = torch.stack([window.correct, torch.tensor(window.images, device=window.device)])
    correct, images = (int(v) for v in distributed.all_reduce_sum(counts))
    finite = torch.isfinite(losses)
    if not bool(finite.all()):
        index = int((~finite).nonzero()[0, 0])
        raise _diverged(run, window.first_step + index + 1, epoch, float(losses[index]))
    loss_sum = float(losses.sum())
    seconds = max(time.perf_counter() - window.started, 1e-9)
    totals["loss_sum"] += loss_sum
    totals["steps"] += len(window.losses)
    totals["correct"] += correct
    totals["images"] += images
    metrics = {
        "pretrain/train_loss": loss_sum / len(window.losses),
        "pretrain/train_top1": correct / max(images, 1),
        "pretrain/lr": lr,
        "pretrain/images_per_second": images / seconds,
    }
    run.log(metrics, run.state.global_step)
    bar.advance(
        0,
        loss=metrics["pretrain/train_loss"],
        top1=metrics["pretrain/train_top1"],
        img_s=round(metrics["pretrain/images_per_second"], 1),
    )
    window.reset(run.state.global_step)


def _train_epoch(run: _Run, loader: Iterable[Any], epoch: int) -> dict:
    run.task.train()
    totals = {"loss_sum": 0.0, "steps": 0, "correct": 0, "images": 0}
    window = _Window(run.device)
    window.reset(run.state.global_step)
    lr = run.optimizer.param_groups[0]["lr"]
    started = time.perf_counter()
    description = f"pretrain epoch {epoch + 1}/{run.epochs}"
    with progress_bar(description, run.steps_per_epoch, "step", run.progress) as bar:
        for index, (images, _labels) in enumerate(loader):
            if index >= run.steps_per_epoch:
                break
            lr = run.optimizer.param_groups[0]["lr"]  # the lr this step uses
            loss, logits, targets = _train_step(run, images.to(run.device, non_blocking=True))
            window.add(loss, logits, targets)
            run.state.global_step += 1
            kill_point("train-step")
            distributed.maybe_kill_for_test(run.state.global_step)
            bar.advance(1)
            if run.state.global_step % LOG_EVERY == 0 or index + 1 == run.steps_per_epoch:
                _flush(run, window, epoch, lr, bar, totals)
        _flush(run, window, epoch, lr, bar, totals)  # a loader shorter than announced
    if totals["steps"] == 0:
        raise UserError(f"pretrain: the train split gave no batch in epoch {epoch + 1}")
    run.state.train_seconds += time.perf_counter() - started
    run.state.train_images += totals["images"]
    return {
        "train_loss": totals["loss_sum"] / totals["steps"],
        "train_top1": totals["correct"] / totals["images"],
    }


@torch.no_grad()
def _evaluate(run: _Run, split: str, epoch: int, seed: int, description: str) -> dict:
    """Loss, top-1 and top-5 on a whole split, with a generator seeded the same every time."""
    run.task.eval()
    world = distributed.current()
    generator = make_generator(distributed.rank_seed(seed, world.rank), run.device)
    loader = run.make_loader(split, epoch)
    loss_sum = torch.zeros((), dtype=torch.float64, device=run.device)
    top1 = torch.zeros((), dtype=torch.long, device=run.device)
    top5 = torch.zeros((), dtype=torch.long, device=run.device)
    count = torch.zeros((), dtype=torch.long, device=run.device)
    total = len(loader) if hasattr(loader, "__len__") else None
    with progress_bar(description, total, "batch", run.progress) as bar:
        for images, _labels in loader:
            inputs, targets = run.task.prepare(images.to(run.device), generator, False)
            with run.autocast():
                logits = run.task(inputs)
            logits = logits.float()
            size = int(targets.shape[0])
            loss_sum += run.task.loss(logits, targets).double() * size
            top1 += topk_correct(logits, targets, 1)
            top5 += topk_correct(logits, targets, 5)
            count += size
            bar.advance(1)
    sums = torch.stack([loss_sum, top1.double(), top5.double(), count.double()])
    loss_sum, top1, top5, count = distributed.all_reduce_sum(sums).tolist()
    if count == 0:
        raise UserError(f"pretrain: the {split} split gave no batch to evaluate on")
    return {
        f"{split}_loss": loss_sum / count,
        f"{split}_top1": int(top1) / count,
        f"{split}_top5": int(top5) / count,
    }


def _end_epoch(run: _Run, epoch: int, train: dict, started: float, wall_before: float) -> None:
    val = _evaluate(run, "val", epoch, stream_seed(run.seed, _VAL_STREAM), "validate")
    state = run.state
    state.epoch = epoch + 1
    state.last = {**train, **val}
    if not state.best or val["val_top1"] > state.best.get("val_top1", -1.0):
        state.best = {**state.last, "epoch": state.epoch}
    state.wall_seconds = wall_before + time.perf_counter() - started
    metrics = {f"pretrain/{key}": value for key, value in val.items()}
    metrics["pretrain/epoch"] = state.epoch
    metrics["pretrain/epoch_train_loss"] = train["train_loss"]
    metrics["pretrain/epoch_train_top1"] = train["train_top1"]
    event = EpochEnd(
        stage="pretrain",
        epoch=state.epoch,
        step=state.global_step,
        metrics=metrics,
        model=run.task,
        device=run.device,
    )
    run.callbacks.on_epoch_end(event)
    # Rank 0's callbacks decide; every rank stops at the same epoch.
    flags = torch.tensor([event.stop_requested, event.end_run], device=run.device).double()
    stop, end_run = (float(v) > 0 for v in distributed.all_reduce_sum(flags))
    if stop:
        state.stop_reason = event.stop_reason or "stopped by a callback on rank 0"
    if end_run:
        run.end_run = {"reason": state.stop_reason, "by": event.stopped_by or "rank 0"}
    run.log(metrics, state.global_step)
    kill_point("epoch-end")
    _save(run)
    kill_point("checkpoint-saved")


def pretrain(
    task: Any,
    make_loader: MakeLoader,
    settings: PretrainSettings,
    *,
    device: str | torch.device,
    run_dir: str | Path,
    log: LogFn,
    callbacks: Iterable[Any] = (),
    resume_from: str | Path | None = None,
    progress: bool = True,
) -> dict:
    """Pretrain ``task`` (which owns the backbone and head) and return the final metrics.

    ``make_loader(split, epoch)`` gives the batches of ``train``, ``val`` or ``test``;
    ``settings`` (see :class:`~jigsawkit.training.settings.PretrainSettings`) say how to
    train. ``resume_from`` continues from a checkpoint written by this function with the
    same settings. Returns ``train_loss``, ``train_top1``, ``val_loss``, ``val_top1``,
    ``val_top5``, ``test_loss``, ``test_top1``, ``test_top5``, ``num_classes`` (the
    pretext's classes; also as the deprecated alias ``num_permutations``), ``chance``,
    ``images_per_second``, ``epochs``, ``steps`` and ``wall_seconds``. A
    non-finite loss raises ``TrainingDivergedError`` and leaves the last checkpoint as it
    was. In a data-parallel job, ``make_loader`` gives this rank's shards and
    ``settings.sync_batchnorm`` turns BatchNorm into SyncBatchNorm. ``callbacks`` (see
    ``jigsawkit.callbacks``) are called at the start and end of the stage and at the end
    of every epoch, before its metrics are logged; one may end pretraining early, and then
    ``stop_reason`` is in the returned metrics (and ``end_run``, ``{"reason", "by"}``, when
    it asked to end the whole run: the caller runs no later stage).
    """
    started = time.perf_counter()
    device = torch.device(device)
    configure_determinism(device)
    task.to(device)
    ckpt = load_checkpoint(resume_from) if resume_from is not None else None
    start_epoch = int(ckpt["epoch"]) if ckpt is not None else 0
    first_loader = make_loader("train", start_epoch)
    steps = _steps_per_epoch(first_loader, settings.max_steps_per_epoch)
    optimizer_cfg = dict(settings.optimizer) if settings.optimizer is not None else None
    schedule_cfg = dict(settings.schedule) if settings.schedule is not None else None
    optimizer = build_optimizer(task, optimizer_cfg)
    seed, epochs, precision = int(settings.seed), int(settings.epochs), settings.precision
    world = distributed.current()
    run = _Run(
        task=task,
        model=task,
        make_loader=make_loader,
        optimizer=optimizer,
        scheduler=build_schedule(optimizer, schedule_cfg, steps, epochs),
        generator=make_generator(
            distributed.rank_seed(stream_seed(seed, _TRAIN_STREAM), world.rank), device
        ),
        device=device,
        precision=precision,
        seed=seed,
        epochs=epochs,
        steps_per_epoch=steps,
        grad_clip=settings.grad_clip,
        log=log,
        progress=progress,
        checkpoint_path=Path(run_dir) / "checkpoints" / "last.pt",
        settings={
            "optimizer": optimizer_config(optimizer_cfg),
            "schedule": schedule_config(schedule_cfg),
            "seed": seed,
            "precision": precision,
            "grad_clip": settings.grad_clip,
            "steps_per_epoch": steps,
            "num_classes": int(task.num_classes),
        },
        state=_Progress(),
        callbacks=CallbackList(callbacks),
    )
    if ckpt is not None:
        _restore(run, Path(resume_from), ckpt)  # type: ignore[arg-type]
    else:
        torch.manual_seed(seed)  # dropout and friends: same draws whatever ran before
    # Wrapped after a restore: DDP starts by broadcasting rank 0's parameters.
    run.model = distributed.wrap_model(task, device, settings.sync_batchnorm)
    wall_before = run.state.wall_seconds
    run.callbacks.on_stage_start("pretrain", run.epochs)
    for epoch in range(start_epoch, run.epochs):
        if run.state.stop_reason is not None:  # resumed after a callback's stop
            break
        loader = first_loader if epoch == start_epoch else make_loader("train", epoch)
        train = _train_epoch(run, loader, epoch)
        _end_epoch(run, epoch, train, started, wall_before)
    metrics = _finish(run, started, wall_before)
    run.callbacks.on_stage_end("pretrain", metrics)
    return metrics


def _finish(run: _Run, started: float, wall_before: float) -> dict:
    last_epoch = max(run.state.epoch - 1, 0)
    test = _evaluate(run, "test", last_epoch, stream_seed(run.seed, _TEST_STREAM), "test")
    run.log({f"pretrain/{key}": value for key, value in test.items()}, run.state.global_step)
    state = run.state
    num_classes = int(run.task.num_classes)
    chance = float(getattr(run.task, "chance", 1.0 / num_classes))
    metrics = {
        **{k: state.last.get(k, math.nan) for k in ("train_loss", "train_top1")},
        **{k: state.last.get(k, math.nan) for k in ("val_loss", "val_top1", "val_top5")},
        **test,
        "num_classes": num_classes,
        "num_permutations": num_classes,  # deprecated alias of num_classes (jigsaw words)
        "chance": chance,
        "images_per_second": state.train_images / state.train_seconds
        if state.train_seconds > 0
        else 0.0,
        "epochs": state.epoch,
        "steps": state.global_step,
        "wall_seconds": wall_before + time.perf_counter() - started,
    }
    if state.stop_reason is not None:
        metrics["stop_reason"] = state.stop_reason
    if run.end_run is not None:
        metrics["end_run"] = dict(run.end_run)
    return metrics
