"""The "as-written" masked-row policy (conformance.cases.written): declared, composed, checked.

NumPy test doubles write each mask source with its own fill, as ONNX Runtime's
MultiHeadAttention, transformers' eager attention and jax.nn.dot_product_attention do; a double
that matches its declaration `diverges`, a double that writes its mask some other way `fail`s.
The doubles build their masks from the case's fields directly (not from the policy code).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from conformance.adapter_api.adapter import Adapter, Declaration, Divergence
from conformance.cases.case import FEATURES, Case, Mask, Shape
from conformance.cases.inputs import make_inputs
from conformance.cases.masks import build_mask, visible
from conformance.cases.written import (
    BOOLEAN_SOURCES,
    FILL_POLICY,
    AsWritten,
    Fill,
    for_case,
    parse,
)
from conformance.oracle.reference import attention
from conformance.verdicts.evaluate import evaluate

F32_MIN = float(np.finfo(np.float32).min)
JAX_LARGE_NEGATIVE = -0.7 * float(np.finfo(np.float32).max)

# What the real adapters declare (adapters/ort_contrib.py, hf_attention.py, jax_dpa.py).
ORT_LIKE = AsWritten(
    (
        Fill(BOOLEAN_SOURCES - {"causal", "key-padding"} | {"additive-mask"}, "-inf"),
        Fill({"causal"}, "finfo-min"),
        Fill({"key-padding"}, -10000.0),
    ),
    precision="float32",
)
HF_LIKE = AsWritten(
    (Fill(BOOLEAN_SOURCES, "finfo-min"), Fill({"additive-mask"}, "-inf")), precision="case"
)
JAX_LIKE = AsWritten(
    (Fill(BOOLEAN_SOURCES, JAX_LARGE_NEGATIVE), Fill({"additive-mask"}, "-inf")),
    precision="float32",
    zeroed=frozenset({"query-padding"}),
)


def kernel_case(t: int, s: int | None = None, *, b: int = 2, dtype: str = "float32",
                name: str = "rows", **mask) -> Case:  # fmt: skip
    s = s or t
    shape = Shape(
        batch=b, query_len=t, kv_len=s, num_heads=2, num_kv_heads=2, key_dim=4, value_dim=4,
        query_dim=8, key_input_dim=8, value_input_dim=8, output_dim=8,
    )  # fmt: skip
    return Case(
        id=f"t/{name}[{t},{s},{dtype}]", family="t", name=name, mode="kernel", shape=shape,
        mask=Mask(**mask), dtype=dtype,
    )  # fmt: skip


def only(case: Case, **fields) -> Case:  # noqa: ANN003
    """The case with a mask of just these fields (how an adapter splits a mask by source)."""
    base = Mask(padding_side=case.mask.padding_side, per_head=case.mask.per_head)
    return dataclasses.replace(case, mask=dataclasses.replace(base, **fields))


def softmax_written(logits: np.ndarray, written: np.ndarray, zero_dead: bool) -> np.ndarray:
    """softmax over the last axis of float32-written logits; an all -inf row is NaN or 0."""
    x = np.asarray(logits + written, np.float32).astype(np.float64)
    dead = ~np.isfinite(x).any(-1, keepdims=True)
    x = np.where(dead, 0.0, x)
    w = np.exp(x - x.max(-1, keepdims=True))
    w = w / w.sum(-1, keepdims=True)
    return np.where(dead, 0.0 if zero_dead else np.nan, w)


def logits_of(case: Case, inputs) -> np.ndarray:  # noqa: ANN001
    a = inputs.arrays
    return np.einsum("bhtk,bhsk->bhts", a["q"], a["k"]) * case.effective_scale


def out_of(weights: np.ndarray, inputs) -> dict:  # noqa: ANN001
    return {"output": np.einsum("bhts,bhsv->bhtv", weights, inputs.arrays["v"])}


def declaration(name: str, *divergences: Divergence) -> Declaration:
    return Declaration(name=f"test.{name}", summary="NumPy double", framework="numpy",
                       features=frozenset(FEATURES) - {"layer"}, worker="test",
                       divergences=divergences)  # fmt: skip


def as_written(policy: AsWritten) -> Divergence:
    return Divergence(id="rows-as-written", reason="each mask source written with its fill",
                      when=frozenset({"fully-masked-rows"}), masked_rows=policy)  # fmt: skip


class OrtLike(Adapter):
    """key_padding_mask as +`padding` (default -10000, ORT's mask_filter_value), the causal
    flag as float32 lowest(), every other source as -inf in attention_bias."""

    padding = -10000.0
    declaration = declaration("ort-like", as_written(ORT_LIKE))

    def run(self, case, inputs, device):  # noqa: ANN001, ANN201
        m = case.mask
        pad, _ = build_mask(only(case, key_padding=m.key_padding))
        causal, _ = build_mask(only(case, causal=m.causal))
        rest, bias = build_mask(dataclasses.replace(case, mask=dataclasses.replace(
            m, key_padding=None, causal=None)))  # fmt: skip
        mask_data = np.where(pad, 0.0, self.padding) if pad is not None else 0.0
        if causal is not None:
            mask_data = np.where(causal, mask_data, F32_MIN)
        written = np.zeros((1, 1, 1, 1)) if rest is None else np.where(rest, 0.0, -np.inf)
        if bias is not None:
            written = written + bias
        logits = np.asarray(logits_of(case, inputs) + mask_data, np.float32)
        return out_of(softmax_written(logits, written, zero_dead=False), inputs)


class OrtLikeWrongFill(OrtLike):
    """Writes key padding as -1e9: a padded row is uniform, not softmax(logits - 10000)."""

    padding = -1e9
    declaration = declaration("ort-like-wrong", as_written(ORT_LIKE))


class HfLike(Adapter):
    """transformers' eager mask: where(attend, additive mask, finfo(dtype).min), added in
    the case dtype; `merged`: the wrong double writes every source as finfo.min."""

    merged = False
    declaration = declaration("hf-like", as_written(HF_LIKE))

    def run(self, case, inputs, device):  # noqa: ANN001, ANN201
        attend, bias = build_mask(case)
        base = np.zeros((1, 1, 1, 1)) if bias is None else bias
        if self.merged:
            attend = visible(case)
            base = np.zeros((1, 1, 1, 1))
        mask = np.where(attend, base, F32_MIN)
        return out_of(softmax_written(logits_of(case, inputs), mask, zero_dead=False), inputs)


class HfLikeMerged(HfLike):
    merged = True
    declaration = declaration("hf-like-merged", as_written(HF_LIKE))


class JaxLike(Adapter):
    """jax.nn.dot_product_attention with query_seq_lengths: masked keys replaced by -0.7 *
    float32 max, padded query rows zeroed after the softmax (`zero_padded` False: the wrong
    double keeps them uniform)."""

    zero_padded = True
    declaration = declaration("jax-like", as_written(JAX_LIKE))

    def run(self, case, inputs, device):  # noqa: ANN001, ANN201
        seen = visible(case)
        logits = np.where(seen, logits_of(case, inputs), JAX_LARGE_NEGATIVE)
        weights = softmax_written(logits, np.zeros((1, 1, 1, 1)), zero_dead=False)
        if self.zero_padded:
            rows = np.arange(case.shape.query_len)[None, :] < np.asarray(
                case.mask.query_padding)[:, None]  # fmt: skip
            weights = weights * rows[:, None, :, None]
        return out_of(weights, inputs)


class JaxLikeNotZeroed(JaxLike):
    zero_padded = False
    declaration = declaration("jax-like-not-zeroed", as_written(JAX_LIKE))


class JaxLikeOnePolicy(JaxLike):
    """The right implementation, declared as before this policy existed: no single policy."""

    declaration = declaration(
        "jax-like-one-policy",
        Divergence(
            id="zeros",
            reason="padded query rows are 0",
            masked_rows="zeros",
            when=frozenset({"fully-masked-rows", "query-padding"}),
        ),  # fmt: skip
        Divergence(
            id="uniform",
            reason="masked keys get a large negative",
            masked_rows="uniform",
            when=frozenset({"fully-masked-rows"}),
        ),  # fmt: skip
    )


# Left-padded causal batch: element 0's first two rows see only padding keys.
LEFT_PADDED_CAUSAL = kernel_case(5, causal="top-left", key_padding=(3, 5), padding_side="left")
# A padded query row (element 1, rows 3-4) and rows emptied by keys (element 0: no valid key).
QUERY_AND_KEY_ROWS = kernel_case(5, query_padding=(5, 3), key_padding=(0, 5))


def mixed_case() -> Case:
    """Boolean and 0/-inf additive mask together, with a row emptied partly by each."""
    for seed in range(50):
        case = dataclasses.replace(
            kernel_case(6, random_density=0.55, additive_density=0.55, name="mixed"), seed=seed
        )
        parts: dict = {}
        attend, bias = build_mask(case, parts=parts)
        empty = ~(attend & np.isfinite(bias)).any(-1)
        bool_only = (~attend & np.isfinite(bias)).any(-1)
        additive_only = (attend & ~np.isfinite(bias)).any(-1)
        if (empty & bool_only & additive_only).any():
            return case
    raise AssertionError("no seed gives a mixed row")


def test_text_round_trips_and_is_canonical() -> None:
    for policy in (ORT_LIKE, HF_LIKE, JAX_LIKE, FILL_POLICY):
        assert parse(str(policy)) == policy
    assert str(ORT_LIKE).startswith("as-written(")
    assert parse("fill") == FILL_POLICY
    same = AsWritten((Fill(["key-padding"], -10000),), precision="float32")
    assert str(same) == str(AsWritten((Fill({"key-padding"}, -10000.0),), precision="float32"))
    assert Divergence(id="x", reason="y", masked_rows=ORT_LIKE).masked_rows == str(ORT_LIKE)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (lambda: Fill({"no-such-source"}, -1.0), "fill sources"),
        (lambda: Fill({"causal"}, 1.0), "negative"),
        (lambda: Fill({"causal"}, "finfo-max"), "number or one of"),
        (lambda: AsWritten((), precision="float8"), "precision"),
        (lambda: AsWritten((), empty="ones"), "empty"),
        (lambda: Divergence(id="x", reason="y", masked_rows="as-written(causal=-1.0)"), "needs"),
    ],
)
def test_bad_declarations_fail_where_declared(bad, message) -> None:  # noqa: ANN001
    with pytest.raises(ValueError, match=message):
        bad()


def test_for_case_keeps_the_sources_a_case_has() -> None:
    text = for_case(str(ORT_LIKE), LEFT_PADDED_CAUSAL)
    assert text == "as-written(causal=finfo-min; key-padding=-10000.0 | float32)"
    assert for_case("uniform", LEFT_PADDED_CAUSAL) == "uniform"
    # The fuzzer's twins (the same pattern as a boolean and as an additive mask) are written
    # differently, so their fully masked rows are not compared with each other.
    bool_twin = kernel_case(4, random_density=0.5)
    additive_twin = kernel_case(4, additive_density=0.5)
    assert for_case(str(HF_LIKE), bool_twin) != for_case(str(HF_LIKE), additive_twin)


def test_reference_row_is_the_softmax_of_its_written_logits() -> None:
    case = LEFT_PADDED_CAUSAL
    inputs = make_inputs(case)
    got = attention(case, inputs, masked_rows=str(ORT_LIKE))["weights"]
    logits = logits_of(case, inputs)
    # element 0, row 1: keys 0-1 are padding (-10000), keys 2-4 are beyond the diagonal
    row = np.asarray(logits[0, :, 1, :2] - 10000.0, np.float32).astype(np.float64)
    want = np.exp(row - row.max(-1, keepdims=True))
    want /= want.sum(-1, keepdims=True)
    np.testing.assert_allclose(got[0, :, 1, :2], want, rtol=1e-12)
    assert not got[0, :, 1, 2:].any()
    # rows with a visible key are the reference's own, whatever the fills
    plain = attention(case, inputs)["weights"]
    seen = visible(case).any(-1)  # [B, 1, T]
    rows = np.broadcast_to(seen[..., None], plain.shape)
    np.testing.assert_array_equal(got[rows], plain[rows])
    assert np.isnan(plain[~rows]).all()


def test_zeroed_and_empty_rows() -> None:
    case = QUERY_AND_KEY_ROWS
    inputs = make_inputs(case)
    got = attention(case, inputs, masked_rows=str(JAX_LIKE))["weights"]
    np.testing.assert_array_equal(got[1, :, 3:], 0.0)  # padded query rows: zeroed
    np.testing.assert_allclose(got[0], 1 / 5)  # no valid key: uniform over the large negatives
    safe = AsWritten((Fill({"key-padding"}, "-inf"),), empty="zeros")
    got = attention(case, inputs, masked_rows=str(safe))["weights"]
    np.testing.assert_array_equal(got[0], 0.0)  # every written logit -inf: a safe softmax's 0
    # query padding, named by no fill, is written -inf too: the same 0 (NaN with empty "nan")
    np.testing.assert_array_equal(got[1, :, 3:], 0.0)
    nan = AsWritten((Fill({"key-padding"}, "-inf"),))
    assert np.isnan(attention(case, inputs, masked_rows=str(nan))["weights"][1, :, 3:]).all()


@pytest.mark.parametrize(
    ("adapter", "case", "verdict"),
    [
        (OrtLike, LEFT_PADDED_CAUSAL, "diverges"),
        (OrtLikeWrongFill, LEFT_PADDED_CAUSAL, "fail"),
        (HfLike, "mixed", "diverges"),
        (HfLikeMerged, "mixed", "fail"),
        (JaxLike, QUERY_AND_KEY_ROWS, "diverges"),
        (JaxLikeNotZeroed, QUERY_AND_KEY_ROWS, "fail"),
        (JaxLikeOnePolicy, QUERY_AND_KEY_ROWS, "fail"),
    ],
)
def test_a_declaration_is_checked_not_trusted(adapter, case, verdict) -> None:  # noqa: ANN001
    case = mixed_case() if case == "mixed" else case
    record = evaluate(adapter(), case, "cpu")
    assert record["verdict"] == verdict, record["message"]
    if verdict == "diverges":
        assert "fully masked rows match policy 'as-written(" in record["message"]
    else:
        assert "does not explain it" in record["message"] or "not explain" in record["message"]


def test_reports_describe_as_written_policies_in_words() -> None:
    from conformance.cases.written import describe

    ort = ("as-written(additive-mask,bool-mask,cache-lengths,masked-rows,query-padding,segments,"
           "window=-inf; causal=finfo-min; key-padding=-10000.0 | float32)")  # fmt: skip
    assert describe(ort) == (
        "as written: causal the dtype's lowest, key-padding -10000, the rest -inf (in float32)"
    )
    assert describe("uniform") == "uniform"
    assert describe("as-written(nonsense") == "as-written(nonsense"  # a foreign file's text
