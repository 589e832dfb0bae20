"""Sweep files: a base experiment, a W&B sweep configuration and a search strategy.

::

    experiment: quickstart.yaml          # relative to this file, or an inline mapping
    sweep:                               # W&B's own sweep format
      method: random                     # grid | random | bayes
      metric: {name: probe.linear_probe.val_top1, goal: maximize}
      run_cap: 10
      parameters:
        evaluate[0].lr: {distribution: log_uniform_values, min: 1.0e-4, max: 1.0e-1}
    strategy: {name: wandb, mode: offline}   # or {name: optuna, sampler: tpe}
    output_dir: sweeps

Everything is checked before a trial runs, and every problem is reported at once as
``file:line:col: key: message``: the sweep against W&B's published schema (shipped by
the ``sweeps`` package), each parameter path against the resolved experiment, and every
candidate value (each of ``values``; ``min`` and ``max`` of a distribution) by putting
it into the experiment and validating that.

The result is a :class:`~jigsawkit.search.sweep_spec.SweepSpec` (parameter names
normalised there: ``evaluate[0].lr`` -> ``evaluate.0.lr``).
"""

from __future__ import annotations

import copy
import difflib
import math
import re
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jigsawkit.config.core_schema import component_slot
from jigsawkit.config.overrides import parse_key, parse_override
from jigsawkit.config.yaml_marks import KeyPath, Marks, dotted, load_yaml_mapping
from jigsawkit.errors import ConfigError
from jigsawkit.json_values import plain
from jigsawkit.search.sweep_spec import (
    SweepSpec,
    normalize_name,
    parameter_name,
    set_path,
    sweeps_schema,
)

SWEEP_KEYS = ("experiment", "sweep", "strategy", "output_dir")
METHODS = ("grid", "random", "bayes")
GRID_TYPES = ("param_categorical", "param_single_value", "param_int_uniform", "param_quniform")

SWEEP_FILE_SCHEMA: dict = {
    "type": "object",
    "additionalProperties": False,
    "required": ["experiment", "sweep"],
    "properties": {
        "experiment": {
            "type": ["string", "object"],
            "description": "the base experiment: a path relative to the sweep file, or a mapping",
        },
        "sweep": {"type": "object", "description": "a W&B sweep configuration"},
        "strategy": component_slot("search", "wandb"),
        "output_dir": {"type": "string", "minLength": 1, "default": "sweeps"},
    },
}

_LOCATED = re.compile(r"^(?P<loc>.+?:\d+:\d+|--set [^:]*): (?P<rest>.*)$", re.S)


class _PrefixedMarks(Marks):
    """Marks of an inline experiment: its paths live under ``experiment`` in the sweep file."""

    def __init__(self, parent: Marks, prefix: KeyPath):
        super().__init__(parent.source)
        self.parent, self.prefix = parent, tuple(prefix)

    def set_override(self, path: KeyPath, text: str) -> None:
        self.parent.set_override(self.prefix + tuple(path), text)

    def where(self, path: KeyPath, key: bool = False) -> str:
        return self.parent.where(self.prefix + tuple(path), key=key)

    def override_note(self, path: KeyPath, scope: KeyPath) -> str:
        return self.parent.override_note(self.prefix + tuple(path), self.prefix + tuple(scope))


# -- helpers --------------------------------------------------------------------------------


def _lookup(data: Any, path: KeyPath) -> tuple[bool, KeyPath, list[str]]:
    """Does ``path`` exist in ``data``? If not: the longest existing prefix and its keys."""
    node = data
    for i, part in enumerate(path):
        if isinstance(node, dict) and not isinstance(part, int) and part in node:
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
        else:
            keys = [str(k) for k in node] if isinstance(node, dict) else []
            return False, path[:i], keys
    return True, path, []


def _strip_location(problem: str) -> str:
    match = _LOCATED.match(problem)
    return match.group("rest") if match else problem


# -- loading -------------------------------------------------------------------------------


