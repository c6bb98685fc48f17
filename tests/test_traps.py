"""Trap adapters (adapters/traps_*.py): each calls the real library the way users get it
wrong, and must FAIL exactly on the cases where that call form bites and PASS on the control.

One `conformance run` of tests/trap_cases.yaml over every trap (about 20 s: one worker per
framework). The errors where a trap bites are O(0.1), far above any tolerance, so the
verdicts do not depend on the CPU or thread count.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from conftest import run_cli

from conformance.adapter_api.registry import builtin_entries, load_target

ROOT = Path(__file__).resolve().parent.parent
SPEC = Path(__file__).resolve().parent / "trap_cases.yaml"
DOC = ROOT / "docs" / "adapters" / "traps.md"

# (trap adapter, case) -> verdict. "fail" where the trap bites, "pass" where it is harmless.
EXPECTED = {
    ("torch.mha.slow.is-causal-hint", "causal-window-layer"): "fail",
    ("torch.mha.slow.is-causal-hint", "decode-step-layer"): "fail",
    ("torch.mha.slow.is-causal-hint", "random-layer"): "pass",
    ("torch.mha.slow.is-causal-hint", "causal-layer"): "pass",
    ("torch.mha.slow.sdpa-mask-polarity", "random-layer"): "fail",
    ("torch.mha.slow.sdpa-mask-polarity", "causal-window-layer"): "fail",
    ("torch.mha.slow.sdpa-mask-polarity", "causal-layer"): "pass",
    ("torch.mha.slow.attn-mask-repeat", "random-layer"): "fail",
    ("torch.mha.slow.attn-mask-repeat", "query-padding-layer"): "fail",
    ("torch.mha.slow.attn-mask-repeat", "causal-window-layer"): "pass",
    ("torch.mha.slow.attn-mask-repeat", "causal-layer"): "pass",
    ("torch.sdpa.is-causal-decode", "decode-step-kernel"): "fail",
    ("torch.sdpa.is-causal-decode", "causal-short-kernel"): "pass",
    ("torch.sdpa.is-causal-decode", "causal-kernel"): "pass",
    ("jax.dpa.xla.is-causal-decode", "decode-step-kernel"): "fail",
    ("jax.dpa.xla.is-causal-decode", "causal-short-kernel"): "pass",
    ("jax.dpa.xla.is-causal-decode", "causal-kernel"): "pass",
    ("keras.tensorflow.explicit.additive-mask", "random-layer"): "fail",
    ("keras.tensorflow.explicit.additive-mask", "causal-layer"): "pass",
    ("keras.tensorflow.fused.use-causal-mask-decode", "decode-step-layer"): "fail",
    ("keras.tensorflow.fused.use-causal-mask-decode", "causal-short-layer"): "pass",
    ("keras.tensorflow.fused.use-causal-mask-decode", "causal-layer"): "pass",
    ("keras.tensorflow.explicit.query-mask-argument", "query-padding-layer"): "fail",
    ("keras.tensorflow.explicit.query-mask-argument", "random-layer"): "pass",
    ("keras.tensorflow.explicit.query-mask-argument", "causal-layer"): "pass",
    ("ort.contrib.mha.unidirectional", "causal-short-kernel"): "fail",
    ("ort.contrib.mha.unidirectional", "causal-kernel"): "pass",
    ("hf.sdpa.rope-half-for-interleaved", "rope-interleaved-kernel"): "fail",
    ("hf.sdpa.rope-half-for-interleaved", "rope-half-kernel"): "pass",
    ("hf.sdpa.rope-half-for-interleaved", "causal-kernel"): "pass",
}
TRAPS = sorted({adapter for adapter, _ in EXPECTED})
MODULES = {"torch": "torch", "jax": "jax", "keras": "tensorflow", "ort": "onnxruntime",
           "hf": "transformers"}  # fmt: skip


def trap_entries() -> list:
    return [e for e in builtin_entries() if ".traps_" in e.target]


@pytest.fixture(scope="module")
def verdicts(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("traps")
    args = [arg for name in TRAPS for arg in ("--adapter", name)]
    proc = run_cli("run", str(SPEC), *args, "--jobs", "2", "--no-cache", "--quiet",
                   "--out", str(out), "--no-report", timeout=600)  # fmt: skip
    assert proc.returncode in (0, 1), proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())["results"]
    return {(r["adapter"], r["case"]): r for r in results}


@pytest.mark.parametrize(("adapter", "case"), sorted(EXPECTED))
def test_trap_bites_where_documented(verdicts: dict, adapter: str, case: str) -> None:
    module = MODULES[adapter.split(".")[0]]
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed")
    record = verdicts.get((adapter, f"traps/{case}[float32]"))
    assert record is not None, f"{adapter} did not run {case}"
    assert record["verdict"] == EXPECTED[(adapter, case)], record.get("message")


def test_every_trap_is_tested_and_documented() -> None:
    names = {e.name for e in trap_entries()}
    assert names == set(TRAPS)
    doc = DOC.read_text()
    for name in names:
        assert f"`{name}`" in doc, f"{name} has no entry in {DOC.name}"


def test_traps_subclass_the_careful_adapters() -> None:
    """A trap reuses the real adapter and changes only the call form (no copied code)."""
    for entry in trap_entries():
        cls = load_target(entry.target)
        base = cls.__mro__[1]
        assert not base.__module__.endswith(cls.__module__.rsplit(".", 1)[-1])
        assert cls.declaration.summary.startswith("TRAP: ")
        assert cls.declaration.worker == base.declaration.worker
