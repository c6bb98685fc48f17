"""Benchmark: peak memory of a whole `conformance run`, and whether it stays flat as cases grow.

    python benchmarks/memory.py [--copies N] [--interval S] [-- extra conformance run args]

Runs `conformance run` in a fresh process and samples, every `--interval` seconds, the memory
of its whole process tree (the runner and every worker) from /proc (Linux only, no extra
dependency):

- PSS, the proportional set size (/proc/PID/smaps_rollup): shared pages (the framework
  libraries every worker maps) are split between the processes that share them, so the sum
  over the tree is the memory the run really holds;
- the largest single-process RSS.

`--copies N` runs N copies of every shipped spec file (each copy its own family, so its own
case ids and seeded data, the same shapes): N times the cases. A harness whose memory is flat
in the case count shows about the same peak at 1 and at 4 copies. Never a timed test: numbers go
to docs/performance.md with the machine they came from.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from conformance.spec import shipped_specs_dir

FAMILY = re.compile(r"^family:\s*(\S+)\s*$", re.M)


def tree(root: int) -> list[int]:
    """`root` and every process descended from it (by /proc/PID/stat's parent field)."""
    parents: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue  # exited while we looked
        parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = {root}, [root]
    while frontier:
        parent = frontier.pop()
        for pid, ppid in parents.items():
            if ppid == parent and pid not in found:
                found.add(pid)
                frontier.append(pid)
    return sorted(found)


def memory_kib(pid: int) -> tuple[int, int]:
    """(PSS, RSS) of one process in KiB; (0, 0) once it has exited."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return 0, 0
    fields = dict(re.findall(r"^(Pss|Rss):\s+(\d+) kB", text, re.M))
    return int(fields.get("Pss", 0)), int(fields.get("Rss", 0))


FRAMEWORK_LIBRARIES = {  # a shared library a worker maps -> the framework it imported
    "jaxlib": "jax",
    "libtorch": "torch",
    "onnxruntime": "onnxruntime",
    "libtensorflow": "tensorflow",
    "openvino": "openvino",
}


def describe(pid: int) -> str:
    """Which frameworks a process has loaded (spawned workers all share one command line, so
    the libraries they map are what tells them apart)."""
    try:
        maps = Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return "?"
    loaded = sorted({name for lib, name in FRAMEWORK_LIBRARIES.items() if lib in maps})
    return "worker: " + ", ".join(loaded) if loaded else "runner or NumPy-only worker"


def copied_specs(folder: Path, copies: int) -> Path:
    """Every shipped spec file `copies` times, each copy with its own family name."""
    source = shipped_specs_dir()
    shutil.copytree(source / "data", folder / "data", dirs_exist_ok=True)
    for spec in sorted(source.glob("*.yaml")):
        text = spec.read_text(encoding="utf-8")
        family = FAMILY.search(text)
        for copy in range(copies):
            name = f"{spec.stem}_copy{copy}" if copy else spec.stem
            body = text
            if copy:
                new_family = f"{family.group(1) if family else spec.stem}_copy{copy}"
                body = (
                    FAMILY.sub(f"family: {new_family}", text, count=1)
                    if family
                    else f"family: {new_family}\n{text}"
                )
            (folder / f"{name}.yaml").write_text(body, encoding="utf-8")
    return folder


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copies", type=int, default=1, help="copies of every spec file")
    parser.add_argument("--interval", type=float, default=0.25, help="seconds between samples")
    parser.add_argument("--out", help="run folder to keep (default: a temporary folder)")
    parser.add_argument("rest", nargs="*", help="extra arguments for conformance run")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="conformance-memory-") as tmp:
        out = args.out or f"{tmp}/run"
        command = [sys.executable, "-m", "conformance.cli", "run", "-q", "--out", out]
        if args.copies > 1:
            command[4:4] = [str(copied_specs(Path(tmp, "specs"), args.copies))]
        command += args.rest
        print("$", " ".join(command), flush=True)
        start = time.monotonic()
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
        peak_pss = peak_rss = peak_processes = 0
        per_process: dict[int, tuple[int, str]] = {}  # pid -> (peak RSS, what it runs)
        while process.poll() is None:
            pids = tree(process.pid)
            sizes = [memory_kib(pid) for pid in pids]
            peak_pss = max(peak_pss, sum(p for p, _ in sizes))
            peak_rss = max(peak_rss, max((r for _, r in sizes), default=0))
            peak_processes = max(peak_processes, len(sizes))
            for pid, (_, rss) in zip(pids, sizes, strict=True):
                if rss > per_process.get(pid, (0, ""))[0]:
                    per_process[pid] = (rss, describe(pid))  # libraries load as it runs
            time.sleep(args.interval)
        wall = time.monotonic() - start
    print(
        f"copies {args.copies}: exit {process.returncode}, wall {wall:.0f} s, "
        f"peak PSS of the process tree {peak_pss / 2**20:.2f} GiB, "
        f"largest single process RSS {peak_rss / 2**20:.2f} GiB, "
        f"up to {peak_processes} processes"
    )
    for pid, (rss, what) in sorted(per_process.items(), key=lambda item: -item[1][0])[:6]:
        print(f"  pid {pid}: peak RSS {rss / 2**20:.2f} GiB  {what}")
    return 0 if process.returncode in (0, 1) else process.returncode


if __name__ == "__main__":
    sys.exit(main())
