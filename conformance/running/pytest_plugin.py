"""Run conformance cases as pytest items: `pytest specs/ --conformance-adapter torch.sdpa`.

Each (case, adapter, device) becomes an item with the id `CASE[adapter-device-dtype]`, so the
usual pytest tools apply: -k, -x, --lf, pytest-xdist's -n, --junitxml. Verdicts map to pytest
outcomes: pass -> passed, fail/error -> failed, diverges (a declared, verified divergence) ->
xfailed with its reason, unsupported -> skipped with its reason.

The plugin is inert unless --conformance-adapter is given, so it never touches other projects'
YAML files or the project's own tests.
"""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest

from ..adapter_api.registry import AdapterEntry, resolve
from ..cases.case import TIERS, in_tier
from ..errors import ConformanceError
from ..verdicts.evaluate import base_record
from .worker import Task, WorkerSpec, worker_main


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("conformance", "attention conformance cases")
    group.addoption(
        "--conformance-adapter",
        action="append",
        default=[],
        metavar="NAME",
        help="run spec files (*.yaml) as tests on this adapter (repeatable; "
        "prefixes and module:Class work as in `conformance run`)",
    )
    group.addoption(
        "--conformance-device",
        action="append",
        default=[],
        metavar="DEV",
        help="devices to run on (default: every device the adapter sees)",
    )
    group.addoption("--conformance-timeout", type=float, default=120.0, metavar="S",
                    help="per-case timeout in seconds")  # fmt: skip
    group.addoption(
        "--conformance-tier",
        choices=TIERS,
        default="default",
        help="size tier of the cases collected (each includes the smaller ones; default: default)",
    )


class WorkerSession:
    """One worker process, used synchronously: one task at a time, restarted after a crash."""

    def __init__(self, spec: WorkerSpec, timeout: float) -> None:
        self.spec = spec
        self.timeout = timeout
        self.process = None
        self.conn = None
        self.hello: dict = {}

    def _start(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=worker_main, args=(child, self.spec), daemon=True)
        self.process.start()
        child.close()
        if not self.conn.poll(600):
            raise RuntimeError(f"worker '{self.spec.key}' did not start within 600 s")
        self.hello = self.conn.recv()[1]

    def devices(self, adapter: str) -> list[str]:
        if self.process is None:
            self._start()
        info = self.hello.get(adapter, {})
        if info.get("error"):
            return ["cpu"]  # a setup error still becomes failing items, as `conformance run` does
        return info.get("devices", [])

    def run(self, task: Task) -> dict:
        if self.process is None or not self.process.is_alive():
            self._start()
        error = self.hello.get(task.adapter, {}).get("error")
        if error:
            record = base_record(task.case, task.adapter, task.device)
            record.update(verdict="error", message=error)
            return record
        self.conn.send(("run", [task]))
        deadline = self.timeout
        while True:
            if not self.conn.poll(deadline):
                self.close(kill=True)
                message = f"timed out after {self.timeout:g} s (the worker was killed)"
                break
            try:
                message = self.conn.recv()
            except EOFError:
                self.process.join(timeout=5)
                code = self.process.exitcode
                self.close(kill=True)
                message = f"worker process died (exit code {code})"
                break
            if message[0] == "result":
                self.conn.recv()  # ("done",)
                return message[2]
        record = base_record(task.case, task.adapter, task.device)
        record.update(verdict="error", message=message)
        return record

    def close(self, kill: bool = False) -> None:
        if self.process is None:
            return
        if not kill:
            try:
                self.conn.send(("stop",))
            except OSError:
                pass
            self.process.join(timeout=5)
        if self.process.is_alive():
            self.process.kill()
        self.process = None


