"""`conformance run`'s options, shared with the parser `--resume` rebuilds a run from."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..cases.case import DTYPES, TIERS
from ..running import maxfail
from ..running.runner import DEFAULT_SETUP_TIMEOUT_S, DEFAULT_TIMEOUT_S
from .selection import DEFAULT_TIER

DEFAULT_OUT = Path("reports/latest")


def _positive_seconds(text: str) -> float:
    """A timeout: a positive finite number of seconds (nan, inf, 0 and -1 are refused)."""
    import math

    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text!r}")
    return value


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "specs",
        nargs="*",
        metavar="SPEC_PATH",
        help="spec files or folders (default: every shipped spec in specs/)",
    )
    p.add_argument(
        "--adapter",
        "-a",
        action="append",
        metavar="NAME",
        help="adapter name, prefix (torch = every torch.* adapter) or module:Class; "
        "repeatable (default: every installed adapter)",
    )
    p.add_argument(
        "--device",
        action="append",
        metavar="DEV",
        help="cpu, cuda, cuda:0 ... (default: every device each adapter sees)",
    )
    p.add_argument("--dtype", action="append", metavar="DT", help=f"one of {', '.join(DTYPES)}")
    p.add_argument("--case", action="append", metavar="ID", help="exact case id; repeatable")
    add_tier_argument(p)
    p.add_argument(
        "-k",
        dest="keyword",
        metavar="EXPR",
        help="select case ids by substring expression, e.g. -k 'causal and not float16'",
    )
    p.add_argument(
        "--shard", metavar="I/N", help="run the I-th of N deterministic slices of the cases"
    )
    p.add_argument("--out", "-o", metavar="DIR", help=f"output folder (default {DEFAULT_OUT})")
    p.add_argument(
        "--jobs",
        "-j",
        type=_positive_int,
        metavar="N",
        help="worker processes at once (default: CPU count)",
    )
    p.add_argument(
        "--timeout",
        type=_positive_seconds,
        default=DEFAULT_TIMEOUT_S,
        metavar="S",
        help=f"per-case timeout in seconds (default {DEFAULT_TIMEOUT_S:g})",
    )
    p.add_argument(
        "--setup-timeout",
        type=_positive_seconds,
        default=DEFAULT_SETUP_TIMEOUT_S,
        metavar="S",
        help="seconds a worker may take to import its framework and set up "
        f"(default {DEFAULT_SETUP_TIMEOUT_S:g})",
    )
    p.add_argument(
        "--resume",
        metavar="DIR",
        help="continue an interrupted run in DIR without redoing finished results",
    )
    p.add_argument("--no-report", action="store_true", help="write results.json only")
    p.add_argument(
        "--profile",
        action="store_true",
        help="print where each adapter's time went: import, first case, compile/export, run, "
        "inputs, reference, comparison",
    )
    p.add_argument(
        "--no-cache",
        action="store_true",
        help="do not read or write the compilation/export cache "
        "(~/.cache/attention-conformance, or $CONFORMANCE_CACHE_DIR)",
    )
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")  # fmt: skip
    # --- CI trust (conformance.running.executed, conformance.running.expected) ---
    p.add_argument(
        "--allow-empty",
        action="store_true",
        help="exit 0 even when a named adapter executed nothing (no device, every case "
        "unsupported); by default that exits 5",
    )
    p.add_argument(
        "--expected",
        metavar="FILE",
        help="known results (docs/ci.md): exit 0 when every result matches the file, 1 on any "
        "change (a new fail, or a known fail that now passes)",
    )
    p.add_argument(
        "--write-expected",
        metavar="FILE",
        help="write an expected-results file listing this run's fail/error results",
    )
    maxfail.add_arguments(p)  # -x / --maxfail N (maxfail.py)


def add_tier_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--tier",
        choices=TIERS,
        help=f"size tier, each including the smaller ones: small (toy sizes, seconds), default "
        f"(adds kernel-scale cases: rows across tile and block boundaries), large (adds 8k-32k "
        f"contexts, for GPU runners and nightly jobs). Default: {DEFAULT_TIER}",
    )


def build_run_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="conformance run")
    add_run_arguments(parser)
    return parser
