"""The kernel-scale case library (specs/tiles, long_masks, long_decode, long_numerics): it
holds what the issue asks for, at the sizes real kernels tile by, and stays loadable.

Only the loaded Case objects are inspected here (no inputs, no references): the tiers'
numbers are checked by benchmarks/reference_timing.py and the detection proof lives in
tests/test_kernel_scale.py.
"""

from __future__ import annotations

from collections import Counter

import pytest

from conformance.cases.case import in_tier
from conformance.spec import MAX_CASE_BYTES, load_specs, shipped_specs_dir

KERNEL_FAMILIES = ("tiles", "long_masks", "long_decode", "long_numerics")
BLOCKS = (32, 64, 128, 256, 512, 1024)


@pytest.fixture(scope="module")
def cases() -> list:
    specs = shipped_specs_dir()
    return load_specs([specs / f"{family}.yaml" for family in KERNEL_FAMILIES])


def _tier(cases: list, tier: str) -> list:
    return [c for c in cases if c.tier == tier]


def test_tier_sizes(cases: list) -> None:
    counts = Counter(c.tier for c in cases)
    assert counts["default"] >= 150 and counts["large"] >= 1000
    assert "small" not in counts  # kernel-scale cases never slip into the toy tier


def test_default_tier_stays_affordable(cases: list) -> None:
    """B 1-2, few heads, at most ~4k keys: ~36 adapters run each of these on two cores."""
    for case in _tier(cases, "default"):
        s = case.shape
        assert s.batch <= 2, case.id
        assert s.num_heads <= 8 or s.num_kv_heads == 1, case.id  # H = 32 only for multi-query
        assert s.query_len * s.kv_len * s.num_heads * s.batch <= 2 * 1030 * 1030 * 4, case.id
        if case.gradients:
            assert max(s.query_len, s.kv_len) <= 512, case.id


def test_large_tier_is_long_and_fits_its_memory_limit(cases: list) -> None:
    large = _tier(cases, "large")
    assert max(max(c.shape.query_len, c.shape.kv_len) for c in large) >= 32768
    assert all(max(c.shape.query_len, c.shape.kv_len) >= 8191 for c in large)
    assert all(c.shape.batch <= 2 for c in large)
    assert MAX_CASE_BYTES["large"] <= 3 * 2**30  # the loader refused anything above it


def test_row_lengths_straddle_every_block_size(cases: list) -> None:
    default = _tier(cases, "default")
    lengths = {c.shape.query_len for c in default} | {c.shape.kv_len for c in default}
    for block in BLOCKS:
        assert {block - 1, block, block + 1} <= lengths, block
    pairs = {(c.shape.query_len, c.shape.kv_len) for c in default}
    fa_pairs = {(113, 203), (128, 217), (113, 211), (108, 256), (256, 512), (512, 256),
                (1023, 1024), (1024, 1023)}  # fmt: skip
    assert fa_pairs <= pairs
    large = _tier(cases, "large")
    assert {2047, 2049, 8191, 8192, 8193, 16383, 16385, 32767, 32769} <= {
        c.shape.query_len for c in large
    } | {c.shape.kv_len for c in large}


def test_head_dims_dtypes_and_modes(cases: list) -> None:
    default = _tier(cases, "default")
    dims = {c.shape.key_dim for c in default}
    assert {32, 40, 59, 64, 80, 96, 111, 128, 160, 192, 224, 256} <= dims
    assert any(c.shape.value_dim != c.shape.key_dim for c in default)
    assert {c.dtype for c in default} == {"float64", "float32", "float16", "bfloat16"}
    modes = Counter(c.mode for c in default)
    assert modes["layer"] >= 4 and modes["kernel"] > 10 * modes["layer"]  # mostly kernel mode
    assert sum(c.gradients for c in default) >= 6


def test_every_mask_kind_at_scale(cases: list) -> None:
    default = [c for c in _tier(cases, "default") if max(c.shape.query_len, c.shape.kv_len) > 64]
    features = set().union(*(c.features for c in default))
    assert {"causal", "causal-top-left", "causal-bottom-right", "window", "key-padding",
            "query-padding", "fully-masked-rows", "bool-mask", "additive-mask", "attn-bias",
            "per-head-mask", "grouped-query", "multi-query", "decode", "weights", "scale",
            "gradients"} <= features  # fmt: skip
    ratios = {c.shape.num_heads // c.shape.num_kv_heads for c in default}
    assert {2, 4, 8, 32} <= ratios
    # causal offsets S - T that are not multiples of 32 (the diagonal enters mid-block)
    offsets = {c.shape.kv_len - c.shape.query_len for c in default if c.mask.causal}
    assert any(o % 32 for o in offsets if o > 0) and any(o % 32 for o in offsets if o < 0)
    # key padding ending mid-block and exactly at a block edge
    ends = {n for c in default for n in (c.mask.key_padding or ())}
    assert ends & {128, 256} and any(n % 32 for n in ends)


def test_decode_caches_cross_block_edges(cases: list) -> None:
    decode = [c for c in _tier(cases, "default") if c.decode]
    assert max(c.decode.prefix for c in decode) >= 1000
    for case in decode:
        first, last = case.decode.prefix + 1, case.decode.prefix + case.decode.steps
        assert any(first <= edge < last for edge in BLOCKS), case.id


def test_extreme_logits_pass_exps_overflow_points(cases: list) -> None:
    """Scales that put |logits| past 88.7 (float32's exp overflow) and 709.8 (float64's)."""
    scales = {c.scale for c in _tier(cases, "default") if c.family == "long_numerics" and c.scale}
    assert max(scales) >= 1000 and any(20 <= s <= 100 for s in scales)


def test_descriptions_name_the_boundary(cases: list) -> None:
    for case in cases:
        assert any(ch.isdigit() for ch in case.description), f"{case.id}: say which size or block"


def test_default_run_includes_default_not_large(cases: list) -> None:
    assert all(in_tier(c, "default") == (c.tier == "default") for c in cases)
    assert all(in_tier(c, "large") for c in cases)
