"""Build a backbone's architecture alone: never load pretrained weights into it."""

from __future__ import annotations

from typing import Any


def build_untrained(spec: dict) -> Any:
    """The backbone ``spec`` names (``{"name": ..., "params": {...}}``) with no weights
    loaded: ``pretrained`` is forced to ``false`` when the backbone has that parameter.

    For the random-init twin (a ``pretrained: true`` timm backbone would otherwise bring
    supervised weights into the "random" baseline) and for rebuilding an exported
    extractor, whose weights come from the file (no download, works offline). A plugin
    backbone that can load weights should name that switch ``pretrained``.
    """
    from jigsawkit.registry import registry

    entry = registry("backbone").get(spec["name"])
    params = dict(spec.get("params") or {})
    if "pretrained" in params or "pretrained" in entry.params_schema.get("properties", {}):
        params["pretrained"] = False
    from jigsawkit.contracts import check_component

    return check_component("backbone", entry.build(**params), spec["name"])
