"""Rotary position embeddings through real libraries: every built-in adapter that declares the
rope tags, run on specs/rope.yaml (small and default tiers) in one `conformance run`, with the
verdict tally each must give (CPU; about 10 s). The errors where the trap bites are O(1), and
the passing adapters' errors are ~1e-7 against 1e-5 (float32), so the tallies do not depend on
the machine. Adapters whose framework is missing are skipped."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import BACKGROUND, assert_verdict_tally, cli_job, session_basetemp

SPEC = Path(__file__).resolve().parent.parent / "specs" / "rope.yaml"

# adapter -> (verdict tally, module it needs). Float64 through transformers diverges as declared
# (float32 rotary tables); RotaryEmbedding allows no float64 (unsupported but on the expanded
# variant, which inlines its function body).
EXPECTED = {
    # per-sequence rotary positions (cache lengths) as position_ids [B, L]
    "hf.eager": ({"pass": 15, "diverges": 12, "unsupported": 24}, "transformers"),
    "hf.sdpa": ({"pass": 15, "diverges": 12, "unsupported": 24}, "transformers"),
    "hf.llama.attention": ({"pass": 2, "diverges": 2, "unsupported": 47}, "transformers"),
    # issue 14: decoding with rope through transformers' own caches (rotate-half, whole head)
    "hf.llama.attention.dynamic-cache": (
        {"pass": 2, "diverges": 2, "unsupported": 47}, "transformers"),
    "hf.llama.attention.static-cache": (
        {"pass": 2, "diverges": 2, "unsupported": 47}, "transformers"),
    "hf.sdpa.rope-half-for-interleaved": (
        {"pass": 9, "diverges": 7, "fail": 11, "unsupported": 24}, "transformers"),
    "onnx.attention.4d": ({"pass": 16, "unsupported": 35}, "onnxruntime"),
    "onnx.attention.3d": ({"pass": 16, "unsupported": 35}, "onnxruntime"),
    "onnx.attention.opset24": ({"pass": 16, "unsupported": 35}, "onnxruntime"),
    # the function bodies: float64 runs (inlined RotaryEmbedding), the float32 scale divergence
    # shows where 1/sqrt(K) is inexact (K = 8)
    "onnx.attention.expanded": ({"pass": 26, "diverges": 3, "unsupported": 22}, "onnxruntime"),
    "onnx.attention.opset25": ({"pass": 16, "unsupported": 35}, "onnxruntime"),
    "ort.contrib.rotary-embedding": ({"pass": 16, "unsupported": 35}, "onnxruntime"),
    "ort.contrib.gqa": ({"pass": 10, "unsupported": 41}, "onnxruntime"),
    "numpy.einsum": ({"pass": 14, "unsupported": 37}, "numpy"),
}  # fmt: skip


def _job(base: Path) -> tuple:
    args = [arg for name in EXPECTED for arg in ("--adapter", name)]
    args += ["--jobs", "2", "--no-cache", "--quiet", "--no-report"]
    return cli_job(base, "rope", "run", str(SPEC), *args, timeout=600)


def prefetch(items: list[pytest.Item]) -> list[tuple]:
    """The one run these tests share, started in the background (conftest.Background)."""
    base = session_basetemp(items[0].config)
    needed = any("results" in item.fixturenames for item in items)
    return [_job(base)] if base is not None and needed else []


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    base = tmp_path_factory.getbasetemp()
    proc = BACKGROUND.result(*_job(base))
    assert proc.returncode in (0, 1), proc.stderr[-3000:]
    return json.loads((base / "rope" / "results.json").read_text())["results"]


@pytest.mark.parametrize("adapter", sorted(EXPECTED))
def test_rope_verdicts(results: list[dict], adapter: str) -> None:
    assert_verdict_tally(results, adapter, EXPECTED[adapter])


def test_only_the_trap_fails_and_only_on_interleaved_cases(results: list[dict]) -> None:
    bad = [(r["adapter"], r["case"]) for r in results if r["verdict"] in ("fail", "error")]
    assert bad, "the trap must fail"
    for adapter, case in bad:
        assert adapter == "hf.sdpa.rope-half-for-interleaved", (adapter, case)
        assert "interleaved" in case, case


def test_float64_divergence_is_the_rotary_tables(results: list[dict]) -> None:
    for record in results:
        if record["adapter"] == "hf.sdpa" and record["verdict"] == "diverges":
            assert record["divergence"]["id"] == "hf-rope-float32-tables"
            assert 1e-9 < record["max_abs_error"] < 1e-5
