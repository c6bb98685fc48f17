"""`openvino.paged-attention.f32`: OpenVINO's PagedAttentionExtension op (the CPU plugin's
paged attention, what OpenVINO GenAI and vLLM's OpenVINO backend run), built directly, paged
caches only (issue 14).

What runs: an ov.Model with one `openvino.op._PagedAttentionExtension` node (Python's name for
it: "experimental ... no backward compatibility"), compiled for the CPU plugin with
INFERENCE_PRECISION_HINT=f32 and KV_CACHE_PRECISION=f32. Its contract in 2026.4 (28 inputs,
names from the op's own validation messages):

- query [tokens, H*K], key/value [tokens, G*K|V]: the new tokens of every sequence, packed
  (`subsequence_begins` [seqs + 1] their offsets);
- key_cache/value_cache [num_blocks, G, block_size, K|V]: the pool; the op writes the new
  tokens into it and reads each sequence's past (`past_lens` [seqs]) through its blocks,
  `block_indices` (the block tables concatenated) and `block_indices_begins` [seqs + 1];
- scale, sliding_window (0: none), alibi_slopes (empty), max_context_len, then 15 inputs for
  score aggregation, cache rotation, XAttention, sinks, adaptive R-KV, token types and
  query-query bias, all empty or 0 here (score_aggregation_window: zeros [seqs]); the node
  needs runtime info k_head_size, num_k_heads, v_head_size, num_v_heads.

The op is causal: each sequence's new tokens attend to its past and causally among themselves
(bottom-right at its own length), which is what a `cache:` case states with `causal:
bottom-right` (or a single new token). The CPU plugin fixes the block size at 32 (the compiled
model's key_cache input is [?, G, 32, K] whatever the model says), so only `page_size: 32`
cases run; other page sizes are `unsupported` with that reason.

The new tokens' slots of the pool are zeroed before the call: the op must write them from
key/value itself.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import numpy as np

from conformance.adapter_api.adapter import Adapter, Declaration, Unsupported
from conformance.adapter_api.feature_sets import GROUPED_HEADS, KERNEL_SHAPES
from conformance.cases.case import Case, Mask
from conformance.cases.inputs import CaseInputs
from conformance.cases.kv_cache import paged_layout, sequence_lengths

CPU_BLOCK_SIZE = 32
EXTRA_INPUTS = 15  # score aggregation ... qq_bias_begins, after max_context_len


class OpenvinoPagedAttention(Adapter):
    cache_size = 16

    def setup(self) -> None:
        import openvino as ov

        self.ov = ov
        self.core = ov.Core()
        self._compiled: OrderedDict[tuple, Any] = OrderedDict()

    def versions(self) -> dict[str, str]:
        return {"openvino": self.ov.__version__}

    def _model(self, case: Case) -> Any:
        import openvino.opset13 as ops
        from openvino.op import _PagedAttentionExtension

        ov, s = self.ov, case.shape
        f32, i32 = ov.Type.f32, ov.Type.i32
        h, g, k, v = s.num_heads, s.num_kv_heads, s.key_dim, s.value_dim

        def parameter(name: str, shape: list[int], kind: Any) -> Any:
            return ops.parameter(shape, kind, name=name)

        def const(x: np.ndarray) -> Any:
            return ops.constant(x).output(0)

        params = [
            parameter("query", [-1, h * k], f32),
            parameter("key", [-1, g * k], f32),
            parameter("value", [-1, g * v], f32),
            parameter("key_cache", [-1, g, CPU_BLOCK_SIZE, k], f32),
            parameter("value_cache", [-1, g, CPU_BLOCK_SIZE, v], f32),
            parameter("past_lens", [-1], i32),
            parameter("subsequence_begins", [-1], i32),
            parameter("block_indices", [-1], i32),
            parameter("block_indices_begins", [-1], i32),
        ]
        context = parameter("max_context_len", [], i32)
        window = parameter("score_aggregation_window", [-1], i32)
        empty_f, empty_i = np.zeros([0], np.float32), np.zeros([0], np.int32)
        inputs = [p.output(0) for p in params] + [
            const(np.float32(case.effective_scale)),
            const(np.int32(0)),  # sliding_window: none
            const(empty_f),  # alibi_slopes: none
            context.output(0),
            window.output(0),
            const(empty_i),  # rotated_block_indices
            const(np.zeros([0, 0], np.int32)),  # rotation_deltas
            const(np.zeros([0, 0], np.float32)),  # rotation_trig_lut
            const(empty_f),  # xattention_threshold
            const(np.int32(0)),  # xattention_block_size
            const(np.int32(0)),  # xattention_stride
            const(empty_f),  # sinks
            const(np.int32(0)),  # adaptive_rkv_start_size
            const(empty_i),  # adaptive_rkv_evictable_sizes
            const(empty_i),  # adaptive_rkv_diversity_block_set_indices
            const(empty_i),  # adaptive_rkv_diversity_block_set_indices_begins
            const(empty_i),  # token_type_ids
            const(np.zeros([0], np.uint8)),  # qq_bias
            const(empty_i),  # qq_bias_begins
        ]
        node = _PagedAttentionExtension(inputs)
        info = node.get_rt_info()
        info["k_head_size"], info["num_k_heads"] = k, g
        info["v_head_size"], info["num_v_heads"] = v, g
        return ov.Model([node.output(0)], [*params, context, window], "paged_attention")

    def _compile(self, case: Case) -> Any:
        s = case.shape
        key = (s.num_heads, s.num_kv_heads, s.key_dim, s.value_dim, case.effective_scale)
        if key not in self._compiled:
            config = {"INFERENCE_PRECISION_HINT": "f32", "KV_CACHE_PRECISION": "f32"}
            self._compiled[key] = self.core.compile_model(self._model(case), "CPU", config)
            while len(self._compiled) > self.cache_size:
                self._compiled.popitem(last=False)
        compiled = self._compiled[key]
        shape = compiled.input("key_cache").get_partial_shape()
        if shape[2].get_length() != case.cache.page_size:  # the plugin's choice, checked
            raise Unsupported(f"the CPU plugin's block size is {shape[2]}, not the case's pages")
        return compiled

    def run(self, case: Case, inputs: CaseInputs, device: str) -> dict[str, np.ndarray]:
        cache, s, m = case.cache, case.shape, case.mask
        if cache is None or not cache.paged:
            raise Unsupported("paged caches only: contiguous keys are openvino.sdpa.*'s")
        if cache.page_size != CPU_BLOCK_SIZE:
            raise Unsupported(
                f"the CPU plugin fixes the block size at {CPU_BLOCK_SIZE} (the compiled "
                f"key_cache is [?, G, {CPU_BLOCK_SIZE}, K]); this case's pages hold "
                f"{cache.page_size}"
            )
        t = s.query_len
        if m != Mask(causal=m.causal) or (t > 1 and m.causal != "bottom-right"):
            raise Unsupported("PagedAttention is causal over each sequence's past; no other mask")
        compiled = self._compile(case)
        q, k, v = (inputs.native(n).astype(np.float32) for n in ("q", "k", "v"))
        k_pool, v_pool = paged_layout(case, k, v)
        lengths = sequence_lengths(case)
        for b, row in enumerate(cache.block_table):  # the op must write the new tokens itself
            for p in range(int(lengths[b]) - t, int(lengths[b])):
                page, slot = row[p // cache.page_size], p % cache.page_size
                k_pool[page, slot] = 0.0
                v_pool[page, slot] = 0.0

        def tokens(x: np.ndarray, per_sequence: list[slice]) -> np.ndarray:
            rows = [x[b, :, sl].transpose(1, 0, 2).reshape(-1, x.shape[1] * x.shape[3])
                    for b, sl in enumerate(per_sequence)]  # fmt: skip
            return np.ascontiguousarray(np.concatenate(rows))

        new = [slice(int(n) - t, int(n)) for n in lengths]
        starts = np.arange(s.batch + 1, dtype=np.int32) * t
        blocks = np.cumsum([0] + [len(row) for row in cache.block_table]).astype(np.int32)
        feeds = {
            "query": tokens(q, [slice(0, t)] * s.batch),
            "key": tokens(k, new),
            "value": tokens(v, new),
            # [num_pages, page, G, D] -> the plugin's [num_blocks, G, block_size, D]
            "key_cache": np.ascontiguousarray(k_pool.transpose(0, 2, 1, 3)),
            "value_cache": np.ascontiguousarray(v_pool.transpose(0, 2, 1, 3)),
            "past_lens": (lengths - t).astype(np.int32),
            "subsequence_begins": starts,
            "block_indices": np.concatenate([np.asarray(r, np.int32) for r in cache.block_table]),
            "block_indices_begins": blocks,
            "max_context_len": np.array(int(lengths.max()), np.int32),
            "score_aggregation_window": np.zeros(s.batch, np.int32),
        }
        out = compiled.create_infer_request().infer(feeds)[compiled.outputs[0]]
        # [B * T, H * V] -> [B, H, T, V]
        out = np.asarray(out).reshape(s.batch, t, s.num_heads, s.value_dim)
        return {"output": out.transpose(0, 2, 1, 3)}


OpenvinoPagedAttention.declaration = Declaration(
    name="openvino.paged-attention.f32",
    summary="OpenVINO PagedAttentionExtension built directly, CPU plugin (block size 32), "
    "INFERENCE_PRECISION_HINT=f32, KV_CACHE_PRECISION=f32; paged cases only",
    framework="openvino",
    features=KERNEL_SHAPES
    | GROUPED_HEADS
    | {"paged-kv", "cache-lengths", "causal", "causal-bottom-right", "scale"},
    dtypes=frozenset({"float32"}),
    requires=("openvino",),
    worker="openvino",
    unsupported_reasons={
        "layer": "the op is the attention core: no projections",
        "decode": "one step against the cache here; the steps are the caller's loop",
        "float64": "built here with f32 inputs and an f32 cache (INFERENCE_PRECISION_HINT=f32)",
        "float16": "kept to the f32 hint and cache precision here",
        "bfloat16": "kept to the f32 hint and cache precision here",
    },
    notes="Pages -> key_cache/value_cache [blocks, G, 32, K]; block table -> block_indices and "
    "block_indices_begins; the new tokens -> query/key/value rows with past_lens = length - T. "
    "Only page_size 32 (the CPU plugin's block size) and causal (or single-token) steps run.",
)

ADAPTERS = [OpenvinoPagedAttention]
