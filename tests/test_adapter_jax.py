"""The JAX and Flax adapters: weight layouts, float64 behaviour, decoding, masked rows, paths,
gradients (jax.vjp) and attention dropout.

Every assertion is on a real verdict from conformance.evaluate (or on real framework output),
so these tests fail when an adapter, a declaration or the framework's behaviour changes.
Shapes are shared between tests so each jitted function compiles once.
"""

from __future__ import annotations

import numpy as np
import pytest

jax = pytest.importorskip("jax")

import dataclasses  # noqa: E402

from conformance.adapter_api.adapter import DropoutBehavior  # noqa: E402
from conformance.cases.case import Case, Decode, Mask, Shape  # noqa: E402
from conformance.cases.layouts import from_einsum_kernel, to_einsum_kernel  # noqa: E402
from conformance.oracle.backward import gradient_names, gradients  # noqa: E402
from conformance.oracle.reference import attention  # noqa: E402
from conformance.spec import load_spec, shipped_specs_dir  # noqa: E402
from conformance.verdicts.evaluate import ReferenceCache, evaluate  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def x64():
    """The adapters' worker runs with x64 on; restore the process setting afterwards."""
    before = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", before)


CACHE = ReferenceCache()


def make_case(
    name: str,
    mode: str = "layer",
    dtype: str = "float64",
    *,
    T: int = 5,
    S: int | None = None,
    H: int = 4,
    G: int | None = None,
    Dk: int = 12,
    mask: Mask | None = None,
    compare: tuple[str, ...] = ("output",),
    decode: Decode | None = None,
    gradients: bool = False,
) -> Case:
    S = S or T
    G = G or H
    shape = Shape(2, T, S, H, G, 8, 8, 12, Dk, Dk, 12)
    return Case(
        id=f"jaxtest/{name}-{mode}[{dtype}]",
        family="jaxtest",
        name=name,
        mode=mode,
        shape=shape,
        mask=mask or Mask(),
        dtype=dtype,
        compare=compare,
        decode=decode,
        gradients=gradients,
        self_attention=(S == T and Dk == 12),
        params=(("dtype", dtype),),
    )


def run(adapter, case: Case) -> dict:  # noqa: ANN001
    return evaluate(adapter, case, "cpu", CACHE)


@pytest.fixture(scope="module")
def dpa():
    from conformance.adapters.jax_dpa import JaxDpaXla, JaxDpaXlaSeqLengths

    adapters = {"xla": JaxDpaXla(), "seq": JaxDpaXlaSeqLengths()}
    for a in adapters.values():
        a.setup()
    return adapters


@pytest.fixture(scope="module")
def nnx_adapters():
    pytest.importorskip("flax")
    from conformance.adapters.flax_nnx import FlaxNnxExplicit, FlaxNnxFused

    adapters = {"fused": FlaxNnxFused(), "explicit": FlaxNnxExplicit()}
    for a in adapters.values():
        a.setup()
    return adapters


@pytest.fixture(scope="module")
def linen():
    pytest.importorskip("flax")
    from conformance.adapters.flax_linen import FlaxLinen

    adapter = FlaxLinen()
    adapter.setup()
    return adapter


# --- weight layouts ------------------------------------------------------------------------------


def test_einsum_kernel_round_trips_both_ways() -> None:
    rng = np.random.default_rng(0)
    w = rng.standard_normal((3, 7, 5))  # canonical [N, D, K]
    kernel = to_einsum_kernel(w)
    assert kernel.shape == (7, 3, 5)  # Flax [D, N, K]
    np.testing.assert_array_equal(from_einsum_kernel(kernel), w)
    native = rng.standard_normal((7, 3, 5))
    np.testing.assert_array_equal(to_einsum_kernel(from_einsum_kernel(native)), native)
    # feature e of the projection belongs to head e // K: x @ kernel[:, n, :] is head n
    x = rng.standard_normal((4, 7))
    np.testing.assert_allclose(np.einsum("ld,dnk->nlk", x, kernel)[1], x @ w[1])