class _Problems:
    def __init__(self, marks: Marks):
        self.marks = marks
        self.lines: list[str] = []

    def add(self, path: KeyPath, message: str, at_key: bool = False) -> None:
        self.lines.append(f"{self.marks.where(path, key=at_key)}: {dotted(path)}: {message}")

    def extend_error(self, error: ConfigError) -> None:
        self.lines.extend(error.problems)

    def raise_if_any(self) -> None:
        if self.lines:
            from jigsawkit.config.validate import position_key

            raise ConfigError(sorted(dict.fromkeys(self.lines), key=position_key))


def _split_overrides(overrides: Iterable[str]) -> tuple[list[str], list[str]]:
    """``--set`` options for the sweep file (sweep., strategy., output_dir) and the rest,
    which go to the experiment (``experiment.`` prefix optional)."""
    mine, experiment = [], []
    for text in overrides or []:
        key = text.split("=", 1)[0].strip()
        head = re.split(r"[.\[]", key, maxsplit=1)[0]
        if head in ("sweep", "strategy", "output_dir"):
            mine.append(text)
        else:  # `experiment.` is removed by apply_overrides(within="experiment")
            experiment.append(text)
    return mine, experiment


def _apply_sweep_overrides(data: dict, overrides: list[str], marks: Marks) -> None:
    from jigsawkit.config.overrides import apply_overrides

    # Parameter names hold dots: `--set sweep.parameters.evaluate.0.lr.max=0.1` cannot be
    # split reliably, so a parameter is replaced whole: --set 'sweep.parameters={...}'.
    for text in overrides:
        path, _ = parse_override(text)
        if len(path) > 2 and path[:2] == ("sweep", "parameters"):
            raise ConfigError(
                f"--set {text}: set sweep.parameters as a whole (a YAML mapping), "
                "parameter names contain dots"
            )
    apply_overrides(data, overrides, marks, schema=SWEEP_FILE_SCHEMA)


def load_sweep_file(
    path: str | Path,
    overrides: Iterable[str] = (),
    plugin_dirs: Iterable[str | Path] = (),
    loaded: tuple[dict, Marks] | None = None,
) -> SweepSpec:
    """Read and validate a sweep file; raise ConfigError listing every problem.

    ``loaded``: the file's ``load_yaml_mapping`` result when the caller has parsed it."""
    from jigsawkit.config.validate import validate_data
    from jigsawkit.plugins import load_plugins

    path = Path(path)
    data, marks = loaded if loaded is not None else load_yaml_mapping(path, what="sweep file")
    sweep_overrides, experiment_overrides = _split_overrides(overrides)
    _apply_sweep_overrides(data, sweep_overrides, marks)
    problems = _Problems(marks)
    load_plugins(list(plugin_dirs), experiment_file=path)
    top: dict = {}
    try:
        top = validate_data(data, marks, SWEEP_FILE_SCHEMA)
    except ConfigError as error:
        problems.extend_error(error)
    sweep = data.get("sweep")
    experiment, experiment_data, experiment_marks, experiment_file = _load_experiment_part(
        data, marks, path, experiment_overrides, plugin_dirs, problems
    )
    swept: dict[str, SweptKey] = {}
    if isinstance(sweep, dict):
        swept = _check_sweep(sweep, marks, problems)
        strategy = data.get("strategy")
        if isinstance(strategy, dict) and strategy.get("name") == "optuna":
            _check_optuna(sweep, strategy, problems)
    if experiment is not None and isinstance(sweep, dict) and swept:
        _check_metric(sweep, experiment, marks, problems)
        _check_parameters(sweep, swept, experiment, experiment_data, experiment_marks, problems)
    problems.raise_if_any()
    assert experiment is not None and isinstance(sweep, dict)
    # Plugin folders found next to the files or named with --plugins are recorded in the
    # experiment (absolute), so trials and best.yaml load them from anywhere.
    plugin_list = list(experiment.get("plugins") or [])
    for folder in _implicit_plugin_dirs(path, experiment_file, plugin_dirs):
        if folder not in plugin_list:
            plugin_list.append(folder)
    experiment["plugins"] = plugin_list
    return SweepSpec(
        source=str(path),
        experiment=experiment,
        experiment_data=experiment_data,
        sweep=_normalized_sweep(sweep),
        parameters={name: key.path for name, key in swept.items()},
        strategy=top["strategy"],
        output_dir=top["output_dir"],
        experiment_file=str(Path(experiment_file).resolve()) if experiment_file else None,
        plugin_dirs=plugin_list,
        marks=experiment_marks,
    )


