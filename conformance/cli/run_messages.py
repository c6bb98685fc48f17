"""What `conformance run` says besides its results: the summary table, `--profile`, adapters that
executed nothing (exit 5), changes against `--expected`, and help for a user's own adapter."""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from ..adapter_api.registry import AdapterEntry
from ..cases.case import Case
from ..running.runner import DEFAULT_TIMEOUT_S
from ..running.summary import summary_lines


def _summary(records: list[dict], missing: list[AdapterEntry], stream) -> None:  # noqa: ANN001
    # summary.py: fits 80 columns, or a narrower terminal
    table = summary_lines(records, width=min(80, shutil.get_terminal_size((80, 24)).columns))
    bad_at = next((i for i, line in enumerate(table) if not line), len(table))
    for line in table[:bad_at]:
        print(line, file=stream)
    if missing:
        names = ", ".join(f"{e.name} ({e.declaration.installed()[1]})" for e in missing)
        print(f"\nnot installed, not run: {names}", file=stream)
    for line in table[bad_at:]:
        print(line, file=stream)


def _print_profile(records: list[dict], adapter_info: dict) -> None:
    """--profile: where each adapter's time went (conformance.running.profile), this run's records."""
    from ..running.profile import summarize, table

    fresh = [r for r in records if "total_s" in r]
    print(
        "\nprofile (seconds summed over each adapter's executed cases; see conformance.running.profile):"
    )
    print(table(summarize(fresh, adapter_info)))


def _report_empty(
    records: list[dict], entries: list[AdapterEntry], adapter_info: dict, args: argparse.Namespace
) -> int:
    """Say which adapters executed nothing; the exit code for that (0 when it is acceptable).

    Non-zero when an adapter the user named exactly (or as module:function) executed nothing,
    or when the whole run executed nothing; adapters picked by a prefix or by default (a
    GPU-only adapter on a CPU machine) are reported but do not change the exit code alone.
    """
    from ..running.executed import EXECUTED_VERDICTS, EXIT_NOTHING_EXECUTED, empty_adapters

    empty = empty_adapters([e.name for e in entries], adapter_info, args.device, records)
    if not empty:
        return 0
    for name, why in empty.items():
        print(f"{name}: executed nothing: {why}", file=sys.stderr)
    named = set(args.adapter or ())
    strict = [
        e.name
        for e in entries
        if e.name in empty and (e.name in named or e.source == "command line")
    ]
    nothing = not any(r["verdict"] in EXECUTED_VERDICTS for r in records)
    if not (strict or nothing):
        return 0
    if args.allow_empty:
        print("(--allow-empty: not an error)", file=sys.stderr)
        return 0
    print(
        f"exit {EXIT_NOTHING_EXECUTED}: "
        + ("nothing was executed" if nothing else f"{', '.join(strict)} executed nothing")
        + " (pass --allow-empty if that is expected)",
        file=sys.stderr,
    )
    return EXIT_NOTHING_EXECUTED


def _load_expected(args: argparse.Namespace, cases: list[Case], entries: list[AdapterEntry]):  # noqa: ANN202
    """The --expected entries, checked against the selection before anything runs."""
    if not args.expected:
        return None
    from ..running.expected import check_patterns, load

    known = load(args.expected)
    check_patterns(known, [c.id for c in cases], [e.name for e in entries])
    return known


def _report_expected(expected: list, records: list[dict], path: str) -> bool:
    """Print every change against the expected file; True when there is one (exit 1)."""
    from ..running.expected import compare

    changes = compare(expected, records)
    known = sum(1 for r in records if r["verdict"] in ("fail", "error")) - sum(
        1 for c in changes if c.kind == "new failure"
    )
    if not changes:
        print(f"\nexpected results ({path}): no change ({known} known fail/error result(s))")
        return False
    print(f"\nexpected results ({path}): {len(changes)} change(s)", file=sys.stderr)
    for change in changes[:50]:
        print("  " + _printable(change.describe()), file=sys.stderr)
    if len(changes) > 50:
        print(f"  ... and {len(changes) - 50} more", file=sys.stderr)
    print(
        "  hint: fix the regression, or update the file (--write-expected writes one from a run)",
        file=sys.stderr,
    )
    return True


def _printable(text: str) -> str:
    """Spec and result text on a terminal: control characters shown escaped, not executed."""
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)


def _user_adapter_help(
    records: list[dict],
    entries: list[AdapterEntry],
    cases: list[Case],
    out_dir: Path,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> None:
    """For user adapters: which features pass and fail, and a reproducer for the first failure.

    Built-in adapters have their reports; a user validating their own implementation wants the
    shortest path to the fix.
    """
    users = [e for e in entries if e.source != "builtin"]
    if not users:
        return
    from ..report.reproducer import ReproducerError, write_reproducer_isolated
    from ..running.feature_table import feature_table

    by_id = {c.id: c for c in cases}
    for entry in users:
        mine = [r for r in records if r["adapter"] == entry.name]
        if not mine:
            continue
        print(f"\n{entry.name}: features\n" + feature_table(mine))
        failing = next((r for r in mine if r["verdict"] == "fail"), None)
        if failing is None:
            continue
        # In a child process with the run's timeout: writing it imports and runs user code.
        try:
            script = write_reproducer_isolated(
                by_id[failing["case"]], failing, entry.target, out_dir / "reproducers",
                timeout_s=timeout_s,
            )  # fmt: skip
        except ReproducerError as error:
            print(f"first failure: {failing['case']}\n  no reproducer: {error}")
            continue
        print(f"first failure: {failing['case']}\n  reproduce with: python {script}")