def _native_layer_case(G: int = 4) -> Case:
    return make_case("native-weights", G=G, mask=Mask(causal="top-left"))


def test_nnx_native_weights_to_canonical_match_reference() -> None:
    """flax's own randomly initialised parameters, read back into the canonical layout, give
    the reference's output: native -> canonical is right (canonical -> native is every other
    test)."""
    pytest.importorskip("flax")
    import jax.numpy as jnp
    from flax import nnx

    from conformance.cases.inputs import make_inputs

    case = _native_layer_case(G=2)
    s = case.shape
    module = nnx.MultiHeadAttention(
        num_heads=s.num_heads, in_features=s.query_dim, qkv_features=s.num_heads * s.key_dim,
        out_features=s.output_dim, num_kv_heads=s.num_kv_heads, param_dtype=jnp.float64,
        bias_init=nnx.initializers.normal(0.1), decode=False, rngs=nnx.Rngs(3),
    )  # fmt: skip
    inputs = make_inputs(case)
    for n, proj in (("q", module.query), ("k", module.key), ("v", module.value)):
        inputs.weights[f"w{n}"] = from_einsum_kernel(np.asarray(proj.kernel[...]))
        inputs.weights[f"b{n}"] = np.asarray(proj.bias[...])
    inputs.weights["wo"] = np.asarray(module.out.kernel[...])
    inputs.weights["bo"] = np.asarray(module.out.bias[...])
    assert inputs.weights["wk"].shape == (s.num_kv_heads, s.key_input_dim, s.key_dim)
    x = jnp.asarray(inputs.arrays["query"])
    out, sown = nnx.capture(
        lambda m: m(x, sow_weights=True, is_causal=True, decode=False), nnx.Intermediate
    )(module)
    expected = attention(case, inputs)
    np.testing.assert_allclose(np.asarray(out), expected["output"], rtol=1e-12, atol=1e-12)
    weights = np.asarray(sown["attention_weights"].get_value()[0])
    np.testing.assert_allclose(weights, expected["weights"], rtol=1e-12, atol=1e-12)


def test_linen_native_params_to_canonical_match_reference() -> None:
    pytest.importorskip("flax")
    import jax.numpy as jnp
    from flax import linen as nn

    from conformance.cases.inputs import make_inputs

    case = _native_layer_case()
    s = case.shape
    model = nn.MultiHeadDotProductAttention(
        num_heads=s.num_heads, qkv_features=s.num_heads * s.key_dim, out_features=s.output_dim,
        param_dtype=jnp.float64, bias_init=nn.initializers.normal(0.1),
    )  # fmt: skip
    inputs = make_inputs(case)
    x = jnp.asarray(inputs.arrays["query"])
    params = model.init(jax.random.key(1), x)["params"]
    for n, proj in (("q", "query"), ("k", "key"), ("v", "value")):
        inputs.weights[f"w{n}"] = from_einsum_kernel(np.asarray(params[proj]["kernel"]))
        inputs.weights[f"b{n}"] = np.asarray(params[proj]["bias"])
    inputs.weights["wo"] = np.asarray(params["out"]["kernel"])
    inputs.weights["bo"] = np.asarray(params["out"]["bias"])
    causal = nn.make_causal_mask(jnp.ones((s.batch, s.query_len)))
    out = np.asarray(model.apply({"params": params}, x, mask=causal))
    np.testing.assert_allclose(out, attention(case, inputs)["output"], rtol=1e-12, atol=1e-12)


# --- jax.nn.dot_product_attention -----------------------------------------------------------------