def _implicit_plugin_dirs(
    sweep_path: Path, experiment_file: str | None, cli_dirs: Iterable[str | Path]
) -> list[str]:
    found = []
    for base in [sweep_path.parent] + ([Path(experiment_file).parent] if experiment_file else []):
        if (base / "plugins").is_dir():
            found.append(str((base / "plugins").resolve()))
    found.extend(str(Path(d).expanduser().resolve()) for d in cli_dirs or [])
    return list(dict.fromkeys(found))


def _load_experiment_part(
    data: dict,
    marks: Marks,
    path: Path,
    overrides: list[str],
    plugin_dirs: Iterable[str | Path],
    problems: _Problems,
) -> tuple[dict | None, dict, Marks, str | None]:
    """Load the base experiment (a file next to the sweep file, or inline)."""
    from jigsawkit.config.experiment import resolve_experiment

    source = data.get("experiment")
    if isinstance(source, str):
        experiment_path = (path.parent / source).expanduser()
        if not experiment_path.is_file():
            problems.add(
                ("experiment",),
                f"no experiment file {experiment_path} (paths are relative to the sweep file)",
            )
            return None, {}, marks, None
        experiment_file: str | None = str(experiment_path)
        relative_to: Path = experiment_path
    elif isinstance(source, dict):
        experiment_file, relative_to = None, path
    else:
        return None, {}, marks, None  # reported by the top-level schema
    try:
        if experiment_file is not None:
            raw, experiment_marks = load_yaml_mapping(experiment_path)
        else:
            raw, experiment_marks = copy.deepcopy(source), _PrefixedMarks(marks, ("experiment",))
        loaded = resolve_experiment(
            raw, experiment_marks, relative_to, overrides, plugin_dirs, within="experiment"
        )
    except ConfigError as error:
        problems.extend_error(error)
        return None, {}, marks, experiment_file
    return loaded.config, loaded.data, loaded.marks, experiment_file


# -- the W&B sweep part ---------------------------------------------------------------------


def _distribution_names(schema: Any) -> list[str]:
    names = []
    for definition in schema.dereferenced_sweep_config_jsonschema["definitions"].values():
        variants = definition.get("anyOf", [definition]) if isinstance(definition, dict) else []
        for variant in variants:
            enum = variant.get("properties", {}).get("distribution", {}).get("enum", [])
            names.extend(enum)
    return sorted(set(names))


