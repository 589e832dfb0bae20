"""What a pretraining run is configured with, as one object instead of a dozen arguments.

:class:`PretrainSettings` holds the experiment's ``pretrain`` settings that change what the
engine computes (and so are checked when a run resumes); where the run writes, how it logs
and who watches it (``run_dir``, ``log``, ``callbacks``, ``progress``) stay arguments of
:func:`jigsawkit.training.engine.pretrain`::

    settings = PretrainSettings(epochs=2, optimizer={"name": "adam", "lr": 1e-3}, seed=0)
    pretrain(task, make_loader, settings, device="cpu", run_dir=out, log=print)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class PretrainSettings:
    """How to pretrain: epochs, optimizer and schedule sections, precision, seed and limits.

    ``optimizer`` and ``schedule`` are the experiment's sections (``{"name": "sgd", ...}``;
    ``None`` or missing keys take ``jigsawkit.training.optim``'s defaults). ``precision``
    is ``fp32`` or ``bf16`` (``auto`` is resolved by :meth:`from_experiment`).
    """

    epochs: int
    optimizer: Mapping[str, Any] | None = None
    schedule: Mapping[str, Any] | None = None
    precision: str = "fp32"
    seed: int = 0
    max_steps_per_epoch: int | None = None
    grad_clip: float | None = None
    sync_batchnorm: bool = False

    @classmethod
    def from_experiment(cls, config: Mapping[str, Any], device: Any) -> PretrainSettings:
        """The settings of a resolved experiment's ``pretrain`` section (and its ``seed``);
        ``precision: auto`` becomes what ``device`` computes natively."""
        from jigsawkit.training.seeding import resolve_precision

        section = config["pretrain"]
        return cls(
            epochs=int(section["epochs"]),
            optimizer=section.get("optimizer"),
            schedule=section.get("schedule"),
            precision=resolve_precision(section.get("precision", "fp32"), device),
            seed=int(config["seed"]),
            max_steps_per_epoch=section.get("max_steps_per_epoch"),
            grad_clip=section.get("grad_clip"),
            sync_batchnorm=bool(section.get("sync_batchnorm", False)),
        )
