"""`torch.flex.paged.*`: torch's PagedAttention (torch.nn.attention.experimental._paged_attention,
torch 2.13) on FlexAttention, kernel mode, paged caches only (issue 14).

The adapter receives the case's pages and block table (conformance.kv_cache.paged_layout: a
pool [num_pages, page_size, G, K] and one row of page numbers per sequence) and hands them to
PagedAttention as its users do: the pool becomes the physical cache [1, G, num_pages *
page_size, K], the block table becomes `page_table` (and its inverse `physical_to_logical`),
and `convert_logical_block_mask` turns the case's logical BlockMask (block size = page size)
into one over physical pages, with `kv_len` = each sequence's cache length. flex_attention
then reads the pages through the converted block mask and mask_mod; nothing is gathered into
contiguous keys before the call.

`page_table` rows are set directly rather than through `reserve`, which always takes free
pages in its own order: the case's block table (seeded, non-contiguous, or the spec's own)
is what is under test. Variants:

- `torch.flex.paged.eager`     flex_attention called directly (torch's unfused eager path:
                               every physical position is scored, the converted mask_mod
                               masks the ones no sequence owns)
- `torch.flex.paged.compiled`  torch.compile(flex_attention, dynamic=False, fullgraph=True):
                               Inductor's kernel walks the converted block mask's kv_indices,
                               one physical page per key block
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from conformance.adapter_api.adapter import Declaration, Unsupported
from conformance.adapter_api.feature_sets import (
    CAUSAL_ALIGNED,
    GROUPED_HEADS,
    KERNEL_SHAPES,
)
from conformance.cases.case import Case
from conformance.cases.inputs import CaseInputs
from conformance.cases.kv_cache import padded_block_table, paged_layout, sequence_lengths
from conformance.cases.masks import build_mask

from .torch_flex import TorchFlexAdapter, _compiled_flex
from .torch_sdpa import (
    REQUIRES,
    WORKER,
    to_numpy,
    to_torch,
)


def physical_cache(pool: np.ndarray, dtype: str, device: str) -> Any:
    """[num_pages, page_size, G, D] -> PagedAttention's physical cache [1, G, pages * size, D]."""
    n, p, g, d = pool.shape
    flat = np.transpose(pool, (2, 0, 1, 3)).reshape(1, g, n * p, d)
    return to_torch(flat, dtype, device)


def paged_attention_for(case: Case, device: str) -> Any:
    """A PagedAttention whose page table is the case's block table."""
    import torch
    from torch.nn.attention.experimental._paged_attention import PagedAttention

    cache = case.cache
    paged = PagedAttention(cache.num_pages, cache.page_size, case.shape.batch, device=device)
    table = torch.from_numpy(padded_block_table(case).astype(np.int64)).to(device)
    for b, row in enumerate(cache.block_table):
        n = len(row)
        paged.page_table[b, :n] = table[b, :n]
        paged.physical_to_logical[b, table[b, :n]] = torch.arange(n, device=device)
        paged.capacity[b] = n * cache.page_size
    return paged


def logical_block_mask(case: Case, device: str) -> Any:
    """The case's neutral mask over logical positions as a BlockMask with key blocks of one
    page (convert_logical_block_mask requires that)."""
    from torch.nn.attention.flex_attention import create_block_mask

    s = case.shape
    attend, _ = build_mask(case)
    if attend is None:
        attend = np.ones((s.batch, 1, s.query_len, s.kv_len), dtype=bool)
    attend_t = to_torch(np.ascontiguousarray(attend), "bool", device)
    last = s.kv_len - 1
    per_head = attend_t.shape[1] > 1

    def mask_mod(b, h, q_idx, kv_idx):  # noqa: ANN001, ANN202 - flex's signature
        # The converted mask_mod also asks about positions past S (the rest of a sequence's
        # last page); it discards those answers (kv_len), so any in-range index will do.
        return attend_t[b, h if per_head else 0, q_idx, kv_idx.clamp(0, last)]

    page = case.cache.page_size
    heads = s.num_heads if per_head else None
    return create_block_mask(
        mask_mod, s.batch, heads, s.query_len, s.kv_len, device=device, BLOCK_SIZE=page
    )