def _parameter_problems(schema: Any, value: Any) -> list[tuple[KeyPath, str, bool]]:
    """Why a parameter matches none of W&B's parameter kinds, as precisely as possible."""
    import jsonschema

    from jigsawkit.config.validate import error_messages

    hint = (
        "expected `values: [...]`, `value: X`, or `distribution: NAME` with its bounds "
        "(min/max, mu/sigma, q) as in W&B's sweep format"
    )
    if not isinstance(value, dict):
        return [((), hint, False)]
    if "parameters" in value:
        return [
            (
                (),
                "nested parameter groups are not supported: name each swept key by its "
                "dotted path, e.g. evaluate.0.lr",
                False,
            )
        ]
    definitions = schema.dereferenced_sweep_config_jsonschema["definitions"]
    candidates = []
    kinds = [
        d["$ref"].split("/")[-1]
        for d in schema.sweep_config_jsonschema["definitions"]["parameter"]["anyOf"]
    ]
    distribution = value.get("distribution")
    known = _distribution_names(schema)
    if distribution is not None and distribution not in known:
        close = difflib.get_close_matches(str(distribution), known, n=2, cutoff=0.5)
        extra = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        return [
            (
                ("distribution",),
                f"unknown distribution {distribution!r}{extra} (known: {', '.join(known)})",
                False,
            )
        ]
    for kind in kinds:
        if kind == "param_dict":
            continue
        definition = definitions[kind]
        variants = definition.get("anyOf", [definition])
        for variant in variants:
            props = variant.get("properties", {})
            enum = props.get("distribution", {}).get("enum", [])
            if distribution is not None and distribution not in enum:
                continue
            if distribution is None and "distribution" in variant.get("required", []):
                continue
            validator = jsonschema.Draft7Validator(variant, format_checker=schema.format_checker)
            errors = list(validator.iter_errors(value))
            if errors:
                candidates.append(errors)
    if not candidates:
        return [((), hint, False)]
    best = min(candidates, key=len)
    found = []
    for error in best:
        for path, message, at_key in error_messages(error):
            found.append((tuple(path), message, at_key))
    if distribution is None and not any(k in value for k in ("values", "value", "min", "max")):
        return [((), hint, False)]
    return found


@dataclass(frozen=True)
class SweptKey:
    """A swept parameter: its name as written in the sweep file, its key path."""

    written: str
    path: KeyPath


def _check_sweep(sweep: dict, marks: Marks, problems: _Problems) -> dict[str, SweptKey]:
    """Check the sweep against W&B's schema and jigsawkit's needs; return the swept keys
    by their W&B names (``evaluate.0.lr``)."""
    from jigsawkit.config.validate import error_messages

    schema = sweeps_schema()
    base: KeyPath = ("sweep",)
    params = sweep.get("parameters")
    swept: dict[str, SweptKey] = {}
    if isinstance(params, dict):
        for name in params:
            try:
                key_path = parse_key(str(name))
            except ConfigError:
                problems.add(base + ("parameters", name), "cannot read this key path", True)
                continue
            norm = parameter_name(key_path)
            if norm in swept:
                problems.add(
                    base + ("parameters", name),
                    f"the same key as parameter {swept[norm].written!r}",
                    True,
                )
                continue
            swept[norm] = SweptKey(name, key_path)
    wandb_sweep = _normalized_sweep(sweep)

    def where(path: KeyPath) -> KeyPath:
        # map normalized parameter names back to the names as written, for line numbers
        if len(path) >= 2 and path[0] == "parameters" and path[1] in swept:
            return base + ("parameters", swept[path[1]].written) + tuple(path[2:])
        return base + tuple(path)

    for error in sorted(
        schema.validator.iter_errors(wandb_sweep), key=lambda e: list(map(str, e.absolute_path))
    ):
        path = tuple(error.absolute_path)
        if len(path) == 2 and path[0] == "parameters" and error.validator == "anyOf":
            for sub, message, at_key in _parameter_problems(schema, error.instance):
                problems.add(where(path + sub), message, at_key)
            continue
        if path == ("early_terminate",) and error.validator == "oneOf" and error.context:
            for sub_error in error.context:
                if sub_error.validator == "anyOf" and isinstance(error.instance, dict):
                    problems.add(
                        where(path),
                        "hyperband needs `min_iter` (the first epoch at which trials may "
                        "stop), or `max_iter` and `s`",
                    )
                    continue
                for sub, message, at_key in error_messages(sub_error):
                    problems.add(where(tuple(sub)), message, at_key)
            continue
        if path == ("parameters",) and error.validator == "propertyNames":
            problems.add(where(path), " ".join(error.message.split()), False)
            continue
        for sub, message, at_key in error_messages(error):
            problems.add(where(tuple(sub)), message, at_key)
    method = sweep.get("method")
    if method == "custom":
        problems.add(
            base + ("method",), f"jigsawkit runs methods {', '.join(METHODS)}; found {method!r}"
        )
    metric = sweep.get("metric")
    if not isinstance(metric, dict) or not metric.get("name"):
        if "metric" not in sweep:
            problems.add(
                base,
                "missing `metric: {name: <summary key>, goal: minimize|maximize}`; the best "
                "trial is chosen by it (e.g. probe.linear_probe.val_top1)",
            )
    if "metrics" in sweep:
        problems.add(base + ("metrics",), "multi-objective sweeps are not supported; use `metric`")
    for key in ("scheduler", "controller"):
        if key in sweep:
            problems.add(
                base + (key,), f"`{key}` is not supported by jigsawkit's sweep runner", True
            )
    for norm, key in swept.items():
        _check_parameter_shape(
            schema,
            method,
            norm,
            wandb_sweep["parameters"][norm],
            base + ("parameters", key.written),
            problems,
        )
    return swept


