"""ONNX Runtime adapters: the ONNX Attention op, ORT's contrib ops, and torch.onnx exports.

Each test asserts real verdicts from `evaluate` (so it fails when an adapter gets a layout,
a mask polarity or a path wrong), plus a few direct checks of the conventions the adapters
rely on (qk_matmul_output modes, the profiler path check, decode == full causal).
"""

from __future__ import annotations

import textwrap

import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from conformance.adapter_api.adapter import Unsupported  # noqa: E402
from conformance.cases.case import FEATURES, Case  # noqa: E402
from conformance.cases.inputs import make_inputs  # noqa: E402
from conformance.oracle.reference import attention  # noqa: E402
from conformance.paths import shipped_specs_dir  # noqa: E402
from conformance.spec import load_spec  # noqa: E402
from conformance.verdicts.evaluate import ReferenceCache, evaluate  # noqa: E402

SPEC = """
version: 1
family: onnx
defaults: {mode: kernel}
cases:
  - name: basic
    shape: {batch: 2, query_len: 5, kv_len: 7, num_heads: 4, key_dim: 8}
    compare: [output, weights]
    matrix: {dtype: [float32, float64]}
  - name: square
    shape: {batch: 2, query_len: 6, num_heads: 4, num_kv_heads: 2, key_dim: 8}
    matrix: {dtype: [float32, float64]}
  - name: gqa
    shape: {batch: 2, query_len: 5, kv_len: 6, num_heads: 6, num_kv_heads: 2, key_dim: 8}
    compare: [output, weights]
  - name: vdim
    shape: {batch: 2, query_len: 5, num_heads: 2, key_dim: 8, value_dim: 6}
  - name: scale
    shape: {batch: 2, query_len: 5, num_heads: 2, key_dim: 8}
    scale: 0.3
  - name: causal-${align}
    shape: {batch: 2, query_len: 4, kv_len: 7, num_heads: 2, key_dim: 8}
    mask: {causal: $align}
    compare: [output, weights]
    matrix: {align: [top-left, bottom-right]}
  - name: causal-square
    shape: {batch: 2, query_len: 6, num_heads: 2, key_dim: 8}
    mask: {causal: top-left}
  - name: random
    shape: {batch: 2, query_len: 6, num_heads: 2, key_dim: 8}
    mask: {random: {density: 0.4}, per_head: true}
  - name: additive
    shape: {batch: 2, query_len: 6, num_heads: 2, key_dim: 8}
    mask: {additive: {density: 0.3}, bias: {scale: 1.0}}
  - name: keypad
    shape: {batch: 2, query_len: 6, num_heads: 2, key_dim: 8}
    mask: {key_padding: [4, 6], causal: top-left}
  - name: keypad-zero
    shape: {batch: 2, query_len: 6, num_heads: 2, key_dim: 8}
    mask: {key_padding: [4, 0]}
  - name: rows
    shape: {batch: 2, query_len: 6, num_heads: 2, key_dim: 8}
    mask: {masked_rows: [[0, 1], [1, 4]]}
    compare: [output, weights]
  - name: window
    shape: {batch: 1, query_len: 6, num_heads: 2, key_dim: 8}
    mask: {window: [2, 0], causal: top-left}
  - name: decode
    shape: {batch: 2, query_len: 6, num_heads: 4, num_kv_heads: 2, key_dim: 8}
    decode: {prefix: 3, steps: 3}
  - name: decode-mha
    shape: {batch: 2, query_len: 5, num_heads: 2, key_dim: 8}
    decode: {prefix: 2, steps: 3}
"""


@pytest.fixture(scope="module")
def cases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Case]:
    path = tmp_path_factory.mktemp("spec") / "onnx.yaml"
    path.write_text(textwrap.dedent(SPEC))
    found = {c.id.split("/", 1)[1]: c for c in load_spec(path)}
    zero = textwrap.dedent(
        """
        version: 1
        family: onnx0
        cases:
          - name: decode-zero
            mode: kernel
            shape: {batch: 2, query_len: 4, num_heads: 2, key_dim: 8}
            decode: {prefix: 0, steps: 4}
        """
    )
    (path.parent / "zero.yaml").write_text(zero)
    found.update({c.id.split("/", 1)[1]: c for c in load_spec(path.parent / "zero.yaml")})
    return found


