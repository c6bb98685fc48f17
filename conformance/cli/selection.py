"""Which cases and adapters a command selects: spec paths, --case, -k, --dtype, --tier, --shard;
installed adapters."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from ..adapter_api.registry import AdapterEntry, resolve
from ..cases.case import DTYPES, Case, in_tier
from ..errors import UsageError
from ..spec import load_specs, shipped_specs_dir
from . import suggest

DEFAULT_TIER = "default"  # what `conformance run` checks unless told otherwise


def keyword_matcher(expr: str):  # noqa: ANN201 - returns a predicate
    """pytest-style -k: substrings combined with and/or/not and parentheses."""
    tokens = re.findall(r"\(|\)|[^\s()]+", expr)
    if not tokens:
        raise UsageError("-k needs an expression, e.g. -k 'causal and not float16'")

    def predicate(text: str) -> bool:
        parts = []
        for token in tokens:
            if token in ("and", "or", "not", "(", ")"):
                parts.append(token)
            else:
                parts.append(str(token.lower() in text.lower()))
        try:
            return bool(eval(" ".join(parts), {"__builtins__": {}}, {}))  # noqa: S307 - only True/False/and/or/not
        except SyntaxError:
            raise UsageError(f"-k expression {expr!r} is not well formed") from None

    return predicate


def parse_shard(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    m = re.fullmatch(r"(\d+)/(\d+)", text)
    if not m or not (1 <= int(m.group(1)) <= int(m.group(2))):
        raise UsageError(f"--shard {text!r}: expected I/N with 1 <= I <= N, e.g. --shard 2/4")
    return int(m.group(1)), int(m.group(2))


def spec_paths(paths: list[str] | None) -> list[str | Path]:
    """Spec paths as given (relative to the current directory), the shipped specs by default.

    `specs/NAME.yaml` that does not exist here names the shipped file (an installed wheel has
    them inside the package), so the documented commands work outside a checkout too.
    """
    if not paths:
        return [shipped_specs_dir()]
    out: list[str | Path] = []
    for text in paths:
        path = Path(text)
        parts = path.parts
        if not path.exists() and len(parts) >= 1 and parts[0] == "specs":
            shipped = shipped_specs_dir().joinpath(*parts[1:])
            if shipped.exists():
                out.append(shipped)
                continue
        out.append(text)
    return out


def select_cases(args: argparse.Namespace) -> list[Case]:
    cases = load_specs(spec_paths(args.specs))
    tier = getattr(args, "tier", None)
    # Cases named with --case run whatever their tier; otherwise the default tier applies.
    if tier is not None or not getattr(args, "case", None):
        cases = [c for c in cases if in_tier(c, tier or DEFAULT_TIER)]
    if getattr(args, "dtype", None):
        for dtype in args.dtype:
            if dtype not in DTYPES:
                raise UsageError(f"--dtype {dtype!r}: choose from {', '.join(DTYPES)}")
        cases = [c for c in cases if c.dtype in args.dtype]
    if getattr(args, "case", None):
        wanted = set(args.case)
        known = {c.id for c in cases}
        missing = sorted(wanted - known)
        if missing:
            raise UsageError(
                f"no case with id {missing[0]!r}{suggest.hint(missing[0], known)}\n  hint: "
                "`conformance list cases` shows ids; quote ids in the shell because of the brackets"
            )
        cases = [c for c in cases if c.id in wanted]
    if getattr(args, "keyword", None):
        match = keyword_matcher(args.keyword)
        cases = [c for c in cases if match(c.id)]
    shard = parse_shard(getattr(args, "shard", None))
    if shard:
        index, count = shard
        ordered = sorted(cases, key=lambda c: c.id)
        cases = [c for i, c in enumerate(ordered) if i % count == index - 1]
    return cases


def select_adapters(names: list[str] | None) -> tuple[list[AdapterEntry], list[AdapterEntry]]:
    """(to run, not installed). Named adapters that are not installed are an error."""
    entries = resolve(names)
    runnable, missing = [], []
    for entry in entries:
        ok, why = entry.declaration.installed()
        if ok:
            runnable.append(entry)
        elif names and any(n == entry.name or ":" in n for n in names):
            extra = entry.declaration.framework
            raise UsageError(
                f"adapter '{entry.name}' is not installed: it {why}\n  hint: pip install "
                f"'attention-conformance[{extra}]' (or the framework itself)"
            )
        else:
            missing.append(entry)
    return runnable, missing
