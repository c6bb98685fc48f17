"""`hf.llama.attention`: transformers' LlamaAttention layer with its rotary embedding, layer mode.

What runs: `transformers.models.llama.modeling_llama.LlamaAttention` built from a LlamaConfig
(hidden_size Dq, H heads, G key/value heads, head_dim K, attention_bias = the case's
projection biases, rope_theta), its q/k/v/o projections loaded with the case's canonical
weights (conformance.layouts.to_linear), called as LlamaDecoderLayer calls it:
`attn(hidden_states, position_embeddings=(cos, sin), attention_mask=mask)` with (cos, sin) from
LlamaRotaryEmbedding(config)(x, position_ids) (position_ids = offset + t). Inside, the layer
projects, applies apply_rotary_pos_emb (rotate-half) to q and k, and calls the attention
function of config._attn_implementation ("sdpa").

Only rotary cases (rope-half, whole head: Llama has no partial rotary nor interleaved pairs);
other cases belong to hf.sdpa. Masks: as hf.sdpa builds them; the layer's `is_causal` is set
to whether the case's whole mask is top-left causal (sdpa_attention_forward reads it when no
mask is given).

Packed rows and left padding (issue 14) go in as a model feeds its layers: the mask from
masking_utils (create_causal_mask, or create_bidirectional_mask for a bidirectional case) built
from the model's inputs (hf_attention.masking_utils_inputs: the 2-D attention_mask, or
position_ids restarting at each segment with attention_mask None), and the rotary embedding
at the positions transformers uses: each packed sequence from 0, a left-padded row from 0 at
its first real token (generate()'s cumsum(attention_mask) - 1). Rotary attention depends on
position differences only, so within a sequence this equals the case's absolute positions.
torch imported lazily.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from conformance.adapter_api.adapter import Declaration, Divergence, Unsupported
from conformance.adapter_api.feature_sets import GROUPED_HEADS, SEGMENTS_AND_LEFT_PADDING
from conformance.cases import layouts
from conformance.cases.case import Case
from conformance.cases.inputs import CaseInputs

from .hf_attention import (
    ROPE_TABLES_REASON,
    HfSdpaAdapter,
    masking_utils_inputs,
    masking_utils_mask,
)
from .torch_sdpa import SDPA_MASKED_ROWS, to_numpy, to_torch

LLAMA_SOURCE = (
    "https://github.com/huggingface/transformers/blob/main/src/transformers/models/llama/"
    "modeling_llama.py"
)

FEATURES = (
    GROUPED_HEADS
    | {"layer", "causal", "key-padding", "no-bias", "rope-half"}
    # issue 14: from the model's inputs through masking_utils (see the docstring)
    | SEGMENTS_AND_LEFT_PADDING
    | {"fully-masked-rows"}
)

UNSUPPORTED = {
    "kernel": "this is the whole layer (hf.eager / hf.sdpa are the kernels)",
    "cross-attention": "LlamaAttention is self-attention: one hidden_states input",
    "kv-input-dims": "one hidden size for every projection",
    "value-dim": "one head_dim for keys and values",
    "output-dim": "o_proj maps back to hidden_size",
    "kv-len": "self-attention: key/value length equals the query length",
    "scale": "the layer's scaling is head_dim ** -0.5",
    "rope-interleaved": "Llama's apply_rotary_pos_emb is rotate-half (pairs (i, i + d/2))",
    "rope-partial": "Llama rotates the whole head (GPT-NeoX/GLM layers split it)",
    "decode": "decoding through the cache is hf.llama.attention.dynamic-cache / static-cache",
    "weights": "the sdpa path returns no weights",
    "weights-mean": "the sdpa path returns no weights",
    "gradients": "not covered: this adapter runs the forward only",
}

LLAMA_ROPE_FLOAT32 = Divergence(
    id="hf-rope-float32-tables",
    reason=ROPE_TABLES_REASON,
    link=LLAMA_SOURCE,
    when=frozenset({"rope-half"}),
    dtypes=frozenset({"float64"}),
    compute_dtype="float32",
)


def refuse_invalid_config(case: Case) -> None:
    """LlamaConfig's own validation (huggingface_hub strict dataclasses) refuses these before
    any attention runs; they are configurations no Llama checkpoint can have."""
    s = case.shape
    if s.query_dim % s.num_heads:
        raise Unsupported(
            f"LlamaConfig refuses hidden_size {s.query_dim} not a multiple of "
            f"num_attention_heads {s.num_heads}"
        )
    if s.key_dim % 2:
        raise Unsupported(f"LlamaConfig's rope validation refuses an odd head_dim ({s.key_dim})")


def rope_parameters(case: Case) -> dict[str, Any]:
    """LlamaConfig keywords for the case's rotary embedding (none without `rope:`)."""
    if case.rope is None:
        return {}
    return {"rope_parameters": {"rope_type": "default", "rope_theta": case.rope.theta}}


