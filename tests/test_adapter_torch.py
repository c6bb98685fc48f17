"""PyTorch adapters: weight layouts, basic cases at float64 tolerance, path proofs, masks.

Every verdict here comes from the real torch (no mocks); the cases are tiny so the whole file
runs in seconds.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conformance.adapters import torch_mha, torch_sdpa  # noqa: E402

from conformance.cases import layouts  # noqa: E402
from conformance.cases.case import Case  # noqa: E402
from conformance.cases.inputs import make_inputs  # noqa: E402
from conformance.spec import load_spec  # noqa: E402
from conformance.verdicts.evaluate import ReferenceCache, evaluate  # noqa: E402

SPEC = """\
version: 1
family: t
cases:
  - name: kernel-${S}
    mode: kernel
    shape: {batch: 2, query_len: 5, kv_len: $S, num_heads: 4, key_dim: 8}
    matrix: {S: [5, 7], dtype: [float64]}
  - name: kernel-causal-${align}
    mode: kernel
    shape: {batch: 2, query_len: 5, kv_len: 7, num_heads: 2, key_dim: 8}
    mask: {causal: $align}
    matrix: {align: [top-left, bottom-right], dtype: [float64]}
  - name: kernel-gqa
    mode: kernel
    shape: {batch: 2, query_len: 5, kv_len: 6, num_heads: 4, num_kv_heads: 2, key_dim: 8}
    mask: {random: {density: 0.3}, per_head: true}
    scale: 0.3
    matrix: {dtype: [float64]}
  - name: kernel-additive
    mode: kernel
    shape: {batch: 2, query_len: 5, kv_len: 6, num_heads: 2, key_dim: 8}
    mask: {additive: {density: 0.3}, bias: {scale: 1.0}}
    matrix: {dtype: [float64]}
  - name: kernel-masked-rows
    mode: kernel
    shape: {batch: 2, query_len: 5, kv_len: 6, num_heads: 2, key_dim: 8}
    mask: {masked_rows: [[0, 1]]}
    matrix: {dtype: [float64]}
  - name: layer
    mode: layer
    shape: {batch: 2, query_len: 6, num_heads: 2, key_dim: 4}
    compare: [output, weights, weights_mean]
    matrix: {dtype: [float64]}
  - name: layer-out
    mode: layer
    shape: {batch: 2, query_len: 6, num_heads: 2, key_dim: 4}
    mask: {causal: top-left, key_padding: [6, 4]}
    matrix: {dtype: [float64]}
  - name: layer-random
    mode: layer
    shape: {batch: 2, query_len: 6, num_heads: 2, key_dim: 4}
    mask: {random: {density: 0.3}, per_head: true}
    compare: [output, weights]
    matrix: {dtype: [float64]}
  - name: layer-cross
    mode: layer
    cross: true
    shape: {batch: 2, query_len: 5, kv_len: 7, num_heads: 2, key_dim: 4,
            key_input_dim: 6, value_input_dim: 3}
    mask: {causal: bottom-right}
    compare: [output, weights]
    matrix: {dtype: [float64]}
  - name: layer-extras-${bias}
    mode: layer
    bias: $bias
    add_bias_kv: true
    add_zero_attn: true
    shape: {batch: 2, query_len: 6, num_heads: 2, key_dim: 4}
    mask: {additive: {density: 0.3}, key_padding: [6, 3]}
    matrix: {bias: [true, false], dtype: [float64]}
  - name: layer-odd-heads
    mode: layer
    shape: {batch: 2, query_len: 6, num_heads: 3, key_dim: 4}
    mask: {causal: top-left}
    matrix: {dtype: [float64]}
  - name: layer-masked-rows
    mode: layer
    shape: {batch: 2, query_len: 6, num_heads: 2, key_dim: 4}
    mask: {masked_rows: [[1, 2]], fully_masked_rows: zeros}
    matrix: {dtype: [float64]}
  - name: layer-bias-kv-causal
    mode: layer
    add_bias_kv: true
    shape: {batch: 2, query_len: 6, num_heads: 2, key_dim: 4}
    mask: {causal: top-left}
    matrix: {dtype: [float64]}
