"""A sweep: its base experiment, its W&B sweep, its strategy, and the experiment of a trial.

:func:`jigsawkit.search.sweep_file.load_sweep_file` reads and checks a sweep file and gives
a :class:`SweepSpec`; the runner and the strategies only use the spec.

Parameter names are dotted paths into the experiment; ``evaluate[0].lr`` is rewritten
``evaluate.0.lr`` (:func:`normalize_name`), because W&B's parameter names allow only
letters, digits, ``_``, ``.`` and ``-``.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass, field
from typing import Any

from jigsawkit.config.overrides import parse_key
from jigsawkit.config.yaml_marks import KeyPath, Marks
from jigsawkit.errors import UserError
from jigsawkit.json_values import plain


def sweeps_schema() -> Any:
    """W&B's sweep-config schema module (import quietly: pydantic warns on import)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from sweeps.config import schema
    return schema


def parameter_name(key_path: KeyPath) -> str:
    """The W&B name of a swept key path: ``("evaluate", 0, "lr")`` -> ``evaluate.0.lr``."""
    return ".".join(str(p) for p in key_path)


def normalize_name(name: str) -> str:
    """``evaluate[0].lr`` -> ``evaluate.0.lr`` (W&B's parameter names allow no brackets)."""
    return parameter_name(parse_key(name))


@dataclass
class SweepSpec:
    """A validated sweep: the resolved base experiment, the W&B sweep, the strategy.

    ``parameters`` maps each (normalized) parameter name to its key path in the experiment.
    """

    source: str
    experiment: dict
    experiment_data: dict
    sweep: dict
    parameters: dict[str, KeyPath]
    strategy: dict
    output_dir: str
    experiment_file: str | None = None
    plugin_dirs: list[str] = field(default_factory=list)
    marks: Marks | None = field(default=None, repr=False, compare=False)

    # -- what the sweep asks for ---------------------------------------------------------

    @property
    def metric_name(self) -> str:
        return self.sweep["metric"]["name"]

    @property
    def goal(self) -> str:
        return self.sweep["metric"].get("goal", "minimize")

    @property
    def method(self) -> str:
        return self.sweep["method"]

    @property
    def run_cap(self) -> int | None:
        return self.sweep.get("run_cap")

    @property
    def name(self) -> str:
        return str(self.experiment.get("name") or "sweep")

    @property
    def constants(self) -> dict[str, Any]:
        """Parameters with one ``value``: the same in every trial, part of the base."""
        params = self.sweep.get("parameters") or {}
        return {
            name: params[name]["value"]
            for name in self.parameters
            if isinstance(params.get(name), dict) and "value" in params[name]
        }

    @property
    def probe_only(self) -> bool:
        """Every key that varies is under ``evaluate``: one backbone serves every trial."""
        varying = [p for n, p in self.parameters.items() if n not in self.constants]
        return bool(self.parameters) and all(p[0] == "evaluate" for p in varying)

    def base_experiment(self) -> dict:
        """The experiment with the constant parameters put in (what every trial shares)."""
        return self.trial_experiment(self.constants)

    def better(self, a: float, b: float) -> bool:
        """Is metric value ``a`` better than ``b`` for this sweep's goal?"""
        return a > b if self.goal == "maximize" else a < b

    # -- views ---------------------------------------------------------------------------

    def filled_sweep(self) -> dict:
        """The sweep with W&B's defaults filled in (distribution names, goal, eta, ...)."""
        schema = sweeps_schema()
        return dict(schema.fill_validate_schema(copy.deepcopy(self.sweep)))

    def as_dict(self) -> dict:
        """The resolved sweep file (printable as YAML)."""
        return {
            "experiment": self.experiment,
            "sweep": self.filled_sweep(),
            "strategy": self.strategy,
            "output_dir": self.output_dir,
        }

    def to_record(self) -> dict:
        """Everything a worker on another machine needs (JSON-able; see ``from_record``)."""
        return {
            "source": self.source,
            "experiment_file": self.experiment_file,
            "experiment": self.experiment,
            "experiment_data": self.experiment_data,
            "sweep": self.sweep,
            "parameters": {k: list(v) for k, v in self.parameters.items()},
            "strategy": self.strategy,
            "output_dir": self.output_dir,
            "plugin_dirs": self.plugin_dirs,
        }

    @classmethod
    def from_record(cls, record: dict) -> SweepSpec:
        from jigsawkit.plugins import load_plugins

        load_plugins(list(record.get("plugin_dirs") or []))
        return cls(
            source=record.get("source", "sweep.json"),
            experiment=record["experiment"],
            experiment_data=record["experiment_data"],
            sweep=record["sweep"],
            parameters={k: tuple(v) for k, v in record["parameters"].items()},
            strategy=record["strategy"],
            output_dir=record.get("output_dir", "sweeps"),
            experiment_file=record.get("experiment_file"),
            plugin_dirs=list(record.get("plugin_dirs") or []),
            marks=Marks(record.get("source", "sweep.json")),
        )

    # -- trials --------------------------------------------------------------------------

    def trial_data(self, params: dict[str, Any]) -> dict:
        """The experiment data (before validation) with ``params`` put in."""
        data = copy.deepcopy(self.experiment_data)
        for name, value in params.items():
            if name not in self.parameters:
                continue  # a key the engine adds (W&B may pass extra config entries)
            set_path(data, self.parameters[name], plain(value), self.experiment)
        return data

    def trial_experiment(self, params: dict[str, Any]) -> dict:
        """The resolved, validated experiment of one trial (ConfigError if a value is bad)."""
        return self.validated(self.trial_data(params))

    def validated(self, data: dict) -> dict:
        """``data`` (experiment data, e.g. from ``trial_data``) validated, with this sweep's
        plugin folders: what a trial runs."""
        from jigsawkit.config.experiment import validate_experiment

        resolved = validate_experiment(data, self.marks or Marks(self.source))
        resolved["plugins"] = list(self.experiment["plugins"])
        return resolved


def set_path(data: Any, path: KeyPath, value: Any, defaults: Any = None) -> None:
    """Put ``value`` at ``path``. Missing steps are copied from ``defaults`` (the resolved
    experiment: a key that exists only after defaults are filled) or created as mappings."""
    node, default = data, defaults
    for part, nxt in zip(path[:-1], path[1:]):
        sub_default = _child(default, part)
        if isinstance(part, int):
            if not isinstance(node, list) or part >= len(node):
                raise KeyError(part)
        elif node.get(part) is None:
            node[part] = (
                copy.deepcopy(sub_default)
                if sub_default is not None
                else []
                if isinstance(nxt, int)
                else {}
            )
        if not isinstance(node[part], dict | list) and isinstance(sub_default, dict | list):
            # a shorthand (`evaluate: [linear_probe]`): use its resolved mapping
            node[part] = copy.deepcopy(sub_default)
        node, default = node[part], sub_default
    node[path[-1]] = value


def _child(node: Any, part: Any) -> Any:
    if isinstance(node, dict) and not isinstance(part, int):
        return node.get(part)
    if isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
        return node[part]
    return None


def check_runnable(spec: SweepSpec, count: int | None) -> None:
    """A random or bayes sweep needs a bound: ``run_cap`` in the file or ``--count``."""
    if spec.method in ("random", "bayes") and spec.run_cap is None and count is None:
        raise UserError(
            f"{spec.source}: a {spec.method} sweep never runs out of points; set "
            "`sweep.run_cap` or pass --count N"
        )