def _adapter(cls):  # noqa: ANN001, ANN202
    adapter = cls()
    adapter.setup()
    return adapter


@pytest.fixture(scope="module")
def onnx_adapters() -> dict:
    from conformance.adapters import onnx_attention, ort_contrib

    return {
        cls.declaration.name: _adapter(cls)
        for cls in onnx_attention.ADAPTERS + ort_contrib.ADAPTERS
    }


@pytest.fixture(scope="module")
def ref_cache() -> ReferenceCache:
    return ReferenceCache()


def verdict(adapter, case: Case, cache: ReferenceCache) -> dict:  # noqa: ANN001
    return evaluate(adapter, case, "cpu", cache)


# --- declarations --------------------------------------------------------------------------


def test_declarations_are_well_formed() -> None:
    from conformance.adapters import onnx_attention, ort_contrib, torch_onnx

    names = set()
    for module in (onnx_attention, ort_contrib, torch_onnx):
        for cls in module.ADAPTERS:
            decl = cls.declaration
            assert decl.worker == "onnx"
            assert decl.features <= set(FEATURES)
            assert decl.name not in names
            names.add(decl.name)
            for divergence in decl.divergences:
                assert (
                    divergence.reason and divergence.link and divergence.link.startswith("https://")
                )
    assert {"onnx.attention.4d", "onnx.attention.3d", "ort.contrib.mha", "ort.contrib.gqa"} <= names
    assert {"torch.onnx.sdpa.opset23", "torch.onnx.mha.opset18"} <= names


# --- onnx.attention ------------------------------------------------------------------------

FUSED = ("onnx.attention.4d", "onnx.attention.3d", "onnx.attention.opset24")
FUNCTION = ("onnx.attention.expanded", "onnx.attention.opset25")


@pytest.mark.parametrize("name", FUSED + FUNCTION)
@pytest.mark.parametrize(
    "case_id",
    ["basic[float32]", "gqa", "vdim", "scale", "causal-top-left", "causal-bottom-right",
     "causal-square", "random", "additive", "keypad", "decode"],
)  # fmt: skip
def test_attention_op_passes_float32(
    onnx_adapters, cases, ref_cache, name: str, case_id: str
) -> None:  # noqa: ANN001, E501
    record = verdict(onnx_adapters[name], cases[case_id], ref_cache)
    assert record["verdict"] == "pass", record["message"]


@pytest.mark.parametrize("name", FUSED)
def test_fused_kernel_has_no_float64(onnx_adapters, cases, ref_cache, name: str) -> None:  # noqa: ANN001
    record = verdict(onnx_adapters[name], cases["basic[float64]"], ref_cache)
    assert record["verdict"] == "unsupported"
    assert "not float64" in record["message"] and "function body" in record["message"]


@pytest.mark.parametrize("name", FUNCTION)
@pytest.mark.parametrize("case_id", ["basic[float64]", "square[float64]", "decode"])
def test_function_body_float64_carries_a_float32_scale(
    onnx_adapters, cases, ref_cache, name: str, case_id: str
) -> None:  # noqa: ANN001, E501
    case = cases[case_id]
    if case_id == "decode":  # the float64 twin of the decode case
        case = _with_dtype(case, "float64")
    record = verdict(onnx_adapters[name], case, ref_cache)
    # off by ~1e-7 at float64 tolerance, verified to match at float32 tolerance
    assert record["verdict"] == "diverges", record["message"]
    assert record["divergence"]["id"] == "onnx-function-float32-scale"
    assert 1e-9 < record["max_abs_error"] < 1e-6


def _with_dtype(case: Case, dtype: str) -> Case:
    import dataclasses

    params = tuple((k, v) for k, v in case.params if k != "dtype") + (("dtype", dtype),)
    return dataclasses.replace(case, dtype=dtype, id=f"{case.id}@{dtype}", params=params)


