"""Packed sequences and left padding through real libraries (issue 14 item 5).

One `conformance run` of specs/packed.yaml (small tier) on adapters that map `mask.segments`
and `padding_side: left` natively, with the verdict tally each must give (CPU, about a minute
on two busy cores). Every pass is ~1e-7 against float32's 1e-5 (float64: ~1e-16 against 1e-9)
and every divergence is a declared fully-masked-row convention or float32 softmax, verified on
the run, so the tallies do not depend on the machine. Adapters whose framework is missing are
skipped. Then the mappings themselves, without running a framework's attention: each adapter
states left padding and packing in its framework's own argument, equal to the neutral mask.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_verdict_tally, run_cli

from conformance.adapter_api.adapter import Unsupported
from conformance.cases.case import Case, Mask, Shape
from conformance.cases.masks import build_mask

SPEC = Path(__file__).resolve().parent.parent / "specs" / "packed.yaml"

# adapter -> (verdict tally on the small tier, module it needs). Unsupported: kernel-only
# adapters on the layer cases and the reverse, bfloat16/float16 where not declared, weights
# where the path returns none, and the cases each framework cannot state (query padding and
# packing-with-padding for the masking_utils variants, GQA for nn.MultiheadAttention/flax, and
# the three rotary layer cases everywhere but hf.llama.attention).
EXPECTED = {
    "torch.flex.eager": ({"pass": 13, "diverges": 6, "unsupported": 12}, "torch"),
    "hf.sdpa": ({"pass": 13, "diverges": 6, "unsupported": 12}, "transformers"),
    "hf.eager.masking-utils": ({"pass": 9, "diverges": 8, "unsupported": 14}, "transformers"),
    "hf.sdpa.masking-utils": ({"pass": 13, "diverges": 2, "unsupported": 16}, "transformers"),
    "torch.mha.fast": ({"pass": 7, "unsupported": 24}, "torch"),
    "torch.mha.slow-weights": ({"pass": 7, "unsupported": 24}, "torch"),
    "keras.torch.explicit": ({"pass": 4, "diverges": 3, "unsupported": 24}, "keras"),
    "keras.gqa.torch.explicit": ({"pass": 4, "diverges": 3, "unsupported": 24}, "keras"),
    "flax.linen": ({"pass": 4, "diverges": 3, "unsupported": 24}, "flax"),
    "torch.onnx.mha.opset18": ({"pass": 7, "unsupported": 24}, "onnxscript"),
    # the rotary layer cases only: a model's position_ids and 2-D attention_mask
    "hf.llama.attention": ({"pass": 1, "diverges": 2, "unsupported": 28}, "transformers"),
    # key_padding_mask's finite fill mixed with -inf bias on fully masked rows: declared as
    # written and verified (adapters/ort_contrib.py, MHA_DIVERGENCES)
    "ort.contrib.mha": ({"pass": 7, "diverges": 2, "unsupported": 22}, "onnxruntime"),
    "openvino.sdpa.f32": ({"pass": 10, "diverges": 6, "unsupported": 15}, "openvino"),
}  # fmt: skip

# The packing/padding feature tags: no adapter above may be unsupported because of them.
TAGS = ("segments", "left-padding")


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    out = tmp_path_factory.mktemp("packed")
    args = [arg for name in EXPECTED for arg in ("--adapter", name)]
    proc = run_cli("run", str(SPEC), *args, "--tier", "small", "--jobs", "2", "--no-cache",
                   "--quiet", "--out", str(out), "--no-report", timeout=900)  # fmt: skip
    assert proc.returncode in (0, 1, 5), proc.stderr[-3000:]
    return json.loads((out / "results.json").read_text())["results"]


@pytest.mark.parametrize("adapter", sorted(EXPECTED))
def test_packed_verdicts(results: list[dict], adapter: str) -> None:
    assert_verdict_tally(results, adapter, EXPECTED[adapter])


def test_nothing_fails(results: list[dict]) -> None:
    """ort.contrib.mha's rows masked partly by key_padding_mask (-10000) and partly by -inf
    were the two fails; they are declared as written now (docs/adapters/onnx.md)."""
    bad = {(r["adapter"], r["case"]) for r in results if r["verdict"] in ("fail", "error")}
    assert bad == set()


def test_no_adapter_refuses_the_tags(results: list[dict]) -> None:
    for record in results:
        if record["verdict"] == "unsupported":
            message = record.get("message") or ""
            for tag in TAGS:
                assert f"cannot express: {tag} " not in message, (record["adapter"], message)


def test_left_padded_and_packed_cases_ran(results: list[dict]) -> None:
    """Each adapter's mode ran its left-padded and packed cases (not only the right-padded)."""
    ran: dict[str, set[str]] = {}
    for record in results:
        if record["verdict"] in ("pass", "diverges"):
            ran.setdefault(record["adapter"], set()).update(record["features"])
    for adapter, (_, module) in EXPECTED.items():
        if importlib.util.find_spec(module) is None:
            continue
        assert set(TAGS) <= ran.get(adapter, set()), adapter


