"""``TimmBackbone``: any timm model as a per-tile trunk (pooled features, no classifier).

Models with a fixed input size (ViT, Swin, MLP-Mixer, ...) are built for ``input_size``
unless ``model_kwargs`` names ``img_size``. ``pretrained: true`` loads weights from the
local caches first; when they are absent and the hub is unreachable it fails at once with
a message saying how to provide the weights, instead of retrying for a minute.
"""

from __future__ import annotations

import contextlib
import difflib
import os
import socket
from collections.abc import Iterator, Sequence
from typing import Any
from urllib.parse import urlparse

import torch
from torch import nn

from jigsawkit.backbones.probe_pool import check_probe_layers, probe_pool, probe_width
from jigsawkit.errors import UserError, one_line

# How long to wait for the weights' host before declaring it unreachable.
_CONNECT_TIMEOUT_S = 3.0


def list_timm_models(pattern: str) -> list[str]:
    """timm model names matching ``pattern`` (a glob; a plain word matches anywhere)."""
    import timm

    if not any(ch in pattern for ch in "*?["):
        pattern = f"*{pattern}*"
    return list(timm.list_models(pattern))


def _check_name(model: str) -> None:
    import timm

    if timm.is_model(model):
        return
    close = difflib.get_close_matches(model, timm.list_models(), n=5, cutoff=0.6)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise UserError(
        f"backbone.model: unknown timm model '{model}'{hint} "
        f"(list them with: jigsawkit list-components --timm 'PATTERN')"
    )


@contextlib.contextmanager
def _hub_offline() -> Iterator[None]:
    """Make huggingface_hub answer from its local cache only (no network, no retries)."""
    from huggingface_hub import constants

    saved = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = saved


def _hub_reachable() -> bool:
    host = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co").hostname
    try:
        with socket.create_connection((host or "huggingface.co", 443), _CONNECT_TIMEOUT_S):
            return True
    except OSError:
        return False


def _weights_error(model: str, exc: BaseException) -> UserError:
    return UserError(
        f"backbone.pretrained: the weights of timm model '{model}' could not be downloaded "
        f"({type(exc).__name__}); put them in the Hugging Face cache (HF_HOME) on a machine "
        "with network access, or point to a local file with model_kwargs: "
        "{pretrained_cfg_overlay: {file: /path/to/weights.safetensors}}, or set pretrained: false"
    )


def _create(model: str, pretrained: bool, kwargs: dict) -> nn.Module:
    import timm

    def create() -> nn.Module:
        return timm.create_model(model, pretrained=pretrained, num_classes=0, **kwargs)

    try:
        if not pretrained or "pretrained_cfg_overlay" in kwargs:
            return create()
        try:
            with _hub_offline():
                return create()  # cached weights: no network needed
        except (OSError, RuntimeError) as exc:
            if not _hub_reachable():
                raise _weights_error(model, exc) from None
        return create()
    except UserError:
        raise
    except (OSError, RuntimeError) as exc:
        if pretrained:
            raise _weights_error(model, exc) from None
        raise _kwargs_error(model, kwargs, "cannot be built with", exc) from None
    except Exception as exc:  # noqa: BLE001 - timm reports a wrong option in many ways
        raise _kwargs_error(model, kwargs, "cannot be built with", exc) from None


def _kwargs_error(model: str, kwargs: dict, what: str, exc: BaseException) -> UserError:
    return UserError(
        f"backbone.model_kwargs: timm model '{model}' {what} {kwargs}: {one_line(exc)}"
    )


def _dry_run(module: nn.Module, model: str, kwargs: dict, input_size: int) -> None:
    """One training-mode forward pass on two blank images, so that an option timm
    accepts but cannot use (``drop_rate: "x"``) fails now, before a run directory
    exists, not mid-training. RNG, BatchNorm statistics and the mode are left as found."""
    if not kwargs:
        return
    buffers = {name: b.detach().clone() for name, b in module.named_buffers()}
    was_training = module.training
    try:
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            module.train()(torch.zeros(2, 3, input_size, input_size))
    except Exception as exc:  # noqa: BLE001 - any failure here is the options' fault
        raise _kwargs_error(model, kwargs, "fails on a test batch with", exc) from None
    finally:
        module.train(was_training)
        for name, buffer in module.named_buffers():
            buffer.copy_(buffers[name])


def _fixed_input_size(model: str) -> bool:
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(model)
    return bool(cfg is not None and cfg.fixed_input_size)


class TimmBackbone(nn.Module):
    """A timm model with its classifier removed: ``(B, 3, H, W) -> (B, num_features)``."""

    def __init__(
        self,
        *,
        model: str,
        pretrained: bool,
        input_size: int,
        model_kwargs: dict[str, Any] | None,
    ):
        super().__init__()
        _check_name(model)
        kwargs = dict(model_kwargs or {})
        if "img_size" not in kwargs and _fixed_input_size(model):
            kwargs["img_size"] = int(input_size)
        self.model = _create(model, pretrained, kwargs)
        _dry_run(self.model, model, dict(model_kwargs or {}), int(input_size))
        self.model_name = model
        self.input_size = int(input_size)
        self.out_dim = int(self.model.num_features)
        # Stage name -> its index in timm's forward_intermediates (= feature_info).
        self._stages = _stage_indices(self.model)
        self.feature_layers = {
            **{name: probe_width(channels) for name, (_, channels) in self._stages.items()},
            "pooled": self.out_dim,
        }
        self.default_probe_layer = "pooled"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def probe_features(self, x: torch.Tensor, layers: Sequence[str]) -> dict[str, torch.Tensor]:
        """Features of the named layers from one forward pass: each stage timm's
        ``forward_intermediates`` returns, pooled by ``probe_pool``, and ``pooled`` (the
        forward output, computed from the same pass)."""
        check_probe_layers(self, layers, f"timm model '{self.model_name}'")
        stages = [name for name in layers if name in self._stages]
        if not stages:
            return {"pooled": self.forward(x)} if layers else {}
        indices = [self._stages[name][0] for name in stages]
        final, maps = self.model.forward_intermediates(x, indices=indices)
        out = {name: probe_pool(value) for name, value in zip(stages, maps)}
        if "pooled" in layers:
            out["pooled"] = self.model.forward_head(final)
        return {name: out[name] for name in layers}


def _stage_indices(model: nn.Module) -> dict[str, tuple[int, int]]:
    """``{layer name: (index, channels)}`` of the stages timm reports in ``feature_info``
    (module names with ``.`` -> ``_``, e.g. ``layer1``, ``blocks_0``); empty for a model
    without ``forward_intermediates``, whose only probe layer is then ``pooled``."""
    info = getattr(model, "feature_info", None)
    if not callable(getattr(model, "forward_intermediates", None)) or not isinstance(info, list):
        return {}
    stages = {}
    for index, entry in enumerate(info):
        if not (isinstance(entry, dict) and "module" in entry and "num_chs" in entry):
            return {}
        stages[str(entry["module"]).replace(".", "_")] = (index, int(entry["num_chs"]))
    return stages if len(stages) == len(info) else {}
