"""Which features pass and which fail: a short terminal table that points at the bug.

For each feature tag seen in an adapter's records: how many cases with it passed (pass or a
verified divergence), failed (fail or error) or were unsupported. A feature whose every runnable
case fails, while cases without it pass, is marked as the likely culprit: "causal-bottom-right
fails whenever present" says where to look far better than a list of failing case ids.
"""

from __future__ import annotations

from collections import defaultdict

OK = ("pass", "diverges")
BAD = ("fail", "error")


def _table(records: list[dict]) -> list[str]:
    counts: dict[str, dict[str, int]] = defaultdict(lambda: {"ok": 0, "bad": 0, "unsup": 0})
    total = {"ok": 0, "bad": 0, "unsup": 0}
    for record in records:
        verdict = record.get("verdict")
        slot = "ok" if verdict in OK else "bad" if verdict in BAD else "unsup"
        total[slot] += 1
        for tag in record.get("features") or ():
            counts[tag][slot] += 1

    def status(tag: str) -> tuple[int, str]:
        c = counts[tag]
        ran = c["ok"] + c["bad"]
        if ran == 0:
            return 3, "unsupported"
        if c["bad"] == 0:
            return 2, "ok"
        if c["ok"] == 0:
            # Culprit: fails whenever present, and something without it passes.
            passes_elsewhere = total["ok"] > 0
            return 0, "FAIL (every case with it)" if passes_elsewhere else "FAIL"
        return 1, "some fail"

    ordered = sorted(counts, key=lambda tag: (status(tag)[0], tag))
    rows = [t for t in ordered if status(t)[1] != "unsupported"]
    never = [t for t in ordered if status(t)[1] == "unsupported"]
    width = max([len(t) for t in rows] + [len("feature")])
    lines = [f"  {'feature'.ljust(width)}  {'ok':>4} {'fail':>4} {'unsup':>5}  status"]
    for tag in rows:
        c = counts[tag]
        lines.append(
            f"  {tag.ljust(width)}  {c['ok']:>4} {c['bad']:>4} {c['unsup']:>5}  {status(tag)[1]}"
        )
    if never:  # one line, not a row each: these are the adapter's declared limits
        lines.append("  unsupported only: " + ", ".join(never))
    culprits = [t for t in rows if status(t)[1].startswith("FAIL (")]
    if culprits:
        lines.append(
            "  look first at: " + ", ".join(culprits[:6]) + (" ..." if len(culprits) > 6 else "")
        )
    elif total["bad"] and total["ok"] == 0:
        lines.append("  every case fails: check the basics (layout, scale, head order) first")
    return lines


def feature_table(records: list[dict]) -> str:
    """A short table of features passing/failing, per adapter (and device, when several).

    `records` are result records (conformance.verdicts.evaluate): "adapter", "device", "verdict",
    "features". ok = pass or verified divergence, fail = fail or error.
    """
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for record in records:
        groups[(record.get("adapter", "?"), record.get("device", "cpu"))].append(record)
    several_devices = len({device for _, device in groups}) > 1
    out: list[str] = []
    for (adapter, device), mine in sorted(groups.items()):
        verdicts: dict[str, int] = defaultdict(int)
        for record in mine:
            verdicts[record.get("verdict") or "?"] += 1
        summary = ", ".join(f"{n} {v}" for v, n in sorted(verdicts.items(), key=lambda kv: -kv[1]))
        title = f"{adapter}" + (f" on {device}" if several_devices else "")
        if len(groups) > 1:
            out.append(f"{title}: {summary}")
        else:
            out.append(f"  {len(mine)} cases: {summary}")
        out.extend(_table(mine))
    return "\n".join(out)
