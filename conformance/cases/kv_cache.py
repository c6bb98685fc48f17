"""Key/value caches as serving code holds them (issue 14): per-sequence cache lengths and
paged layouts.

A case with `cache:` is one step of a decoder: its keys and values [B, G, S, K|V] are the
logical cache and its T queries are the newest T tokens. The key says two things about the
cache, neither of which changes what attention computes:

- `lengths`: sequence b holds its first lengths[b] positions (T <= lengths[b] <= S), the rest
  of its S slots are unused. Its T queries are its last T tokens, so query t of sequence b sits
  at position lengths[b] - T + t, and a bottom-right causal mask aligns at each sequence's own
  end. That is ORT GroupQueryAttention's seqlens_k (= lengths - 1), JAX dot_product_attention's
  key_value_seq_lengths and a padding mask in Hugging Face.
- `page_size` and a block table: a physical layout. The keys live in a pool of `num_pages`
  pages of `page_size` positions, [num_pages, page_size, G, K] (the vLLM / FlashAttention
  `block_table` layout); logical position p of sequence b is slot p % page_size of page
  block_table[b][p // page_size]. Pages need not be contiguous or in order; the last page of a
  sequence may be partly used.

The reference attends over the contiguous keys; `paged_layout` writes them into pages (pages
and slots no sequence uses hold other seeded numbers, so an implementation that reads the wrong
page gets wrong numbers, not zeros) and `gather_pages` reads them back, which tests prove equal
position by position.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .seeding import stream

if TYPE_CHECKING:  # annotations only: case imports this module
    from .case import Case

PAGE_ORDERS = ("shuffled", "in-order")  # or an explicit block table (a list of lists)
MAX_PAGE_SIZE = 4096


@dataclass(frozen=True)
class Cache:
    """The resolved `cache:` key. `block_table` holds one row per batch element with exactly
    pages_needed(lengths[b]) physical page numbers (resolved at load: a seeded permutation or
    the spec's own table)."""

    lengths: tuple[int, ...] | None = None  # valid positions per sequence (default S each)
    page_size: int | None = None  # None: contiguous
    num_pages: int | None = None  # pages in the pool
    block_table: tuple[tuple[int, ...], ...] | None = None
    page_order: str = "shuffled"  # how the table was made: shuffled, in-order or explicit

    @property
    def paged(self) -> bool:
        return self.page_size is not None


def pages_needed(length: int, page_size: int) -> int:
    """Pages a sequence of `length` positions occupies (the last one may be partly used)."""
    return math.ceil(length / page_size)


def sequence_lengths(case: Case) -> np.ndarray:
    """[B] int: the cache length of each sequence (S for all when the case states none)."""
    s = case.shape
    cache = case.cache
    if cache is not None and cache.lengths is not None:
        return np.asarray(cache.lengths, dtype=np.int64)
    return np.full(s.batch, s.kv_len, dtype=np.int64)


def seeded_block_table(
    key: str, lengths: tuple[int, ...], page_size: int, num_pages: int, order: str
) -> tuple[tuple[int, ...], ...]:
    """Block table rows for `lengths`: pages taken in turn from a seeded permutation of the
    pool (`shuffled`: non-contiguous, out of order) or from 0, 1, 2, ... (`in-order`)."""
    pool = np.arange(num_pages)
    if order == "shuffled":
        pool = stream(key, "cache.pages").permutation(num_pages)
    rows, start = [], 0
    for length in lengths:
        n = pages_needed(length, page_size)
        rows.append(tuple(int(p) for p in pool[start : start + n]))
        start += n
    return tuple(rows)


def padded_block_table(case: Case, pad: int = -1) -> np.ndarray:
    """[B, max pages] int32: the case's block table, short rows padded with `pad` (-1 for
    torch's PagedAttention page_table; some kernels want 0 there)."""
    rows = case.cache.block_table
    width = max(len(r) for r in rows)
    out = np.full((len(rows), width), pad, dtype=np.int32)
    for b, row in enumerate(rows):
        out[b, : len(row)] = row
    return out


def paged_layout(case: Case, keys: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(key pool, value pool), each [num_pages, page_size, G, K|V] in the inputs' dtype, holding
    the case's keys/values [B, G, S, K|V] where its block table says. Deterministic: unused
    slots get seeded numbers of the same scale, not zeros."""
    cache = case.cache
    p, n = cache.page_size, cache.num_pages
    lengths = sequence_lengths(case)
    pools = []
    for name, x in (("k", keys), ("v", values)):
        g, d = x.shape[1], x.shape[3]
        filler = stream(case.data_key, f"cache.pool.{name}").standard_normal((n, p, g, d))
        pool = filler.astype(x.dtype)
        for b, row in enumerate(cache.block_table):
            for i, page in enumerate(row):
                start = i * p
                stop = min(start + p, int(lengths[b]))
                pool[page, : stop - start] = np.transpose(x[b, :, start:stop], (1, 0, 2))
        pools.append(pool)
    return pools[0], pools[1]


def gather_pages(case: Case, pool: np.ndarray) -> np.ndarray:
    """The inverse of paged_layout for one pool: [B, G, S, D] contiguous, positions past a
    sequence's length zero (no implementation may read them)."""
    cache = case.cache
    p = cache.page_size
    s = case.shape
    lengths = sequence_lengths(case)
    out = np.zeros((s.batch, pool.shape[2], s.kv_len, pool.shape[3]), dtype=pool.dtype)
    for b, row in enumerate(cache.block_table):
        flat = pool[list(row)].reshape(len(row) * p, pool.shape[2], pool.shape[3])
        out[b, :, : lengths[b]] = np.transpose(flat[: lengths[b]], (1, 0, 2))
    return out


def describe_cache(case: Case) -> list[str]:
    """`conformance show` lines for the cache key."""
    cache = case.cache
    lines = []
    if cache.lengths is not None:
        t = case.shape.query_len
        queries = "query ends" if t == 1 else f"{t} queries end"
        lines.append(
            f"  cache       lengths {list(cache.lengths)} (each sequence's {queries} its cache)"
        )
    if cache.paged:
        lines.append(
            f"  pages       {cache.num_pages} pages of {cache.page_size} positions, "
            f"{cache.page_order} block table:"
        )
        lines.extend(f"    batch {b}: {list(row)}" for b, row in enumerate(cache.block_table))
    return lines