def test_dpa_float64_softmax_is_float32(dpa) -> None:  # noqa: ANN001
    """float64 in, float32 softmax inside: held to float32 tolerance, and only that."""
    case = make_case("basic", mode="kernel", G=2)
    r = run(dpa["xla"], case)
    assert r["verdict"] == "diverges", r["message"]
    assert r["divergence"]["id"] == "softmax-float32"
    assert 1e-9 < r["max_abs_error"] < 1e-5  # float32-sized, not float64-sized, not garbage
    r32 = run(dpa["xla"], make_case("basic", mode="kernel", dtype="float32", G=2))
    assert r32["verdict"] == "pass", r32["message"]


def test_dpa_flags_top_left_causal_window_bias_scale(dpa) -> None:  # noqa: ANN001
    causal = make_case("causal", mode="kernel", dtype="float32", T=5, S=7,
                       mask=Mask(causal="top-left", window=(2, 1)))  # fmt: skip
    assert dpa["xla"].arguments(causal)["is_causal"] is True
    assert dpa["xla"].arguments(causal)["window"] == (2, 1)
    assert run(dpa["xla"], causal)["verdict"] == "pass"
    right = make_case("causal-br", mode="kernel", dtype="float32", T=5, S=7,
                      mask=Mask(causal="bottom-right", bias_scale=1.0))  # fmt: skip
    args = dpa["xla"].arguments(right)
    assert args["is_causal"] is False and args["mask"] is not None  # is_causal is top-left only
    assert args["bias"] is not None
    assert run(dpa["xla"], right)["verdict"] == "pass"


def test_dpa_fully_masked_rows(dpa) -> None:  # noqa: ANN001
    """Rows masked through `mask`/flags: uniform weights; through query_seq_lengths: zeros."""
    kpad0 = make_case("kpad0", mode="kernel", dtype="float32", mask=Mask(key_padding=(0, 5)))
    for adapter in dpa.values():
        r = run(adapter, kpad0)
        assert r["verdict"] == "diverges", r["message"]
        assert r["divergence"]["id"] == "masked-rows-uniform"
    qpad = make_case("qpad", mode="kernel", dtype="float32", mask=Mask(query_padding=(3, 5)))
    r = run(dpa["seq"], qpad)
    assert r["verdict"] == "diverges" and r["divergence"]["id"] == "query-padding-zeros"
    assert dpa["seq"].arguments(qpad)["q_len"].dtype == np.int32
    assert run(dpa["xla"], qpad)["divergence"]["id"] == "masked-rows-uniform"


def test_seq_lengths_rows_of_both_kinds(dpa) -> None:  # noqa: ANN001
    """Padded query rows (query_seq_lengths: 0) and rows emptied by key padding (uniform) in
    one case: no single policy, the as-written declaration verified."""
    case = make_case("qkpad", mode="kernel", dtype="float32",
                     mask=Mask(query_padding=(5, 3), key_padding=(0, 5)))  # fmt: skip
    r = run(dpa["seq"], case)
    assert r["verdict"] == "diverges", r["message"]
    assert r["divergence"]["id"] == "query-padding-zeros"  # the first of those that apply
    assert "zeroed query-padding" in r["message"]
    assert "query-padding-zeros-and-masked-rows-uniform" in [d["id"] for d in r["divergences"]]


def test_dpa_value_dim_and_float16_cpu(dpa) -> None:  # noqa: ANN001
    case = make_case("basic", mode="kernel", dtype="float16", G=2)
    r = run(dpa["xla"], case)
    # XLA:CPU refuses the F16_F16_F32 dot under jit; should JAX fix that, it must then pass.
    assert r["verdict"] in ("unsupported", "pass"), r["message"]
    if r["verdict"] == "unsupported":
        assert "F16_F16_F32" in r["message"]
    assert "value-dim" in dpa["xla"].declaration.unsupported_reasons


# --- flax.nnx ----------------------------------------------------------------------------------


