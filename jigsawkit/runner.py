"""Run a resolved experiment: build components from the registries and run the stages.

    pretrain (pretext task on unlabelled images) -> export the feature extractor
    -> evaluate (frozen features: linear probe, kNN, ...)

Everything a run produces goes to its run directory (see ``jigsawkit.rundir``) and to the
experiment's trackers.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jigsawkit.callbacks import CallbackList
from jigsawkit.errors import UserError
from jigsawkit.killpoints import kill_point
from jigsawkit.preflight import check_data, check_targets, preflight
from jigsawkit.rundir import RunDirectory, environment_record, new_run_dir
from jigsawkit.training import distributed


@dataclass
class RunResult:
    run_dir: Path
    summary: dict[str, Any]


def _params(selection: dict) -> dict:
    return {k: v for k, v in selection.items() if k != "name"}


def build_component(kind: str, selection: dict, *args: Any, **extra: Any) -> Any:
    """Build the component ``selection`` names and check it against its contract
    (``jigsawkit.contracts``): a plugin returning a wrong object fails here, in one line."""
    from jigsawkit.contracts import check_component
    from jigsawkit.registry import registry

    built = registry(kind).build(selection["name"], *args, **extra, **_params(selection))
    return check_component(kind, built, selection["name"])


def build_trackers(config: dict, run_dir: Path) -> Any:
    from jigsawkit.tracking.base import MultiTracker

    return MultiTracker(
        [
            build_component("tracker", selection, run_dir=run_dir, experiment=config["name"])
            for selection in config.get("trackers") or []
        ]
    )


class _Logger:
    """Sends metrics to the run directory, to every tracker and to the callbacks' on_log."""

    def __init__(self, run: RunDirectory, tracker: Any, callbacks: CallbackList):
        self.run, self.tracker, self.callbacks = run, tracker, callbacks

    def __call__(self, metrics: dict[str, Any], step: int | None = None) -> None:
        self.run.log(metrics, step)
        self.tracker.log(metrics, step)
        self.callbacks.on_log(metrics, step)

    def summary(self, values: dict[str, Any]) -> None:
        self.run.update_summary(values)
        self.tracker.summary(values)


def _check_resume(config: dict, run_dir: Path) -> None:
    from jigsawkit.config.yaml_marks import load_yaml_mapping

    saved_path = run_dir / "config.yaml"
    if not saved_path.exists():
        raise UserError(
            f"--resume {run_dir}: no config.yaml there; is it a jigsawkit run directory?"
        )
    saved, _ = load_yaml_mapping(saved_path, what="run config (--resume)")
    if saved != config:
        keys = sorted(k for k in set(saved) | set(config) if saved.get(k) != config.get(k))
        raise UserError(
            f"--resume {run_dir}: the experiment differs from the one that run used "
            f"(keys: {', '.join(keys)}); resume with the same file and --set options"
        )


def run_experiment(
    config: dict,
    out: str | Path | None = None,
    resume: str | Path | None = None,
    progress: bool = True,
    backbone_override: Any = None,
    callbacks: Iterable[Any] = (),
) -> RunResult:
    """Run a resolved experiment (from ``load_experiment``); return its run dir and summary.

    ``progress=False``: no progress bar at all while it runs (pretraining, data caching,
    feature extraction, probes). ``callbacks`` (see ``jigsawkit.callbacks``) watch the
    pretraining and every evaluator that trains per epoch, and see every logged row; they
    are never written to the run's ``config.yaml``. One that asks to end the run
    (``event.request_stop(reason, end_run=True)``) makes it skip the later stages and
    return normally with ``run.state: stopped`` in its summary.
    """
    from jigsawkit.progress import progress_bars

    with progress_bars(progress):
        return _run(config, out, resume, backbone_override, CallbackList(callbacks))


