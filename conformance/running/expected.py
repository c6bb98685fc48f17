"""Expected results for a user's CI: known fails stay green, any change goes red.

The file (YAML, kept in the user's repository; see docs/ci.md):

    expected:
      - case: "fully_masked/*"        # case id pattern: * and ? are wildcards, the rest literal
        adapter: "mylib.attention"    # adapter name pattern (same syntax)
        device: "cpu"                 # optional device pattern (default: any)
        verdict: fail                 # pass, fail, diverges, unsupported or error
        reason: "NaN rows: upstream bug"
        link: "https://example.org/mylib/issues/12"   # optional

Each result is checked against the first entry that matches it. A result with an entry must
have that verdict (a known fail that now passes is a stale entry: a change). A result without
one must not be `fail` or `error` (a new failure). An entry that matches no selected case or
adapter is an error in the file (exit 2), found before anything runs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from ..errors import SpecError, UsageError

VERDICTS = ("pass", "fail", "diverges", "unsupported", "error")
KEYS = ("case", "adapter", "device", "verdict", "reason", "link")
REQUIRED = ("case", "adapter", "verdict", "reason")
BAD = ("fail", "error")


def _pattern(text: str) -> re.Pattern[str]:
    """`*` any run of characters, `?` one; everything else literal (case ids hold brackets)."""
    parts = (re.escape(p) for p in text.split("*"))
    return re.compile(".*".join(parts).replace(re.escape("?"), "."), re.DOTALL)


@dataclass(frozen=True)
class Entry:
    case: str
    adapter: str
    device: str | None
    verdict: str
    reason: str
    link: str | None
    file: str
    line: int | None

    def matches(self, case: str, adapter: str, device: str | None = None) -> bool:
        if not _pattern(self.case).fullmatch(case):
            return False
        if not _pattern(self.adapter).fullmatch(adapter):
            return False
        return (
            device is None or self.device is None or bool(_pattern(self.device).fullmatch(device))
        )

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}" if self.line else self.file


def load(path: str | Path) -> list[Entry]:
    """Parse an expected-results file; malformed input is a SpecError naming file and line."""
    from ..spec.yamlload import load_yaml_file

    path = Path(path)
    if not path.is_file():
        raise UsageError(
            f"--expected {path}: no such file\n  hint: create one with --write-expected"
        )
    data = load_yaml_file(path)
    file = str(path)
    hint = "see docs/ci.md for the format"
    if not isinstance(data, dict) or "expected" not in data:
        raise SpecError("the file needs a top-level `expected:` list", file=file, line=1, hint=hint)
    extra = sorted(set(data) - {"expected"})
    if extra:
        line = getattr(data, "line_of", lambda k: None)(extra[0])
        raise SpecError("unknown key", file=file, line=line, key=extra[0], hint=hint)
    items = data["expected"] or []
    if not isinstance(items, list):
        raise SpecError("`expected` must be a list of entries", file=file, line=1, hint=hint)
    entries = []
    for item in items:
        line = getattr(item, "line", None) or getattr(items, "line", None)
        if not isinstance(item, dict):
            raise SpecError("each entry is a mapping (case:, adapter:, ...)", file=file, line=line)
        for key in item:
            if key not in KEYS:
                raise SpecError(
                    "unknown key", file=file, line=item.line_of(key), key=str(key),
                    hint=f"entries take {', '.join(KEYS)}",
                )  # fmt: skip
        for key in REQUIRED:
            if key not in item:
                raise SpecError(f"missing `{key}`", file=file, line=line, hint=hint)
        for key in KEYS:
            if key in item and item[key] is not None and not isinstance(item[key], str):
                raise SpecError(
                    "must be text", file=file, line=item.line_of(key), key=key, hint="quote it"
                )
        if item["verdict"] not in VERDICTS:
            raise SpecError(
                f"verdict {item['verdict']!r} is not one of {', '.join(VERDICTS)}",
                file=file, line=item.line_of("verdict"), key="verdict",
            )  # fmt: skip
        entries.append(
            Entry(
                case=item["case"],
                adapter=item["adapter"],
                device=item.get("device"),
                verdict=item["verdict"],
                reason=item["reason"],
                link=item.get("link"),
                file=file,
                line=line,
            )  # fmt: skip
        )
    return entries


def check_patterns(entries: list[Entry], case_ids: list[str], adapters: list[str]) -> None:
    """Before a run: every entry must match a selected case and adapter (exit 2 otherwise)."""
    for entry in entries:
        if not any(_pattern(entry.case).fullmatch(c) for c in case_ids):
            raise SpecError(
                f"case pattern {entry.case!r} matches none of the {len(case_ids)} selected cases",
                file=entry.file, line=entry.line, key="case",
                hint="`conformance list cases` shows ids (* and ? are the only wildcards); "
                "a job that runs a subset (-k, --shard) needs its own expected file",
            )  # fmt: skip
        if not any(_pattern(entry.adapter).fullmatch(a) for a in adapters):
            raise SpecError(
                f"adapter pattern {entry.adapter!r} matches none of the selected adapters "
                f"({', '.join(adapters)})",
                file=entry.file, line=entry.line, key="adapter",
            )  # fmt: skip


@dataclass(frozen=True)
class Change:
    kind: str  # "new failure", "stale entry", "changed"
    record: dict
    entry: Entry | None

    def describe(self) -> str:
        r = self.record
        what = f"{r['case']} [{r['adapter']}-{r['device']}]"
        if self.entry is None:
            return f"NEW {r['verdict'].upper()}: {what}: {r.get('message', '')[:200]}"
        e = self.entry
        return (
            f"{self.kind.upper()}: {what}: expected {e.verdict} ({e.where}: {e.reason}), "
            f"got {r['verdict']}"
        )


def compare(entries: list[Entry], records: list[dict]) -> list[Change]:
    """Every result that differs from the expected file."""
    changes = []
    for record in records:
        entry = next(
            (e for e in entries if e.matches(record["case"], record["adapter"], record["device"])),
            None,
        )
        if entry is None:
            if record["verdict"] in BAD:
                changes.append(Change("new failure", record, None))
        elif record["verdict"] != entry.verdict:
            stale = entry.verdict in BAD and record["verdict"] not in BAD
            changes.append(Change("stale entry" if stale else "changed", record, entry))
    return changes


def write(path: str | Path, records: list[dict], command: str) -> int:
    """Write an expected file listing every fail/error of a run; returns the entry count."""
    entries = [
        {
            "case": r["case"].replace("*", "?"),  # a literal * would be a wildcard
            "adapter": r["adapter"].replace("*", "?"),
            "device": r["device"],
            "verdict": r["verdict"],
            "reason": (r.get("message") or "").splitlines()[0][:200] if r.get("message") else "",
        }
        for r in sorted(records, key=lambda r: (r["adapter"], r["device"], r["case"]))
        if r["verdict"] in BAD
    ]
    header = (
        "# Expected results for `conformance run --expected THIS_FILE` (docs/ci.md).\n"
        f"# Written by: {' '.join(command.split())[:300]}\n"
        "# Replace each reason with why the result is known and link the upstream issue.\n"
    )
    body = yaml.safe_dump({"expected": entries}, sort_keys=False, allow_unicode=False, width=100)
    Path(path).write_text(header + body, encoding="utf-8")
    return len(entries)