@pytest.mark.parametrize("name", FUSED + FUNCTION)
def test_fully_masked_rows_are_zero_rows(onnx_adapters, cases, ref_cache, name: str) -> None:  # noqa: ANN001
    record = verdict(onnx_adapters[name], cases["rows"], ref_cache)
    assert record["verdict"] == "diverges", record["message"]
    assert record["divergence"]["id"] == "onnx-fully-masked-rows-zero"
    out = onnx_adapters[name].run(cases["rows"], make_inputs(cases["rows"]), "cpu")
    assert np.all(out["output"][0, :, 1] == 0) and np.all(out["weights"][1, :, 4] == 0)


def test_window_needs_opset25(onnx_adapters, cases, ref_cache) -> None:  # noqa: ANN001
    assert (
        verdict(onnx_adapters["onnx.attention.opset25"], cases["window"], ref_cache)["verdict"]
        == "pass"
    )
    assert (
        verdict(onnx_adapters["onnx.attention.4d"], cases["window"], ref_cache)["verdict"]
        == "unsupported"
    )


@pytest.mark.parametrize(
    "name", ["onnx.attention.4d", "onnx.attention.3d", "ort.contrib.gqa", "ort.contrib.mha"]
)  # noqa: E501
@pytest.mark.parametrize("case_id", ["decode", "decode-zero", "decode-mha"])
def test_decode_equals_full_causal(
    onnx_adapters, cases, ref_cache, name: str, case_id: str
) -> None:  # noqa: ANN001, E501
    adapter, case = onnx_adapters[name], cases[case_id]
    record = verdict(adapter, case, ref_cache)
    if record["verdict"] == "unsupported":  # MHA has no grouped query
        assert name == "ort.contrib.mha" and case_id == "decode"
        return
    assert record["verdict"] == "pass", record["message"]
    # and against the same implementation's own full causal pass (no cache)
    full = _full_causal_output(adapter, case)
    if full is not None:
        stepped = adapter.run(case, make_inputs(case), "cpu")["output"]
        np.testing.assert_allclose(stepped, full, rtol=1e-5, atol=1e-6)


def _full_causal_output(adapter, case: Case):  # noqa: ANN001, ANN202
    import dataclasses

    full = dataclasses.replace(case, decode=None, id=case.id + "@full")
    try:
        return adapter.run(full, make_inputs(case), "cpu")["output"]
    except Unsupported:
        return None


def test_bool_mask_polarity_is_true_attend(onnx_adapters, cases) -> None:  # noqa: ANN001
    """An inverted mask must not pass: the adapter's conversion is what makes it pass."""
    adapter = onnx_adapters["onnx.attention.4d"]
    case = cases["random"]
    inputs = make_inputs(case)
    plan = adapter.plan(case, inputs)
    assert plan.feeds["attn_mask"].dtype == np.bool_
    session = adapter.session(plan.cfg, "cpu")
    good = session.run(plan.feeds)["Y"]
    flipped = dict(plan.feeds, attn_mask=~plan.feeds["attn_mask"])
    bad = session.run(flipped)["Y"]
    ref = attention(case, inputs)["output"]
    finite = np.isfinite(ref)
    assert np.allclose(good[finite], ref[finite], atol=1e-5)
    assert not np.allclose(np.nan_to_num(bad[finite]), ref[finite], atol=1e-3)


def test_qk_matmul_output_modes(cases) -> None:  # noqa: ANN001
    """Mode 3 is the softmax (the weights); mode 0 is the scaled logits before any mask."""
    import onnxruntime as ort
    from conformance.adapters.ort_runtime import make_model, onnx_elem_type
    from onnx import helper

    case = cases["basic[float32]"]
    inputs = make_inputs(case)
    q, k, v = (inputs.native(n) for n in ("q", "k", "v"))
    ref = attention(case, inputs)
    et = onnx_elem_type("float32")
    infos = [
        helper.make_tensor_value_info(n, et, list(a.shape))
        for n, a in zip("QKV", (q, k, v), strict=True)
    ]  # noqa: E501
    for mode, expected in (
        (3, ref["weights"]),
        (0, np.einsum("bhtk,bhsk->bhts", q, k) / np.sqrt(8)),
    ):  # noqa: E501
        node = helper.make_node(
            "Attention", ["Q", "K", "V"], ["Y", "", "", "W"], qk_matmul_output_mode=mode
        )  # noqa: E501
        out = [helper.make_tensor_value_info(n, et, None) for n in ("Y", "W")]
        model = make_model([node], infos, out, {"": 23})
        session = ort.InferenceSession(
            model.SerializeToString(), providers=["CPUExecutionProvider"]
        )  # noqa: E501
        weights = session.run(None, {"Q": q, "K": k, "V": v})[1]
        np.testing.assert_allclose(weights, expected, rtol=1e-5, atol=1e-6)