def test_nnx_float64(nnx_adapters) -> None:  # noqa: ANN001
    case = make_case("gqa", G=2, mask=Mask(causal="top-left", key_padding=(4, 5)))
    r = run(nnx_adapters["explicit"], case)
    assert r["verdict"] == "pass", r["message"]
    assert r["max_abs_error"] < 1e-12  # the explicit path really computes in float64
    r = run(nnx_adapters["fused"], case)
    assert r["verdict"] == "diverges" and r["divergence"]["id"] == "softmax-float32"
    weights = make_case("gqa", G=2, compare=("output", "weights"),
                        mask=Mask(causal="top-left", key_padding=(4, 5)))  # fmt: skip
    r = run(nnx_adapters["explicit"], weights)
    assert r["verdict"] == "pass", r["message"]
    assert run(nnx_adapters["fused"], weights)["verdict"] == "unsupported"


def test_nnx_decode_equals_full_causal(nnx_adapters) -> None:  # noqa: ANN001
    case = make_case("decode", G=2, mask=Mask(causal="top-left"), decode=Decode(2, 3))
    r = run(nnx_adapters["explicit"], case)
    assert r["verdict"] == "pass", r["message"]
    assert r["max_abs_error"] < 1e-12
    case32 = make_case("decode", "layer", "float32", G=2, mask=Mask(causal="top-left"),
                       decode=Decode(2, 3))  # fmt: skip
    r = run(nnx_adapters["fused"], case32)
    assert r["verdict"] == "pass", r["message"]


def test_nnx_fully_masked_rows_uniform(nnx_adapters) -> None:  # noqa: ANN001
    case = make_case("kpad0", mask=Mask(key_padding=(0, 5)))
    r = run(nnx_adapters["explicit"], case)  # flax's own softmax, genuinely float64
    assert r["verdict"] == "diverges", r["message"]
    assert r["divergence"]["id"] == "masked-rows-uniform"
    r = run(nnx_adapters["fused"], case)  # jax.nn.dot_product_attention: float32 softmax too
    assert r["verdict"] == "diverges", r["message"]
    assert r["divergence"]["id"] == "masked-rows-uniform+softmax-float32"


def test_nnx_path_check_can_fail(nnx_adapters) -> None:  # noqa: ANN001
    """The fused-call counter is live: expecting the wrong path is an error, not a pass."""
    from conformance.adapters.flax_nnx import FlaxNnxFused

    wrong = FlaxNnxFused()
    wrong.setup()
    wrong.sow_weights = True  # takes the explicit path while expecting the fused one
    r = run(wrong, make_case("basic", dtype="float32"))
    assert r["verdict"] == "error" and "expected the fused path" in r["message"]


# --- flax.linen ---------------------------------------------------------------------------------


def test_linen_float64_weights_and_cross(linen) -> None:  # noqa: ANN001
    r = run(linen, make_case("mha", compare=("output", "weights"),
                             mask=Mask(causal="top-left", key_padding=(4, 5))))  # fmt: skip
    assert r["verdict"] == "pass", r["message"]
    assert r["max_abs_error"] < 1e-12
    cross = make_case("cross", T=5, S=7, Dk=10, mask=Mask(causal="bottom-right"))
    r = run(linen, cross)
    assert r["verdict"] == "pass", r["message"]
    assert run(linen, make_case("gqa", G=2))["verdict"] == "unsupported"


def test_linen_decode_and_masked_rows(linen) -> None:  # noqa: ANN001
    r = run(linen, make_case("decode-mha", mask=Mask(causal="top-left"), decode=Decode(2, 3)))
    assert r["verdict"] == "pass", r["message"]
    assert r["max_abs_error"] < 1e-12
    r = run(linen, make_case("kpad0", mask=Mask(key_padding=(0, 5))))
    assert r["verdict"] == "diverges" and r["divergence"]["id"] == "masked-rows-uniform"


