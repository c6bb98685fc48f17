"""The shipped examples: the JavaScript and paper-einsum implementations pass, the broken one is
caught, and its reproducer runs with and without the suite installed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conformance.cases.layouts import to_linear
from conformance.report.reproducer import write_reproducer
from conformance.running.feature_table import feature_table
from conformance.spec import load_spec
from conformance.verdicts.evaluate import evaluate

ROOT = Path(__file__).resolve().parent.parent
CASES = load_spec(Path(__file__).parent / "plugin_cases.yaml")
BASIC = ROOT / "specs" / "basic.yaml"
NUMPY_HOME = str(Path(np.__file__).resolve().parent.parent)


def by_id(fragment: str):  # noqa: ANN201
    return next(c for c in CASES if fragment in c.id)


def no_failures(records: list[dict]) -> None:
    bad = {r["case"]: r["message"] for r in records if r["verdict"] in ("fail", "error")}
    assert not bad


@pytest.mark.skipif(shutil.which("node") is None, reason="Node.js is not installed")
def test_javascript_example_passes_the_basic_families() -> None:
    from conformance.adapter_api import external

    cases = load_spec(BASIC) if BASIC.exists() else CASES
    adapter = external.adapter_class(f"external:node {ROOT / 'examples/js/attention.js'}")()
    try:
        records = [evaluate(adapter, case, "cpu") for case in cases]
    finally:
        adapter.close()
    no_failures(records)
    passed = [r for r in records if r["verdict"] == "pass"]
    assert {r["mode"] for r in passed} == {"kernel", "layer"}
    if BASIC.exists():
        assert len(passed) == len(cases)  # the basic family has nothing it cannot express


def test_paper_einsum_example_passes() -> None:
    pytest.importorskip("tensorflow")
    from examples.paper_einsum import paper_einsum

    source = (ROOT / "examples" / "paper_einsum.py").read_text().splitlines()
    assert len([line for line in source if line.strip()]) < 30
    adapter = paper_einsum()
    adapter.setup()
    records = {c.id: evaluate(adapter, c, "cpu") for c in CASES}
    no_failures(list(records.values()))
    passed = {k for k, r in records.items() if r["verdict"] == "pass"}
    for case_id in (
        "plugins/layer-no-bias-heads[G=4,float64]",  # MultiheadAttentionBatched
        "plugins/layer-no-bias-heads[G=1,float32]",  # MultiqueryAttentionBatched
        "plugins/layer-no-bias-masks",  # additive mask with causal, padding and a bias
        "plugins/layer-no-bias-fully-masked",  # NaN rows, as the reference
        "plugins/layer-decode-multi-query",  # MultiquerySelfAttentionIncremental
        "plugins/layer-decode-multi-query-from-empty",
    ):
        assert case_id in passed, records[case_id]["message"]
    assert "no projection biases" in records["plugins/layer-float64"]["message"]


def _broken_records() -> list[dict]:
    from examples.broken_attention import broken_attention

    adapter = broken_attention()
    return [evaluate(adapter, c, "cpu") for c in CASES]


def test_broken_example_is_caught() -> None:
    records = {r["case"]: r for r in _broken_records()}
    assert records["plugins/kernel-float64"]["verdict"] == "pass"  # no mask: nothing to invert
    assert records["plugins/kernel-gqa[G=2]"]["verdict"] == "pass"
    for case_id in (
        "plugins/kernel-causal-top-left",
        "plugins/kernel-causal-bottom-right",
        "plugins/kernel-padding-random",
        "plugins/kernel-fully-masked-row",
    ):
        assert records[case_id]["verdict"] == "fail", case_id
    table = feature_table(list(records.values()))
    culprits = table.splitlines()[-1]
    assert culprits.strip().startswith("look first at:")
    for tag in ("causal", "key-padding", "bool-mask"):
        assert tag in culprits
    assert "float32" not in culprits and "kernel" not in culprits


def _run_script(path: Path, *args: str, isolated: bool = False) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    command = [sys.executable, str(path), *args]
    if isolated:  # no site-packages (so no editable install): only NumPy on the path
        command.insert(1, "-S")
        env["PYTHONPATH"] = NUMPY_HOME
    else:
        env.pop("PYTHONPATH", None)
    return subprocess.run(
        command, cwd=path.parent, env=env, capture_output=True, text=True, timeout=120
    )


def test_broken_example_reproducer(tmp_path: Path) -> None:
    first = next(r for r in _broken_records() if r["verdict"] == "fail")
    case = next(c for c in CASES if c.id == first["case"])
    target = "examples.broken_attention:broken_attention"

    script = write_reproducer(case, first, target, tmp_path / "with", search_path=[str(ROOT)])
    names = {p.name for p in script.parent.iterdir()}
    assert {"reproduce.py", "case.json", "q.npy", "k.npy", "v.npy", "expected_output.npy"} <= names
    assert {"actual_output.npy", "mask_attend.npy", "mask_masked.npy", "mask_additive.npy"} <= names
    text = script.read_text()
    assert "broken_attention(q, k, v, mask_attend, scale=...)" in text  # how it is called
    done = _run_script(script)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "re-ran example.broken.mask-polarity" in done.stdout
    assert "output: FAIL" in done.stdout

    # Mailed to someone without the suite (or the repository): the saved output still tells.
    alone = write_reproducer(case, first, target, tmp_path / "alone", search_path=[])
    done = _run_script(alone, isolated=True)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "attention-conformance is not importable" in done.stdout
    assert "checking the saved output" in done.stdout and "output: FAIL" in done.stdout


def test_reproducer_passes_for_a_correct_layer(tmp_path: Path) -> None:
    """The script is not a rubber stamp: the reference adapter's reproducer exits 0."""
    case = by_id("layer-cross")
    record = {"adapter": "reference", "device": "cpu", "verdict": "pass", "message": ""}
    script = write_reproducer(case, record, "conformance.adapters.reference:ReferenceAdapter",
                              tmp_path)  # fmt: skip
    meta = json.loads((script.parent / "case.json").read_text())
    assert {"query", "key", "value"} == set(meta["inputs"])
    linear = np.load(script.parent / "weights_linear.npz")
    wq, bq = to_linear(np.load(script.parent / "wq.npy"), np.load(script.parent / "bq.npy"))
    assert np.array_equal(linear["q_weight"], wq) and np.array_equal(linear["q_bias"], bq)
    assert "mask_additive.npy" in meta["files"].values()
    done = _run_script(script)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "output: ok" in done.stdout
    done = _run_script(script, "--saved", isolated=True)
    assert done.returncode == 0 and "checking the saved output" in done.stdout


def test_cli_run_prints_the_feature_table(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "conformance.cli", "run", str(Path(__file__).parent / "plugin_cases.yaml"),
         "--adapter", "examples.broken_attention:broken_attention", "--out", str(tmp_path),
         "--no-report", "--jobs", "1"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr
    assert "example.broken.mask-polarity: features" in done.stdout
    assert "look first at:" in done.stdout
