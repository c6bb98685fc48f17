"""Reading one value of a spec: typed checks that raise a SpecError naming file, line and
key (with a hint where one helps), and the short forms of values those messages quote.
"""

from __future__ import annotations

import math
from typing import Any

from ..errors import SpecError, did_you_mean
from .limits import MAX_LIST_INT, MAX_SPEC_INT, yaml_number_hint
from .yamlload import LocatedDict, LocatedList


class _Ctx:
    """Where we are, for error messages."""

    def __init__(self, file: str) -> None:
        self.file = file

    def error(self, message: str, node: Any = None, key: str | None = None, hint=None) -> SpecError:
        line = None
        if isinstance(node, LocatedDict):
            line = node.line_of(key) if key else node.line
        elif isinstance(node, LocatedList):
            line = node.line
        return SpecError(message, file=self.file, line=line, key=key, hint=hint)


def _check_keys(ctx: _Ctx, node: LocatedDict, allowed: dict[str, str], what: str) -> None:
    for key in node:
        if key not in allowed:
            hint = did_you_mean(key, allowed) or f"{what} keys are: {', '.join(allowed)}"
            raise ctx.error(f"unknown {what} key", node, key, hint)


def _mapping(ctx: _Ctx, value: Any, parent: Any, key: str) -> LocatedDict:
    if not isinstance(value, dict):
        raise ctx.error(f"must be a mapping (key: value pairs), got {_kind(value)}", parent, key)
    return value


def _int(ctx: _Ctx, value: Any, parent: Any, key: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        hint = yaml_number_hint(value)
        raise ctx.error(f"must be an integer, got {_show(value)}", parent, key, hint)
    if value < minimum:
        raise ctx.error(f"must be >= {minimum}, got {value}", parent, key)
    if value > MAX_SPEC_INT:  # issue 18: no OverflowError deep inside NumPy later
        raise ctx.error(f"must be <= {MAX_SPEC_INT}, got {_show(value, 30)}", parent, key)
    return value


def _number(ctx: _Ctx, value: Any, parent: Any, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        hint = yaml_number_hint(value)
        raise ctx.error(f"must be a number, got {_show(value)}", parent, key, hint)
    if not math.isfinite(value):
        raise ctx.error(f"must be finite, got {_show(value)}", parent, key)
    return float(value)


def _bool(ctx: _Ctx, value: Any, parent: Any, key: str) -> bool:
    if not isinstance(value, bool):
        raise ctx.error(f"must be true or false, got {_show(value)}", parent, key)
    return value


def _choice(ctx: _Ctx, value: Any, parent: Any, key: str, choices) -> str:  # noqa: ANN001
    if value not in choices:
        hint = did_you_mean(str(value), choices) or f"choose one of: {', '.join(choices)}"
        raise ctx.error(f"{_show(value)} is not one of {', '.join(choices)}", parent, key, hint)
    return value


def _int_list(ctx: _Ctx, value: Any, parent: Any, key: str, minimum: int = 0) -> tuple[int, ...]:
    if not isinstance(value, list):
        raise ctx.error(f"must be a list of integers, got {_show(value)}", parent, key)
    for item in value:
        if isinstance(item, bool) or not isinstance(item, int) or item < minimum:
            raise ctx.error(f"must hold integers >= {minimum}, got {_show(item)}", parent, key)
        if item > MAX_LIST_INT:  # windows, paddings, axes: sizes, never this large
            raise ctx.error(f"must hold integers <= {MAX_LIST_INT}, got {_show(item, 30)}",
                            parent, key)  # fmt: skip
    return tuple(value)


def _density(ctx: _Ctx, value: Any, parent: Any, key: str) -> float:
    node = _mapping(ctx, value, parent, key)
    _check_keys(ctx, node, {"density": "fraction masked"}, f"mask.{key}")
    if "density" not in node:
        raise ctx.error("needs a density", parent, key, "e.g. {density: 0.3}")
    density = _number(ctx, node["density"], node, "density")
    if not 0 <= density <= 1:
        raise ctx.error(f"density must be within [0, 1], got {density}", node, "density")
    return density


def _show(value: Any, limit: int = 60) -> str:
    """repr() cut short: messages stay one readable line whatever the spec holds."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _kind(value: Any) -> str:
    """A YAML user's name for a value's type."""
    if isinstance(value, bool):
        return "true/false"
    if value is None:
        return "nothing (null)"
    for kind, name in (
        (dict, "a mapping"),
        (list, "a list"),
        (str, "text"),
        ((int, float), "a number"),
    ):
        if isinstance(value, kind):
            return f"{name} ({_show(value)})" if name in ("text", "a number") else name
    return type(value).__name__


def _per_head(ctx: _Ctx, value: Any, parent: Any, key: str, heads: int) -> tuple[float, ...]:
    """A list of H finite numbers, one per query head."""
    if not isinstance(value, list) or len(value) != heads:
        got = f"{len(value)} values" if isinstance(value, list) else _show(value)
        raise ctx.error(
            f"needs one value per query head (H = {heads}), got {got}", parent, key,
            f"a list of {heads} numbers",
        )  # fmt: skip
    out = tuple(_number(ctx, v, parent, key) for v in value)
    if not all(math.isfinite(v) for v in out):
        raise ctx.error("values must be finite numbers", parent, key)
    return out
