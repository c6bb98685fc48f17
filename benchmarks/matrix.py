"""Benchmark: the full default matrix, cold start, and where the time goes per adapter.

    python benchmarks/matrix.py [--no-cache] [--jobs N] [-- extra conformance run args]
    python benchmarks/matrix.py --from RUN_DIR    # summarize a finished (or cut) run folder

Runs `conformance run` in a fresh process (framework imports included), then reads its
results.json and prints, per adapter: setup (import + first build), cases executed, the sum of
adapter.run() time, the sum of whole-case time through the harness (inputs, reference,
adapter, comparison), and their ratio (the harness overhead per case); then where the time
went (conformance.profile: import, first case, compile/export, run, reference, comparison) and
the programs compiled/exported per case family by the compile-bound adapters. Never a timed test:
numbers go to docs/performance.md with the machine they came from.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from conformance.running.profile import programs_by_family, table
from conformance.running.profile import summarize as summarize_profile


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-cache", action="store_true", help="empty compilation/export cache")
    parser.add_argument("--jobs", "-j", type=int, default=None)
    parser.add_argument("--out", help="run folder to keep (default: a temporary folder)")
    parser.add_argument("--from", dest="source", help="summarize this run folder, run nothing")
    parser.add_argument("rest", nargs="*", help="extra arguments for conformance run")
    args = parser.parse_args()
    if args.source:
        return summarize(Path(args.source), None, "(from a finished run)", args.no_cache)
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="conformance-bench-"))
    env = dict(os.environ)
    if args.no_cache:
        env["CONFORMANCE_CACHE_DIR"] = str(out / "empty-cache")
    command = [
        sys.executable,
        "-m",
        "conformance.cli",
        "run",
        "-q",
        "--no-report",
        "--out",
        str(out),
    ]
    if args.jobs:
        command += ["--jobs", str(args.jobs)]
    command += args.rest
    start = time.perf_counter()
    subprocess.run(command, env=env, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    return summarize(out, wall, " ".join(command[3:]), args.no_cache)


def load_run(out: Path) -> dict:
    """results.json, or the streamed results.jsonl of a run that was cut before writing it."""
    if (out / "results.json").exists():
        return json.loads((out / "results.json").read_text())
    records = [
        json.loads(line) for line in (out / "results.jsonl").read_text().splitlines() if line
    ]
    return {"results": records, "cases": {r["case"] for r in records}, "adapters": {},
            "environment": {"cpu": "?"}}  # fmt: skip


def summarize(out: Path, wall: float | None, command: str, no_cache: bool) -> int:
    data = load_run(out)
    run_s: dict[str, float] = defaultdict(float)
    total_s: dict[str, float] = defaultdict(float)
    executed: dict[str, int] = defaultdict(int)
    for record in data["results"]:
        if record["verdict"] == "unsupported" or "total_s" not in record:
            continue
        executed[record["adapter"]] += 1
        run_s[record["adapter"]] += record.get("duration_s") or 0.0
        total_s[record["adapter"]] += record["total_s"]
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, {data['environment']['cpu']}")
    print(f"command: {command}  (cache {'empty' if no_cache else 'as is'})")
    took = "?" if wall is None else f"{wall:.1f}"
    print(f"cases: {len(data['cases'])}, results: {len(data['results'])}, wall: {took} s\n")
    print("| adapter | setup s | executed | run() s | through harness s | overhead x |")
    print("|---|---:|---:|---:|---:|---:|")
    for name in sorted(set(data["adapters"]) | set(executed), key=lambda n: -total_s[n]):
        ratio = total_s[name] / run_s[name] if run_s[name] else float("nan")
        setup = (data["adapters"].get(name) or {}).get("setup_s") or 0.0
        print(f"| {name} | {setup:.2f} | {executed[name]} | {run_s[name]:.2f} | "
              f"{total_s[name]:.2f} | {ratio:.2f} |")  # fmt: skip
    print("\nWhere the time went (seconds summed over each adapter's executed cases):\n")
    print(table(summarize_profile(data["results"], data["adapters"])))
    compiled = sorted(
        {r["adapter"] for r in data["results"] if (r.get("phases") or {}).get("compile")}
    )
    if compiled:
        print("\nPrograms (compilations/exports, cache loads included) per case family:\n")
        print(programs_by_family(data["results"], compiled))
    return 0


if __name__ == "__main__":
    sys.exit(main())
