"""Issue 14 item 6: chunked prefill, per-sequence cache lengths and paged key/value caches.

The reference never sees pages: a paged cache is a physical layout of the same keys. These
tests prove the layout and the semantics against independent formulations: every position of
every sequence sits where the block table says (a brute-force loop over positions), attention
read through the block table position by position equals the reference, a batch with mixed
cache lengths equals each sequence run alone on its own keys, and chunked decoding states the
same expected output as full causal attention.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest

from conformance.cases.case import Case
from conformance.cases.inputs import make_inputs
from conformance.cases.kv_cache import (
    gather_pages,
    padded_block_table,
    paged_layout,
    seeded_block_table,
    sequence_lengths,
)
from conformance.cli.commands import describe_case
from conformance.oracle.reference import attention, dot_product_attention
from conformance.spec import load_spec

SPEC = Path(__file__).resolve().parent.parent / "specs" / "kv_cache.yaml"


@pytest.fixture(scope="module")
def cases() -> dict[str, Case]:
    return {c.id: c for c in load_spec(SPEC)}


def write_spec(tmp_path: Path, body: str) -> list[Case]:
    path = tmp_path / "c.yaml"
    path.write_text("defaults: {mode: kernel, dtype: float64}\ncases:\n" + body)
    return load_spec(path)


def paged_ids(cases: dict[str, Case]) -> list[str]:
    return [i for i, c in cases.items() if c.cache is not None and c.cache.paged]


def test_shipped_family_states_every_new_feature(cases: dict[str, Case]) -> None:
    tags = set().union(*(c.features for c in cases.values()))
    assert {"decode-chunked", "cache-lengths", "paged-kv"} <= tags
    sizes = {c.cache.page_size for c in cases.values() if c.cache and c.cache.paged}
    assert {16, 64, 256} <= sizes


def test_every_position_sits_where_the_block_table_says(cases: dict[str, Case]) -> None:
    for case_id in paged_ids(cases):
        case = cases[case_id]
        if case.tier == "large":
            continue
        a = make_inputs(case).arrays
        k_pool, v_pool = paged_layout(case, a["k"], a["v"])
        size, lengths = case.cache.page_size, sequence_lengths(case)
        for b, row in enumerate(case.cache.block_table):
            assert len(row) == math.ceil(lengths[b] / size)
            for p in range(lengths[b]):  # brute force, position by position
                page, slot = row[p // size], p % size
                assert np.array_equal(k_pool[page, slot], a["k"][b, :, p]), (case_id, b, p)
                assert np.array_equal(v_pool[page, slot], a["v"][b, :, p]), (case_id, b, p)
        np.testing.assert_array_equal(
            gather_pages(case, k_pool)[0, :, : lengths[0]], a["k"][0, :, : lengths[0]]
        )


def test_unused_slots_hold_numbers_not_zeros(cases: dict[str, Case]) -> None:
    case = cases["kv_cache/paged-16-step[float64]"]  # 40 keys: 8 slots of each last page free
    a = make_inputs(case).arrays
    k_pool, _ = paged_layout(case, a["k"], a["v"])
    used = {page for row in case.cache.block_table for page in row}
    spare = sorted(set(range(case.cache.num_pages)) - used)
    assert spare, "the case's pool has spare pages"
    assert np.abs(k_pool[spare]).min() > 0
    last = case.cache.block_table[0][-1]
    assert np.abs(k_pool[last, 8:]).min() > 0  # positions 40..47 of sequence 0's last page


def test_layout_is_deterministic(cases: dict[str, Case]) -> None:
    case = cases["kv_cache/paged-16-chunk-causal"]
    a = make_inputs(case).arrays
    first, second = paged_layout(case, a["k"], a["v"]), paged_layout(case, a["k"], a["v"])
    assert all(np.array_equal(x, y) for x, y in zip(first, second, strict=True))
    again = seeded_block_table(case.data_key, (40, 40), 16, case.cache.num_pages, "shuffled")
    assert again == case.cache.block_table


def test_shuffled_tables_are_non_contiguous(cases: dict[str, Case]) -> None:
    for case_id in paged_ids(cases):
        table = cases[case_id].cache.block_table
        flat = [p for row in table for p in row]
        assert len(set(flat)) == len(flat), case_id
        if cases[case_id].cache.page_order == "shuffled" and len(flat) > 2:
            assert flat != sorted(flat), case_id


def test_explicit_block_table_is_used_as_written(cases: dict[str, Case]) -> None:
    case = cases["kv_cache/paged-explicit-table"]
    assert case.cache.block_table == ((5, 0, 3), (1, 4, 2))
    assert case.cache.num_pages == 6 and case.cache.page_order == "explicit"
    np.testing.assert_array_equal(padded_block_table(case), [[5, 0, 3], [1, 4, 2]])


def _through_the_table(case: Case) -> np.ndarray:
    """Attention read through the block table, one (b, h, t) row and one key at a time."""
    a = make_inputs(case).arrays
    k_pool, v_pool = paged_layout(case, a["k"], a["v"])
    s, size = case.shape, case.cache.page_size
    lengths = sequence_lengths(case)
    r = s.num_heads // s.num_kv_heads
    out = np.zeros((s.batch, s.num_heads, s.query_len, s.value_dim))
    for b in range(s.batch):
        for h in range(s.num_heads):
            for t in range(s.query_len):
                position = lengths[b] - s.query_len + t
                logits, values = [], []
                for p in range(lengths[b]):
                    if case.mask.causal and p > position:
                        continue
                    page, slot = case.cache.block_table[b][p // size], p % size
                    key = k_pool[page, slot, h // r]
                    logits.append(case.effective_scale * float(a["q"][b, h, t] @ key))
                    values.append(v_pool[page, slot, h // r])
                w = np.exp(np.array(logits) - max(logits))
                out[b, h, t] = (w / w.sum()) @ np.array(values)
    return out


@pytest.mark.parametrize(
    "case_id",
    [
        "kv_cache/paged-16-step[float64]",
        "kv_cache/paged-16-chunk-causal",
        "kv_cache/paged-16-lengths",
        "kv_cache/paged-explicit-table",
        "kv_cache/paged-32-chunk-causal",
    ],
)
def test_reference_equals_attention_read_through_the_pages(
    cases: dict[str, Case], case_id: str
) -> None:
    case = dataclasses.replace(cases[case_id], dtype="float64")
    ref = attention(case, make_inputs(case))["output"]
    np.testing.assert_allclose(ref, _through_the_table(case), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    "case_id", ["kv_cache/lengths-step[float64]", "kv_cache/lengths-chunk-causal"]
)
def test_mixed_lengths_equal_each_sequence_alone(cases: dict[str, Case], case_id: str) -> None:
    case = dataclasses.replace(cases[case_id], dtype="float64")
    a = make_inputs(case).arrays
    out = attention(case, make_inputs(case))["output"]
    t = case.shape.query_len
    r = case.shape.num_heads // case.shape.num_kv_heads
    for b, n in enumerate(sequence_lengths(case)):
        k = np.repeat(a["k"][b : b + 1, :, :n], r, axis=1)
        v = np.repeat(a["v"][b : b + 1, :, :n], r, axis=1)
        attend = None
        if case.mask.causal:  # bottom-right within the sequence's own n keys
            attend = (np.arange(n)[None, :] <= np.arange(t)[:, None] + n - t)[None, None]
        alone, _ = dot_product_attention(
            a["q"][b : b + 1], k, v, scale=case.effective_scale, attend=attend
        )
        np.testing.assert_allclose(out[b : b + 1], alone, rtol=1e-12, atol=1e-12)


def test_chunked_decode_expects_full_causal_attention(cases: dict[str, Case]) -> None:
    case = cases["kv_cache/chunked-prefix4-3x3-kernel[float64]"]
    assert (case.decode.prefix, case.decode.steps, case.decode.chunk) == (4, 3, 3)
    assert case.mask.causal == "top-left" and case.shape.query_len == 13
    a = make_inputs(case).arrays
    out = attention(case, make_inputs(case))["output"]
    # chunk by chunk against the growing cache, each chunk causal within itself
    for start in (0, 4, 7, 10):
        stop = 4 if start == 0 else start + 3
        attend = (np.arange(stop)[None, :] <= np.arange(start, stop)[:, None])[None, None]
        step, _ = dot_product_attention(
            a["q"][:, :, start:stop], a["k"][:, :, :stop], a["v"][:, :, :stop],
            scale=case.effective_scale, attend=attend,
        )  # fmt: skip
        np.testing.assert_allclose(out[:, :, start:stop], step, rtol=1e-12, atol=1e-12)


def test_case_round_trips_through_dict(cases: dict[str, Case]) -> None:
    for case in cases.values():
        again = Case.from_dict(case.to_dict())
        assert again == case and again.features == case.features


def test_show_prints_the_block_table(cases: dict[str, Case]) -> None:
    text = describe_case(cases["kv_cache/paged-explicit-table"])
    assert "6 pages of 8 positions, explicit block table" in text
    assert "batch 1: [1, 4, 2]" in text
    text = describe_case(cases["kv_cache/chunked-empty-gqa"])
    assert "prefix 0, then 3 steps of 4 tokens" in text


def test_in_order_and_default_pool(tmp_path: Path) -> None:
    (case,) = write_spec(
        tmp_path,
        "  - name: a\n    shape: {batch: 2, query_len: 1, kv_len: 20, num_heads: 2, key_dim: 4}\n"
        "    cache: {page_size: 8, pages: in-order, lengths: [20, 9]}\n",
    )
    assert case.cache.block_table == ((0, 1, 2), (3, 4))
    assert case.cache.num_pages == 5
    assert case.features >= {"paged-kv", "cache-lengths"}


def test_memory_decode_expects_every_step_to_see_the_whole_memory(cases: dict[str, Case]) -> None:
    case = cases["kv_cache/memory-steps[float64]"]
    assert case.decode.memory and case.mask.is_empty() and "decode-memory" in case.features
    a = make_inputs(case).arrays
    out = attention(case, make_inputs(case))["output"]
    for t in range(case.shape.query_len):  # one decoder step at a time, all 10 memory keys
        step, _ = dot_product_attention(
            a["q"][:, :, t : t + 1], a["k"], a["v"], scale=case.effective_scale
        )
        np.testing.assert_allclose(out[:, :, t : t + 1], step, rtol=1e-12, atol=1e-12)
    assert "over a cached encoder memory of 10 keys" in describe_case(case)
