"""`hf.llama.attention.dynamic-cache`, `hf.llama.attention.static-cache`: decoding through
transformers' own cache classes, layer mode.

What runs: the LlamaAttention layer of `hf.llama.attention` (adapters/hf_layer.py: LlamaConfig,
canonical weights in q/k/v/o_proj, config._attn_implementation = "sdpa"), driven the way
LlamaModel.forward drives it during generate(): for the prefix (all of it at once) and then
for each single-token step,

    position_ids = arange(T_chunk) + cache.get_seq_length()
    mask = masking_utils.create_causal_mask(config, x_chunk, None, cache, position_ids)
    out, _ = layer(x_chunk, position_embeddings=(cos, sin), attention_mask=mask, cache=cache)

where `cache` is `DynamicCache(config=config)` (keys/values concatenated per call) or
`StaticCache(config=config, max_cache_len=T)` (preallocated, written in place; for a step the
mask hides the unwritten slots, for the prefix sdpa's top-left is_causal over the T slots does). Inside, the layer calls `cache.update(k, v, layer_idx)` and attends over
what the cache returns. The step outputs are concatenated along the sequence axis.

Rotary (issue 14): with `rope:` (rotate-half over the whole head, Llama's only form) the
(cos, sin) come from LlamaRotaryEmbedding(config)(x, position_ids) with rope_theta = the case's
theta and position_ids = offset + cache length + i, as LlamaModel.forward computes them
(a `rope.offset` is what a caller passing its own position_ids does: the same ids reach
create_causal_mask and the rotary embedding). The layer rotates the new q and k and appends
the rotated keys to the cache; cached keys keep their positions. Without `rope:` the layer
(which always rotates by what it is given) gets the identity rotation (cos = 1, sin = 0):
q * 1 + rotate_half(q) * 0 == q exactly.

Path proof: after the last step the cache must hold every token (`get_seq_length() == T`), its
layer must be the class this adapter names (DynamicLayer / StaticLayer) with keys of length T
(Dynamic: grown to T; Static: allocated at max_cache_len = T), and the layer must return no
weights (the sdpa path). torch imported lazily.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from conformance.adapter_api.adapter import Declaration, Unsupported
from conformance.adapter_api.feature_sets import GROUPED_HEADS
from conformance.cases.case import Case
from conformance.cases.inputs import CaseInputs

from .hf_layer import (
    LLAMA_ROPE_FLOAT32,
    LLAMA_SOURCE,
    HfLlamaAttention,
    load_weights,
    refuse_invalid_config,
    rope_parameters,
)
from .torch_sdpa import to_numpy, to_torch

CACHE_SOURCE = (
    "https://github.com/huggingface/transformers/blob/main/src/transformers/cache_utils.py"
)
MASK_SOURCE = (
    "https://github.com/huggingface/transformers/blob/main/src/transformers/masking_utils.py"
)

# Decode cases carry "causal" (the implied mask); run() turns non-decode cases away.
FEATURES = GROUPED_HEADS | {"layer", "decode", "causal", "no-bias", "rope-half"}

UNSUPPORTED = {
    "kernel": "this is the whole layer with its cache (hf.sdpa is the kernel)",
    "cross-attention": "LlamaAttention is self-attention: one hidden_states input",
    "kv-input-dims": "one hidden size for every projection",
    "value-dim": "one head_dim for keys and values (the cache holds one width)",
    "output-dim": "o_proj maps back to hidden_size",
    "kv-len": "self-attention: key/value length equals the query length",
    "scale": "the layer's scaling is head_dim ** -0.5",
    "key-padding": "not covered: generate()'s padding mask is not wired with the cache",
    "weights": "the sdpa path returns no weights",
    "weights-mean": "the sdpa path returns no weights",
    "gradients": "not covered: decoding is inference",
    "dropout": "inference: attention_dropout is 0 outside training",
    "dropout-training": "inference: attention_dropout is 0 outside training",
    "rope-interleaved": "Llama's apply_rotary_pos_emb is rotate-half (pairs (i, i + d/2))",
    "rope-partial": "Llama rotates the whole head",
}


class HfLlamaDynamicCache(HfLlamaAttention):
    cache_kind = "dynamic"

    declaration = Declaration(
        name="hf.llama.attention.dynamic-cache",
        summary="transformers LlamaAttention decoding through DynamicCache: prefix at once, "
        "then one token per call, masks from masking_utils.create_causal_mask, sdpa attention",
        framework="transformers",
        features=FEATURES,
        dtypes=frozenset({"float32", "float64", "float16", "bfloat16"}),
        requires=("torch", "transformers"),
        worker="torch",
        divergences=(LLAMA_ROPE_FLOAT32,),  # issue 14: float32 rotary tables
        unsupported_reasons=UNSUPPORTED,
        notes="Driven as LlamaModel.forward drives the layer under generate(): position_ids "
        "from cache.get_seq_length(), create_causal_mask(config, x, None, cache, position_ids), "
        "layer(x, position_embeddings, attention_mask, cache=cache); position_embeddings from "
        "LlamaRotaryEmbedding at position_ids (offset + cache length + i) for rope cases, the "
        "identity rotation (cos 1, sin 0) otherwise. Path: cache.get_seq_length() == T after the last "
        "step, DynamicLayer keys of length T.",
    )

    def make_cache(self, config: Any, total: int) -> Any:
        from transformers import DynamicCache

        return DynamicCache(config=config)

    def check_cache(self, cache: Any, total: int) -> None:
        from transformers.cache_utils import DynamicLayer

        self._check_layer(cache, total, DynamicLayer)

    @staticmethod
    def _check_layer(cache: Any, total: int, layer_class: type) -> None:
        seen = int(cache.get_seq_length())
        if seen != total:
            raise RuntimeError(f"the cache holds {seen} tokens after decoding, not {total}")
        layer = cache.layers[0]
        if type(layer) is not layer_class:
            raise RuntimeError(f"cache layer is {type(layer).__name__}, not {layer_class.__name__}")
        if layer.keys.shape[-2] != total:
            raise RuntimeError(f"cache keys have length {layer.keys.shape[-2]}, not {total}")

    def run(self, case: Case, inputs: CaseInputs, device: str) -> dict[str, np.ndarray]:
        import torch
        from transformers import LlamaConfig
        from transformers.masking_utils import create_causal_mask
        from transformers.models.llama import modeling_llama

        if case.decode is None:
            raise Unsupported("decode cases only: the other layer cases are hf.llama.attention's")
        s = case.shape
        refuse_invalid_config(case)
        config = LlamaConfig(
            hidden_size=s.query_dim,
            num_attention_heads=s.num_heads,
            num_key_value_heads=s.num_kv_heads,
            head_dim=s.key_dim,
            attention_bias=case.use_bias,
            num_hidden_layers=1,  # the cache builds one layer per hidden layer
            **rope_parameters(case),
        )
        config._attn_implementation = "sdpa"
        dtype = getattr(torch, case.dtype)
        layer = modeling_llama.LlamaAttention(config, layer_idx=0).to(device=device, dtype=dtype)
        layer.eval()
        load_weights(layer, case, inputs, device)
        x = to_torch(inputs.native("query"), case.dtype, device)
        total = s.query_len
        cache = self.make_cache(config, total)
        rotary = None
        if case.rope is not None:  # issue 14: Llama's own rotary embedding, as LlamaModel runs it
            rotary = modeling_llama.LlamaRotaryEmbedding(config).to(device)
        offset = case.rope.offset if case.rope is not None else 0
        prefix = case.decode.prefix
        bounds = ([(0, prefix)] if prefix else []) + [(t, t + 1) for t in range(prefix, total)]
        outs = []
        with torch.no_grad():
            for start, stop in bounds:
                chunk = x[:, start:stop]
                seen = int(cache.get_seq_length())
                if seen != start:
                    raise RuntimeError(f"the cache holds {seen} tokens before position {start}")
                # LlamaModel.forward's position_ids: the cache length onward (plus the
                # case's offset: a caller's own position_ids for tokens before the cache)
                ids = (torch.arange(stop - start, device=device) + seen + offset)[None]
                mask = create_causal_mask(
                    config=config,
                    inputs_embeds=chunk,
                    attention_mask=None,
                    cache=cache,
                    position_ids=ids,
                )
                if rotary is not None:
                    cos, sin = rotary(chunk, ids.expand(s.batch, -1))
                else:  # identity rotation: [B, T, K] ones and zeros in the layer's dtype
                    cos = torch.ones(s.batch, stop - start, s.key_dim, dtype=dtype, device=device)
                    sin = torch.zeros_like(cos)
                out, weights = layer(
                    chunk,
                    position_embeddings=(cos, sin),
                    attention_mask=mask,
                    cache=cache,
                )
                if weights is not None:
                    raise RuntimeError("LlamaAttention returned weights: not the sdpa path")
                outs.append(out)
        self.check_cache(cache, total)
        return {"output": to_numpy(torch.cat(outs, dim=1))}


class HfLlamaStaticCache(HfLlamaDynamicCache):
    cache_kind = "static"

    declaration = dataclasses.replace(
        HfLlamaDynamicCache.declaration,
        name="hf.llama.attention.static-cache",
        summary="transformers LlamaAttention decoding through StaticCache (max_cache_len = T, "
        "written in place; create_causal_mask masks the unwritten slots), sdpa attention",
        notes="As hf.llama.attention.dynamic-cache with StaticCache(config, max_cache_len=T): "
        "every call attends over all T slots with a mask from create_causal_mask that hides the "
        "slots not yet written. Path: cache.get_seq_length() == T, StaticLayer keys of length T.",
    )

    def make_cache(self, config: Any, total: int) -> Any:
        from transformers import StaticCache

        return StaticCache(config=config, max_cache_len=total)

    def check_cache(self, cache: Any, total: int) -> None:
        from transformers.cache_utils import StaticLayer

        self._check_layer(cache, total, StaticLayer)


ADAPTERS = [HfLlamaDynamicCache, HfLlamaStaticCache]

__all__ = ["ADAPTERS", "CACHE_SOURCE", "LLAMA_SOURCE", "MASK_SOURCE"]
