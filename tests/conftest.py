"""Shared fixtures: tiny specs written where they are used, and a CLI runner."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Hashable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent

TINY_SPEC = """\
version: 1
family: tiny
cases:
  - name: self
    shape: {query_len: 4, num_heads: 2, key_dim: 4}
    mask: {causal: top-left}
    compare: [output, weights]
    matrix: {dtype: [float32, float64]}
  - name: kernel
    mode: kernel
    shape: {query_len: 3, kv_len: 5, num_heads: 2, key_dim: 4}
    mask: {key_padding: [5, 2]}
  - name: hang
    mode: kernel
    shape: {query_len: 2, num_heads: 1, key_dim: 2}
  - name: after-hang
    mode: kernel
    shape: {query_len: 2, num_heads: 1, key_dim: 2}
"""


@pytest.fixture
def tiny_spec(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY_SPEC)
    return path


def run_cli(*args: str, timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:  # noqa: ANN003
    """Run `conformance ...` as a user would; tests/ is importable for the broken adapters."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS), env.get("PYTHONPATH")]))
    argv = [sys.executable, "-m", "conformance.cli", *args]
    cwd = kwargs.pop("cwd", ROOT)
    if threading.current_thread() is not threading.main_thread():
        return _run_killable(argv, timeout=timeout, env=env, cwd=cwd)
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd, **kwargs
    )  # fmt: skip


def assert_verdict_tally(results: list[dict], adapter: str, expected: tuple[dict, str]) -> None:
    """The verdict counts of `adapter` in a run's records equal expected[0]; skipped when the
    module expected[1] (the adapter's framework) is not installed."""
    import importlib.util
    from collections import Counter

    tally, module = expected
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed")
    assert dict(Counter(r["verdict"] for r in results if r["adapter"] == adapter)) == tally


# --- background work: expensive child processes started as soon as collection ends --------
#
# A fuzz run of a compiling framework is a child process of a minute or more that pytest would
# otherwise wait for. Modules that need such children define
#     def prefetch(items: list[pytest.Item]) -> list[tuple[Hashable, Callable[[], object]]]
# (the jobs their selected items need, in the order the items need them). After collection,
# one background thread runs them one at a time, last needed first, while the tests go on in
# this process, so the machine's second core does that work; a test then takes its job's
# result with BACKGROUND.result(key, fn), which waits for it, or runs it here if it has not
# started.
# The results are the same either way: only when the child runs changes. Under pytest-xdist
# (each worker collects every test but runs a share) nothing is prefetched.


def _run_killable(
    argv: list[str], *, timeout: float, env: dict, cwd: Path
) -> subprocess.CompletedProcess:
    """subprocess.run for a background thread: the child is killed if the session ends first."""
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env=env, cwd=cwd) as proc:  # fmt: skip
        with BACKGROUND.lock:
            BACKGROUND.children.add(proc)
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise
        finally:
            with BACKGROUND.lock:
                BACKGROUND.children.discard(proc)
    return subprocess.CompletedProcess(argv, proc.returncode, stdout, stderr)


class Background:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.children: set[subprocess.Popen] = set()
        self._futures: dict[Hashable, Future] = {}
        self._pool: ThreadPoolExecutor | None = None

    def start(self, key: Hashable, fn: Callable[[], object]) -> None:
        with self.lock:
            if key in self._futures:
                return
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="prefetch")
            self._futures[key] = self._pool.submit(fn)

    def result(self, key: Hashable, fn: Callable[[], object]) -> object:
        """fn()'s result, computed once per key: by the background thread or, if it has not
        started it yet, here."""
        with self.lock:
            future = self._futures.get(key)
            mine = future is None or future.cancel()  # not started: take it over
            if mine:
                future = self._futures[key] = Future()
        if mine:
            try:
                future.set_result(fn())
            except BaseException as error:
                future.set_exception(error)
                raise
        return future.result()

    def stop(self) -> None:
        with self.lock:
            pool, self._pool = self._pool, None
            for future in self._futures.values():
                future.cancel()
            for proc in self.children:
                proc.kill()
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


BACKGROUND = Background()


def session_basetemp(config: pytest.Config) -> Path | None:
    """tmp_path_factory's base folder, from a hook (where no fixture is available)."""
    factory = getattr(config, "_tmp_path_factory", None)  # the object behind the fixture
    return None if factory is None else factory.getbasetemp()


def cli_job(
    base: Path, name: str, *args: str, timeout: float
) -> tuple[Hashable, Callable[[], subprocess.CompletedProcess]]:
    """`conformance ARGS --out base/name` as a BACKGROUND job: (key, function)."""
    out = str(base / name)
    return ("cli", out), functools.partial(run_cli, *args, "--out", out, timeout=timeout)


def pytest_collection_finish(session: pytest.Session) -> None:
    if os.environ.get("PYTEST_XDIST_WORKER") or session.config.option.collectonly:
        return
    if os.environ.get("CONFORMANCE_TEST_PREFETCH", "1") == "0":  # to compare, or to debug
        return
    by_module: dict = {}
    for item in session.items:
        module = getattr(item, "module", None)
        if getattr(module, "prefetch", None) is not None:
            by_module.setdefault(module, []).append(item)
    jobs = [job for module, items in by_module.items() for job in module.prefetch(items)]
    # Last needed, first started: this process works through the tests in order, taking over
    # any job not started yet, while the background thread works back from the end.
    for key, fn in reversed(jobs):
        BACKGROUND.start(key, fn)


def pytest_sessionfinish(session: pytest.Session) -> None:
    BACKGROUND.stop()


# --- shared, read-only data several modules need (computed once per test process) -----------


@functools.cache
def shipped_cases() -> tuple:
    """Every case of the shipped spec library, loaded once per process (each load takes about
    2 s, and a case computes its feature tags once: modules that share the Case objects share
    that work too). Callers filter it; nobody may mutate a case."""
    from conformance.spec import load_specs, shipped_specs_dir

    return tuple(load_specs([shipped_specs_dir()]))


SCOREBOARD = ROOT / "reports" / "results.json.gz"


@pytest.fixture(scope="session")
def scoreboard() -> dict:
    """The committed full-CPU scoreboard, read once (77k results: a few seconds). Read-only."""
    from conformance.report import load_results

    return load_results(SCOREBOARD)


@pytest.fixture(scope="session")
def scoreboard_markdown(scoreboard: dict) -> str:
    """The scoreboard rendered as Markdown once (about 15 s on a loaded 2-core machine)."""
    from conformance.report.markdown import render_markdown

    return render_markdown(scoreboard)


@pytest.fixture(scope="session")
def scoreboard_html(scoreboard: dict) -> str:
    """The scoreboard rendered as the HTML page once (about 10 s)."""
    from conformance.report import render

    return render(scoreboard, "html")