def test_path_check_catches_the_inlined_function_body() -> None:
    """A float64 Attention node has no ORT CPU kernel: ORT inlines the function body, and the
    profiler-based check must notice."""
    from conformance.adapters.onnx_attention import AttentionConfig, attention_model
    from conformance.adapters.ort_runtime import OrtSession, require_fused

    cfg = AttentionConfig(
        opset=23, layout="4d", dtype="float64", heads=2, kv_heads=2, key_dim=4, value_dim=4
    )  # noqa: E501
    session = OrtSession(
        attention_model(cfg), "cpu", require_fused("Attention", "CPUExecutionProvider")
    )  # noqa: E501
    x = np.ones((1, 2, 3, 4))
    with pytest.raises(Unsupported, match="did not run its Attention kernel"):
        session.run({"Q": x, "K": x, "V": x})
    with pytest.raises(Unsupported):  # and it stays refused
        session.run({"Q": x, "K": x, "V": x})
    cfg32 = AttentionConfig(
        opset=23, layout="4d", dtype="float32", heads=2, kv_heads=2, key_dim=4, value_dim=4
    )  # noqa: E501
    fused = OrtSession(
        attention_model(cfg32), "cpu", require_fused("Attention", "CPUExecutionProvider")
    )  # noqa: E501
    x32 = x.astype(np.float32)
    assert fused.run({"Q": x32, "K": x32, "V": x32})["Y"].shape == (1, 2, 3, 4)


def test_sessions_are_cached_by_configuration(cases) -> None:  # noqa: ANN001
    from conformance.adapters.onnx_attention import OnnxAttention4D

    adapter = _adapter(OnnxAttention4D)
    for case_id in ("causal-square", "keypad", "random", "causal-square"):
        adapter.run(cases[case_id], make_inputs(cases[case_id]), "cpu")
    assert len(adapter._sessions._items) == 3  # causal flag; causal + bool mask; bool mask


def test_save_model_reproduces_the_result(onnx_adapters, cases, tmp_path) -> None:  # noqa: ANN001
    import onnxruntime as ort

    adapter = onnx_adapters["onnx.attention.3d"]
    case = cases["additive"]
    paths = adapter.save_model(case, tmp_path)
    model, npz = paths
    assert model.suffix == ".onnx" and npz.name.endswith(".inputs.npz")
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    feeds = dict(np.load(npz))
    saved = session.run(None, feeds)[0]
    ran = adapter.run(case, make_inputs(case), "cpu")["output"]
    from conformance.cases.layouts import split_heads

    np.testing.assert_array_equal(split_heads(saved, case.shape.num_heads), ran)


# --- ort.contrib ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "case_id",
    ["basic[float32]", "vdim", "scale", "causal-square", "random", "additive", "keypad", "rows"],
)  # noqa: E501
def test_contrib_mha(onnx_adapters, cases, ref_cache, case_id: str) -> None:  # noqa: ANN001
    record = verdict(onnx_adapters["ort.contrib.mha"], cases[case_id], ref_cache)
    if case_id in ("basic[float32]", "rows"):  # its qk output is pre-softmax: no weights
        assert record["verdict"] == "unsupported" and "weights" in record["message"]
        return
    assert record["verdict"] == "pass", record["message"]


