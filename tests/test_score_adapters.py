"""Score terms (softcap, ALiBi, sinks) through real adapters: FlexAttention (eager), SDPA,
the ONNX Attention operator and ORT GroupQueryAttention, on the shipped specs/scores.yaml.

Each verdict comes from the real library on a tiny case; the compiled FlexAttention variant is
left to `conformance run` (its first compile takes ~15 s on a 2-core machine).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from conformance.adapters import torch_flex, torch_sdpa  # noqa: E402

from conformance.cases.case import Case  # noqa: E402
from conformance.spec import load_spec  # noqa: E402
from conformance.verdicts.evaluate import ReferenceCache, evaluate  # noqa: E402

SPEC = Path(__file__).parent.parent / "specs" / "scores.yaml"


@pytest.fixture(scope="module")
def cases() -> dict[str, Case]:
    return {case.id: case for case in load_spec(SPEC)}


@pytest.fixture(scope="module")
def cache() -> ReferenceCache:
    return ReferenceCache()


def _verdict(cls: type, case: Case, cache: ReferenceCache) -> dict:
    adapter = cls()
    adapter.setup()
    return evaluate(adapter, case, "cpu", cache)


FLEX_PASSES = [
    "scores/softcap-kernel[cap=1.0,float64]",
    "scores/softcap-bias-kernel[float64]",
    "scores/alibi-slopes-kernel[float64]",
    "scores/alibi-standard-causal-kernel[float32]",
]


@pytest.mark.parametrize("case_id", FLEX_PASSES)
def test_flex_eager_passes(case_id: str, cases: dict, cache: ReferenceCache) -> None:
    result = _verdict(torch_flex.TorchFlexAdapter, cases[case_id], cache)
    assert result["verdict"] == "pass", result


@pytest.mark.parametrize(
    "case_id",
    ["scores/sink-key-padding-kernel[float64]", "scores/softcap-alibi-sink-kernel[float64]"],
)
def test_flex_lse_sink_composition_passes(case_id: str, cases: dict, cache) -> None:  # noqa: ANN001
    result = _verdict(torch_flex.TorchFlexLseSink, cases[case_id], cache)
    assert result["verdict"] == "pass", result
    plain = _verdict(torch_flex.TorchFlexAdapter, cases[case_id], cache)
    assert plain["verdict"] == "unsupported" and "sink" in plain["message"]


def test_softcap_in_the_wrong_order_fails(cases: dict, cache: ReferenceCache) -> None:
    """A score_mod that adds the bias before capping (cap * tanh((x + b) / cap)) is caught."""
    case = cases["scores/softcap-bias-kernel[float64]"]

    class BiasThenCap(torch_flex.TorchFlexAdapter):
        def run(self, case, inputs, device):  # noqa: ANN001, ANN202
            original = torch_flex.score_mod_for

            def swapped(case, device):  # noqa: ANN001, ANN202
                no_cap = dataclasses.replace(case, scores=None)
                biased = original(no_cap, device)
                cap = case.scores.softcap
                return lambda s, b, h, q, kv: cap * torch.tanh(biased(s, b, h, q, kv) / cap)

            torch_flex.score_mod_for = swapped
            try:
                return super().run(case, inputs, device)
            finally:
                torch_flex.score_mod_for = original

    assert _verdict(BiasThenCap, case, cache)["verdict"] == "fail"


def test_sdpa_takes_alibi_as_a_bias(cases: dict, cache: ReferenceCache) -> None:
    case = cases["scores/alibi-standard-causal-kernel[float64]"]
    assert _verdict(torch_sdpa.TorchSdpaMathAdapter, case, cache)["verdict"] == "pass"
    capped = cases["scores/softcap-kernel[cap=1.0,float64]"]
    result = _verdict(torch_sdpa.TorchSdpaMathAdapter, capped, cache)
    assert result["verdict"] == "unsupported" and "softcap" in result["message"]


def test_ort_softcap_and_sinks(cases: dict, cache: ReferenceCache) -> None:
    pytest.importorskip("onnxruntime")
    from conformance.adapters import onnx_attention, ort_contrib

    for case_id in ("scores/softcap-causal-kernel[float32]", "scores/softcap-bias-kernel[float32]"):
        result = _verdict(onnx_attention.OnnxAttention4D, cases[case_id], cache)
        assert result["verdict"] == "pass", result
    for case_id in (
        "scores/sink-kernel[float32]",
        "scores/sink-zero-kernel[float32]",
        "scores/softcap-alibi-sink-kernel[float32]",
    ):
        result = _verdict(ort_contrib.OrtContribGQA, cases[case_id], cache)
        assert result["verdict"] == "pass", result
