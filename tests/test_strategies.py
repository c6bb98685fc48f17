"""The Hypothesis strategies: valid, bounded, constrained by a declaration, round-trippable.

Generation is cheap (no adapter runs), so these use more examples than the CI fuzz profile.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

pytest.importorskip("hypothesis")

from hypothesis import HealthCheck, Phase, find, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from conformance.adapter_api.adapter import Declaration  # noqa: E402
from conformance.cases.case import FEATURES, Case  # noqa: E402
from conformance.cases.inputs import make_inputs  # noqa: E402
from conformance.cases.masks import visible  # noqa: E402
from conformance.fuzz import spec_text  # noqa: E402
from conformance.fuzz import strategies as cst  # noqa: E402
from conformance.spec import load_spec  # noqa: E402

PROFILE = cst.profile()
MANY = settings(
    PROFILE,
    max_examples=max(150, PROFILE.max_examples),
    suppress_health_check=list(HealthCheck),
)

# Narrow declarations, as real implementations have them.
KERNEL_ONLY = Declaration(
    name="test.kernel-only",
    summary="kernel, float32, causal and key padding only",
    framework="numpy",
    features=frozenset({"kernel", "causal", "key-padding", "kv-len"}),
    dtypes=frozenset({"float32"}),
)
LAYER_NO_MASKED_ROWS = Declaration(
    name="test.layer",
    summary="layer mode, every mask but no fully masked rows",
    framework="numpy",
    features=frozenset(FEATURES) - {"kernel", "fully-masked-rows", "grouped-query", "decode"},
    dtypes=frozenset({"float64", "bfloat16"}),
)
SELF_ONLY = Declaration(
    name="test.self",
    summary="layer self-attention, no cross inputs",
    framework="numpy",
    features=frozenset({"layer", "causal", "bool-mask", "weights", "multi-axis", "decode"}),
    dtypes=frozenset({"float16"}),
)
DECLARATIONS = [None, KERNEL_ONLY, LAYER_NO_MASKED_ROWS, SELF_ONLY]


def _stable(case: Case) -> Case:
    return dataclasses.replace(case, source="", description="")


def _round_trip(case: Case, tmp_path) -> Case:  # noqa: ANN001
    path = tmp_path / "fuzz.yaml"
    path.write_text(spec_text([case]))
    (loaded,) = load_spec(path)
    return loaded


@pytest.mark.parametrize("decl", DECLARATIONS, ids=lambda d: d.name if d else "any")
def test_generated_cases_are_supported_and_bounded(decl: Declaration | None) -> None:
    limits = cst.DEFAULT_LIMITS

    @MANY
    @given(cst.cases(decl))
    def check(case: Case) -> None:
        if decl is not None:
            assert decl.missing(case) == []
        s = case.shape
        assert 1 <= s.batch <= limits.max_batch
        assert s.num_heads % s.num_kv_heads == 0
        assert s.num_heads <= limits.max_heads
        assert max(s.key_dim, s.value_dim) <= limits.max_dim
        if not s.attention_axes:
            assert max(s.query_len, s.kv_len) <= limits.max_len
        if case.mode == "layer" and case.self_attention:
            assert (s.kv_len, s.key_input_dim, s.value_input_dim) == (
                s.query_len, s.query_dim, s.query_dim
            )  # fmt: skip

    check()


def test_spec_round_trip_reproduces_case_and_inputs(tmp_path) -> None:  # noqa: ANN001
    jsonschema = pytest.importorskip("jsonschema")
    import json

    import yaml

    from conformance.spec.schema import SCHEMA_PATH as schema_path

    validator = jsonschema.Draft202012Validator(json.loads(schema_path.read_text()))

    @MANY
    @given(cst.cases())
    def check(case: Case) -> None:
        text = spec_text([case])
        validator.validate(yaml.safe_load(text))  # the editors' JSON Schema accepts it too
        loaded = _round_trip(case, tmp_path)
        assert _stable(loaded) == _stable(case)
        assert loaded.data_key == case.data_key  # hence the very same inputs and masks
        a, b = make_inputs(case), make_inputs(loaded)
        for name, value in a.arrays.items():
            np.testing.assert_array_equal(b.arrays[name], value)

    check()


def _sample(strategy: st.SearchStrategy, n: int) -> list:
    """n examples, the same ones on every run (derandomized), without shrinking or filtering."""
    out: list = []

    @settings(database=None, max_examples=n, derandomize=True, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))  # fmt: skip
    @given(strategy)
    def collect(value) -> None:  # noqa: ANN001
        out.append(value)

    collect()
    return out


def test_every_feature_tag_is_generated() -> None:
    """Every tag in FEATURES turns up, except the few NOT_GENERATED says why it leaves out."""
    sample = _sample(cst.cases(), 600)
    seen = set().union(*(c.features for c in sample))
    expected = set(FEATURES) - set(cst.NOT_GENERATED)
    if cst.Dropout is None:  # an older case model without attention dropout
        expected -= {"dropout"}
    assert expected - seen == set(), "add these tags to conformance.strategies.cases()"
    assert not seen & set(cst.NOT_GENERATED)


def test_masks_reach_single_visible_keys_and_fully_masked_rows() -> None:
    counts = []
    for case in _sample(cst.cases(require={"kernel"}), 300):
        seen = visible(case)
        if seen is not None:
            counts.append(np.unique(seen.sum(axis=-1)))
    values = set(np.concatenate(counts).tolist())
    assert 0 in values  # fully masked rows
    assert 1 in values  # a single visible key


def test_require_and_forbid() -> None:
    @MANY
    @given(cst.cases(require={"causal", "weights"}, forbid={"decode", "per-head-mask"}))
    def check(case: Case) -> None:
        assert {"causal", "weights"} <= case.features
        assert not {"decode", "per-head-mask"} & case.features

    check()
    with pytest.raises(ValueError, match="not allowed"):
        find(cst.cases(KERNEL_ONLY, require={"layer"}), lambda c: True)


def test_without_fully_masked_rows_none_are_generated() -> None:
    decl = LAYER_NO_MASKED_ROWS

    @MANY
    @given(cst.cases(decl, require={"query-padding"}))
    def check(case: Case) -> None:
        assert "fully-masked-rows" not in case.features
        assert case.mask.query_padding is not None  # kept, with every query row valid
        assert all(n == case.shape.query_len for n in case.mask.query_padding)

    check()


def test_small_strategies() -> None:
    @MANY
    @given(
        cst.head_counts({"multi-query"}, max_heads=4),
        cst.decodes(5),
        cst.dtypes({"bfloat16", "float16", "layer"}),
        cst.scales(),
    )
    def check(heads: tuple[int, int], decode, dtype: str, scale: float) -> None:  # noqa: ANN001
        h, g = heads
        assert g in (1, h)  # no grouped-query without its tag
        assert decode.prefix >= 0 and decode.steps >= 1 and decode.prefix + decode.steps <= 5
        assert dtype in ("bfloat16", "float16")
        assert 0.0 <= scale <= 3.0

    check()


def test_shapes_and_masks_compose(tmp_path) -> None:  # noqa: ANN001
    """The building blocks work on their own, as users compose them in their own tests."""

    @MANY
    @given(st.data())
    def check(data: st.DataObject) -> None:
        shape = data.draw(cst.shapes("kernel", {"kernel", "kv-len", "value-dim", "multi-query"}))
        mask = data.draw(cst.masks(shape, kinds={"key_padding", "random"}))
        assert mask.causal is None and mask.window is None
        if mask.key_padding is not None:
            assert len(mask.key_padding) == shape.batch
            assert max(mask.key_padding) <= shape.kv_len
        case = cst.named(Case(id="", family="fuzz", name="", mode="kernel", shape=shape, mask=mask))
        assert _stable(_round_trip(case, tmp_path)) == _stable(case)

    check()


def test_profiles() -> None:
    assert cst.profile("ci").derandomize is True
    assert cst.profile("ci").database is None
    assert cst.profile("long").max_examples > cst.profile("ci").max_examples
    with pytest.raises(ValueError):
        cst.profile("nightly")


# issue 14: rotary embeddings, chunked/memory decoding and caches are generated too, and a
# generated case round-trips through a spec file (the fuzz counterexample) and the loader.
ISSUE14_TAGS = ["rope-half", "rope-interleaved", "rope-partial", "rope-per-sequence", "decode-chunked",
                "decode-memory", "cache-lengths", "paged-kv"]  # fmt: skip


@pytest.mark.parametrize("tag", ISSUE14_TAGS)
def test_issue14_keys_round_trip_through_the_loader(tag: str, tmp_path) -> None:  # noqa: ANN001
    from conformance.oracle.reference import attention

    @settings(MANY, max_examples=40)
    @given(cst.cases(require={tag}))
    def check(case: Case) -> None:
        assert tag in case.features
        text = spec_text([case])
        assert {"rope": "rope:", "deco": "decode:", "cach": "cache:", "page": "cache:"}[
            tag[:4]
        ] in text
        loaded = _round_trip(case, tmp_path)
        assert _stable(loaded) == _stable(case)  # rope, decode.chunk/memory, lengths, table
        s = case.shape
        assert max(s.query_len, s.kv_len) <= cst.DEFAULT_LIMITS.max_len
        if case.cache is not None and case.cache.paged:
            held = case.cache.lengths or (s.kv_len,) * s.batch
            assert [len(r) for r in case.cache.block_table] == [
                -(-n // case.cache.page_size) for n in held
            ]
        out = attention(loaded, make_inputs(loaded))["output"]  # the reference computes it
        assert out.shape[0] == s.batch

    check()


def test_caches_and_ropes_compose() -> None:
    """The small strategies on their own: a seeded table is filled in from the case's name."""

    @MANY
    @given(st.data())
    def check(data: st.DataObject) -> None:
        shape = data.draw(cst.shapes("kernel", {"kernel", "kv-len"}))
        cache = data.draw(cst.caches(shape, {"cache-lengths", "paged-kv"}))
        if cache is not None and cache.lengths is not None:
            assert all(shape.query_len <= n <= shape.kv_len for n in cache.lengths)
        case = cst.with_block_table(
            cst.named(Case(id="", family="fuzz", name="", mode="kernel", shape=shape, cache=cache))
        )
        if cache is not None and cache.paged:
            pages = [p for row in case.cache.block_table for p in row]
            assert len(set(pages)) == len(pages) and max(pages) < cache.num_pages
        rope = data.draw(cst.ropes(6, {"rope-interleaved", "rope-partial"}, min_offset=2))
        assert rope.style == "interleaved" and rope.offset >= 2
        assert rope.rotary_dim in (None, 2, 4)

    check()
