"""The `cache:` section: per-sequence cache lengths and paged layouts (issue 14,
conformance.cases.kv_cache), checked with the case and resolved once its seed key exists.
"""

from __future__ import annotations

from ..cases.case import Case, Decode, Mask
from ..cases.kv_cache import MAX_PAGE_SIZE, PAGE_ORDERS, Cache, pages_needed, seeded_block_table
from ..cases.rotary import Rope
from ..cases.score_terms import ScoreTerms
from .keys import CACHE_KEYS
from .values import _check_keys, _choice, _Ctx, _int, _int_list, _mapping
from .yamlload import LocatedDict


def _check_cache(
    ctx: _Ctx,
    node: LocatedDict,
    shape: dict,
    mode: str,
    mask: Mask,
    decode: Decode | None,
    scores: ScoreTerms | None,
    rope: Rope | None,
) -> None:
    """The `cache` key (issue 14, conformance.cases.kv_cache): everything but the block table."""
    cnode = _mapping(ctx, node["cache"], node, "cache")
    _check_keys(ctx, cnode, CACHE_KEYS, "cache")
    if not cnode:
        raise ctx.error("cache sets nothing", node, "cache", f"keys: {', '.join(CACHE_KEYS)}")
    problem = None
    if mode != "kernel":
        problem = "a cache is a kernel-mode case (the keys and values are the cache)"
    elif decode is not None:
        problem = "cache: is one step against a cache; decode: runs the steps itself"
    elif shape.get("attention_axes"):
        problem = "a cache has one sequence axis; attention_axes contradicts it"
    elif node.get("gradients") is True or "dropout" in node:
        problem = "a cache step is inference: no gradients or dropout"
    if problem:
        raise ctx.error(problem, node, "cache", "use mode: kernel, without decode/attention_axes")
    b, t, s = shape["batch"], shape["query_len"], shape["kv_len"]
    if "lengths" in cnode:
        lengths = _int_list(ctx, cnode["lengths"], cnode, "lengths", minimum=1)
        if len(lengths) != b:
            raise ctx.error(f"needs one length per sequence (batch {b}), got {len(lengths)}",
                            cnode, "lengths")  # fmt: skip
        if not all(t <= n <= s for n in lengths):
            raise ctx.error(
                f"each length must be within [query_len, kv_len] = [{t}, {s}], got "
                f"{list(lengths)}", cnode, "lengths",
                "the queries are each sequence's last query_len tokens, in a cache of kv_len",
            )  # fmt: skip
        clash = None
        if mask.causal == "top-left" and t != s:
            clash = "causal: top-left (each sequence's queries end its cache: bottom-right)"
        elif mask.key_padding is not None or mask.query_padding is not None:
            clash = "key_padding/query_padding (the lengths already say which keys are held)"
        elif mask.segments is not None:
            clash = "segments"
        elif scores is not None and scores.alibi is not None:
            clash = "ALiBi (its distances assume one alignment for the batch)"
        if clash:
            raise ctx.error(f"cache lengths cannot be combined with {clash}", cnode, "lengths")
    if "page_size" in cnode:
        page = _int(ctx, cnode["page_size"], cnode, "page_size", minimum=1)
        if page > min(s, MAX_PAGE_SIZE):
            raise ctx.error(
                f"page_size {page} is larger than the cache (kv_len {s}): one page would hold "
                "it all and nothing would be paged", cnode, "page_size",
                f"at most {min(s, MAX_PAGE_SIZE)}",
            )  # fmt: skip
    else:
        for key in ("pages", "num_pages"):
            if key in cnode:
                raise ctx.error(f"{key} describes pages; this cache has no page_size", cnode, key,
                                "add page_size: 16 (or 64, 256)")  # fmt: skip


def _resolve_cache(ctx: _Ctx, node: LocatedDict, case: Case) -> Cache:
    """The block table of a paged cache: seeded (pages: shuffled / in-order) or the spec's own,
    every entry a page of the pool, no page used twice."""
    cnode = node["cache"]
    b, s = case.shape.batch, case.shape.kv_len
    lengths = tuple(cnode["lengths"]) if "lengths" in cnode else None
    if "page_size" not in cnode:
        return Cache(lengths=lengths)
    page = cnode["page_size"]
    held = lengths or (s,) * b
    needed = [pages_needed(n, page) for n in held]
    order = cnode.get("pages", "shuffled")
    explicit = isinstance(order, list)
    if not explicit:
        order = _choice(ctx, order, cnode, "pages", PAGE_ORDERS)
    default_pages = sum(needed)
    if explicit:
        flat = [p for row in order if isinstance(row, list) for p in row]
        ints = all(isinstance(p, int) and not isinstance(p, bool) for p in flat)
        default_pages = max(max(flat) + 1 if flat and ints else 0, sum(needed))
    num_pages = _int(ctx, cnode.get("num_pages", default_pages), cnode, "num_pages")
    if num_pages < sum(needed):
        raise ctx.error(
            f"the sequences need {sum(needed)} pages of {page} ({list(needed)}), the pool has "
            f"{num_pages}", cnode, "num_pages", f"num_pages >= {sum(needed)}",
        )  # fmt: skip
    if num_pages * page > 4 * b * s + 4 * page:  # the pool is part of the case's memory
        raise ctx.error(
            f"a pool of {num_pages} pages of {page} is over 4x the cache it holds",
            cnode, "num_pages", f"at most {(4 * b * s) // page + 4}",
        )  # fmt: skip
    if not explicit:
        table = seeded_block_table(case.data_key, held, page, num_pages, order)
        return Cache(lengths, page, num_pages, table, order)
    example = (
        f"e.g. pages: {[list(range(sum(needed[:i]), sum(needed[: i + 1]))) for i in range(b)]}"
    )
    if len(order) != b or not all(isinstance(row, list) for row in order):
        raise ctx.error(
            f"an explicit block table has one list of page numbers per sequence (batch {b})",
            cnode, "pages", example,
        )  # fmt: skip
    seen: dict[int, int] = {}
    for i, row in enumerate(order):
        pages = _int_list(ctx, row, cnode, "pages")
        if len(pages) != needed[i]:
            raise ctx.error(
                f"sequence {i} holds {held[i]} positions: {needed[i]} pages of {page}, the "
                f"table gives it {len(pages)}", cnode, "pages", example,
            )  # fmt: skip
        for p in pages:
            if p >= num_pages:
                raise ctx.error(
                    f"page {p} of sequence {i} points outside the cache (pages 0..{num_pages - 1})",
                    cnode, "pages", "raise num_pages, or use a page of the pool",
                )  # fmt: skip
            if p in seen:
                raise ctx.error(
                    f"page {p} is used twice (sequences {seen[p]} and {i}): each page holds one "
                    "sequence's positions", cnode, "pages",
                )  # fmt: skip
            seen[p] = i
    table = tuple(tuple(row) for row in order)
    return Cache(lengths, page, num_pages, table, "explicit")