def load_weights(layer: Any, case: Case, inputs: CaseInputs, device: str) -> None:
    """The case's canonical weights into q/k/v/o_proj (shared by the cache adapters)."""
    import torch

    w = {name: inputs.native(name) for name in inputs.weights}
    with torch.no_grad():
        for name in "qkv":
            weight, bias = layouts.to_linear(w[f"w{name}"], w.get(f"b{name}"))
            proj = getattr(layer, f"{name}_proj")
            proj.weight.copy_(to_torch(weight, case.dtype, device))
            if case.use_bias:
                proj.bias.copy_(to_torch(bias, case.dtype, device))
        layer.o_proj.weight.copy_(to_torch(layouts.to_linear_out(w["wo"]), case.dtype, device))
        if case.use_bias:
            layer.o_proj.bias.copy_(to_torch(w["bo"], case.dtype, device))


class HfLlamaAttention(HfSdpaAdapter):
    declaration = Declaration(
        name="hf.llama.attention",
        summary="transformers LlamaAttention layer (q/k/v/o projections, LlamaRotaryEmbedding + "
        "apply_rotary_pos_emb, sdpa attention), layer mode, rotary cases",
        framework="transformers",
        features=FEATURES,
        dtypes=frozenset({"float32", "float64"}),
        requires=("torch", "transformers"),
        worker="torch",
        divergences=(LLAMA_ROPE_FLOAT32, SDPA_MASKED_ROWS),
        unsupported_reasons=UNSUPPORTED,
        notes="Canonical weights loaded into q_proj/k_proj/v_proj/o_proj (attention_bias = the "
        "case's biases); position_embeddings from LlamaRotaryEmbedding with position_ids "
        "offset + t; config._attn_implementation = 'sdpa'; masks as hf.sdpa builds them. "
        "Packed rows and left padding as a model feeds the layer: masking_utils' mask from the "
        "2-D attention_mask / position_ids, rotary at transformers' positions (each sequence "
        "from 0).",
    )

    def run(self, case: Case, inputs: CaseInputs, device: str) -> dict[str, np.ndarray]:
        import torch
        from transformers import LlamaConfig
        from transformers.models.llama import modeling_llama

        if case.rope is None:
            raise Unsupported("the Llama layer always rotates: cases without rope are hf.sdpa's")
        refuse_invalid_config(case)
        s = case.shape
        config = LlamaConfig(
            hidden_size=s.query_dim,
            num_attention_heads=s.num_heads,
            num_key_value_heads=s.num_kv_heads,
            head_dim=s.key_dim,
            attention_bias=case.use_bias,
            **rope_parameters(case),
        )
        config._attn_implementation = "sdpa"
        dtype = getattr(torch, case.dtype)
        layer = modeling_llama.LlamaAttention(config, layer_idx=0).to(device=device, dtype=dtype)
        layer.eval()
        load_weights(layer, case, inputs, device)
        with torch.no_grad():
            x = to_torch(inputs.native("query"), case.dtype, device)
            rotary = modeling_llama.LlamaRotaryEmbedding(config).to(device)
            ids = torch.arange(s.query_len, device=device)[None] + case.rope.offset
            ids = ids.expand(s.batch, -1)
            m = case.mask
            if m.segments is not None or m.padding_side == "left":  # a model's inputs
                ids = model_position_ids(case, device)
                mask, is_causal = masking_utils_mask(case, "sdpa", device), m.causal is not None
            else:
                mask, is_causal = self.arguments(case, device)
            cos, sin = rotary(x, ids)
            layer.is_causal = bool(is_causal)
            out, weights = layer(x, position_embeddings=(cos, sin), attention_mask=mask)
        if weights is not None:
            raise RuntimeError("LlamaAttention returned weights: not the sdpa path")
        return {"output": to_numpy(out)}

    def rotary(self, case: Case, q: Any, k: Any) -> tuple[Any, Any]:  # pragma: no cover
        raise AssertionError("the layer rotates by itself")


def model_position_ids(case: Case, device: str) -> Any:
    """[B, T] position_ids as transformers computes them for a packed or left-padded batch:
    the packed ones restart at 0 in each segment (masking_utils_inputs); a padded row counts
    from 0 at its first real token, padding at 1 (generate()'s `attention_mask.cumsum(-1) - 1`,
    `masked_fill_(attention_mask == 0, 1)`)."""
    import torch

    attention_mask, position_ids = masking_utils_inputs(case)
    if position_ids is not None:
        return torch.from_numpy(position_ids).to(device)
    am = torch.from_numpy(attention_mask).to(device)
    ids = am.cumsum(-1) - 1
    return ids.masked_fill_(am == 0, 1)


ADAPTERS = [HfLlamaAttention]
