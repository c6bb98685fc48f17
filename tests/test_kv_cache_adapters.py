"""Chunked prefill, mixed cache lengths and paged caches through real libraries (issue 14
item 6): the built-in adapters that declare the tags run specs/kv_cache.yaml at the small tier
in one `conformance run` (CPU; about 30 s), with the verdict tally each must give. The passing
errors are ~1e-7 against float32 tolerances of ~1e-5, and a wrong page or length moves the
output by O(1), so the tallies do not depend on the machine. Adapters whose framework is
missing are skipped.

torch.flex.paged.compiled is left out here (each shape compiles for ~20 s); run it with
`conformance run specs/kv_cache.yaml --adapter torch.flex.paged.compiled`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import BACKGROUND, assert_verdict_tally, cli_job, session_basetemp

from conformance.spec import load_spec

SPEC = Path(__file__).resolve().parent.parent / "specs" / "kv_cache.yaml"

# adapter -> (verdict tally over the 17 small-tier cases, module it needs)
EXPECTED = {
    # every paged case: the case's pages and block table through PagedAttention
    "torch.flex.paged.eager": ({"pass": 6, "unsupported": 11}, "torch"),
    # pages of 32 only (the CPU plugin's block size), float32, causal steps
    "openvino.paged-attention.f32": ({"pass": 1, "unsupported": 16}, "openvino"),
    # mixed cache lengths as a mask: both dtypes (float64 softmax in float32 diverges, declared)
    "torch.flex.eager": ({"pass": 3, "unsupported": 14}, "torch"),
    "hf.sdpa": ({"pass": 3, "unsupported": 14}, "transformers"),
    "numpy.einsum": ({"pass": 4, "unsupported": 13}, "numpy"),  # no 1 < G < H
    "jax.dpa.xla.seq-lengths": ({"pass": 2, "diverges": 1, "unsupported": 14}, "jax"),
    # seqlens_k for the decode step; chunked steps after a past only at batch 1 (ORT's rule)
    "ort.contrib.gqa": ({"pass": 2, "unsupported": 15}, "onnxruntime"),
    # chunked decode steps with past_key/past_value; steps over a cached encoder memory
    "onnx.attention.4d": ({"pass": 4, "unsupported": 13}, "onnxruntime"),
    "ort.contrib.mha": ({"pass": 3, "unsupported": 14}, "onnxruntime"),
}


def _job(base: Path) -> tuple:
    args = [arg for name in EXPECTED for arg in ("--adapter", name)]
    args += ["--tier", "small", "--jobs", "2", "--no-cache", "--quiet", "--no-report"]
    return cli_job(base, "kv_cache", "run", str(SPEC), *args, timeout=600)


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
    return json.loads((base / "kv_cache" / "results.json").read_text())["results"]


@pytest.mark.parametrize("adapter", sorted(EXPECTED))
def test_kv_cache_verdicts(results: list[dict], adapter: str) -> None:
    assert_verdict_tally(results, adapter, EXPECTED[adapter])


def test_nothing_fails(results: list[dict]) -> None:
    bad = [(r["adapter"], r["case"], r["message"]) for r in results if r["verdict"] in
           ("fail", "error")]  # fmt: skip
    assert not bad


@pytest.mark.filterwarnings("ignore:flex_attention called without")
def test_paged_adapter_reads_the_page_table() -> None:
    """Negative control: the same pages read through another block table give another output,
    so torch's PagedAttention really addresses the pool through page_table (no silent
    contiguous fallback)."""
    pytest.importorskip("torch")
    import dataclasses

    import torch
    from conformance.adapters.torch_paged import (
        logical_block_mask,
        paged_attention_for,
        physical_cache,
    )
    from torch.nn.attention.flex_attention import flex_attention

    from conformance.cases.inputs import make_inputs
    from conformance.cases.kv_cache import paged_layout, sequence_lengths
    from conformance.oracle.reference import attention

    (case,) = [c for c in load_spec(SPEC) if c.id == "kv_cache/paged-16-step[float64]"]
    inputs = make_inputs(case)
    k_pool, v_pool = paged_layout(case, inputs.native("k"), inputs.native("v"))
    q = torch.from_numpy(inputs.native("q").copy())
    kv_len = torch.from_numpy(sequence_lengths(case))
    ref = attention(case, inputs)["output"]

    def run(table_case):  # noqa: ANN001, ANN202
        paged = paged_attention_for(table_case, "cpu")
        mask = paged.convert_logical_block_mask(logical_block_mask(case, "cpu"), kv_len=kv_len)
        out = flex_attention(q, physical_cache(k_pool, "float64", "cpu"),
                             physical_cache(v_pool, "float64", "cpu"), block_mask=mask)  # fmt: skip
        return out.numpy()

    np.testing.assert_allclose(run(case), ref, rtol=1e-10, atol=1e-10)
    swapped = tuple(reversed(case.cache.block_table))  # each sequence gets the other's pages
    wrong = dataclasses.replace(case, cache=dataclasses.replace(case.cache, block_table=swapped))
    assert np.abs(run(wrong) - ref).max() > 0.1


def test_openvino_paged_attention_reads_block_indices(monkeypatch: pytest.MonkeyPatch) -> None:
    """Negative control for OpenVINO: the pool laid out for one block table, the op told
    another (the two sequences' rows swapped), gives another output."""
    pytest.importorskip("openvino")
    import dataclasses

    from conformance.adapters import openvino_paged

    from conformance.cases.inputs import make_inputs
    from conformance.oracle.reference import attention

    (case,) = [c for c in load_spec(SPEC) if c.id == "kv_cache/paged-32-chunk-causal"]
    inputs = make_inputs(case)
    adapter = openvino_paged.OpenvinoPagedAttention()
    adapter.setup()
    ref = attention(case, inputs)["output"]
    np.testing.assert_allclose(adapter.run(case, inputs, "cpu")["output"], ref, atol=1e-5)
    pools = openvino_paged.paged_layout(case, inputs.native("k"), inputs.native("v"))
    monkeypatch.setattr(openvino_paged, "paged_layout", lambda *_: tuple(p.copy() for p in pools))
    rows = case.cache.block_table
    swapped = (rows[1] + rows[0][len(rows[1]) :], rows[0][: len(rows[1])])
    wrong = dataclasses.replace(case, cache=dataclasses.replace(case.cache, block_table=swapped))
    assert np.abs(adapter.run(wrong, inputs, "cpu")["output"] - ref).max() > 0.1