class _Pool:
    def __init__(self, config: pytest.Config) -> None:
        self.entries: list[AdapterEntry] = resolve(config.getoption("conformance_adapter"))
        self.devices_filter: list[str] = config.getoption("conformance_device")
        self.timeout: float = config.getoption("conformance_timeout")
        self.sessions: dict[str, WorkerSession] = {}
        self.empty: dict[str, str] = {}  # adapter -> why it executed nothing

    def session(self, entry: AdapterEntry) -> WorkerSession:
        key = entry.declaration.worker or entry.name
        if key not in self.sessions:
            group = [e for e in self.entries if (e.declaration.worker or e.name) == key]
            env: dict[str, str] = {}
            for e in group:
                env.update(e.declaration.env)
            spec = WorkerSpec(key, tuple((e.name, e.target) for e in group), tuple(env.items()))
            self.sessions[key] = WorkerSession(spec, self.timeout)
        return self.sessions[key]

    def devices(self, entry: AdapterEntry) -> list[str]:
        """The devices the adapter reports that --conformance-device selects; never a guess
        (an adapter without a device gets no items and a line in the summary)."""
        from .executed import selected_devices

        seen = self.session(entry).devices(entry.name)
        chosen = selected_devices(seen, self.devices_filter)
        if not chosen:
            self.empty[entry.name] = (
                "it reports no devices on this machine"
                if not seen
                else f"--conformance-device selects none of its devices ({', '.join(seen)})"
            )
        return chosen

    def close(self) -> None:
        for session in self.sessions.values():
            session.close()


_POOL = pytest.StashKey[_Pool]()


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("conformance_adapter"):
        try:
            config.stash[_POOL] = _Pool(config)
        except ConformanceError as error:
            raise pytest.UsageError(str(error)) from None


def pytest_unconfigure(config: pytest.Config) -> None:
    pool = config.stash.get(_POOL, None)
    if pool is not None:
        pool.close()


def pytest_terminal_summary(terminalreporter, exitstatus, config: pytest.Config) -> None:  # noqa: ANN001
    pool = config.stash.get(_POOL, None)
    if pool is None or not pool.empty:
        return
    terminalreporter.section("conformance: adapters that executed nothing")
    for name, why in sorted(pool.empty.items()):
        terminalreporter.write_line(f"{name}: {why}")


def pytest_collect_file(file_path: Path, parent: pytest.Collector):  # noqa: ANN201
    if _POOL not in parent.config.stash or file_path.suffix not in (".yaml", ".yml"):
        return None
    return SpecFile.from_parent(parent, path=file_path)


class SpecFile(pytest.File):
    def collect(self):  # noqa: ANN201
        from ..spec import load_spec

        pool = self.config.stash[_POOL]
        try:
            cases = load_spec(self.path)
        except ConformanceError as error:
            raise self.CollectError(str(error)) from None
        tier = self.config.getoption("conformance_tier")
        cases = [case for case in cases if in_tier(case, tier)]
        for entry in pool.entries:
            for device in pool.devices(entry):
                for case in cases:
                    name = f"{case.id}[{entry.name}-{device}-{case.dtype}]"
                    yield ConformanceItem.from_parent(
                        self, name=name, entry=entry, case=case, device=device
                    )


class ConformanceFailure(Exception):
    pass


class ConformanceItem(pytest.Item):
    def __init__(self, *, entry: AdapterEntry, case, device: str, **kwargs) -> None:  # noqa: ANN001, ANN003
        super().__init__(**kwargs)
        self.entry, self.case, self.device = entry, case, device
        self.record: dict | None = None

    def runtest(self) -> None:
        reason = self.entry.declaration.unsupported_reason(self.case)
        if reason:
            pytest.skip(reason)
        pool = self.config.stash[_POOL]
        record = pool.session(self.entry).run(Task(self.entry.name, self.case, self.device))
        self.record = record
        verdict = record["verdict"]
        if verdict == "unsupported":
            pytest.skip(record["message"])
        if verdict == "diverges":
            pytest.xfail(record["message"])
        if verdict in ("fail", "error"):
            raise ConformanceFailure(f"{verdict}: {record['message']}")

    def repr_failure(self, excinfo, style=None):  # noqa: ANN001, ANN201
        if isinstance(excinfo.value, ConformanceFailure):
            return f"{self.case.id} on {self.entry.name} ({self.device}): {excinfo.value}\n  spec: {self.case.source}"
        return super().repr_failure(excinfo, style)

    def reportinfo(self):  # noqa: ANN201
        return self.path, None, self.name
