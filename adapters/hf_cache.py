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

Rotary: decode cases carry no `rope:` (the spec language forbids rope with decode), and Llama's
layer always rotates by the position_embeddings it is given, so it is given the identity
rotation (cos = 1, sin = 0): q * 1 + rotate_half(q) * 0 == q exactly.

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
from conformance.cases.case import Case
from conformance.cases.inputs import CaseInputs

from .hf_layer import LLAMA_SOURCE, HfLlamaAttention, load_weights
from .torch_sdpa import to_numpy, to_torch

CACHE_SOURCE = (
    "https://github.com/huggingface/transformers/blob/main/src/transformers/cache_utils.py"
)
MASK_SOURCE = (
    "https://github.com/huggingface/transformers/blob/main/src/transformers/masking_utils.py"
)

# Decode cases carry "causal" (the implied mask); run() turns non-decode cases away.
FEATURES = frozenset({"layer", "decode", "causal", "grouped-query", "multi-query", "no-bias"})

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
    "rope-half": "rotary cases without a cache are hf.llama.attention's",
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
        unsupported_reasons=UNSUPPORTED,
        notes="Driven as LlamaModel.forward drives the layer under generate(): position_ids "
        "from cache.get_seq_length(), create_causal_mask(config, x, None, cache, position_ids), "
        "layer(x, position_embeddings, attention_mask, cache=cache). Identity rotation (cos 1, "
        "sin 0): decode cases have no rope. Path: cache.get_seq_length() == T after the last "
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
        # LlamaConfig's own validation (huggingface_hub strict dataclasses) refuses these
        # before any attention runs; they are configurations no Llama checkpoint can have.
        if s.query_dim % s.num_heads:
            raise Unsupported(
                f"LlamaConfig refuses hidden_size {s.query_dim} not a multiple of "
                f"num_attention_heads {s.num_heads}"
            )
        if s.key_dim % 2:
            raise Unsupported(
                f"LlamaConfig's rope validation refuses an odd head_dim ({s.key_dim})"
            )
        config = LlamaConfig(
            hidden_size=s.query_dim,
            num_attention_heads=s.num_heads,
            num_key_value_heads=s.num_kv_heads,
            head_dim=s.key_dim,
            attention_bias=case.use_bias,
            num_hidden_layers=1,  # the cache builds one layer per hidden layer
        )
        config._attn_implementation = "sdpa"
        dtype = getattr(torch, case.dtype)
        layer = modeling_llama.LlamaAttention(config, layer_idx=0).to(device=device, dtype=dtype)
        layer.eval()
        load_weights(layer, case, inputs, device)
        x = to_torch(inputs.native("query"), case.dtype, device)
        total = s.query_len
        cache = self.make_cache(config, total)
        prefix = case.decode.prefix
        bounds = ([(0, prefix)] if prefix else []) + [(t, t + 1) for t in range(prefix, total)]
        outs = []
        with torch.no_grad():
            for start, stop in bounds:
                chunk = x[:, start:stop]
                seen = int(cache.get_seq_length())
                if seen != start:
                    raise RuntimeError(f"the cache holds {seen} tokens before position {start}")
                ids = (torch.arange(stop - start, device=device) + seen)[None]
                mask = create_causal_mask(
                    config=config,
                    inputs_embeds=chunk,
                    attention_mask=None,
                    cache=cache,
                    position_ids=ids,
                )
                # Identity rotation: [B, T, K] ones and zeros in the layer's dtype.
                cos = torch.ones(s.batch, stop - start, s.key_dim, dtype=dtype, device=device)
                out, weights = layer(
                    chunk,
                    position_embeddings=(cos, torch.zeros_like(cos)),
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
