"""Spec files written by the importers: flow-style YAML values, the header and the case list."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

SCHEMA_LINE = "# yaml-language-server: $schema=../conformance/schema/spec.schema.json"


def _yaml_value(value: Any) -> str:
    """A flow-style YAML value (JSON is valid YAML; plain words stay unquoted)."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_yaml_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_yaml_value(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str) and re.fullmatch(r"[A-Za-z][A-Za-z0-9_.\-]*", value) and value not in (
        "true", "false", "null", "yes", "no", "on", "off",
    ):  # fmt: skip
        return value
    return json.dumps(value)


def render_spec(header: list[str], family: str, description: str, entries: list[dict]) -> str:
    lines = [SCHEMA_LINE, *(f"# {h}" if h else "#" for h in header), "version: 1"]
    lines += [f"family: {family}", f"description: {json.dumps(description)}", "", "cases:"]
    for entry in entries:
        first = True
        for key, value in entry.items():
            lines.append(("  - " if first else "    ") + f"{key}: {_yaml_value(value)}")
            first = False
        lines.append("")
    return "\n".join(lines).rstrip("\n") + "\n"


def _relative(path: Path, start: Path) -> str:
    import os

    return os.path.relpath(path.resolve(), start.resolve())