# --- the mappings, case by case -------------------------------------------------------------


def _case(mode: str = "kernel", t: int = 6, s: int | None = None, h: int = 2, g: int = 2,
          **mask) -> Case:  # fmt: skip
    s = s or t
    shape = Shape(
        batch=2, query_len=t, kv_len=s, num_heads=h, num_kv_heads=g, key_dim=4, value_dim=4,
        query_dim=4 * h, key_input_dim=4 * h, value_input_dim=4 * h, output_dim=4 * h,
    )  # fmt: skip
    return Case(id=f"t/packed-map-{mode}[float32]", family="t", name="packed-map", mode=mode,
                shape=shape, mask=Mask(**mask), dtype="float32")  # fmt: skip


LEFT = {"key_padding": (4, 6), "padding_side": "left"}


def _key_part(case: Case) -> np.ndarray:
    """[B, S] True = a valid key, from the neutral mask of the case's key padding alone."""
    m = case.mask
    only = Mask(key_padding=m.key_padding, padding_side=m.padding_side)
    return build_mask(dataclasses.replace(case, mask=only))[0][:, 0, 0, :]


def test_keras_padding_masks_follow_the_side() -> None:
    from conformance.adapters.keras_mha import keras_masks, valid_tokens

    assert valid_tokens(5, (2, 5), "left").tolist() == [
        [False, False, False, True, True], [True] * 5]  # fmt: skip
    assert valid_tokens(5, (2, 5), "right").tolist() == [
        [True, True, False, False, False], [True] * 5]  # fmt: skip
    case = _case("layer", causal="top-left", query_padding=(4, 6), **LEFT)
    masks = keras_masks(case)
    assert masks.use_causal_mask and masks.attention_mask is None
    np.testing.assert_array_equal(masks.key_valid, _key_part(case))
    np.testing.assert_array_equal(masks.query_valid, masks.key_valid)  # same lengths, same side
    packed = keras_masks(_case("layer", segments=((2, 4), (6,))))
    np.testing.assert_array_equal(packed.attention_mask, build_mask(
        _case("layer", segments=((2, 4), (6,))))[0][:, 0])  # fmt: skip


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch is not installed")
def test_torch_mha_key_padding_mask_follows_the_side() -> None:
    from conformance.adapters.torch_mha import mha_masks

    case = _case("layer", causal="top-left", **LEFT)
    kwargs = mha_masks(case, "cpu")
    # True = masked out, the first 2 keys of batch 0 (left padding), none of batch 1
    np.testing.assert_array_equal(kwargs["key_padding_mask"].numpy(), ~_key_part(case))
    assert kwargs["key_padding_mask"].numpy()[0].tolist() == [True, True] + [False] * 4
    assert kwargs.get("is_causal") is True  # the rest of the mask is exactly causal


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch is not installed")
def test_flex_document_mask_is_the_neutral_mask() -> None:
    import torch
    from conformance.adapters.torch_flex import block_mask_for
    from torch.nn.attention.flex_attention import create_mask

    for mask in ({"segments": ((3, 5, 2), (1, 9))},
                 {"causal": "top-left", "segments": ((4, 4, 2), (10,))},
                 {"causal": "top-left", **LEFT}):  # fmt: skip
        case = _case(t=10 if "segments" in mask else 6, **mask)
        block = block_mask_for(case, "cpu")
        s = case.shape
        dense = create_mask(block.mask_mod, s.batch, 1, s.query_len, s.kv_len, device="cpu")
        expected = torch.from_numpy(np.ascontiguousarray(build_mask(case)[0]))
        assert torch.equal(dense, expected), mask


