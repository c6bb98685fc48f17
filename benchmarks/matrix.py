"""Benchmark: the full default matrix, cold start, and where the time goes per adapter.

    python benchmarks/matrix.py [--no-cache] [--jobs N] [-- extra conformance run args]

Runs `conformance run` in a fresh process (framework imports included), then reads its
results.json and prints, per adapter: setup (import + first build), cases executed, the sum of
adapter.run() time, the sum of whole-case time through the harness (inputs, reference,
adapter, comparison), and their ratio (the harness overhead per case). Never a timed test:
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-cache", action="store_true", help="empty compilation/export cache")
    parser.add_argument("--jobs", "-j", type=int, default=None)
    parser.add_argument("--out", help="run folder to keep (default: a temporary folder)")
    parser.add_argument("rest", nargs="*", help="extra arguments for conformance run")
    args = parser.parse_args()
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
    data = json.loads((out / "results.json").read_text())
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
    print(f"command: {' '.join(command[3:])}  (cache {'empty' if args.no_cache else 'as is'})")
    print(f"cases: {len(data['cases'])}, results: {len(data['results'])}, wall: {wall:.1f} s\n")
    print("| adapter | setup s | executed | run() s | through harness s | overhead x |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, block in sorted(data["adapters"].items(), key=lambda kv: -total_s[kv[0]]):
        ratio = total_s[name] / run_s[name] if run_s[name] else float("nan")
        setup = block.get("setup_s") or 0.0
        print(f"| {name} | {setup:.2f} | {executed[name]} | {run_s[name]:.2f} | "
              f"{total_s[name]:.2f} | {ratio:.2f} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
