"""Export and load the pretrained feature extractor (the backbone alone, frozen).

The file holds only tensors and JSON-like metadata, so it loads with
``torch.load(weights_only=True)``; the backbone is rebuilt from the registry by name and
parameters, never unpickled::

    {"format": "jigsawkit.feature_extractor/1",
     "state_dict": {...}, "backbone": {"name": "cfn", "params": {...}},
     "input_size": 64, "out_dim": 256, "input_normalization": "per_image",
     "pretext": {...}, "data": {...}, "metrics": {...}}

``input_normalization`` says how the backbone's inputs were normalised during pretraining
(``jigsawkit.normalization.NORMALIZATIONS``; ``None`` or absent in older files: unknown);
probes feed the same by default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from jigsawkit.errors import CheckpointError, UserError
from jigsawkit.normalization import check_normalization
from jigsawkit.training.checkpoint import CHECKPOINT_FORMAT, atomic_torch_save, safe_torch_load

EXPORT_FORMAT = "jigsawkit.feature_extractor/1"
_LISTED = 3  # names shown per kind of mismatch in an error line


def _json_like(value: Any, where: str) -> Any:
    """A copy of ``value`` made of dict/list/str/int/float/bool/None, or a ``TypeError``."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"{where}: key {key!r} is not a string")
            out[key] = _json_like(item, f"{where}.{key}")
        return out
    if isinstance(value, list | tuple):
        return [_json_like(item, f"{where}[{i}]") for i, item in enumerate(value)]
    if hasattr(value, "item") and not isinstance(value, torch.Tensor):
        return _json_like(value.item(), where)  # NumPy scalars
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    raise TypeError(f"{where} is a {type(value).__name__}; metadata must be JSON-like")


def export_feature_extractor(backbone: nn.Module, path: str | Path, metadata: dict) -> Path:
    """Atomically save ``backbone``'s weights with the metadata needed to rebuild it.

    ``metadata["backbone"]`` is ``{"name": <registered backbone>, "params": {...}}``;
    ``input_size`` and ``out_dim`` default to the backbone's attributes;
    ``input_normalization`` (one of ``NORMALIZATIONS``, ``None``: unknown) is how its inputs
    were normalised during pretraining; ``pretext``, ``data`` and ``metrics`` are optional
    JSON-like records of how it was trained.
    """
    spec = metadata.get("backbone")
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        raise TypeError("metadata['backbone'] must be {'name': str, 'params': dict}")
    payload: dict[str, Any] = {
        "format": EXPORT_FORMAT,
        "backbone": {"name": spec["name"], "params": dict(spec.get("params") or {})},
        "input_size": int(metadata.get("input_size", getattr(backbone, "input_size", 0))),
        "out_dim": int(metadata.get("out_dim", getattr(backbone, "out_dim", 0))),
        "input_normalization": check_normalization(
            metadata.get("input_normalization"), "metadata['input_normalization']"
        ),
        "pretext": metadata.get("pretext") or {},
        "data": metadata.get("data") or {},
        "metrics": metadata.get("metrics") or {},
    }
    for key, value in metadata.items():
        payload.setdefault(key, value)
    payload = _json_like(payload, "metadata")
    # clone(): a view would otherwise drag its whole parent storage into the file.
    payload["state_dict"] = {
        key: value.detach().cpu().clone() for key, value in backbone.state_dict().items()
    }
    path = Path(path)
    atomic_torch_save(path, payload, "export-write")
    return path


def _read(path: Path, map_location: Any) -> dict:
    payload = safe_torch_load(path, map_location)
    fmt = payload.get("format") if isinstance(payload, dict) else None
    if fmt != EXPORT_FORMAT:
        hint = ""
        if fmt == CHECKPOINT_FORMAT:
            hint = "; it is a training checkpoint: use the run's feature_extractor.pt"
        raise CheckpointError(
            f"{path}: not a jigsawkit feature extractor (format {fmt!r}, "
            f"expected {EXPORT_FORMAT!r}){hint}"
        )
    spec = payload.get("backbone")
    state = payload.get("state_dict")
    if (
        not isinstance(spec, dict)
        or not isinstance(spec.get("name"), str)
        or not isinstance(spec.get("params"), dict)
        or not isinstance(state, dict)
        or not all(isinstance(v, torch.Tensor) for v in state.values())
    ):
        raise CheckpointError(
            f"{path}: damaged feature extractor: needs backbone {{name, params}} and a "
            "state_dict of tensors"
        )
    try:
        check_normalization(payload.get("input_normalization"), "its input_normalization")
    except ValueError as error:
        raise CheckpointError(f"{path}: damaged feature extractor: {error}") from None
    return payload


def _build(path: Path, spec: dict) -> nn.Module:
    from jigsawkit.backbones.untrained import build_untrained

    try:
        # The weights come from the file: never download pretrained ones first.
        return build_untrained(spec)
    except UserError as error:
        if isinstance(error.__cause__, TypeError | ValueError):  # a plugin's, as below
            error = error.__cause__
        else:
            raise CheckpointError(f"{path}: cannot rebuild its backbone: {error}") from None
        raise CheckpointError(
            f"{path}: cannot rebuild backbone '{spec['name']}' with its saved parameters ({error})"
        ) from None
    except (TypeError, ValueError) as error:
        raise CheckpointError(
            f"{path}: cannot rebuild backbone '{spec['name']}' with its saved parameters ({error})"
        ) from None


def _listed(keys: list[str]) -> str:
    more = f" (+{len(keys) - _LISTED} more)" if len(keys) > _LISTED else ""
    return ", ".join(keys[:_LISTED]) + more


def _check_fits(path: Path, name: str, model: nn.Module, state: dict) -> None:
    expected = model.state_dict()
    problems = []
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = sorted(
        f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}"
        for k in set(state) & set(expected)
        if state[k].shape != expected[k].shape
    )
    if missing:
        problems.append(f"missing {_listed(missing)}")
    if unexpected:
        problems.append(f"unexpected {_listed(unexpected)}")
    if shapes:
        problems.append(f"shape (file vs model) {_listed(shapes)}")
    if problems:
        raise CheckpointError(
            f"{path}: weights do not fit backbone '{name}': " + "; ".join(problems)
        )


def recorded_normalization(backbone: Any) -> str | None:
    """How a loaded feature extractor's inputs were normalised in pretraining, as its
    metadata records it; ``None`` when unknown (an older file, or not a loaded extractor)."""
    metadata = getattr(backbone, "metadata", None)
    return metadata.get("input_normalization") if isinstance(metadata, dict) else None


def load_feature_extractor(path: str | Path, map_location: Any = "cpu") -> nn.Module:
    """Rebuild an exported backbone: weights loaded strictly, eval mode, no gradients.

    The returned module has a ``metadata`` dict (everything in the file but the weights).
    """
    path = Path(path)
    payload = _read(path, map_location)
    spec, state = payload["backbone"], payload["state_dict"]
    model = _build(path, spec)
    _check_fits(path, spec["name"], model, state)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        first = (str(error).strip().splitlines() or ["load_state_dict failed"])[0]
        raise CheckpointError(f"{path}: weights do not fit backbone: {first[:160]}") from None
    if isinstance(map_location, str | torch.device):
        model.to(map_location)
    model.eval()
    model.requires_grad_(False)
    model.metadata = {k: v for k, v in payload.items() if k != "state_dict"}
    return model