def test_masking_utils_inputs_state_padding_and_packing() -> None:
    from conformance.adapters.hf_attention import masking_utils_inputs

    attention_mask, ids = masking_utils_inputs(_case(causal="top-left", **LEFT))
    assert ids is None
    assert attention_mask.tolist() == [[0, 0, 1, 1, 1, 1], [1] * 6]
    attention_mask, ids = masking_utils_inputs(_case(t=5, segments=((2, 3), (1, 1, 3))))
    assert attention_mask is None
    assert ids.tolist() == [[0, 1, 0, 1, 2], [0, 0, 0, 1, 2]]
    with pytest.raises(Unsupported, match="packing and padding"):
        masking_utils_inputs(_case(t=5, segments=((2, 3), (5,)), key_padding=(4, 5)))
    with pytest.raises(Unsupported, match="4-D mask"):
        masking_utils_inputs(_case(random_density=0.5))
    # windows go through config.sliding_window: causal any, bidirectional symmetric only
    masking_utils_inputs(_case(window=(1, 1)))
    masking_utils_inputs(_case(causal="top-left", window=(2, 0)))
    with pytest.raises(Unsupported, match="symmetric"):
        masking_utils_inputs(_case(window=(2, 0)))


@pytest.mark.skipif(importlib.util.find_spec("transformers") is None,
                    reason="transformers is not installed")  # fmt: skip
def test_masking_utils_builds_the_neutral_mask() -> None:
    """transformers' own builders, from attention_mask / position_ids, give the reference's
    mask for packed rows (its packing detection) and left padding."""
    from conformance.adapters.hf_attention import masking_utils_mask

    for mask in ({"segments": ((3, 5, 2), (1, 9))},
                 {"causal": "top-left", "segments": ((4, 4, 2), (1, 9))},
                 {"causal": "top-left", **LEFT}, LEFT,
                 # sliding windows, from config.sliding_window (causal: left + 1 keys)
                 {"causal": "top-left", "window": (2, 0)}, {"window": (1, 1)},
                 {"window": (0, 0)}, {"causal": "top-left", "window": (1, 3), **LEFT}):  # fmt: skip
        case = _case(t=10 if "segments" in mask else 6, **mask)
        built = masking_utils_mask(case, "sdpa", "cpu")
        np.testing.assert_array_equal(built.numpy(), build_mask(case)[0], err_msg=str(mask))


def test_exported_mha_key_padding_mask_follows_the_side() -> None:
    """torch.onnx.mha.opset18 (and openvino.torch.onnx.mha.*, which feed the same arrays)."""
    from conformance.adapters.torch_onnx import TorchOnnxMha

    from conformance.cases.inputs import make_inputs

    case = _case("layer", **LEFT)
    cfg, arrays = TorchOnnxMha().plan(case, make_inputs(case))
    assert cfg.padding and cfg.mask == "none"
    np.testing.assert_array_equal(arrays[-1], ~_key_part(case))  # True = pad, at the start


@pytest.mark.skipif(importlib.util.find_spec("transformers") is None,
                    reason="transformers is not installed")  # fmt: skip
def test_llama_layer_positions_are_a_models() -> None:
    """Packed sequences restart at 0; a left-padded row counts from its first real token."""
    from conformance.adapters.hf_layer import model_position_ids

    left = model_position_ids(_case("layer", causal="top-left", **LEFT), "cpu")
    assert left.tolist() == [[1, 1, 0, 1, 2, 3], [0, 1, 2, 3, 4, 5]]
    packed = model_position_ids(_case("layer", t=5, segments=((2, 3), (5,))), "cpu")
    assert packed.tolist() == [[0, 1, 0, 1, 2], [0, 1, 2, 3, 4]]
