"""Preflight: every check a run can make before it writes anything.

A run that fails on bad input must leave nothing behind, so whatever can be checked before
the run directory exists is checked here, in the order of cost:

0. targets: the lazy ``module:attr`` target of every selected component imports
   (``check_targets``, first: a misspelled class costs no data check);
1. data: every dataset the run reads is on disk (or fetched now), in the layout its
   ``load()`` needs (``ensure_present``), and a probe's (or the kNN monitor's) dataset has
   labels;
2. evaluators: each is built (a plugin's factory runs now), the exported feature extractor
   an evaluator names is loaded (``weights_only``, metadata and weights checked), and the
   probe ``layers`` are resolved against the backbone that will really be probed;
3. trackers: each is built and asked for its prerequisites (``Tracker.preflight``: a W&B key
   for ``online``, the package installed) without starting anything.

What can still fail later (a crash, a diverging loss, a tracker's server) is recorded in the
run's ``summary.json`` as ``run.state: failed`` with ``run.error`` (see ``runner``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any


def check_targets(config: dict) -> None:
    """Import the lazy target (``module:attr``) of every component the run selects: a
    misspelled module or class is one line naming the plugin and the target, before any
    data is read or the run directory exists (``validate`` does not import targets)."""
    from jigsawkit.config.core_schema import CORE_SCHEMA
    from jigsawkit.config.validate import components_in

    for _, entry in components_in(config, CORE_SCHEMA):
        entry.load()


def check_data(config: dict, pretrains: bool, build: Callable[[dict], Any]) -> None:
    """Every dataset the run will read is present (fetched when allowed) and labelled where
    a probe needs labels: missing probe data is found in seconds, not after pretraining."""
    from jigsawkit.data.base import ensure_present
    from jigsawkit.evaluators.base import check_evaluator_inputs, labelled_dataset

    if pretrains:
        ensure_present(build(config["pretrain"]["data"]), "pretrain.data")
        monitor = config["pretrain"].get("monitor")
        if monitor:
            where = "pretrain.monitor.data"
            ensure_present(labelled_dataset(build, monitor["data"], where), where)
    for selection in config.get("evaluate") or []:
        check_evaluator_inputs(selection, build)


def check_evaluators(config: dict, backbone: Any, build: Callable[..., Any]) -> None:
    """Build every evaluator and resolve what it will probe against ``backbone`` (the run's
    own: pretrained here, loaded from ``checkpoint`` or handed in by a sweep)."""
    from jigsawkit.evaluators.base import check_probe_target

    for selection in config.get("evaluate") or []:
        build("evaluator", selection)
        check_probe_target(selection, backbone)


def check_trackers(trackers: Any) -> None:
    """Ask every tracker whether it can start (``preflight()``, an optional member of
    ``jigsawkit.contracts.Tracker``)."""
    from jigsawkit.contracts import optional_method

    for tracker in getattr(trackers, "trackers", [trackers]):
        check = optional_method(tracker, "preflight")
        if check is not None:
            check()


def preflight(
    config: dict,
    backbone: Any,
    run_path: Path,
    build: Callable[..., Any],
    make_trackers: Callable[[], Any],
) -> Any:
    """Checks 2 and 3 (data is checked before the backbone is built); returns the trackers,
    built for ``run_path`` but not started. The global RNG state is left as it was, so a
    checked run draws the same numbers as before the checks existed."""
    import torch

    with torch.random.fork_rng(devices=[]):
        check_evaluators(config, backbone, build)
    trackers = make_trackers()
    check_trackers(trackers)
    return trackers
