"""Small strategies for the parts of a case: dtype, scale, head counts, decoding, rotary
embeddings, caches, mask densities and per-batch lengths. `conformance.fuzz.strategies`
composes them into shapes, masks and whole cases."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from hypothesis import strategies as st

from ..cases.case import FEATURES, Case, Decode, Shape
from ..cases.kv_cache import Cache, pages_needed, seeded_block_table
from ..cases.rotary import ROPE_STYLES, Rope


def sometimes(draw: st.DrawFn, one_in: int) -> bool:
    """True about once in `one_in` draws; shrinks to False (a feature off is simpler)."""
    return draw(st.integers(0, one_in - 1)) == one_in - 1


def dtypes(features: Iterable[str] | None = None) -> st.SearchStrategy[str]:
    """Case dtypes among the allowed ones (float32 first: it shrinks towards it)."""
    allowed = set(FEATURES if features is None else features)
    order = ("float32", "float64", "float16", "bfloat16")
    choices = [d for d in order if d in allowed]
    if not choices:
        raise ValueError("no dtype is allowed")
    return st.sampled_from(choices)


def scales() -> st.SearchStrategy[float]:
    """Explicit logit scales: simple values (0 included: 'scale or default' bugs) and floats."""
    return st.one_of(
        st.sampled_from([1.0, 0.5, 0.125, 2.0, 0.0]),
        st.floats(min_value=0.01, max_value=3.0, allow_nan=False, allow_infinity=False),
    )


def head_counts(
    features: Iterable[str] | None = None, max_heads: int = 4
) -> st.SearchStrategy[tuple[int, int]]:
    """(H, G): query heads and key/value heads, G dividing H, within the allowed tags."""
    allowed = set(FEATURES if features is None else features)
    pairs = []
    for h in range(1, max_heads + 1):
        for g in range(1, h + 1):
            if h % g:
                continue
            if g == h or (g == 1 and "multi-query" in allowed):
                pairs.append((h, g))
            elif 1 < g < h and "grouped-query" in allowed:
                pairs.append((h, g))
    return st.sampled_from(pairs)


def decodes(
    max_len: int = 6, *, chunked: bool = False, memory: bool = False
) -> st.SearchStrategy[Decode]:
    """Incremental decoding lengths: `prefix` tokens at once (0 allowed), then `steps` >= 1
    steps of `chunk` tokens (chunked: chunk may exceed 1, chunked prefill), prefix + steps *
    chunk <= max_len. memory: the steps attend to an encoder memory (decode.memory)."""
    plain = st.integers(1, max_len).flatmap(
        lambda total: st.integers(0, total - 1).map(lambda p: Decode(prefix=p, steps=total - p))
    )
    if chunked and max_len >= 2:

        @st.composite
        def in_chunks(draw: st.DrawFn) -> Decode:
            chunk = draw(st.integers(2, max_len))
            steps = draw(st.integers(1, max_len // chunk))
            prefix = draw(st.integers(0, max_len - steps * chunk))
            return Decode(prefix=prefix, steps=steps, chunk=chunk)

        plain = st.one_of(plain, in_chunks())
    if memory:
        return plain.map(lambda d: dataclasses.replace(d, memory=True))
    return plain


def ropes(
    key_dim: int, features: Iterable[str] | None = None, *, min_offset: int = 0
) -> st.SearchStrategy[Rope]:
    """Rotary embeddings for heads of `key_dim` (issue 14): an allowed style, rotary_dim (even;
    partial only with rope-partial, and required when key_dim is odd), theta and a position
    offset >= min_offset (queries end the keys: offset + S - T >= 0)."""
    allowed = set(FEATURES if features is None else features)
    styles = [x for x in ROPE_STYLES if f"rope-{x}" in allowed]
    partial = [d for d in range(2, key_dim, 2)] if "rope-partial" in allowed else []
    dims: list[int | None] = ([None] if key_dim % 2 == 0 else []) + partial
    if not styles or not dims:
        return st.nothing()
    return st.builds(
        Rope,
        style=st.sampled_from(styles),
        theta=st.sampled_from([10000.0, 100.0, 500000.0]) | st.floats(1.5, 1e6),
        rotary_dim=st.sampled_from(dims),
        offset=st.sampled_from([min_offset, min_offset + 100]) | st.integers(min_offset, 4096),
    )


@st.composite
def caches(
    draw: st.DrawFn,
    shape: Shape,
    features: Iterable[str] | None = None,
    *,
    lengths: bool | None = None,
) -> Cache | None:
    """The `cache:` key of a kernel-mode step (issue 14, conformance.cases.kv_cache): per-sequence
    lengths in [T, S] (with cache-lengths and `lengths`), pages of 1..S positions (paged-kv)
    in a pool of up to two spare pages. lengths: True (they must be there), False (they must
    not: the case has key padding, ALiBi or rope) or None (either). The block table of a seeded order ("shuffled",
    "in-order") depends on the case's name: `with_block_table` fills it in once the case is
    named; an explicit table is drawn here. None when nothing allowed applies."""
    allowed = set(FEATURES if features is None else features)
    b, t, s = shape.batch, shape.query_len, shape.kv_len
    kinds = []
    if lengths is not False and "cache-lengths" in allowed and t <= s:
        kinds.append("lengths")
    if "paged-kv" in allowed:
        kinds += ["pages", "lengths+pages"] if kinds else ["pages"]
    if lengths:
        kinds = [k for k in kinds if "lengths" in k]
    if not kinds:
        return None
    kind = draw(st.sampled_from(kinds))
    held = None
    if "lengths" in kind:
        held = tuple(draw(st.integers(t, s)) for _ in range(b))
    if "pages" not in kind:
        return Cache(lengths=held)
    page = draw(st.sampled_from([1, s]) | st.integers(1, s))
    needed = sum(pages_needed(n, page) for n in (held or (s,) * b))
    num_pages = draw(st.integers(needed, min(needed + 2, (4 * b * s) // page + 4)))
    order = draw(st.sampled_from(["shuffled", "in-order", "explicit"]))
    table = None
    if order == "explicit":
        pool = draw(st.permutations(range(num_pages)))
        rows, start = [], 0
        for n in held or (s,) * b:
            rows.append(tuple(pool[start : start + pages_needed(n, page)]))
            start += len(rows[-1])
        table = tuple(rows)
    return Cache(lengths=held, page_size=page, num_pages=num_pages, block_table=table,
                 page_order=order)  # fmt: skip


def with_block_table(case: Case) -> Case:
    """The case with its seeded block table (shuffled / in-order) made from its data key, as
    the spec loader makes it (an explicit table stays)."""
    c = case.cache
    if c is None or not c.paged or c.page_order == "explicit":
        return case
    held = c.lengths or (case.shape.kv_len,) * case.shape.batch
    table = seeded_block_table(case.data_key, held, c.page_size, c.num_pages, c.page_order)
    return dataclasses.replace(case, cache=dataclasses.replace(c, block_table=table))


def densities() -> st.SearchStrategy[float]:
    # The edges (nothing / everything masked) plus arbitrary densities in between.
    return st.one_of(
        st.sampled_from([0.5, 0.25, 0.0, 1.0, 0.9]),
        st.floats(min_value=0.0, max_value=1.0, allow_nan=False),
    )


def valid_lengths(batch: int, limit: int, minimum: int = 0) -> st.SearchStrategy[tuple[int, ...]]:
    # 1 (a single visible key) and 0 (no key: fully masked rows) are the interesting lengths.
    # Listed unmasked-first so that shrinking removes masking before it adds any.
    edges = list(dict.fromkeys([limit, max(minimum, 1), minimum]))
    one = st.one_of(st.sampled_from(edges), st.integers(minimum, limit))
    return st.tuples(*[one] * batch)
