"""The end-of-run summary printed by `conformance run`: a table that fits 80 columns.

One row per adapter and device, one narrow column per verdict; long adapter names are cut
in the middle (their ends tell them apart), failure lines are cut to the width.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable

from ..sanitize import strip_control

COLUMNS = (("pass", "pass"), ("fail", "fail"), ("diverges", "div"), ("unsupported", "unsup"),
           ("error", "error"))  # fmt: skip
CELL = 7
WIDTH = 80


def _fit(text: str, width: int) -> str:
    """`text` cut in the middle with … so it is at most `width` characters."""
    if len(text) <= width:
        return text
    head = (width - 1) // 2
    return text[:head] + "…" + text[len(text) - (width - 1 - head) :]


def summary_lines(records: Iterable[dict], width: int = WIDTH) -> list[str]:
    """The verdict table and the first failing results, every line at most `width` - 1 wide."""
    records = list(records)
    room = width - 1
    by_row: dict[str, Counter] = defaultdict(Counter)
    for record in records:
        device = "" if record["device"] == "cpu" else f" ({record['device']})"
        by_row[f"{record['adapter']}{device}"][record["verdict"]] += 1
    lines: list[str] = []
    if by_row:
        name_w = min(max(len(k) for k in by_row) + 1, room - CELL * len(COLUMNS))
        lines.append("adapter".ljust(name_w) + "".join(h.rjust(CELL) for _, h in COLUMNS))
        for name in sorted(by_row):
            counts = by_row[name]
            cells = "".join(str(counts[v] or "·").rjust(CELL) for v, _ in COLUMNS)
            lines.append(_fit(name, name_w - 1).ljust(name_w) + cells)
    bad = [r for r in records if r["verdict"] in ("fail", "error")]
    if bad:
        lines.append("")
        lines.append(f"{len(bad)} failing result(s); first ones:")
        for record in bad[:12]:
            head = f"  {record['verdict'].upper():5s} {record['adapter']} {record['case']}"
            lines.append(_fit(head, room))
            message = " ".join(strip_control(str(record.get("message") or "")).split())
            line = "        " + message  # the head of a message says most: cut its tail
            lines.append(line if len(line) <= room else line[: room - 1] + "…")
        if len(bad) > 12:
            lines.append(f"  ... and {len(bad) - 12} more (see the report)")
    return lines