def test_contrib_mha_causal_with_fewer_queries_than_keys(onnx_adapters, cases, ref_cache) -> None:  # noqa: ANN001, E501
    """Top-left causal with T < S goes through attention_bias: unidirectional is neither."""
    import dataclasses

    from conformance.adapters.ort_contrib import ContribConfig, contrib_model
    from conformance.adapters.ort_runtime import OrtSession

    mha = onnx_adapters["ort.contrib.mha"]
    case = dataclasses.replace(cases["causal-top-left"], compare=("output",), id="onnx/ctl@o")
    plan = mha.plan(case, make_inputs(case))
    assert not plan.cfg.causal and "attention_bias" in plan.feeds
    assert verdict(mha, case, ref_cache)["verdict"] == "pass"
    # Why: unidirectional=1 without past, T=2 < S=3, zero logits (uniform over what a row
    # sees), V one-hot per key. Row 0 is top-left, the last row sees every key: the fuzz
    # counterexample (T=1, S=2) is this last-row rule. Fails once ORT changes the kernel.
    cfg = ContribConfig("MultiHeadAttention", "float32", 1, 1, 1, 3, causal=True)
    session = OrtSession(contrib_model(cfg), "cpu", None)
    feeds = {
        "query": np.zeros((1, 2, 1), np.float32),
        "key": np.zeros((1, 3, 1), np.float32),
        "value": np.eye(3, dtype=np.float32)[None],
    }
    np.testing.assert_allclose(
        session.run(feeds)["output"][0], [[1, 0, 0], [1 / 3, 1 / 3, 1 / 3]], rtol=1e-6
    )


def test_contrib_mha_key_padding_uses_a_finite_filter(onnx_adapters, cases, ref_cache) -> None:  # noqa: ANN001, E501
    record = verdict(onnx_adapters["ort.contrib.mha"], cases["keypad-zero"], ref_cache)
    assert record["verdict"] == "diverges", record["message"]
    assert record["divergence"]["id"] == "ort-mha-mask-filter-value"


@pytest.mark.parametrize("name", ["left-padding-causal", "segments-padding"])
def test_contrib_mha_rows_emptied_by_padding_and_bias(onnx_adapters, ref_cache, name) -> None:  # noqa: ANN001
    """A row emptied partly by key_padding_mask (-10000) and partly by -inf attention_bias or
    the causal flag is the softmax over its padded keys only: declared as written."""
    case = next(
        c
        for c in load_spec(shipped_specs_dir() / "packed.yaml")
        if c.id == f"packed/{name}[float32]"
    )
    record = verdict(onnx_adapters["ort.contrib.mha"], case, ref_cache)
    assert record["verdict"] == "diverges", record["message"]
    assert "key-padding=-10000.0 | float32)" in record["message"]


@pytest.mark.parametrize(
    "case_id",
    ["square[float32]", "causal-square", "random", "additive", "keypad", "rows", "window"],
)  # noqa: E501
def test_contrib_gqa(onnx_adapters, cases, ref_cache, case_id: str) -> None:  # noqa: ANN001
    record = verdict(onnx_adapters["ort.contrib.gqa"], cases[case_id], ref_cache)
    assert record["verdict"] == "pass", record["message"]


def test_contrib_gqa_causal_fully_masked_row_weights(onnx_adapters, cases, ref_cache) -> None:  # noqa: ANN001, E501
    """A fully masked row under causal=1: output NaN like the reference, but output_qk holds
    NaN on the causally visible keys and exact zeros beyond the diagonal, which no masked-row
    policy of the reference expresses: a documented fail (docs/adapters/onnx.md)."""
    import dataclasses

    case = dataclasses.replace(
        cases["causal-square"],
        mask=dataclasses.replace(cases["causal-square"].mask, masked_rows=((0, 1),)),
        compare=("output", "weights"),
        id="onnx/causal-square-row1",
    )
    gqa = onnx_adapters["ort.contrib.gqa"]
    record = verdict(gqa, case, ref_cache)
    assert record["verdict"] == "fail" and "weights" in record["message"], record["message"]
    out = gqa.run(case, make_inputs(case), "cpu")
    assert np.isnan(out["output"][0, :, 1]).all()
    row = out["weights"][0, :, 1]  # [H, S]: query row 1 sees keys 0..1
    assert np.isnan(row[:, :2]).all() and (row[:, 2:] == 0).all()


def test_contrib_dtypes(onnx_adapters, cases, ref_cache) -> None:  # noqa: ANN001
    for name in ("ort.contrib.mha", "ort.contrib.gqa"):
        record = verdict(onnx_adapters[name], cases["square[float64]"], ref_cache)
        assert record["verdict"] == "unsupported" and "float64" in record["message"]
    record = verdict(onnx_adapters["ort.contrib.gqa"], cases["keypad-zero"], ref_cache)
    assert record["verdict"] == "unsupported" and "seqlens_k" in record["message"]


