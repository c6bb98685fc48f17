"""Shared fixtures: tiny specs written where they are used, and a CLI runner."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
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
    return subprocess.run(
        [sys.executable, "-m", "conformance.cli", *args],
        capture_output=True, text=True, timeout=timeout, env=env, cwd=kwargs.pop("cwd", ROOT),
        **kwargs,
    )  # fmt: skip


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
