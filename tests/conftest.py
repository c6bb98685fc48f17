"""Shared fixtures: tiny specs written where they are used, and a CLI runner."""

from __future__ import annotations

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