# --- torch.onnx ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def torch_onnx(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    pytest.importorskip("torch")
    pytest.importorskip("onnxscript")
    import os

    from conformance.adapters import torch_onnx as module

    old = os.environ.get("CONFORMANCE_CACHE_DIR")
    os.environ["CONFORMANCE_CACHE_DIR"] = str(tmp_path_factory.mktemp("export-cache"))
    try:
        yield {cls.declaration.name: _adapter(cls) for cls in module.ADAPTERS}
    finally:
        if old is None:
            os.environ.pop("CONFORMANCE_CACHE_DIR")
        else:
            os.environ["CONFORMANCE_CACHE_DIR"] = old


def test_torch_onnx_sdpa_fused_attention(torch_onnx, cases, ref_cache) -> None:  # noqa: ANN001
    from conformance.running import profile

    adapter = torch_onnx["torch.onnx.sdpa.opset23"]
    profile.take()
    # Two shapes (T=S=6; T=4, S=7), one structure (float32, causal flag): one export serves both.
    for n, case_id in enumerate(("causal-square", "causal-top-left")):
        case = cases[case_id]
        if "weights" in case.compare:
            case = __import__("dataclasses").replace(case, compare=("output",), id=case.id + "@o")
        record = verdict(adapter, case, ref_cache)
        assert record["verdict"] == "pass", record["message"]
        exports = profile.take().get("compile", [0.0, 0])[1]
        assert exports <= (1 if n == 0 else 0), (case_id, exports)
    model = adapter.model(
        adapter.plan(cases["causal-square"], make_inputs(cases["causal-square"]))[0]
    )  # noqa: E501
    assert [n.op_type for n in model.graph.node] == ["Attention"]
    record = verdict(adapter, cases["square[float64]"], ref_cache)
    assert record["verdict"] == "unsupported" and "float64" in record["message"]


@pytest.mark.slow
def test_torch_onnx_decomposed_and_layer(torch_onnx, cases, ref_cache, tmp_path) -> None:  # noqa: ANN001, E501
    sdpa = torch_onnx["torch.onnx.sdpa.opset18"]
    for case_id in ("random",):  # one export each: they cost seconds
        record = verdict(sdpa, cases[case_id], ref_cache)
        assert record["verdict"] == "pass", record["message"]
    # Known torchlib bug (docs/adapters/onnx.md): a row a boolean mask leaves empty (here a
    # window (0, 0) with T=2 > S=1, the fuzz counterexample) is filled with dtype.min, not
    # -inf: a uniform softmax, the mean of V (= v[0] for S=1), where the reference is NaN.
    empty = tmp_path / "empty.yaml"
    empty.write_text(
        "version: 1\nfamily: onnx-empty\ncases:\n  - name: w\n    mode: kernel\n"
        "    shape: {batch: 1, query_len: 2, kv_len: 1, num_heads: 1, key_dim: 1}\n"
        "    mask: {window: [0, 0]}\n"
    )
    (case,) = load_spec(empty)
    record = verdict(sdpa, case, ref_cache)
    assert record["verdict"] == "fail", record["message"]
    inputs = make_inputs(case)
    out = sdpa.run(case, inputs, "cpu")["output"]
    np.testing.assert_allclose(out[0, 0, 1], inputs.arrays["v"][0, 0, 0], rtol=1e-6)
    layer = tmp_path / "layer.yaml"
    layer.write_text(
        textwrap.dedent(
            """
            version: 1
            family: onnx-layer
            cases:
              - name: cross
                shape: {batch: 2, query_len: 5, kv_len: 7, num_heads: 2, key_dim: 4,
                        key_input_dim: 6, value_input_dim: 5}
                cross: true
                mask: {key_padding: [7, 3]}
                compare: [output, weights]
            """
        )
    )
    mha = torch_onnx["torch.onnx.mha.opset18"]
    for case in load_spec(layer):
        record = verdict(mha, case, ref_cache)
        assert record["verdict"] == "pass", record["message"]
