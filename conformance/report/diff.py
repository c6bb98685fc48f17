"""`conformance report diff OLD NEW`: what changed between two runs.

Results are matched by (case, adapter, device), plus the machine when a merged file holds the
same result from several machines. Categories:

    regressions     pass/diverges before, fail/error now          (exit code 1: a CI gate)
    new failures    fail/error now, but absent or unsupported before (exit 1 with --strict)
    fixes           fail/error before, pass/diverges now
    changed errors  same verdict, but the max abs error moved by more than --ratio (default 10)
                    and is at least a tenth of atol on one side (so 1e-16 -> 3e-16 is noise);
                    for `error` results, a different message (another exception)
    other changes   any other verdict change (pass <-> diverges, fail <-> error, -> unsupported)
    added/removed   results present in only one run
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from .results import BAD, GOOD, environment_label, one_line

CATEGORIES = ("regressions", "new_failures", "fixes", "changed_errors", "other_changes")
TITLES = {
    "regressions": "Regressions",
    "new_failures": "New failures",
    "fixes": "Fixes",
    "changed_errors": "Changed errors",
    "other_changes": "Other verdict changes",
}


@dataclass
class Change:
    key: str
    adapter: str
    case: str
    device: str
    old: dict | None
    new: dict | None

    def describe(self) -> str:
        old_v = self.old["verdict"] if self.old else "absent"
        new_v = self.new["verdict"] if self.new else "absent"
        text = f"{self.adapter} {self.case} [{self.device}]: {old_v} -> {new_v}"
        old_e = self.old.get("max_abs_error") if self.old else None
        new_e = self.new.get("max_abs_error") if self.new else None
        if old_e is not None or new_e is not None:
            text += f" (max abs error {_fmt(old_e)} -> {_fmt(new_e)})"
        if self.new and self.new["verdict"] in BAD and self.new.get("message"):
            text += f": {one_line(self.new['message'], 160)}"
        return text

    def to_dict(self) -> dict:
        return {
            "case": self.case,
            "adapter": self.adapter,
            "device": self.device,
            "old": _brief(self.old),
            "new": _brief(self.new),
        }


def _brief(record: dict | None) -> dict | None:
    if record is None:
        return None
    keys = ("verdict", "max_abs_error", "max_rel_error", "message", "environment_id")
    return {k: record.get(k) for k in keys}


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3g}"


@dataclass
class DiffResult:
    changes: dict[str, list[Change]] = field(default_factory=lambda: {c: [] for c in CATEGORIES})
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    unchanged: int = 0
    old_label: str = "old"
    new_label: str = "new"
    notes: list[str] = field(default_factory=list)

    @property
    def regressions(self) -> list[Change]:
        return self.changes["regressions"]

    def exit_code(self, strict: bool = False) -> int:
        if self.regressions or (strict and self.changes["new_failures"]):
            return 1
        return 0

    def to_dict(self) -> dict:
        return {
            "old": self.old_label,
            "new": self.new_label,
            **{c: [x.to_dict() for x in self.changes[c]] for c in CATEGORIES},
            "added": len(self.added),
            "removed": len(self.removed),
            "unchanged": self.unchanged,
            "notes": self.notes,
        }


def _index(doc: dict) -> dict[str, dict]:
    """Key -> record; the machine joins the key only where one key has several machines."""
    plain: dict[tuple, list[dict]] = {}
    for record in doc["results"]:
        plain.setdefault((record["case"], record["adapter"], record["device"]), []).append(record)
    out = {}
    for (case, adapter, device), group in plain.items():
        for record in group:
            suffix = f"@{record['environment_id']}" if len(group) > 1 else ""
            out[f"{case}|{adapter}|{device}{suffix}"] = record
    return out


def diff(old: dict, new: dict, ratio: float = 10.0) -> DiffResult:
    result = DiffResult()
    result.old_label = _label(old)
    result.new_label = _label(new)
    if old.get("spec_version") != new.get("spec_version"):
        result.notes.append(
            f"spec versions differ ({old.get('spec_version')} -> {new.get('spec_version')}): "
            "the same case id may not mean the same case"
        )
    a, b = _index(old), _index(new)
    for key in sorted(a.keys() | b.keys()):
        before, after = a.get(key), b.get(key)
        ref = after or before
        change = Change(key, ref["adapter"], ref["case"], ref["device"], before, after)
        if before is None:
            result.added.append(key)
            if after["verdict"] in BAD:
                result.changes["new_failures"].append(change)
            continue
        if after is None:
            result.removed.append(key)
            continue
        was, now = before["verdict"], after["verdict"]
        if was in GOOD and now in BAD:
            result.changes["regressions"].append(change)
        elif was == "unsupported" and now in BAD:
            result.changes["new_failures"].append(change)
        elif was in BAD and now in GOOD:
            result.changes["fixes"].append(change)
        elif was != now:
            result.changes["other_changes"].append(change)
        elif _error_moved(before, after, ratio):
            result.changes["changed_errors"].append(change)
        else:
            result.unchanged += 1
    return result


def _error_moved(before: dict, after: dict, ratio: float) -> bool:
    if before["verdict"] == "error":  # an implementation's exception: its text is the error
        return before.get("message") != after.get("message")
    x, y = before.get("max_abs_error"), after.get("max_abs_error")
    if x is None or y is None:
        return (x is None) != (y is None) and before["verdict"] in ("pass", "fail", "diverges")
    atol = after.get("atol") or before.get("atol") or 0.0
    low, high = sorted((abs(x), abs(y)))
    if high < 0.1 * atol or high == 0.0:
        return False
    return low == 0.0 or high / low >= ratio


def _label(doc: dict) -> str:
    envs = doc["environments"]
    where = environment_label(envs[0]) if len(envs) == 1 else f"{len(envs)} machines"
    return f"{doc.get('created', '?')} · {where}"


def render_text(result: DiffResult, markdown: bool = False) -> str:
    lines = []
    head = "## " if markdown else ""
    bullet = "- " if markdown else ""
    lines.append(f"{head}Conformance diff")
    if markdown:
        lines.append("")
    lines.append(f"{bullet}old: {result.old_label}")
    lines.append(f"{bullet}new: {result.new_label}")
    for note in result.notes:
        lines.append(f"{bullet}note: {note}")
    lines.append("")
    summary = (
        ", ".join(f"{len(result.changes[c])} {TITLES[c].lower()}" for c in CATEGORIES)
        + f", {len(result.added)} added, {len(result.removed)} removed, {result.unchanged} unchanged"
    )
    lines.append(summary)
    for category in CATEGORIES:
        items = result.changes[category]
        if not items:
            continue
        lines.append("")
        lines.append(f"{'### ' if markdown else ''}{TITLES[category]} ({len(items)})")
        if markdown:
            lines.append("")
        for change in items:
            lines.append(f"{'- ' if markdown else '  '}{change.describe()}")
    return "\n".join(lines) + "\n"


def render_json(result: DiffResult) -> str:
    return json.dumps(result.to_dict(), indent=1) + "\n"
