"""Where the time goes: phases timed inside a worker process, summed per adapter.

A worker process runs one case at a time, so a process-wide tally is enough: the harness times
its own phases (inputs, reference, compare) and adapters report what they pay once per
structure (an XLA compilation, a torch.onnx export) with `add("compile", seconds)`. The worker
takes the tally after each case and stores it in the result record as
`phases = {name: [seconds, count]}`; `summarize` turns the records into one row per adapter
for `conformance run --profile` and benchmarks/matrix.py.

Phases per case (seconds):
- compile: compilations and exports done during the case (inside the adapter's run());
- run: the adapter's run() minus compile;
- inputs / reference / compare: the harness's deterministic inputs, float64 reference (a cache
  hit when an earlier adapter of the worker already computed it) and comparison.
- programs (cached): compiled programs/exports the adapter obtained, and how many of them came
  from the persistent cache (conformance.running.cache) instead of being built.
Per adapter: import = its setup() (framework import and first build of the adapter), first =
the whole first executed case (the first call's lazy initialisation included).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

_tally: dict[str, list[float]] = {}


def add(name: str, seconds: float, count: int = 1) -> None:
    """Count `count` events of phase `name` costing `seconds` in this process."""
    entry = _tally.setdefault(name, [0.0, 0])
    entry[0] += seconds
    entry[1] += count


@contextmanager
def phase(name: str) -> Iterator[None]:
    """Time the block as one event of phase `name`."""
    start = time.perf_counter()
    try:
        yield
    finally:
        add(name, time.perf_counter() - start)


def take() -> dict[str, list[float]]:
    """The tally since the last take (JSON-ready: {name: [seconds, count]}), then reset."""
    out = {name: [round(s, 6), int(n)] for name, (s, n) in _tally.items()}
    _tally.clear()
    return out


COLUMNS = (
    "import",
    "first",
    "compile",
    "compiles",
    "cache_hits",
    "run",
    "inputs",
    "reference",
    "compare",
)


@dataclass
class Row:
    adapter: str
    executed: int = 0
    total: float = 0.0
    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(COLUMNS, 0.0))


def summarize(records: list[dict], adapters: dict[str, dict]) -> list[Row]:
    """One row per adapter that executed a case, the most expensive first.

    records: result records (with total_s/duration_s/phases); adapters: results.json's
    "adapters" block (setup_s per adapter).
    """
    rows: dict[str, Row] = {}
    for record in records:
        if record.get("verdict") == "unsupported" or "total_s" not in record:
            continue
        row = rows.setdefault(record["adapter"], Row(record["adapter"]))
        if row.executed == 0:
            row.seconds["first"] = record["total_s"]
        row.executed += 1
        row.total += record["total_s"]
        phases = record.get("phases") or {}
        compile_s, compiles = phases.get("compile", [0.0, 0])
        row.seconds["compile"] += compile_s
        row.seconds["compiles"] += compiles
        row.seconds["cache_hits"] += phases.get("cache_hits", [0.0, 0])[1]
        row.seconds["run"] += max(0.0, (record.get("duration_s") or 0.0) - compile_s)
        for name in ("inputs", "reference", "compare"):
            row.seconds[name] += phases.get(name, [0.0, 0])[0]
    for name, row in rows.items():
        row.seconds["import"] = (adapters.get(name) or {}).get("setup_s") or 0.0
    return sorted(rows.values(), key=lambda r: -(r.total + r.seconds["import"]))


def _cell(text: str) -> str:
    """An adapter name (a plugin's, so data) as one inert Markdown/terminal table cell."""
    text = "".join(ch if ch.isprintable() else "?" for ch in text)
    return text.replace("\\", "\\\\").replace("|", "\\|")


def table(rows: list[Row]) -> str:
    """A Markdown table of `summarize`'s rows (seconds, summed over the adapter's cases)."""
    head = (
        "| adapter | cases | import s | first case s | compile/export s | programs (cached) "
        "| run s | inputs s | reference s | compare s | total s |"
    )
    lines = [head, "|---|" + "---:|" * 10]
    for row in rows:
        s = row.seconds
        cells = [f"{s[c]:.2f}" for c in ("import", "first", "compile")]
        cells.append(f"{int(s['compiles'])} ({int(s['cache_hits'])})")
        cells += [f"{s[c]:.2f}" for c in ("run", "inputs", "reference", "compare")]
        total = row.total + s["import"]
        cells.append(f"{total:.2f}" if math.isfinite(total) else "nan")
        lines.append(f"| {_cell(row.adapter)} | {row.executed} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def programs_by_family(records: list[dict], adapters: list[str]) -> str:
    """A Markdown table: per case family, its executed cases and distinct case shapes, and the
    programs (compilations/exports, cache loads included) each named adapter obtained for it.

    A program is built the first time a worker meets a signature, so the family that meets it
    first is charged; run a family alone (`conformance run specs/FAMILY.yaml`) for its own count.
    """
    cases: dict[str, set] = {}
    programs: dict[tuple[str, str], int] = {}
    for record in records:
        if record.get("verdict") == "unsupported" or "total_s" not in record:
            continue
        family = str(record.get("family"))
        cases.setdefault(family, set()).add(record["case"])
        if record["adapter"] in adapters:
            count = (record.get("phases") or {}).get("compile", [0.0, 0])[1]
            key = (family, record["adapter"])
            programs[key] = programs.get(key, 0) + int(count)
    head = "| family | cases | " + " | ".join(_cell(a) for a in adapters) + " |"
    lines = [head, "|---|---:|" + "---:|" * len(adapters)]
    for family in sorted(cases):
        cells = [str(programs.get((family, a), 0)) for a in adapters]
        lines.append(f"| {_cell(family)} | {len(cases[family])} | " + " | ".join(cells) + " |")
    totals = [str(sum(n for (_, a), n in programs.items() if a == name)) for name in adapters]
    total_cases = sum(len(c) for c in cases.values())
    lines.append(f"| **all** | {total_cases} | " + " | ".join(totals) + " |")
    return "\n".join(lines)