def _run(
    config: dict,
    out: str | Path | None,
    resume: str | Path | None,
    backbone_override: Any,
    callbacks: CallbackList,
) -> RunResult:
    from jigsawkit.allocator import retain_freed_memory
    from jigsawkit.paths import cache_root, check_writable_dir
    from jigsawkit.plugins import load_plugins

    retain_freed_memory()
    world = distributed.env_world()
    if world.distributed and config.get("pretrain") and backbone_override is None:
        distributed.check_global_batch(config["pretrain"]["batch_size"], world.size)
    load_plugins(config.get("plugins") or [])
    check_targets(config)
    if resume is not None:
        run_path = Path(resume)
        _check_resume(config, run_path)
    else:
        run_path = Path(out) if out else new_run_dir(config["output_dir"], config["name"])
    cache_dir = Path(config["cache_dir"]).expanduser() if config.get("cache_dir") else cache_root()
    check_writable_dir(run_path, "--resume" if resume else "--out" if out else "output_dir")
    check_writable_dir(cache_dir, "cache_dir" if config.get("cache_dir") else "the cache folder")

    from jigsawkit.training.export import recorded_normalization
    from jigsawkit.training.seeding import resolve_device, seed_everything

    device = resolve_device(config["device"])
    world, device = distributed.init_from_env(device)
    if config.get("pretrain") and config["pretrain"].get("sync_batchnorm"):
        distributed.check_sync_batchnorm(device)
    seed_everything(config["seed"])
    # Everything that can fail on bad input (a checkpoint, missing data, a probe layer, a
    # tracker without its key, a plugin's factory) fails before the run directory exists,
    # so a bad run leaves nothing behind (see jigsawkit/preflight.py).
    backbone, prepared, task = backbone_override, None, None
    pretrains = backbone is None and not config.get("checkpoint")
    with distributed.main_first():  # rank 0 downloads and fills the caches, the others read
        check_data(config, pretrains, lambda data: build_component("dataset", data))
        if backbone is None and config.get("checkpoint"):
            from jigsawkit import load_feature_extractor

            backbone = load_feature_extractor(config["checkpoint"])
        elif backbone is None:
            task, task_normalization = _build_task(config)
        tracker = preflight(
            config,
            task.backbone if task is not None else backbone,
            run_path,
            build=lambda kind, selection: build_component(kind, selection),
            # Rank 0 alone tracks (one W&B run); the other ranks log nowhere.
            make_trackers=lambda: (
                build_trackers(config, run_path)
                if world.is_main
                else build_trackers({"name": config["name"]}, run_path)
            ),
        )
        if task is not None:
            splits = _load_splits(config, task, cache_dir)[1]
            # The monitor runs on rank 0 alone (the engine hands its stop to every rank).
            monitor = (
                _build_monitor(config, task, task_normalization, cache_dir, device)
                if world.is_main
                else None
            )
            prepared = _Prepared(task, splits, task_normalization, monitor)
    # How the probed backbone's inputs were normalised in pretraining (None: unknown).
    normalization = (
        prepared.normalization if prepared is not None else recorded_normalization(backbone)
    )
    if not world.is_main:  # rank 0 alone writes; the others train and extract their shares
        return _follow(
            config, prepared, run_path, device, resume, backbone, cache_dir, normalization
        )
    overlap = _check_overlap(config, prepared, cache_dir)
    run = RunDirectory(run_path)
    run.write_config(config)
    run.write_environment(environment_record(str(device)))
    log = _Logger(run, tracker, callbacks)
    if overlap:
        log.summary(overlap)
    if world.distributed:
        log.summary({"run.world_size": world.size})
    ok = False
    started = time.perf_counter()
    try:
        tracker.start(config)
        stop = None  # a callback ended the run: {"reason", "by"}
        if prepared is not None:
            backbone, stop = _pretrain(
                config, prepared, run, log, tracker, device, resume, callbacks
            )
        kill_point("evaluate")
        if stop is None:
            stop = _evaluate(
                config, run, log, tracker, backbone, device, cache_dir, normalization, callbacks
            )
        # What an earlier attempt of a resumed run recorded about its end.
        run.forget_summary("run.error", "run.stop_reason", "run.stopped_by")
        ended = {"run.wall_seconds": round(time.perf_counter() - started, 2)}
        if stop is None:
            ended["run.state"] = "finished"
        else:
            ended.update(
                {
                    "run.state": "stopped",
                    "run.stop_reason": stop["reason"],
                    "run.stopped_by": stop["by"],
                }
            )
        log.summary(ended)
        ok = True
    except BaseException as exc:
        _record_failure(log, exc)
        raise
    finally:
        tracker.finish(ok)
    return RunResult(run.path, run.summary)


def _follow(
    config: dict,
    prepared: Any,
    run_path: Path,
    device: Any,
    resume: Any,
    backbone: Any,
    cache_dir: Path,
    normalization: str | None,
) -> RunResult:
    """A rank other than 0: pretrain its shards with everything it would write dropped, then
    extract its share of the evaluators' features (rank 0 caches them and evaluates)."""
    from jigsawkit.progress import progress_bars
    from jigsawkit.tracking.base import MultiTracker

    if prepared is not None:
        run = distributed.FollowerRunDirectory(run_path)
        quiet = MultiTracker([])
        log = _Logger(run, quiet, CallbackList())
        with progress_bars(False):  # rank 0 alone shows progress
            backbone, stop = _pretrain(
                config, prepared, run, log, quiet, device, resume, CallbackList()
            )
        if stop is not None:  # rank 0's callbacks ended the run: no evaluation anywhere
            return RunResult(run_path, {})
    if config.get("evaluate"):
        with progress_bars(False):
            _evaluators(
                config, run_path, None, backbone, device, cache_dir, normalization, CallbackList()
            )
    return RunResult(run_path, {})