def _check_parameter_shape(
    schema: Any, method: Any, name: str, value: Any, path: KeyPath, problems: _Problems
) -> None:
    """Cross-field checks W&B makes outside its JSON Schema, and grid's restrictions."""
    if not isinstance(value, dict):
        return
    for check in (schema.validate_min_max, schema.validate_categorical_prob):
        try:
            check(name, value)
        except ValueError as error:
            message = " ".join(str(error.args[0]).split())
            problems.add(
                path, message.removeprefix(f"{name}: ").removeprefix(f"Parameter {name}: ")
            )
    if method == "grid":
        try:
            kind = schema.fill_parameter(name, value)
        except (ValueError, schema.ParamValidationError):
            return
        if kind is not None and kind[0] not in GRID_TYPES:
            problems.add(
                path,
                "grid search needs `values`, `value`, int_uniform or q_uniform "
                f"(found {kind[0].removeprefix('param_')})",
            )


def _check_optuna(sweep: dict, strategy: dict, problems: _Problems) -> None:
    """Every parameter must have an Optuna counterpart (and be discrete for grid)."""
    from jigsawkit.search.optuna_strategy import convert_parameter, sampler_name

    grid = sampler_name(strategy, str(sweep.get("method"))) == "grid"
    for name, value in (sweep.get("parameters") or {}).items():
        if not isinstance(value, dict):
            continue
        try:
            convert_parameter(str(name), value, grid=grid)
        except ValueError as error:
            problems.add(("sweep", "parameters", name), f"strategy optuna: {error}")


def _normalized_sweep(sweep: dict) -> dict:
    """The sweep with parameter names rewritten ``evaluate.0.lr`` (W&B's name rules); a
    name that is no key path stays as written (reported by ``_check_sweep``)."""
    out = copy.deepcopy(sweep)
    params = sweep.get("parameters")
    if isinstance(params, dict):
        renamed = {}
        for name, value in params.items():
            try:
                renamed[normalize_name(str(name))] = copy.deepcopy(value)
            except ConfigError:
                renamed[name] = copy.deepcopy(value)
        out["parameters"] = renamed
    return out


def _check_metric(sweep: dict, experiment: dict, marks: Marks, problems: _Problems) -> None:
    metric = sweep.get("metric")
    if not isinstance(metric, dict) or not isinstance(metric.get("name"), str):
        return
    name = metric["name"]
    path = ("sweep", "metric", "name")
    parts = name.split(".")
    last = parts[-1]
    if re.search(r"(^|[._/])test([._/]|$)", name) or last.startswith("test_"):
        problems.add(
            path,
            f"{name!r} is a test-set metric: selecting on it leaks the test set into the "
            "choice; select on the val metric (e.g. probe.linear_probe.val_top1) and read "
            "the test metric of the best trial in the sweep summary",
        )
        return
    if parts[0] == "probe":
        evaluators = [e.get("name") for e in experiment.get("evaluate") or []]
        if len(parts) < 3 or parts[1] not in evaluators:
            listed = ", ".join(str(e) for e in evaluators) or "none"
            problems.add(
                path,
                f"{name!r} is not a summary key of this experiment: probe metrics are "
                f"probe.<evaluator>.<metric> and the experiment evaluates with {listed}",
            )
    elif parts[0] not in ("pretrain", "run") or len(parts) < 2:
        problems.add(
            path,
            f"{name!r} is not a summary key of a run; they look like "
            "probe.linear_probe.val_top1, probe.knn.val_top1 or pretrain.val_loss",
        )


