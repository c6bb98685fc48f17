"""Schedules cases onto worker processes, enforces timeouts, streams results.

YAML -> cases (spec/) -> tasks per worker key -> worker processes (worker.py: inputs,
reference, adapter, comparison) -> result records -> results.jsonl as they complete ->
results.json at the end (or on interruption).

A worker that crashes or hangs costs only the task it was running: that task becomes an
`error` record, the worker is restarted, and the remaining tasks continue.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import shutil
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import wait
from pathlib import Path

from ..adapter_api.registry import AdapterEntry
from ..cases.case import Case
from ..oracle.reference_cache import STORE_ENV
from ..paths import display_path, safe_file_name
from ..verdicts.evaluate import base_record, record_key
from .worker import Task, WorkerSpec, worker_main

DEFAULT_TIMEOUT_S = 120.0  # per case; the first case of a shape may include compilation
DEFAULT_SETUP_TIMEOUT_S = 300.0  # importing a framework and building its first module


def _signal_name(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by signal {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def shape_key(case: Case) -> tuple:
    """Cases sharing this key can reuse one built module/graph in an adapter."""
    s = case.shape
    return (case.mode, s.batch, s.query_len, s.kv_len, s.num_heads, s.num_kv_heads, s.key_dim,
            s.value_dim, s.query_dim, s.key_input_dim, s.value_input_dim, s.output_dim,
            s.query_shape, s.attention_axes, case.dtype)  # fmt: skip


@dataclass
class Unit:
    """One worker process's share: a worker key's adapters over a slice of the cases."""

    spec: WorkerSpec
    entries: list[AdapterEntry]
    cases: list[Case]
    tasks: list[Task] = field(default_factory=list)
    process: multiprocessing.Process | None = None
    conn: object = None
    started_at: float = 0.0
    task_started: float | None = None
    current: int | None = None
    hello: dict | None = None
    restarts: int = 0


@dataclass
class RunOptions:
    devices: list[str] | None = None
    jobs: int = 1
    timeout_s: float = DEFAULT_TIMEOUT_S
    setup_timeout_s: float = DEFAULT_SETUP_TIMEOUT_S
    log_dir: Path | None = None
    done: set[str] = field(default_factory=set)  # record keys already computed (resume)
    # A folder the workers share float64 references through (conformance.oracle.reference_cache),
    # emptied when the run starts and removed when it ends; None: each worker computes its own.
    reference_dir: Path | None = None


def _kill_group(pgid: int | None) -> None:
    """Kill what is left of a worker's process group: children a plugin forked must not
    outlive the run (they would keep a CI job's output pipe open). The worker made itself the
    group leader (os.setsid in worker_main), so the group id is its pid."""
    if pgid is None or not hasattr(os, "killpg"):
        return
    with contextlib.suppress(ProcessLookupError, PermissionError, OSError):
        os.killpg(pgid, signal.SIGKILL)


class Runner:
    """Run `cases` on `entries`; call `on_record` for each result as it completes."""

    def __init__(
        self,
        cases: list[Case],
        entries: list[AdapterEntry],
        options: RunOptions,
        on_record: Callable[[dict], None],
        on_progress: Callable[[int], None] | None = None,
    ) -> None:
        self.cases = cases
        self.entries = entries
        self.options = options
        self.on_record = on_record
        self.on_progress = on_progress or (lambda total: None)
        self.context = multiprocessing.get_context("spawn")
        self.adapter_info: dict[str, dict] = {}
        self.expected_total = len(cases) * len(entries)
        self._units: list[Unit] = []

    # --- planning --------------------------------------------------------------------------

    def _plan(self) -> list[Unit]:
        groups: dict[str, list[AdapterEntry]] = {}
        for entry in self.entries:
            key = entry.declaration.worker or entry.name
            groups.setdefault(key, []).append(entry)
        ordered = sorted(self.cases, key=lambda c: (shape_key(c), c.id))
        units: list[Unit] = []
        weights = {
            key: sum(1 for e in group for c in self.cases if not e.declaration.missing(c))
            for key, group in groups.items()
        }
        spare = max(0, self.options.jobs - len(groups))
        shards = {key: 1 for key in groups}
        # Spare worker slots go to the heaviest groups: each extra shard pays one more import.
        for key in sorted(weights, key=weights.get, reverse=True):
            if spare <= 0:
                break
            if weights[key] >= 400:
                shards[key] += 1
                spare -= 1
        for key, group in groups.items():
            env: dict[str, str] = {}
            for entry in group:
                env.update(entry.declaration.env)
            if self.options.reference_dir is not None:
                env[STORE_ENV] = str(self.options.reference_dir)
            n = shards[key]
            size = -(-len(ordered) // n)
            for i in range(n):
                part = ordered[i * size : (i + 1) * size]
                if not part:
                    continue
                log = None
                if self.options.log_dir is not None:
                    self.options.log_dir.mkdir(parents=True, exist_ok=True)
                    stem = safe_file_name(f"{key}{'' if n == 1 else f'.{i}'}")
                    log = str(self.options.log_dir / f"{stem}.log")
                spec = WorkerSpec(
                    key=key,
                    adapters=tuple((e.name, e.target) for e in group),
                    env=tuple(sorted(env.items())),
                    log_path=log,
                )
                # Each unit starts at its own point of the (shape-sorted) list, so units running
                # side by side reach a case at different times: the later one reads the case's
                # reference from the run's store instead of computing it too.
                turn = round(len(part) * ((len(units) * 0.618034) % 1))
                units.append(Unit(spec=spec, entries=group, cases=part[turn:] + part[:turn]))
        # Longest first: compile-bound workers (measured: minutes on a first run, against
        # seconds for eager ones; docs/performance.md), then by supported (case, adapter) pairs.
        compiles = {
            key: any(e.declaration.compiles for e in group) for key, group in groups.items()
        }
        units.sort(
            key=lambda u: (
                not compiles[u.spec.key],
                -weights[u.spec.key] / max(1, shards[u.spec.key]),
            )
        )
        return units

    # --- worker lifecycle ------------------------------------------------------------------

    def _start(self, unit: Unit) -> None:
        parent, child = self.context.Pipe()
        process = self.context.Process(
            # Not daemonic, so adapters may use multiprocessing inside; the finally of run()
            # stops every worker, and the worker leads its own process group (see _stop).
            target=worker_main, args=(child, unit.spec), daemon=False,
            name=f"conformance-worker-{unit.spec.key}",
        )  # fmt: skip
        process.start()
        child.close()
        unit.process, unit.conn = process, parent
        unit.started_at = time.monotonic()
        unit.task_started = None
        unit.current = None
        unit.hello = None

    def _stop(self, unit: Unit, kill: bool = False) -> None:
        if unit.process is None:
            return
        if not kill:
            try:
                unit.conn.send(("stop",))
            except (OSError, ValueError):
                pass
            unit.process.join(timeout=5)
        if unit.process.is_alive():
            unit.process.kill()
            unit.process.join(timeout=5)
        _kill_group(unit.process.pid)
        unit.conn.close()
        unit.process = None

    def _emit(self, record: dict) -> None:
        self.on_record(record)

    def _on_hello(self, unit: Unit, hello: dict) -> None:
        unit.hello = hello
        first = unit.restarts == 0
        tasks: list[Task] = []
        for entry in unit.entries:
            info = hello.get(entry.name, {})
            if first:
                known = self.adapter_info.setdefault(entry.name, {"devices": [], "versions": {}})
                known["versions"].update(info.get("versions", {}))
                if "setup_s" in info:
                    known["setup_s"] = info["setup_s"]
                for device in info.get("devices", []):
                    if device not in known["devices"]:
                        known["devices"].append(device)
                if info.get("error"):
                    known["error"] = info["error"]
            devices = [d for d in info.get("devices", []) if self._device_selected(d)]
            if first and len(devices) != 1:
                self.expected_total += len(unit.cases) * (len(devices) - 1)
                self.on_progress(self.expected_total)
            for case in unit.cases:
                if info.get("error"):
                    if first:
                        self._error_record(case, entry.name, "cpu", info["error"])
                    continue
                for device in devices:
                    key = record_key(case.id, entry.name, device)
                    if key in self.options.done:
                        continue
                    reason = entry.declaration.unsupported_reason(case)
                    if reason:
                        if first:
                            record = base_record(case, entry.name, device)
                            record.update(verdict="unsupported", message=reason)
                            self._emit(record)
                        continue
                    tasks.append(Task(entry.name, case, device))
        if first:
            # Case-major order: every adapter of this worker runs a case back to back, so the
            # reference and inputs are computed once per case (cases are already shape-sorted,
            # so adapters still meet each shape in one stretch).
            position = {case.id: i for i, case in enumerate(unit.cases)}
            tasks.sort(key=lambda task: position[task.case.id])
            unit.tasks = tasks
        # After a restart, unit.tasks already holds only what remains.
        if unit.tasks:
            unit.conn.send(("run", unit.tasks))
        else:
            self._stop(unit)

    def _device_selected(self, device: str) -> bool:
        wanted = self.options.devices
        if not wanted:
            return True
        return any(device == w or device.split(":")[0] == w for w in wanted)

    def _error_record(self, case: Case, adapter: str, device: str, message: str) -> None:
        record = base_record(case, adapter, device)
        record.update(verdict="error", message=message)
        self._emit(record)

    def _fail_current(self, unit: Unit, message: str) -> None:
        """The running task (or, before hello, every task) becomes an error; restart the rest."""
        if unit.hello is None and unit.restarts:
            for task in unit.tasks:  # a restart that never came up: what remains fails
                self._error_record(
                    task.case, task.adapter, task.device, f"restart failed: {message}"
                )
            unit.tasks = []
            self._stop(unit, kill=True)
            return
        if unit.hello is None:
            detail = f"worker '{unit.spec.key}' failed to start: {message}"
            if unit.spec.log_path:
                detail += f" (log: {display_path(unit.spec.log_path)})"
            for entry in unit.entries:
                self.adapter_info.setdefault(entry.name, {"devices": [], "versions": {}})[
                    "error"
                ] = detail
                for case in unit.cases:
                    self._error_record(case, entry.name, "cpu", detail)
            unit.tasks = []
            self._stop(unit, kill=True)
            return
        index = unit.current if unit.current is not None else 0
        if unit.tasks:
            task = unit.tasks[index]
            self._error_record(task.case, task.adapter, task.device, message)
            unit.tasks = unit.tasks[index + 1 :]
        self._stop(unit, kill=True)
        if unit.tasks:
            unit.restarts += 1
            self._start(unit)

    # --- main loop -------------------------------------------------------------------------

    def run(self) -> None:
        store = self.options.reference_dir
        if store is not None:  # a folder left by a killed run may hold another code's results
            shutil.rmtree(store, ignore_errors=True)
            store.mkdir(parents=True, exist_ok=True)
        try:
            self._run_units()
        finally:
            if store is not None:
                shutil.rmtree(store, ignore_errors=True)

    def _run_units(self) -> None:
        units = self._plan()
        self._units = units
        pending = list(units)
        active: list[Unit] = []
        self.on_progress(self.expected_total)
        try:
            while pending or active:
                while pending and len(active) < max(1, self.options.jobs):
                    unit = pending.pop(0)
                    self._start(unit)
                    active.append(unit)
                handles = []
                for unit in active:
                    if unit.process is not None:
                        handles.extend([unit.conn, unit.process.sentinel])
                ready = wait(handles, timeout=0.5) if handles else []
                for unit in list(active):
                    if unit.process is None:
                        active.remove(unit)
                        continue
                    if unit.conn in ready or unit.process.sentinel in ready:
                        self._drain(unit)
                    self._check_timeout(unit)
                    if unit.process is None:
                        active.remove(unit)
        finally:
            for unit in units:
                if unit.process is not None:
                    self._stop(unit, kill=True)

    def _drain(self, unit: Unit) -> None:
        while unit.process is not None:
            try:
                if not unit.conn.poll():
                    if not unit.process.is_alive():
                        unit.process.join(timeout=1)
                        self._fail_current(
                            unit, f"worker process died ({_signal_name(unit.process.exitcode)})"
                        )
                    return
                message = unit.conn.recv()
            except (EOFError, OSError):
                unit.process.join(timeout=5)
                self._fail_current(
                    unit, f"worker process died ({_signal_name(unit.process.exitcode)})"
                )
                return
            kind = message[0]
            if kind == "hello":
                self._on_hello(unit, message[1])
            elif kind == "start":
                unit.current, unit.task_started = message[1], time.monotonic()
            elif kind == "result":
                unit.task_started = None
                self._emit(message[2])
            elif kind == "done":
                unit.tasks = []
                self._stop(unit)
                return

    def _check_timeout(self, unit: Unit) -> None:
        if unit.process is None:
            return
        now = time.monotonic()
        if unit.hello is None and now - unit.started_at > self.options.setup_timeout_s:
            self._fail_current(unit, f"setup timed out after {self.options.setup_timeout_s:g} s")
        elif unit.task_started is not None and now - unit.task_started > self.options.timeout_s:
            self._fail_current(
                unit, f"timed out after {self.options.timeout_s:g} s (the worker was killed)"
            )


def default_jobs() -> int:
    """Worker processes at once by default: the CPUs this process may use (a container or
    `taskset` can allow fewer than the machine has, and more workers than CPUs only thrash)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # no sched_getaffinity (macOS, Windows)
        return max(1, os.cpu_count() or 1)