"""


@pytest.fixture(scope="module")
def cases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Case]:
    path = tmp_path_factory.mktemp("spec") / "t.yaml"
    path.write_text(SPEC)
    return {case.name: case for case in load_spec(path)}


@pytest.fixture(scope="module")
def cache() -> ReferenceCache:
    return ReferenceCache()


def _adapter(cls: type) -> object:
    adapter = cls()
    adapter.setup()
    return adapter


def _verdict(cls: type, case: Case, cache: ReferenceCache) -> dict:
    return evaluate(_adapter(cls), case, "cpu", cache)


# --- declarations ------------------------------------------------------------------------------


def test_declarations_are_named_and_share_the_torch_worker() -> None:
    names = [cls.declaration.name for cls in torch_mha.ADAPTERS + torch_sdpa.ADAPTERS]
    assert names == [
        "torch.mha.fast",
        "torch.mha.fast-weights",
        "torch.mha.slow",
        "torch.mha.slow-weights",
        "torch.sdpa",
        "torch.sdpa.math",
        "torch.sdpa.flash",
        "torch.sdpa.efficient",
        "torch.sdpa.cudnn",
    ]
    for cls in torch_mha.ADAPTERS + torch_sdpa.ADAPTERS:
        assert cls.declaration.worker == "torch"
        assert cls.__module__ in (torch_mha.__name__, torch_sdpa.__name__)
        for divergence in cls.declaration.divergences:
            assert divergence.link and divergence.link.startswith("https://github.com/pytorch/")


def test_modules_do_not_import_torch() -> None:
    """The registry imports adapter modules to list them; torch must wait for setup()."""
    code = (
        "import sys, conformance.adapters.torch_mha, conformance.adapters.torch_sdpa; "
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only listing")
def test_cuda_only_variants_list_no_device_without_cuda() -> None:
    assert torch_sdpa.TorchSdpaEfficientAdapter().devices() == []
    assert torch_sdpa.TorchSdpaCudnnAdapter().devices() == []
    assert torch_sdpa.TorchSdpaAdapter().devices() == ["cpu"]
    assert torch_sdpa.TorchSdpaFlashAdapter().devices() == ["cpu"]


# --- weight layouts ---------------------------------------------------------------------------


def _module_for(case: Case) -> tuple[object, object]:
    adapter = torch_mha.TorchMhaSlowWeightsAdapter()
    config = adapter._config(case, "cpu")
    return adapter._module(config), config


@pytest.mark.parametrize(
    "name", ["layer", "layer-cross", "layer-extras-True", "layer-extras-False"]
)
def test_canonical_to_torch_round_trip(cases: dict[str, Case], name: str) -> None:
    """canonical -> module parameters (via layouts) -> canonical again, exactly."""
    case = cases[name]
    inputs = make_inputs(case)
    module, config = _module_for(case)
    torch_mha._set_weights(module, config, inputs)
    h, w = case.shape.num_heads, inputs.weights
    if config.packed:
        q, k, v = (t.numpy() for t in module.in_proj_weight.detach().chunk(3))
    else:
        q, k, v = (
            p.detach().numpy()
            for p in (module.q_proj_weight, module.k_proj_weight, module.v_proj_weight)
        )
    biases = module.in_proj_bias.detach().chunk(3) if config.bias else [None, None, None]
    for letter, weight, bias in zip("qkv", (q, k, v), biases, strict=True):
        back_w, back_b = layouts.from_linear(weight, None if bias is None else bias.numpy(), h)
        np.testing.assert_array_equal(back_w, w[f"w{letter}"])
        if bias is not None:
            np.testing.assert_array_equal(back_b, w[f"b{letter}"])
    wo = layouts.from_linear_out(module.out_proj.weight.detach().numpy(), h)
    np.testing.assert_array_equal(wo, w["wo"])
    if case.add_bias_kv:
        np.testing.assert_array_equal(module.bias_k.detach().numpy().reshape(h, -1), w["bias_k"])


@pytest.mark.parametrize("name", ["layer", "layer-cross"])
def test_torch_to_canonical_round_trip(cases: dict[str, Case], name: str) -> None:
    """A torch-initialised module -> canonical (via layouts) -> a fresh module: same numbers."""
    case = cases[name]
    torch.manual_seed(0)
    config = torch_mha.TorchMhaSlowWeightsAdapter()._config(case, "cpu")
    source = torch.nn.MultiheadAttention(
        config.embed_dim, config.num_heads, kdim=config.kdim, vdim=config.vdim,
        dtype=torch.float64,
    )  # fmt: skip
    with torch.no_grad():
        source.in_proj_bias.normal_()
        source.out_proj.bias.normal_()
    h = case.shape.num_heads
    inputs = make_inputs(case)
    if config.packed:
        q, k, v = (t.detach().numpy() for t in source.in_proj_weight.chunk(3))
    else:
        q, k, v = (
            p.detach().numpy()
            for p in (source.q_proj_weight, source.k_proj_weight, source.v_proj_weight)
        )
    for letter, weight, bias in zip(
        "qkv", (q, k, v), source.in_proj_bias.detach().chunk(3), strict=True
    ):
        w, b = layouts.from_linear(weight, bias.numpy(), h)
        inputs.weights[f"w{letter}"], inputs.weights[f"b{letter}"] = w, b
    inputs.weights["wo"] = layouts.from_linear_out(source.out_proj.weight.detach().numpy(), h)
    inputs.weights["bo"] = source.out_proj.bias.detach().numpy()

    target, _ = _module_for(case)
    torch_mha._set_weights(target, config, inputs)
    for (name_s, p_s), (name_t, p_t) in zip(
        source.named_parameters(), target.named_parameters(), strict=True
    ):
        assert name_s == name_t
        assert torch.equal(p_s, p_t), name_s
    query = torch.randn(case.shape.query_len, 2, config.embed_dim, dtype=torch.float64)
    key = torch.randn(case.shape.kv_len, 2, config.kdim, dtype=torch.float64)
    value = torch.randn(case.shape.kv_len, 2, config.vdim, dtype=torch.float64)
    with torch.no_grad():
        assert torch.equal(source(query, key, value)[0], target(query, key, value)[0])


# --- basic cases in float64 ---------------------------------------------------------------------

KERNEL = [
    "kernel-5",
    "kernel-7",
    "kernel-causal-top-left",
    "kernel-causal-bottom-right",
    "kernel-gqa",
]
PASSING = {
    torch_sdpa.TorchSdpaAdapter: KERNEL,
    torch_sdpa.TorchSdpaMathAdapter: KERNEL,
    torch_sdpa.TorchSdpaFlashAdapter: KERNEL,
    torch_mha.TorchMhaAdapter: ["layer-out"],
    torch_mha.TorchMhaFastWeightsAdapter: ["layer", "layer-out", "layer-random"],
    torch_mha.TorchMhaSlowAdapter: [
        "layer-out", "layer-extras-True", "layer-extras-False", "layer-odd-heads"
    ],
    torch_mha.TorchMhaSlowWeightsAdapter: [
        "layer", "layer-out", "layer-random", "layer-cross", "layer-extras-True",
        "layer-extras-False", "layer-odd-heads",
        "layer-bias-kv-causal",
    ],
}  # fmt: skip


@pytest.mark.parametrize("cls", list(PASSING), ids=lambda c: c.declaration.name)
def test_basic_cases_pass_at_float64_tolerance(
    cls: type, cases: dict[str, Case], cache: ReferenceCache
) -> None:
    adapter = _adapter(cls)
    chosen = [case for case in cases.values() if case.name in PASSING[cls]]
    assert len(chosen) == len(PASSING[cls])
    for case in chosen:
        record = evaluate(adapter, case, "cpu", cache)
        assert record["verdict"] == "pass", (case.id, record["message"])
        assert record["max_abs_error"] is not None and record["max_abs_error"] < 1e-12


def test_sdpa_additive_masks_pass(cases: dict[str, Case], cache: ReferenceCache) -> None:
    record = _verdict(torch_sdpa.TorchSdpaAdapter, cases["kernel-additive"], cache)
    assert record["verdict"] == "pass", record["message"]


def test_unsupported_features_are_declared(cases: dict[str, Case], cache: ReferenceCache) -> None:
    gqa_layer = dataclasses.replace(
        cases["layer"],
        id=cases["layer"].id + "+G1",
        shape=dataclasses.replace(cases["layer"].shape, num_kv_heads=1),
    )
    for cls in torch_mha.ADAPTERS:
        record = evaluate(_adapter(cls), gqa_layer, "cpu", cache)
        assert record["verdict"] == "unsupported"
        assert "no MQA" in record["message"] or "no GQA" in record["message"]
    record = _verdict(torch_mha.TorchMhaAdapter, cases["layer-extras-True"], cache)
    assert record["verdict"] == "unsupported" and "slow path" in record["message"]
    record = _verdict(torch_sdpa.TorchSdpaAdapter, cases["layer"], cache)
    assert record["verdict"] == "unsupported"


def test_flash_backend_refusal_is_unsupported_with_torchs_reason(
    cases: dict[str, Case], cache: ReferenceCache
) -> None:
    case = cases["kernel-7"]
    # A new id: the reference cache is keyed by case id.
    odd = dataclasses.replace(
        case, id=case.id + "+V4", shape=dataclasses.replace(case.shape, value_dim=4)
    )
    record = _verdict(torch_sdpa.TorchSdpaFlashAdapter, odd, cache)
    assert record["verdict"] == "unsupported"
    assert "same last dimension" in record["message"]
    assert _verdict(torch_sdpa.TorchSdpaAdapter, odd, cache)["verdict"] == "pass"


# --- the intended path runs --------------------------------------------------------------------


def test_fast_path_really_runs(
    cases: dict[str, Case], cache: ReferenceCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []
    original = torch._native_multi_head_attention

    def counting(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        calls.append(args[4])  # num_heads
        return original(*args, **kwargs)

    monkeypatch.setattr(torch, "_native_multi_head_attention", counting)
    for cls in (torch_mha.TorchMhaAdapter, torch_mha.TorchMhaFastWeightsAdapter):
        calls.clear()
        record = _verdict(cls, cases["layer-out"], cache)
        assert record["verdict"] == "pass", record["message"]
        assert calls == [2]
    calls.clear()
    assert _verdict(torch_mha.TorchMhaSlowAdapter, cases["layer-out"], cache)["verdict"] == "pass"
    assert _verdict(torch_mha.TorchMhaSlowWeightsAdapter, cases["layer"], cache)["verdict"] == (
        "pass"
    )
    assert calls == []


def test_fast_variant_refuses_to_report_a_silent_fallback(
    cases: dict[str, Case], cache: ReferenceCache
) -> None:
    """With the fast path switched off, the fast variant must error, not pass on the slow path."""
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        record = _verdict(torch_mha.TorchMhaAdapter, cases["layer-out"], cache)
    finally:
        torch.backends.mha.set_fastpath_enabled(True)
    assert record["verdict"] == "error"
    assert "did not take its fast path" in record["message"]


def test_odd_head_count_is_unsupported_on_the_fast_path(
    cases: dict[str, Case], cache: ReferenceCache
) -> None:
    odd = cases["layer-odd-heads"]
    for cls in (torch_mha.TorchMhaAdapter, torch_mha.TorchMhaFastWeightsAdapter):
        record = _verdict(cls, odd, cache)
        assert record["verdict"] == "unsupported" and "even head count" in record["message"]


def test_forced_backends_are_checked() -> None:
    adapter = torch_sdpa.TorchSdpaMathAdapter()
    with pytest.raises(RuntimeError, match="MATH"):
        adapter._check_backend(["_scaled_dot_product_flash_attention_for_cpu"])
    flash = torch_sdpa.TorchSdpaFlashAdapter()
    with pytest.raises(RuntimeError, match="no flash op ran"):
        flash._check_backend(["bmm", "_safe_softmax", "bmm"])
    flash._check_backend(["_scaled_dot_product_flash_attention_for_cpu"])


# --- mask conventions ---------------------------------------------------------------------------


def test_masked_padded_key_changes_nothing(cases: dict[str, Case]) -> None:
    """key_padding_mask True = masked: changing a padded key/value must not move the output."""
    case = cases["layer-cross"]
    padded = dataclasses.replace(
        case, mask=dataclasses.replace(case.mask, causal=None, key_padding=(7, 5))
    )
    for cls in (torch_mha.TorchMhaSlowAdapter, torch_mha.TorchMhaSlowWeightsAdapter):
        adapter = _adapter(cls)
        inputs = make_inputs(padded)
        before = adapter.run(padded, inputs, "cpu")
        inputs.arrays["key"] = inputs.arrays["key"].copy()
        inputs.arrays["value"] = inputs.arrays["value"].copy()
        inputs.arrays["key"][1, 5:] += 10.0
        inputs.arrays["value"][1, 5:] -= 10.0
        after = adapter.run(padded, inputs, "cpu")
        np.testing.assert_allclose(after["output"], before["output"], rtol=0, atol=1e-13)
        if "weights" in after:
            assert np.all(after["weights"][1, :, :, 5:] == 0.0)
        # The same change on an unpadded batch element does move it (the test can fail).
        inputs.arrays["key"][0, 5:] += 10.0
        moved = adapter.run(padded, inputs, "cpu")
        assert np.abs(moved["output"][0] - before["output"][0]).max() > 1e-3


def test_sdpa_bool_mask_true_means_attend(cases: dict[str, Case]) -> None:
    case = cases["kernel-7"]
    padded = dataclasses.replace(case, mask=dataclasses.replace(case.mask, key_padding=(5, 3)))
    adapter = _adapter(torch_sdpa.TorchSdpaAdapter)
    inputs = make_inputs(padded)
    before = adapter.run(padded, inputs, "cpu")["output"]
    inputs.arrays["v"] = inputs.arrays["v"].copy()
    inputs.arrays["v"][1, :, 3:] += 10.0
    after = adapter.run(padded, inputs, "cpu")["output"]
    np.testing.assert_allclose(after, before, rtol=0, atol=1e-13)


def test_3d_attn_mask_is_batch_major(cases: dict[str, Case]) -> None:
    """torch indexes a 3-D attn_mask as [batch * num_heads + head]."""
    kwargs = torch_mha.mha_masks(cases["layer-random"], "cpu")
    mask = kwargs["attn_mask"]
    assert mask.dtype == torch.bool and mask.shape == (2 * 2, 6, 6)
    from conformance.cases.masks import build_mask

    attend = build_mask(cases["layer-random"])[0]
    for b in range(2):
        for h in range(2):
            assert np.array_equal(mask[b * 2 + h].numpy(), ~attend[b, h])
    causal = torch_mha.mha_masks(cases["layer-out"], "cpu")
    assert causal["attn_mask"].shape == (6, 6) and causal["is_causal"] is True
    assert causal["key_padding_mask"].tolist()[1] == [False] * 4 + [True] * 2


# --- what each path does with a fully masked row (the declared divergences) -------------------


def test_fully_masked_rows_per_path(cases: dict[str, Case], cache: ReferenceCache) -> None:
    case = cases["layer-masked-rows"]  # expects zeros
    slow = _verdict(torch_mha.TorchMhaSlowAdapter, case, cache)
    assert slow["verdict"] == "pass"  # SDPA's safe softmax: zeros, as the case expects
    for cls, divergence in (
        (torch_mha.TorchMhaAdapter, "mha-fast-masked-rows-nan"),
        (torch_mha.TorchMhaSlowWeightsAdapter, "mha-need-weights-masked-rows-nan"),
    ):
        record = _verdict(cls, case, cache)
        assert record["verdict"] == "diverges", record["message"]
        assert record["divergence"]["id"] == divergence
    kernel = _verdict(torch_sdpa.TorchSdpaAdapter, cases["kernel-masked-rows"], cache)
    assert kernel["verdict"] == "diverges" and kernel["divergence"]["id"] == (
        "sdpa-masked-rows-zero"
    )


def test_is_causal_hint_with_bias_kv_is_a_torch_bug(
    cases: dict[str, Case], cache: ReferenceCache
) -> None:
    """need_weights=False + is_causal drops attn_mask, so SDPA's top-left causal mask over
    S + 1 keys hides the appended bias_k/bias_v position from every query. Found by this suite
    (torch 2.13); need_weights=True, which keeps the padded mask, is right. If torch fixes it,
    this test fails: then drop it and tell the report."""
    case = cases["layer-bias-kv-causal"]
    record = _verdict(torch_mha.TorchMhaSlowAdapter, case, cache)
    assert record["verdict"] == "fail"
    assert _verdict(torch_mha.TorchMhaSlowWeightsAdapter, case, cache)["verdict"] == "pass"
