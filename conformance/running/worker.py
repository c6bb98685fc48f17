"""The worker process: imports one framework, runs its adapters' cases, streams result records.

One worker per worker key (e.g. "torch", "jax", "keras-tensorflow"): frameworks and
process-wide settings (KERAS_BACKEND, JAX's x64 flag) differ per adapter family, and a crash or
hang in one framework must cost only its own cases.

Protocol over a multiprocessing Pipe (parent <-> worker), all messages are tuples:
    worker -> parent  ("hello", {adapter: {"devices", "versions", "error"}})
    parent -> worker  ("run", [Task, ...])
    worker -> parent  ("start", index) ... ("result", index, record) ... ("done",)
    parent -> worker  ("stop",)
"""

from __future__ import annotations

import os
import signal
import sys
import time
import traceback
from dataclasses import dataclass

from ..cases.case import Case


@dataclass(frozen=True)
class Task:
    adapter: str
    case: Case
    device: str


@dataclass(frozen=True)
class WorkerSpec:
    key: str  # worker key shared by its adapters
    adapters: tuple[tuple[str, str], ...]  # (name, "module:Class")
    env: tuple[tuple[str, str], ...] = ()
    log_path: str | None = None  # where the framework's own stdout/stderr go


def _redirect_output(path: str | None) -> None:
    """Frameworks print banners and warnings; keep them out of the user's terminal."""
    if not path:
        return
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def worker_main(conn, spec: WorkerSpec) -> None:  # noqa: ANN001 - multiprocessing Connection
    """Entry point of a worker process."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and stops us
    if hasattr(os, "setsid"):  # lead a process group the parent kills whole when it stops us
        try:
            os.setsid()
        except OSError:
            pass
    os.environ.update(dict(spec.env))
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    _redirect_output(spec.log_path)

    from ..adapter_api.registry import load_target
    from ..oracle.reference_cache import ReferenceCache, run_store
    from ..verdicts.evaluate import evaluate
    from . import profile

    adapters = {}
    hello = {}
    for name, target in spec.adapters:
        info = {"devices": [], "versions": {}, "error": None}
        started = time.perf_counter()
        try:
            adapter = load_target(target)()
            adapter.setup()
            info["setup_s"] = time.perf_counter() - started
            # Plain strings only: torch.__version__ is a str subclass defined in torch, and
            # unpickling it would import torch into the runner (2 s and 250 MB, measured);
            # an object that cannot be pickled at all would kill the worker.
            info["devices"] = [str(device) for device in adapter.devices()]
            info["versions"] = {str(k): str(v) for k, v in adapter.versions().items()}
            adapters[name] = adapter
        except Exception as error:  # noqa: BLE001 - reported as the adapter's error
            info["error"] = f"setup failed: {type(error).__name__}: {error}"
            traceback.print_exc()
        hello[name] = info
    conn.send(("hello", hello))
    profile.take()  # what setup() compiled is in setup_s already

    # References are shared with the run's other workers through a folder (RunOptions).
    # The runner sends tasks case-major (every adapter of this worker runs a case back to
    # back), so a case's inputs and references are never needed once the next case starts:
    # holding two cases keeps a worker's memory flat in the number and size of cases
    # (measured with benchmarks/memory.py: 64 cases held made workers grow with 4x the cases).
    cache = ReferenceCache(size=2, store=run_store())
    while True:
        try:
            message = conn.recv()
        except EOFError:
            return
        if message[0] == "stop":
            return
        tasks: list[Task] = message[1]
        for index, task in enumerate(tasks):
            conn.send(("start", index))
            started = time.perf_counter()
            record = evaluate(adapters[task.adapter], task.case, task.device, cache)
            # total_s: the whole case through the harness (inputs, reference, adapter, compare);
            # duration_s: the adapter's run() alone. Their ratio is the harness overhead.
            record["total_s"] = time.perf_counter() - started
            # phases: where the case's time went (compile/export, inputs, reference, compare)
            phases = profile.take()
            if phases:
                record["phases"] = phases
            conn.send(("result", index, record))
        conn.send(("done",))