def _candidate_values(schema: Any, name: str, value: dict) -> list[tuple[str, Any]]:
    """The values of a parameter to try in the experiment: every listed value, or the
    ends of a bounded distribution (the median of an unbounded one)."""
    from sweeps.params import HyperParameter

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            param = HyperParameter(name, copy.deepcopy(value))
    except Exception:  # reported by the schema check
        return []
    config = param.config
    if param.type == HyperParameter.CONSTANT:
        return [("value", config["value"])]
    if param.type in (HyperParameter.CATEGORICAL, HyperParameter.CATEGORICAL_PROB):
        return [(f"values[{i}]", v) for i, v in enumerate(config["values"])]
    unbounded = (
        HyperParameter.NORMAL,
        HyperParameter.Q_NORMAL,
        HyperParameter.LOG_NORMAL,
        HyperParameter.Q_LOG_NORMAL,
    )
    quantiles = [("median", 0.5)] if param.type in unbounded else [("min", 0.0), ("max", 1.0)]
    out = []
    for label, q in quantiles:
        try:
            drawn = plain(param.ppf(q))
        except Exception:
            continue
        if isinstance(drawn, list):
            drawn = drawn[0] if drawn else None
        if isinstance(drawn, float) and not math.isfinite(drawn):
            continue
        if param.type == HyperParameter.INT_UNIFORM and isinstance(drawn, float):
            drawn = int(drawn)
        out.append((label, drawn))
    return out


def _check_parameters(
    sweep: dict,
    swept: dict[str, SweptKey],
    experiment: dict,
    experiment_data: dict,
    experiment_marks: Marks,
    problems: _Problems,
) -> None:
    """Each path exists in the resolved experiment; each candidate value validates."""
    from jigsawkit.config.experiment import validate_experiment

    schema = sweeps_schema()
    params = sweep["parameters"]
    for norm, key in swept.items():
        written, key_path = key.written, key.path
        where = ("sweep", "parameters", written)
        exists, prefix, keys = _lookup(experiment, key_path)
        if not exists:
            missing = key_path[len(prefix)]
            close = difflib.get_close_matches(str(missing), keys, n=2, cutoff=0.5)
            hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
            inside = dotted(prefix) if prefix else "the experiment"
            listed = f" (keys there: {', '.join(keys)})" if keys and not hint else ""
            problems.add(
                where,
                f"no key {dotted(key_path)!r} in the resolved experiment: {inside} has no "
                f"{missing if isinstance(missing, str) else f'[{missing}]'!r}{hint}{listed}",
                True,
            )
            continue
        spec = params[written]
        if not isinstance(spec, dict):
            continue
        for label, candidate in _candidate_values(schema, norm, spec):
            data = copy.deepcopy(experiment_data)
            try:
                set_path(data, key_path, candidate, experiment)
                validate_experiment(data, experiment_marks)
            except ConfigError as error:
                for problem in dict.fromkeys(error.problems):
                    problems.add(
                        where,
                        f"{label} = {candidate!r} is rejected by the experiment: "
                        f"{_strip_location(problem)}",
                        True,
                    )
            except (IndexError, KeyError, TypeError, AttributeError):
                problems.add(
                    where, f"cannot put {label} = {candidate!r} at {dotted(key_path)}", True
                )