def test_declarations_share_the_x64_worker() -> None:
    from conformance.adapters import flax_linen, flax_nnx, jax_dpa

    for module in (jax_dpa, flax_nnx, flax_linen):
        for cls in module.ADAPTERS:
            assert cls.declaration.worker == "jax"
            assert cls.declaration.env.get("JAX_ENABLE_X64") == "1"
    cudnn = jax_dpa.JaxDpaCudnn()
    cudnn.setup()
    assert all(d.startswith("cuda") for d in cudnn.devices())  # none on a CPU-only machine


# --- gradients (jax.vjp inside the jitted call) ----------------------------------------------


@pytest.fixture(scope="module")
def shipped() -> dict[str, Case]:
    specs = shipped_specs_dir()
    return {c.id: c for name in ("gradients", "dropout") for c in load_spec(specs / f"{name}.yaml")}


def gradient_errors(adapter, case: Case, policy: str = "nan") -> dict[str, float]:  # noqa: ANN001
    """Largest |adapter - float64 backward| per gradient name, under a masked-row policy."""
    inputs = CACHE.inputs(case)
    out = adapter.run(case, inputs, "cpu")
    ref = gradients(case, inputs, masked_rows=policy)
    return {n: float(np.max(np.abs(out[n] - ref[n]))) for n in gradient_names(case)}


def test_dpa_gradients_and_float32_softmax(dpa, shipped) -> None:  # noqa: ANN001
    """grad_q/k/v through jax.vjp; K/V gradients summed over each query group by JAX itself.

    float64: the softmax runs in float32 (`softmax-float32`), and its backward too: every
    gradient errs ~1e-7, far above float64's 1e-9, so the divergence must cover the gradients
    (it declares no `outputs=`) and the float32 tolerance holds them.
    """
    r32 = run(dpa["xla"], shipped["gradients/grouped-query-kernel[float32]"])
    assert r32["verdict"] == "pass", r32["message"]
    assert r32["compared"] == ["output", "grad_q", "grad_k", "grad_v"]
    case = shipped["gradients/grouped-query-kernel[float64]"]
    r = run(dpa["xla"], case)
    assert r["verdict"] == "diverges" and r["divergence"]["id"] == "softmax-float32", r["message"]
    divergence = dpa["xla"].declaration.divergence_for(case, "cpu")
    assert divergence.outputs is None  # covers the gradients, not only the output
    errors = gradient_errors(dpa["xla"], case)
    assert all(1e-9 < e < 1e-5 for e in errors.values()), errors


def test_dpa_gradients_of_masked_rows(dpa, shipped) -> None:  # noqa: ANN001
    """A fully masked row's uniform weights take no gradient through the logits (JAX's
    jnp.where), and padded query rows zeroed by query_seq_lengths send none back: both are
    verified on the gradients under the declared policy."""
    r = run(dpa["xla"], shipped["gradients/masked-rows-kernel[float32]"])
    assert r["verdict"] == "diverges" and r["divergence"]["id"] == "masked-rows-uniform"
    case = shipped["gradients/query-padding-kernel[float32]"]
    r = run(dpa["seq"], case)
    assert r["verdict"] == "diverges" and r["divergence"]["id"] == "query-padding-zeros"
    assert max(gradient_errors(dpa["seq"], case, "zeros").values()) < 1e-5


def test_nnx_gradients(nnx_adapters, shipped) -> None:  # noqa: ANN001
    """Inputs and every parameter, mapped back from Flax's kernels; self-attention's
    grad_query is the total through q, k and v."""
    case = shipped["gradients/grouped-query-layer[float64]"]
    r = run(nnx_adapters["explicit"], case)
    assert r["verdict"] == "pass", r["message"]
    assert r["max_abs_error"] < 1e-12  # flax's own softmax: a genuine float64 backward
    assert "grad_wk" in r["compared"] and "grad_query" in r["compared"]
    r = run(nnx_adapters["fused"], case)
    assert r["verdict"] == "diverges" and r["divergence"]["id"] == "softmax-float32"
    cross = make_case("cross-grad", T=5, S=7, Dk=10, G=2, gradients=True,
                      mask=Mask(causal="bottom-right"))  # fmt: skip
    r = run(nnx_adapters["explicit"], cross)
    assert r["verdict"] == "pass", r["message"]
    assert {"grad_key", "grad_value"} <= set(r["compared"])