def _record_failure(log: _Logger, exc: BaseException) -> None:
    """Write how the run ended into summary.json: ``run.state`` (``failed`` or
    ``interrupted``) and ``run.error``, the one-line reason. Never masks the exception
    being raised."""
    from jigsawkit.errors import one_line

    state = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
    try:
        reason = one_line(exc, typed=not isinstance(exc, UserError))
        log.summary({"run.state": state, "run.error": reason})
    except Exception:  # noqa: BLE001 - the original exception is the one to report
        pass


def _check_overlap(config: dict, prepared: Any, cache_dir: Path) -> dict[str, Any]:
    """Refuse probe val/test images that pretraining's train split holds (see
    ``jigsawkit.evaluators.overlap``); the counts go to the summary."""
    from jigsawkit.evaluators.overlap import check_probe_overlap

    reason = None
    if prepared is None:
        reason = "this run does not pretrain (checkpoint or given backbone); nothing to compare"
    return check_probe_overlap(
        config.get("evaluate") or [],
        None if prepared is None else prepared.splits["train"],
        cache_dir,
        lambda data: build_component("dataset", data),
        skip_reason=reason,
    )


@dataclass
class _Prepared:
    task: Any
    splits: dict
    normalization: str | None  # the task's declared input normalisation
    monitor: Any = None  # the online kNN monitor (pretrain.monitor), rank 0 only


def _build_task(config: dict) -> tuple[Any, str | None]:
    """The pretext task (which owns the backbone) and its declared input normalisation
    (checked with the rest of the task's contract by ``build_component``)."""
    import sys

    from jigsawkit.normalization import FALLBACK_NORMALIZATION

    backbone = build_component("backbone", config["backbone"])
    task = build_component("pretext", config["pretext"], backbone=backbone)
    where = f"pretext '{config['pretext']['name']}'"
    normalization = task.input_normalization
    if normalization is None:
        print(
            f"warning: {where} declares no input_normalization; probes will feed "
            f"{FALLBACK_NORMALIZATION} inputs unless evaluate.<name>.normalize says otherwise",
            file=sys.stderr,
        )
    return task, normalization


def _build_monitor(
    config: dict, task: Any, normalization: str | None, cache_dir: Path, device: Any
) -> Any:
    """The online kNN monitor ``pretrain.monitor`` asks for (None when off), its images
    loaded now: a bad monitor dataset or layer fails before the run directory exists."""
    params = config["pretrain"].get("monitor")
    if not params:
        return None
    from jigsawkit.callbacks.knn_monitor import build_monitor
    from jigsawkit.training.seeding import resolve_precision

    return build_monitor(
        params,
        task.backbone,
        normalization=normalization,
        precision=resolve_precision(config["pretrain"]["precision"], device),
        seed=config["seed"],
        cache_dir=cache_dir,
        build_dataset=lambda data: build_component("dataset", data),
    )


def _load_splits(config: dict, task: Any, cache_dir: Path) -> tuple[Any, dict]:
    data_cfg = config["pretrain"]["data"]
    dataset = build_component("dataset", data_cfg)
    splits = {
        split: dataset.load(split, task.image_size, cache_dir / "images")
        for split in ("train", "val", "test")
    }
    for split, data in splits.items():
        if len(data) == 0:
            raise UserError(f"pretrain.data: the {split} split of '{data_cfg['name']}' is empty")
    return dataset, splits


