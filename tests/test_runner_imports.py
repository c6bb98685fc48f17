"""The runner process never imports a framework: only the workers do.

A framework object that crosses the worker pipe (torch.__version__ is a `TorchVersion`, a str
subclass defined inside torch) would make the runner import that framework to unpickle it:
seconds of CPU and hundreds of MB in the process that should stay light.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

RUNNER = """
import sys
from conformance.cli import main

if __name__ == "__main__":
    try:
        main(["run", sys.argv[1], "--adapter", "torch.sdpa", "-q", "--out", sys.argv[2],
              "--no-report"])
    except SystemExit:
        pass
    print("frameworks in the runner:", sorted(
        m for m in ("torch", "jax", "tensorflow", "onnxruntime", "openvino") if m in sys.modules
    ))
"""


def test_runner_does_not_import_the_framework_of_its_workers(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    script = tmp_path / "runner.py"  # a file: spawned workers re-import the main module
    script.write_text(RUNNER, encoding="utf-8")
    done = subprocess.run(
        [sys.executable, str(script), str(ROOT / "specs" / "basic.yaml"), str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert (tmp_path / "out" / "results.json").exists(), done.stderr[-2000:]
    assert "frameworks in the runner: []" in done.stdout, done.stdout + done.stderr[-2000:]