class TorchPagedFlex(TorchFlexAdapter):
    """PagedAttention + flex_attention, eager."""

    # setup (Inductor's cache folder when compiled), devices and versions: flex's own

    def run(self, case: Case, inputs: CaseInputs, device: str) -> dict[str, np.ndarray]:
        import torch
        from torch.nn.attention.flex_attention import flex_attention

        if case.cache is None or not case.cache.paged:
            raise Unsupported("paged caches only: contiguous keys are torch.flex.eager's")
        s = case.shape
        k_pool, v_pool = paged_layout(case, inputs.native("k"), inputs.native("v"))
        q = to_torch(inputs.native("q"), case.dtype, device)
        k_cache = physical_cache(k_pool, case.dtype, device)
        v_cache = physical_cache(v_pool, case.dtype, device)
        paged = paged_attention_for(case, device)
        kv_len = torch.from_numpy(sequence_lengths(case)).to(device)
        block_mask = paged.convert_logical_block_mask(
            logical_block_mask(case, device), kv_len=kv_len
        )
        kwargs: dict[str, Any] = {
            "block_mask": block_mask,
            "enable_gqa": s.num_kv_heads != s.num_heads,
        }
        if case.scale is not None:
            kwargs["scale"] = case.scale
        call = _compiled_flex() if self.compiled else flex_attention
        with torch.no_grad(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="flex_attention called without")
            # The physical cache has batch 1: every sequence reads the one pool.
            out = call(q, k_cache, v_cache, **kwargs)
        return {"output": to_numpy(out)}


FEATURES = (
    KERNEL_SHAPES
    | GROUPED_HEADS
    | CAUSAL_ALIGNED
    | {"paged-kv", "cache-lengths", "bool-mask", "window", "scale"}
)
UNSUPPORTED = {
    "layer": "PagedAttention is a kernel-level cache: no projections",
    "decode": "the steps are the caller's loop; this adapter runs one step against the cache",
    "weights": "flex_attention returns the output, never the weights",
    "weights-mean": "flex_attention returns the output, never the weights",
    "fully-masked-rows": "not wired here",
}
NOTES = (
    "Pages -> the physical cache [1, G, pages * page_size, K]; block table -> page_table and "
    "physical_to_logical (set directly); the case's mask -> a logical BlockMask with key blocks "
    "of one page -> convert_logical_block_mask(kv_len = the sequences' cache lengths). Runs "
    "paged cases only (a contiguous case is Unsupported at run time)."
)


def _declaration(name: str, summary: str, dtypes: frozenset[str], **reasons: str) -> Declaration:
    return Declaration(
        name=name,
        summary=summary,
        framework="torch",
        features=FEATURES,
        dtypes=dtypes,
        requires=REQUIRES,
        worker=WORKER,
        unsupported_reasons={**UNSUPPORTED, **reasons},
        notes=NOTES,
    )


TorchPagedFlex.declaration = _declaration(
    "torch.flex.paged.eager",
    "torch PagedAttention (experimental) on flex_attention, eager: the case's pages and block "
    "table as page_table, the mask converted to physical pages; paged cases only",
    frozenset({"float32", "float64", "float16", "bfloat16"}),
)


class TorchPagedFlexCompiled(TorchPagedFlex):
    """PagedAttention + torch.compile(flex_attention): Inductor's kernel over physical pages."""

    compiled = True
    declaration = _declaration(
        "torch.flex.paged.compiled",
        "torch PagedAttention (experimental) on torch.compile(flex_attention, dynamic=False, "
        "fullgraph=True): Inductor's kernel walks physical pages; paged cases only",
        frozenset({"float32"}),
        float64="Inductor's CPU FlexAttention lowering supports float32, float16 and bfloat16 "
        "only (torch 2.13)",
        float16="kept out of the default run: each dtype compiles its own kernel",
        bfloat16="kept out of the default run: each dtype compiles its own kernel",
    )


ADAPTERS = [TorchPagedFlex, TorchPagedFlexCompiled]