def test_linen_gradients(linen, shipped) -> None:  # noqa: ANN001
    r = run(linen, shipped["gradients/cross-layer[float64]"])  # key and value dims differ
    assert r["verdict"] == "pass", r["message"]
    assert r["max_abs_error"] < 1e-12
    r = run(linen, shipped["gradients/masked-rows-layer[float64]"])
    assert r["verdict"] == "diverges" and r["divergence"]["id"] == "masked-rows-uniform"


# --- dropout ------------------------------------------------------------------------------------


def test_flax_dropout_inference_and_training(nnx_adapters, linen, shipped) -> None:  # noqa: ANN001
    """Inference with a rate equals no dropout; training draws are 0 or P/(1-p), keep 1-p on
    average, and share one [T, S] mask across batch and heads (broadcast_dropout)."""
    for adapter in (nnx_adapters["explicit"], linen):
        r = run(adapter, shipped["dropout/inference-layer[float64]"])
        assert r["verdict"] == "pass" and r["max_abs_error"] < 1e-12, r["message"]
        r = run(adapter, shipped["dropout/training-layer-weights[float32]"])
        assert r["verdict"] == "pass", r["message"]
        assert "one mask shared across heads" in r["message"]
        assert "one mask shared across batch" in r["message"]


def test_flax_dropout_sharing_is_checked(linen, shipped) -> None:  # noqa: ANN001
    """Declaring Flax's broadcast mask as independent per head and batch element fails."""
    from conformance.adapters.flax_linen import FlaxLinen

    class Independent(FlaxLinen):
        declaration = dataclasses.replace(
            FlaxLinen.declaration, dropout=DropoutBehavior(target="weights", shared=())
        )

    wrong = Independent()
    wrong.setup()
    r = run(wrong, shipped["dropout/training-layer[float32]"])
    assert r["verdict"] == "fail"
    assert "independent masks across" in r["message"]


def test_dropout_unsupported_where_the_path_cannot_take_it(dpa, nnx_adapters, shipped) -> None:  # noqa: ANN001
    case = shipped["dropout/inference-layer[float32]"]
    r = run(nnx_adapters["fused"], case)
    assert r["verdict"] == "unsupported" and "explicit path" in r["message"]
    assert "dropout" in run(dpa["xla"], shipped["dropout/inference-kernel[float32]"])["message"]
    # Forced anyway, the fused variant's path check refuses the explicit path dropout takes.
    from conformance.adapters.flax_nnx import FlaxNnxFused

    class Forced(FlaxNnxFused):
        declaration = dataclasses.replace(
            FlaxNnxFused.declaration,
            features=FlaxNnxFused.declaration.features | {"dropout"},
        )

    forced = Forced()
    forced.setup()
    r = run(forced, case)
    assert r["verdict"] == "error" and "expected the fused path" in r["message"]


def test_dpa_compiles_once_per_signature_and_reports_it(dpa) -> None:  # noqa: ANN001
    """Two cases that differ only in data share one XLA program: the first case's record counts
    it (conformance.profile, from JAX's monitoring events), the second compiles nothing."""
    from conformance.running import profile

    # A shape no other test uses, so this process has not compiled it yet.
    first, second = (make_case(n, "kernel", "float32", T=3, S=11, H=1) for n in ("sig-a", "sig-b"))
    profile.take()
    assert run(dpa["xla"], first)["verdict"] == "pass"
    programs = profile.take().get("compile", [0.0, 0])[1]
    assert programs >= 1  # compiled, or loaded from the persistent cache: counted either way
    assert run(dpa["xla"], second)["verdict"] == "pass"
    assert "compile" not in profile.take()
