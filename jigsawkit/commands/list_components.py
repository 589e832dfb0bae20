"""``jigsawkit list-components``: every registered component, a table per kind."""

from __future__ import annotations

import argparse
import json

from jigsawkit.registry import KINDS

HELP = "list registered backbones, pretext tasks, datasets, evaluators, searches, trackers"

DESCRIPTION = (
    "List every registered component with its origin, description and "
    "parameters (types and defaults), including plugins."
)

EXAMPLES = (
    "jigsawkit list-components",
    "jigsawkit list-components --kind backbone",
    "jigsawkit list-components --plugins my_plugins/ --json",
    "jigsawkit list-components --timm 'resnet*'",
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--kind", choices=KINDS, help="only this kind")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument(
        "--timm", metavar="PATTERN", help="list timm model names matching PATTERN (imports timm)"
    )
    parser.add_argument(
        "--plugins", action="append", default=[], metavar="DIR", help="a plugin folder to load"
    )


def _type_text(schema: dict) -> str:
    if "enum" in schema:
        return "|".join(str(v) for v in schema["enum"])
    kind = schema.get("type", "any")
    if isinstance(kind, list):
        return "|".join(kind)
    if kind == "array" and isinstance(schema.get("items"), dict):
        return f"list[{_type_text(schema['items'])}]"
    if "x-component" in schema:
        return schema["x-component"]
    if "anyOf" in schema or "oneOf" in schema:
        return "|".join(_type_text(s) for s in schema.get("anyOf", schema.get("oneOf", [])))
    return str(kind)


def params_text(schema: dict) -> str:
    lines = []
    required = set(schema.get("required", []))
    for key, sub in schema.get("properties", {}).items():
        text = f"{key}: {_type_text(sub)}"
        if "default" in sub:
            text += f" = {json.dumps(sub['default'])}"
        elif key in required:
            text += " (required)"
        lines.append(text)
    return "\n".join(lines) or "-"


def run(args: argparse.Namespace) -> int:
    from jigsawkit.plugins import load_plugins
    from jigsawkit.registry import registry

    if args.timm is not None:
        from jigsawkit.backbones.timm_backbone import list_timm_models

        names = list_timm_models(args.timm)
        if args.json:
            print(json.dumps(names))
        else:
            print("\n".join(names) if names else f"no timm model matches '{args.timm}'")
        return 0
    load_plugins(args.plugins, strict=False)  # a listing shows what did load, and warns
    kinds = [args.kind] if args.kind else list(KINDS)
    if args.json:
        rows = [e.as_dict() for kind in kinds for e in registry(kind).entries()]
        print(json.dumps(rows, indent=2))
        return 0
    from rich.table import Table
    from rich.text import Text

    from jigsawkit.terminal import stdout_console

    console = stdout_console()
    for kind in kinds:
        entries = registry(kind).entries()
        if not entries:
            console.print(f"[bold]{kind}[/bold]: none registered")
            continue
        table = Table(title=f"{kind} ({len(entries)})", title_justify="left", show_lines=True)
        table.add_column("name", style="bold")
        table.add_column("origin")
        table.add_column("description")
        table.add_column("parameters")
        for entry in entries:
            cells = (entry.name, entry.origin, entry.description, params_text(entry.params_schema))
            table.add_row(*(Text(c) for c in cells))
        console.print(table)
    return 0