def _pretrain(
    config: dict,
    prepared: _Prepared,
    run: RunDirectory,
    log: _Logger,
    tracker: Any,
    device: Any,
    resume: Any,
    run_callbacks: CallbackList,
) -> tuple[Any, dict | None]:
    """Pretrain, record and export; returns the backbone and, when a callback ended the
    run, ``{"reason", "by"}``."""
    from jigsawkit.data.loader import BatchLoader
    from jigsawkit.training.engine import pretrain
    from jigsawkit.training.export import export_feature_extractor
    from jigsawkit.training.settings import PretrainSettings

    cfg = config["pretrain"]
    task, splits = prepared.task, prepared.splits
    skipped = sum(s.skipped for s in splits.values())
    world = distributed.current()

    def make_loader(split: str, epoch: int) -> Any:
        training = split == "train"
        loader = BatchLoader(
            splits[split],
            batch_size=cfg["batch_size"],
            shuffle=training,
            seed=config["seed"],
            device=device,
            drop_last=training and len(splits[split]) >= cfg["batch_size"],
            prefetch=cfg["prefetch"],
            rank=world.rank,
            world_size=world.size,
        )
        loader.set_epoch(epoch)
        return loader

    task.to(device)
    last = run.checkpoint_dir / "last.pt"
    # What watches this pretraining, called in order: the experiment's own first (a later
    # callback may read the metric it adds), then the run's (run_experiment(callbacks=...)).
    callbacks: list[Any] = []
    if prepared.monitor is not None:
        callbacks.append(prepared.monitor)
    callbacks += run_callbacks.callbacks
    metrics = pretrain(
        task,
        make_loader,
        PretrainSettings.from_experiment(config, device),
        device=device,
        run_dir=run.path,
        log=log,
        callbacks=callbacks,
        # Killed before its first checkpoint: the run starts its pretraining over.
        resume_from=last if resume is not None and last.is_file() else None,
    )
    stop = metrics.pop("end_run", None)
    if not distributed.current().is_main:
        return task.backbone, stop
    if prepared.monitor is not None:
        metrics.update(prepared.monitor.summary())
    metrics["skipped_images"] = skipped
    metrics.update({f"{split}_images": len(data) for split, data in splits.items()})
    log.summary({f"pretrain.{k}": v for k, v in metrics.items()})
    export_path = run.path / cfg["export"]
    export_feature_extractor(
        task.backbone,
        export_path,
        {
            "backbone": {"name": config["backbone"]["name"], "params": _params(config["backbone"])},
            "input_size": int(task.backbone.input_size),
            "out_dim": int(task.backbone.out_dim),
            "input_normalization": prepared.normalization,
            "pretext": config["pretext"],
            "data": cfg["data"],
            "metrics": {k: float(v) for k, v in metrics.items() if isinstance(v, int | float)},
        },
    )
    log.summary(
        {
            "pretrain.export_path": str(export_path),
            "pretrain.input_normalization": prepared.normalization or "unknown",
        }
    )
    tracker.artifact(export_path, f"{config['name']}-feature-extractor", "model")
    return task.backbone, stop


def _evaluate(
    config: dict,
    run: RunDirectory,
    log: _Logger,
    tracker: Any,
    backbone: Any,
    device: Any,
    cache_dir: Path,
    normalization: str | None,
    callbacks: CallbackList,
) -> dict | None:
    """Run the evaluators in order; returns ``{"reason", "by"}`` when a callback ended the
    run (the evaluators after that one do not run)."""
    if not config.get("evaluate"):
        return None
    ctx, evaluators = _evaluators(
        config, run.path, log, backbone, device, cache_dir, normalization, callbacks
    )
    distributed.release_cores()  # the features exist: the heads and kNN run on rank 0 alone
    for selection, evaluator in zip(config["evaluate"], evaluators):
        results = evaluator.evaluate(ctx)
        log.summary({f"probe.{selection['name']}.{k}": v for k, v in results.items()})
        if ctx.run_stop is not None:
            return ctx.run_stop
    return None


def _evaluators(
    config: dict,
    run_path: Path,
    log: _Logger | None,
    backbone: Any,
    device: Any,
    cache_dir: Path,
    normalization: str | None,
    callbacks: CallbackList,
) -> tuple[Any, list[Any]]:
    """The evaluators and their ``EvalContext``. In a torchrun job every rank calls this:
    the ranks take rank 0's weights and extract the features the evaluators will read into
    the feature cache together (``jigsawkit.evaluators.across_ranks``)."""
    from jigsawkit.evaluators.across_ranks import extract_together
    from jigsawkit.evaluators.base import EvalContext, random_init_factory
    from jigsawkit.evaluators.features import state_dict_hash

    backbone = backbone.to(device).eval()
    distributed.broadcast_module(backbone)  # BatchNorm buffers differ after DDP training
    spec = {"name": config["backbone"]["name"], "params": _params(config["backbone"])}
    metadata = getattr(backbone, "metadata", None)
    if isinstance(metadata, dict) and "backbone" in metadata:
        spec = metadata["backbone"]

    ctx = EvalContext(
        backbone=backbone,
        make_random_backbone=random_init_factory(spec, config["seed"], device),
        checkpoint_id=state_dict_hash(backbone),
        device=device,
        seed=config["seed"],
        cache_dir=cache_dir,
        run_dir=run_path,
        tracker=log,
        build_dataset=lambda selection: build_component("dataset", selection),
        backbone_spec=spec,
        input_normalization=normalization,
        callbacks=callbacks,
    )
    evaluators = [build_component("evaluator", selection) for selection in config["evaluate"]]
    extract_together(ctx, evaluators)
    return ctx, evaluators
