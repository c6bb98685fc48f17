"""Matrix expansion: a case template and its `matrix:` become one resolved case per
combination; `$name` / `${name}` references are substituted, defaults merged in, and a
parameter named like a case or shape key applies directly.
"""

from __future__ import annotations

import itertools
import math
import re
from typing import Any

from ..cases.case import Case
from ..errors import SpecError, did_you_mean
from .keys import DIRECT_PARAMS, MAX_MATRIX_CASES, SHAPE_KEYS
from .resolve import _resolve_case
from .values import _Ctx, _mapping, _show
from .yamlload import LocatedDict, LocatedList


def _substitute(value: Any, params: dict[str, Any], whole: set[str], inline: set[str]) -> Any:
    """Replace $name / ${name} references; keep the located containers and their lines.

    `whole` collects parameters used as a whole value (`$T`), `inline` those used inside text
    (`causal-${align}`): only a whole-value use stops a parameter named like a case key from
    also setting that key.
    """
    if isinstance(value, LocatedDict):
        out = LocatedDict({k: _substitute(v, params, whole, inline) for k, v in value.items()})
        out.line, out.key_lines = value.line, value.key_lines
        return out
    if isinstance(value, LocatedList):
        out = LocatedList(_substitute(v, params, whole, inline) for v in value)
        out.line = value.line
        return out
    if isinstance(value, str):
        match = re.fullmatch(r"\$(\w+)|\$\{(\w+)\}", value)
        if match:
            name = match.group(1) or match.group(2)
            if name in params:
                whole.add(name)
                return params[name]
            return value

        def repl(m: re.Match) -> str:
            name = m.group(1)
            if name in params:
                inline.add(name)
                return str(params[name])
            return m.group(0)

        return re.sub(r"\$\{(\w+)\}", repl, value)
    return value


def _unresolved(
    value: Any, parent: Any = None, key: str | None = None
) -> tuple[str, Any, str | None] | None:
    """The first `$name` left after substitution: (name, the container holding it, its key)."""
    if isinstance(value, dict):
        for k, v in value.items():
            if k in ("description", "__raw_name__") and parent is None:
                continue  # free text may mention $ signs
            found = _unresolved(v, value, k)
            if found:
                return found
    elif isinstance(value, list):
        for v in value:
            found = _unresolved(v, value, key if isinstance(parent, dict) else None)
            if found:
                return found[0], parent if isinstance(parent, dict) else value, found[2]
    elif isinstance(value, str):
        m = re.search(r"\$\{?(\w+)\}?", value)
        if m and (value.startswith("$") or "${" in value):
            return m.group(1), parent, key
    return None


def _merge(defaults: LocatedDict, case: LocatedDict) -> LocatedDict:
    merged = LocatedDict()
    merged.line = case.line
    merged.key_lines = {}
    for source in (defaults, case):
        for key, value in source.items():
            if (
                key in ("shape", "mask")
                and isinstance(value, dict)
                and isinstance(merged.get(key), dict)
            ):
                inner = LocatedDict({**merged[key], **value})
                inner.line = value.line if isinstance(value, LocatedDict) else case.line
                inner.key_lines = {
                    **getattr(merged[key], "key_lines", {}),
                    **getattr(value, "key_lines", {}),
                }
                merged[key] = inner
            else:
                merged[key] = value
            merged.key_lines[key] = source.line_of(key) if isinstance(source, LocatedDict) else None
    return merged


def _conflict(ctx: _Ctx, matrix: LocatedDict, key: str, where: str) -> SpecError:
    return ctx.error(
        f"matrix parameter '{key}' sets {where}, which the case also sets",
        matrix, key, f"remove {where} from the case, or use ${key} there",
    )  # fmt: skip


def _expand(ctx: _Ctx, node: LocatedDict, defaults: LocatedDict, family: str) -> list[Case]:
    matrix = node.get("matrix")
    template = _merge(defaults, node)
    template.pop("matrix", None)
    raw_name = template.get("name") if isinstance(template.get("name"), str) else ""
    if matrix is None:
        grid: list[dict[str, Any]] = [{}]
    else:
        matrix = _mapping(ctx, matrix, node, "matrix")
        if not matrix:
            raise ctx.error(
                "matrix is empty", node, "matrix", "give each parameter a list of values"
            )
        names, values = [], []
        for key, options in matrix.items():
            if not isinstance(options, list) or not options:
                raise ctx.error(
                    "matrix parameter needs a non-empty list of values", matrix, key,
                    f"e.g. {key}: [a, b]",
                )  # fmt: skip
            names.append(key)
            values.append(options)
        count = math.prod(len(v) for v in values)
        if count > MAX_MATRIX_CASES:
            raise ctx.error(
                f"matrix expands to {count} cases (limit {MAX_MATRIX_CASES})", node, "matrix"
            )
        grid = [dict(zip(names, combo, strict=True)) for combo in itertools.product(*values)]
    cases = []
    for params in grid:
        whole: set[str] = set()
        inline: set[str] = set()
        resolved = _substitute(template, params, whole, inline)
        for key, value in params.items():
            if key in whole:
                continue
            if key in SHAPE_KEYS:
                shape = resolved.setdefault("shape", LocatedDict())
                if not isinstance(shape, LocatedDict):
                    continue  # reported when the shape is resolved
                raw_shape = node.get("shape")
                if isinstance(raw_shape, dict) and key in raw_shape:
                    raise _conflict(ctx, matrix, key, f"shape.{key}")
                shape[key] = value
                shape.key_lines[key] = matrix.line_of(key)
            elif key in DIRECT_PARAMS:
                if key in node:
                    raise _conflict(ctx, matrix, key, key)
                resolved[key] = value
                resolved.key_lines[key] = matrix.line_of(key)
            elif key not in inline:
                hint = did_you_mean(key, DIRECT_PARAMS) or (
                    f"use it as ${key} or ${{{key}}} in the case, or name a case key"
                )
                raise ctx.error(f"matrix parameter '{key}' is not used", matrix, key, hint)
        leftover = _unresolved(resolved)
        if leftover:
            name, where, key = leftover
            raise ctx.error(
                f"'${name}' refers to no matrix parameter", where, key,
                f"add {name}: [...] under matrix:",
            )  # fmt: skip
        resolved["__raw_name__"] = raw_name
        try:
            case = _resolve_case(ctx, resolved, family, params, node.line)
        except SpecError as error:
            if params:
                error = SpecError(
                    error.message
                    + f" (with {', '.join(f'{k}={_show(v, 30)}' for k, v in params.items())})",
                    file=error.file, line=error.line, key=error.key, hint=error.hint,
                )  # fmt: skip
            raise error from None
        cases.append(case)
    return cases
