"""Spec files (YAML) -> resolved cases.

A spec file:

    # yaml-language-server: $schema=../conformance/schema/spec.schema.json
    version: 1
    family: masks                  # defaults to the file name
    defaults: {mode: kernel}       # merged into every case
    cases:
      - name: causal-${align}
        shape: {batch: 2, query_len: $T, kv_len: $S, num_heads: 4, key_dim: 8}
        mask: {causal: $align}
        matrix:
          align: [top-left, bottom-right]
          T: [5]
          S: [7]
          dtype: [float32, float64]    # names a case key: applied directly

expands into `masks/causal-top-left[T=5,S=7,float32]` and three siblings. A matrix parameter
is used by `$name` (a whole value) or `${name}` (inside a string); a parameter named like a
case or shape key (dtype, mode, scale, batch, num_heads, ...) applies directly.
"""

from __future__ import annotations

import re
from pathlib import Path

from ..cases.case import Case
from ..errors import SpecError, did_you_mean
from .keys import CASE_KEYS, FILE_KEYS, SPEC_VERSION
from .limits import MAX_TOTAL_CASES, TOTAL_CASES_HINT
from .matrix import _expand
from .values import _check_keys, _Ctx, _kind, _mapping, _show
from .yamlload import LocatedDict, load_yaml_file


def load_spec(path: str | Path) -> list[Case]:
    """Load one spec file into resolved cases, or raise SpecError naming file, line and key."""
    path = Path(path)
    ctx = _Ctx(str(path))
    data = load_yaml_file(path)
    if data is None:
        raise SpecError(
            "file is empty", file=ctx.file, hint="a spec needs `cases:` (see docs/specs.md)"
        )
    if not isinstance(data, LocatedDict):
        kind = _kind(data)
        raise SpecError(
            f"the top level must be a mapping with `cases:`, got {kind}",
            file=ctx.file, line=getattr(data, "line", None) or _first_content_line(path),
            hint="start the file with `cases:` (see docs/specs.md)",
        )  # fmt: skip
    _check_keys(ctx, data, FILE_KEYS, "file")
    version = data.get("version", SPEC_VERSION)
    if isinstance(version, bool) or version != SPEC_VERSION:
        raise ctx.error(
            f"unknown spec version {_show(version)}; this tool reads version {SPEC_VERSION}",
            data,
            "version",
        )
    family = data.get("family", path.stem)
    if not isinstance(family, str) or not re.fullmatch(r"[A-Za-z0-9_.\-/]+", family):
        raise ctx.error("family must be a word (letters, digits, _ . - /)", data, "family")
    defaults = data.get("defaults") or LocatedDict()
    defaults = _mapping(ctx, defaults, data, "defaults")
    for key in defaults:
        if key not in CASE_KEYS or key in ("name", "matrix"):
            raise ctx.error(
                "not a key defaults can set", defaults, key, did_you_mean(key, CASE_KEYS)
            )
    if "cases" not in data:
        raise ctx.error("no `cases:` list", data, None, "add cases: with at least one case")
    items = data["cases"]
    if not isinstance(items, list):
        raise ctx.error("must be a list of cases", data, "cases")
    if not items:
        raise ctx.error("the cases list is empty", data, "cases", "add at least one case")
    cases: list[Case] = []
    seen: dict[str, str] = {}
    for item in items:
        if not isinstance(item, LocatedDict):
            raise ctx.error(f"each case must be a mapping, got {_show(item)}", data, "cases")
        _check_keys(ctx, item, CASE_KEYS, "case")
        expanded = _expand(ctx, item, defaults, family)
        if len(cases) + len(expanded) > MAX_TOTAL_CASES:  # issue 18: a total, not per matrix
            raise ctx.error(
                f"the file expands to more than {MAX_TOTAL_CASES} cases", item, "matrix",
                TOTAL_CASES_HINT,
            )  # fmt: skip
        for case in expanded:
            if case.id in seen:
                raise ctx.error(
                    f"duplicate case id '{case.id}' (first at {seen[case.id]})", item, "name",
                    "give the cases different names or matrix values",
                )  # fmt: skip
            seen[case.id] = case.source
            cases.append(case)
    return cases


def _first_content_line(path: Path) -> int | None:
    """The first line that is neither blank nor a comment (where a scalar document starts)."""
    text = path.read_bytes().decode("utf-8", errors="replace")
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip() and not line.lstrip().startswith("#"):
            return number
    return None


def spec_files(paths: list[str | Path]) -> list[Path]:
    """Expand directories into their *.yaml / *.yml files (sorted, recursive)."""
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.suffix in (".yaml", ".yml"))
            if not found:
                raise SpecError("no spec files (*.yaml, *.yml) in this directory", file=str(path))
            files.extend(found)
        elif path.exists():
            files.append(path)
        else:
            raise SpecError("no such file or directory", file=str(path))
    return files


def load_specs(paths: list[str | Path]) -> list[Case]:
    """Load every spec; case ids must be unique across files."""
    cases: list[Case] = []
    seen: dict[str, str] = {}
    for file in spec_files(paths):
        loaded = load_spec(file)
        if len(cases) + len(loaded) > MAX_TOTAL_CASES:
            raise SpecError(
                f"the spec files expand to more than {MAX_TOTAL_CASES} cases together",
                file=str(file), hint=TOTAL_CASES_HINT,
            )  # fmt: skip
        for case in loaded:
            if case.id in seen:
                raise SpecError(
                    f"duplicate case id '{case.id}' (also at {seen[case.id]})",
                    file=str(file),
                    line=_source_line(case.source),
                    key="name",
                    hint="give each file its own family",
                )
            seen[case.id] = case.source
            cases.append(case)
    return cases


def _source_line(source: str) -> int | None:
    """The line of a "file:line" source, or None."""
    tail = source.rsplit(":", 1)[-1]
    return int(tail) if tail.isdigit() else None
