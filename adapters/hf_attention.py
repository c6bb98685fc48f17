"""`hf.eager`, `hf.sdpa`: Hugging Face transformers' attention interface functions, kernel mode.

What runs: the functions transformers registers for `config._attn_implementation`, called as
a model's attention layer calls them, `fn(module, query, key, value, attention_mask,
scaling=..., dropout=0.0)` with query [B, H, T, K], key/value [B, G, S, K|V]:

- `hf.eager`  `eager_attention_forward` from transformers.models.llama.modeling_llama (the
              function copied into hundreds of model files): repeat_kv, matmul, additive mask,
              softmax in float32 cast back to the query dtype, matmul. Returns the weights.
- `hf.sdpa`   `ALL_ATTENTION_FUNCTIONS["sdpa"]` (transformers.integrations.sdpa_attention):
              GQA handling, is_causal only when there is no mask, then
              F.scaled_dot_product_attention.

The `module` argument is a small nn.Module carrying what the functions read from a real
attention layer: num_key_value_groups (H / G), is_causal and training (False: inference).
Masks follow transformers' own mask builders (masking_utils): for eager an additive float mask,
0 where attended and torch.finfo(dtype).min elsewhere (plus the case's bias); for sdpa a
boolean mask (True = attend), or a float mask when the case has a bias, or no mask and
is_causal=True when the case's whole mask is top-left causal. `scaling` is the case's scale,
else K**-0.5 as every transformers attention layer passes it.

Rotary position embeddings (issue 14, conformance.rotary) are applied to the per-head query and
key first, with transformers' own rotary code, as the model's attention layer does before it
calls the attention function: rotate-half with GPT-NeoX's GPTNeoXRotaryEmbedding (cos/sin for
the config's partial_rotary_factor) and its apply_rotary_pos_emb (the Llama function plus the
partial-rotary split); interleaved pairs with GLM's GlmRotaryEmbedding and apply_rotary_pos_emb
(cos/sin repeat_interleave'd, pairs (2i, 2i + 1), partial too). position_ids are the case's
positions (conformance.rotary): the queries' for q, the keys' for k, as a cache holds keys that
were rotated at their own positions. transformers builds the cos/sin tables in float32 (the
inverse frequencies and position * inv_freq are float32 whatever the input dtype), so float64
rotary cases are float32-accurate: a declared divergence.

Path proof: the function is taken from transformers' registry / model module and checked to
be the one named; eager must return its weights, sdpa must return none. torch imported lazily.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from conformance.adapter_api.adapter import Adapter, Declaration, Divergence, Unsupported
from conformance.adapter_api.feature_sets import (
    ADDITIVE_MASKS,
    EVERY_BOOLEAN_MASK,
    GROUPED_HEADS,
    KERNEL_SHAPES,
    ROPE,
    SEGMENTS_AND_LEFT_PADDING,
)
from conformance.cases.case import Case, Mask
from conformance.cases.inputs import CaseInputs
from conformance.cases.masks import build_mask
from conformance.cases.written import BOOLEAN_SOURCES, AsWritten, Fill

from .autodiff import vjp
from .torch_sdpa import (
    SDPA_MASKED_ROWS,
    only_causal,
    to_numpy,
    to_torch,
    torch_devices,
    torch_setup,
    torch_versions,
)

REQUIRES = ("torch", "transformers")
EAGER_SOURCE = (
    "https://github.com/huggingface/transformers/blob/main/src/transformers/models/llama/"
    "modeling_llama.py"
)
SDPA_SOURCE = (
    "https://github.com/huggingface/transformers/blob/main/src/transformers/integrations/"
    "sdpa_attention.py"
)

FEATURES = (
    KERNEL_SHAPES
    | GROUPED_HEADS
    | EVERY_BOOLEAN_MASK
    | ADDITIVE_MASKS
    | {
        "scale",
        "cache-lengths",  # issue 14: per-sequence lengths as a padding mask, as HF batches do
    }
    # issue 14: the interface functions take the model's prepared 4-D mask; packed rows and
    # left padding are entries of it like any other (masking_utils builds the same shapes
    # from position_ids and the 2-D attention_mask)
    | SEGMENTS_AND_LEFT_PADDING
    # issue 14: rotary embeddings with transformers' own rotary code (see the docstring), per
    # sequence too: position_ids [B, L] as a batch of different cache lengths passes them
    | ROPE
    | {"rope-per-sequence"}
)

UNSUPPORTED = {
    "layer": "the interface functions are the kernel only (projections live in each model)",
    "weights": "the sdpa function returns None for the weights",
    "weights-mean": "the interface functions return per-head weights at most",
    "decode": "the functions take the whole key/value; the cache lives in the model layer",
    "multi-axis": "one sequence axis",
    "bias-kv": "nn.MultiheadAttention's add_bias_kv has no counterpart",
    "zero-attn": "nn.MultiheadAttention's add_zero_attn has no counterpart",
    "dropout": "the functions take a dropout rate; inference passes 0.0",
    "dropout-training": "not covered: training-mode dropout is not wired in this adapter",
    "gradients": "not covered: this adapter runs the forward only",
}
# hf.eager and hf.sdpa differentiate with torch's autograd, except through fully masked rows.
GRADIENT_MASKED_ROWS = (
    "gradients through fully masked rows are not wired: where transformers writes such a row "
    "with finfo.min (eager; sdpa with a bias) the fill absorbs the logits in float32 and no "
    "gradient reaches them, which the oracle's as-written backward (fills added in float64) "
    "does not model yet"
)

# Measured (transformers 5.25, torch 2.13 CPU): float64 inputs come back float64, but the
# softmax ran in float32 (`softmax(..., dtype=torch.float32).to(query.dtype)`).
EAGER_FLOAT32_SOFTMAX = Divergence(
    id="hf-eager-softmax-float32",
    reason="eager_attention_forward computes the softmax in float32 and casts back, so float64 "
    "attention is float32-accurate",
    link=EAGER_SOURCE,
    dtypes=frozenset({"float64"}),
    compute_dtype="float32",
)

# eager_mask (below) is masking_utils' eager convention: where(attend, additive, finfo.min).
# A key a boolean source masks carries finfo(dtype).min (over any -inf of the additive mask
# there), a key only the 0/-inf additive mask masks keeps its -inf, and the sum is taken in
# the case dtype. A row the boolean mask empties is uniform over its keys (finfo.min swamps
# the logits; in float16 logits beyond +-16 survive the rounding, which the reference models),
# a row only the additive mask empties is NaN, and a row emptied partly by each is uniform
# over the keys the boolean part masks.
HF_AS_WRITTEN = AsWritten(
    (Fill(BOOLEAN_SOURCES, "finfo-min"), Fill({"additive-mask"}, "-inf")), precision="case"
)
MASKING_UTILS = (
    "https://github.com/huggingface/transformers/blob/main/src/transformers/masking_utils.py"
)
EAGER_MASKED_ROWS = Divergence(
    id="hf-eager-masked-rows-as-written",
    reason="transformers writes a boolean mask as torch.finfo(dtype).min, not -inf, and a 0/-inf "
    "additive mask as given: a row a boolean mask empties softmaxes to uniform weights over "
    "all keys instead of NaN, a row only -inf empties is NaN, and a row emptied partly by "
    "each is uniform over the keys the boolean mask hides",
    link=MASKING_UTILS,
    when=frozenset({"fully-masked-rows"}),
    masked_rows=HF_AS_WRITTEN,
)

# float64 and a fully masked row: the mask value finfo(float64).min (-1.8e308) overflows to
# -inf when the float32 softmax converts the logits, so the whole row is -inf and the softmax
# gives NaN (measured, transformers 5.25 / torch 2.13 CPU) where float32/16 give uniform.
EAGER_MASKED_ROWS_FLOAT64 = Divergence(
    id="hf-eager-masked-rows-nan-float64",
    reason="in float64 the finfo(float64).min mask value overflows to -inf in the float32 "
    "softmax, so a fully masked row gives NaN (other dtypes: uniform); and "
    + EAGER_FLOAT32_SOFTMAX.reason,
    link=EAGER_SOURCE,
    when=frozenset({"fully-masked-rows"}),
    dtypes=frozenset({"float64"}),
    masked_rows="nan",
    compute_dtype="float32",
)

# hf.sdpa with a float mask (a finite bias or a 0/-inf additive mask): the boolean pattern
# and the float part travel as one float mask, eager's convention (create_position_bias_mask:
# finfo.min where the boolean pattern masks), so SDPA sees finite, equal logits in a row the
# boolean pattern empties (uniform, not zeros); a row only -inf empties is SDPA's zeros
# (measured: torch 2.13 CPU returns 0 for an all -inf float-mask row). Without a float part
# the boolean mask goes to SDPA as is: zeros (SDPA_MASKED_ROWS).
SDPA_FLOAT_MASK_ROWS = dataclasses.replace(HF_AS_WRITTEN, empty="zeros")
SDPA_FLOAT_MASK_REASON = (
    "with a float mask (a bias or a 0/-inf additive mask) transformers passes SDPA one float "
    "mask, finfo(dtype).min where the boolean pattern masks and the additive mask as given "
    "(create_position_bias_mask), so a row the boolean pattern empties has finite, equal "
    "logits: uniform weights instead of SDPA's zeros; a row only -inf empties is SDPA's zeros; "
    "a row emptied partly by each is uniform over the keys the boolean pattern hides"
)
SDPA_BIAS_MASKED_ROWS = tuple(
    Divergence(
        id=f"hf-sdpa-{tag}-masked-rows-as-written",
        reason=SDPA_FLOAT_MASK_REASON,
        link=SDPA_SOURCE,
        when=frozenset({"fully-masked-rows", tag}),
        masked_rows=SDPA_FLOAT_MASK_ROWS,
    )
    for tag in ("attn-bias", "additive-mask")
)

ROPE_SOURCE = (
    "https://github.com/huggingface/transformers/blob/main/src/transformers/models/gpt_neox/"
    "modeling_gpt_neox.py"
)
ROPE_TABLES_REASON = (
    "transformers computes the rotary cos/sin tables in float32 (inv_freq = 1 / base ** "
    "(arange(0, dim, 2).float() / dim) and position_ids.float() * inv_freq, then casts cos/sin "
    "to the input dtype), so float64 rotary cases carry float32-rounded rotations"
)
# One per rotary tag (a divergence applies when the case has every tag in `when`).
ROPE_FLOAT32_TABLES = tuple(
    Divergence(
        id="hf-rope-float32-tables",
        reason=ROPE_TABLES_REASON,
        link=ROPE_SOURCE,
        when=frozenset({tag}),
        dtypes=frozenset({"float64"}),
        compute_dtype="float32",
    )
    for tag in ("rope-half", "rope-interleaved")
)

_module_class: Any = None


def attention_module(groups: int) -> Any:
    """The attributes the interface functions read from the calling attention layer."""
    global _module_class
    if _module_class is None:
        import torch

        class Caller(torch.nn.Module):
            def __init__(self, groups: int) -> None:
                super().__init__()
                self.num_key_value_groups = groups
                self.is_causal = False  # set per call; the mask decides otherwise
                self.training = False

        _module_class = Caller
    return _module_class(groups)


def rope_config_and_modules(style: str) -> tuple[Any, Any, Any]:
    """(config class, rotary embedding class, modeling module) of the model family whose rotary
    code the style is: GPT-NeoX for rotate-half, GLM for interleaved pairs."""
    if style == "half":
        from transformers import GPTNeoXConfig
        from transformers.models.gpt_neox import modeling_gpt_neox as module

        return GPTNeoXConfig, module.GPTNeoXRotaryEmbedding, module
    from transformers import GlmConfig
    from transformers.models.glm import modeling_glm as module

    return GlmConfig, module.GlmRotaryEmbedding, module


def hf_rotary(case: Case, q: Any, k: Any, style: str | None = None) -> tuple[Any, Any]:
    """q [B, H, T, K], k [B, G, S, K] rotated by transformers' rotary code for `style` (the
    case's unless given: the trap adapter passes the other one)."""
    import torch

    from conformance.cases.rotary import key_positions, query_positions

    rope = case.rope
    s = case.shape
    style = style or rope.style
    config_class, embedding_class, module = rope_config_and_modules(style)
    config = config_class(
        hidden_size=s.num_heads * s.key_dim,
        num_attention_heads=s.num_heads,
        num_key_value_heads=s.num_kv_heads,
        head_dim=s.key_dim,
        rope_parameters={
            "rope_type": "default",
            "rope_theta": rope.theta,
            "partial_rotary_factor": rope.dims(s.key_dim) / s.key_dim,
        },
    )
    embedding = embedding_class(config).to(q.device)
    rotated = []
    for x, positions in ((q, query_positions(case)), (k, key_positions(case))):
        ids = torch.as_tensor(positions, device=x.device)
        if ids.ndim == 1:  # one position row for the batch; per-sequence rows are [B, L]
            ids = ids[None].expand(x.shape[0], -1)
        cos, sin = embedding(x, ids)
        if cos.shape[-1] != rope.dims(s.key_dim):
            raise RuntimeError(f"transformers built {cos.shape[-1]} rotary dims, not "
                               f"{rope.dims(s.key_dim)}")  # fmt: skip
        rotated.append(module.apply_rotary_pos_emb(x, x, cos, sin)[0])
    return rotated[0], rotated[1]


def eager_mask(case: Case, dtype: str, device: str) -> Any:
    """masking_utils' eager convention: 0 / finfo(dtype).min, plus the case's bias."""
    import torch

    attend, bias = build_mask(case)
    if attend is None and bias is None:
        return None
    low = float(torch.finfo(getattr(torch, dtype)).min)
    s = case.shape
    shape = (s.batch, 1, s.query_len, s.kv_len)
    base = np.zeros(shape) if bias is None else bias
    additive = base if attend is None else np.where(attend, base, low)
    return to_torch(additive, dtype, device)


class HfEagerAdapter(Adapter):
    function = "eager"

    declaration = Declaration(
        name="hf.eager",
        summary="transformers eager_attention_forward (modeling_llama), kernel: matmul, additive "
        "finfo.min mask, float32 softmax, matmul",
        framework="transformers",
        features=FEATURES | {"weights", "gradients"},
        requires=REQUIRES,
        worker="torch",
        divergences=(
            EAGER_MASKED_ROWS_FLOAT64,
            EAGER_MASKED_ROWS,
            EAGER_FLOAT32_SOFTMAX,
            *ROPE_FLOAT32_TABLES,
        ),  # fmt: skip
        unsupported_reasons={
            k: v for k, v in UNSUPPORTED.items() if k not in ("weights", "gradients")
        },
        notes="Masks as transformers' masking_utils builds them for eager (0 attended, "
        "finfo(dtype).min masked, bias added). scaling = case scale or K**-0.5.",
    )

    def setup(self) -> None:
        torch_setup()
        import transformers  # noqa: F401  (fail early with a clear import error)

    def devices(self) -> list[str]:
        return torch_devices()

    def versions(self) -> dict[str, str]:
        import transformers

        return {**torch_versions(), "transformers": transformers.__version__}

    def _function(self) -> Any:
        from transformers.models.llama import modeling_llama

        fn = modeling_llama.eager_attention_forward
        if fn.__module__ != "transformers.models.llama.modeling_llama":
            raise RuntimeError(f"eager_attention_forward comes from {fn.__module__}")
        return fn

    def arguments(self, case: Case, device: str) -> tuple[Any, Any]:
        """(attention_mask, is_causal) in the function's convention."""
        return eager_mask(case, case.dtype, device), None

    def run(self, case: Case, inputs: CaseInputs, device: str) -> dict[str, np.ndarray]:
        import torch

        s = case.shape
        module = attention_module(s.num_heads // s.num_kv_heads)
        q = to_torch(inputs.native("q"), case.dtype, device)
        k = to_torch(inputs.native("k"), case.dtype, device)
        v = to_torch(inputs.native("v"), case.dtype, device)
        if case.gradients and "fully-masked-rows" in case.features:
            raise Unsupported(GRADIENT_MASKED_ROWS)
        mask, is_causal = self.arguments(case, device)
        scaling = case.scale if case.scale is not None else s.key_dim**-0.5
        extra = {} if is_causal is None else {"is_causal": is_causal}

        def forward(q: Any, k: Any, v: Any) -> tuple[Any, Any]:
            if case.rope is not None:  # issue 14: the model layer rotates q and k first
                q, k = self.rotary(case, q, k)
            out, weights = self._function()(
                module, q, k, v, mask, scaling=scaling, dropout=0.0, **extra
            )
            return out.transpose(1, 2), weights  # [B, T, H, V] -> [B, H, T, V]

        grads = None
        if case.gradients:  # torch autograd through transformers' rotary and attention code
            d_out = to_torch(inputs.native("grad_output"), case.dtype, device)
            (out, weights), grads = vjp("torch", forward, (q, k, v), d_out)
        else:
            with torch.no_grad():
                out, weights = forward(q, k, v)
        if out.dtype != q.dtype:
            raise RuntimeError(f"output dtype {out.dtype} differs from the input's {q.dtype}")
        result = {"output": to_numpy(out)}
        self.check_weights(weights)
        if weights is not None and "weights" in case.features:
            result["weights"] = to_numpy(weights)
        if grads is not None:  # K/V stay at G heads (repeat_kv inside): canonical already
            result.update(zip(("grad_q", "grad_k", "grad_v"), map(to_numpy, grads), strict=True))
        return result

    def rotary(self, case: Case, q: Any, k: Any) -> tuple[Any, Any]:
        return hf_rotary(case, q, k)

    def check_weights(self, weights: Any) -> None:
        if weights is None:
            raise RuntimeError("eager_attention_forward returned no weights: not the eager path")


class HfSdpaAdapter(HfEagerAdapter):
    function = "sdpa"

    declaration = Declaration(
        name="hf.sdpa",
        summary="transformers ALL_ATTENTION_FUNCTIONS['sdpa'] (sdpa_attention_forward), kernel: "
        "GQA handling, then F.scaled_dot_product_attention",
        framework="transformers",
        features=FEATURES | {"gradients"},
        requires=REQUIRES,
        worker="torch",
        divergences=(*SDPA_BIAS_MASKED_ROWS, SDPA_MASKED_ROWS, *ROPE_FLOAT32_TABLES),
        unsupported_reasons={k: v for k, v in UNSUPPORTED.items() if k != "gradients"},
        notes="Boolean mask (True = attend) as masking_utils' sdpa_mask builds it; a float mask "
        "when the case has a bias; a mask that is only top-left causal goes in as no mask and "
        "is_causal=True. scaling = case scale or K**-0.5.",
    )

    def _function(self) -> Any:
        from transformers.integrations import sdpa_attention
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

        fn = ALL_ATTENTION_FUNCTIONS["sdpa"]
        if fn is not sdpa_attention.sdpa_attention_forward:
            raise RuntimeError(f"ALL_ATTENTION_FUNCTIONS['sdpa'] is {fn!r}")
        return fn

    def arguments(self, case: Case, device: str) -> tuple[Any, Any]:
        if only_causal(case.mask) and case.mask.causal == "top-left":
            return None, True
        attend, bias = build_mask(case)
        if bias is None:
            return (None if attend is None else to_torch(attend, "bool", device)), False
        return eager_mask(case, case.dtype, device), False

    def check_weights(self, weights: Any) -> None:
        if weights is not None:
            raise RuntimeError("sdpa_attention_forward returned weights: not the sdpa path")


# --- masks from the model's inputs (masking_utils) -------------------------------------------

MASKING_UTILS_SOURCE = (
    "https://github.com/huggingface/transformers/blob/main/src/transformers/masking_utils.py"
)


def masking_utils_inputs(case: Case) -> tuple[np.ndarray | None, np.ndarray | None]:
    """What a model's forward hands transformers' mask builders for this case: (attention_mask
    [B, S] int64, 1 = a real token, or None; position_ids [B, T] int64 or None).

    Padding, on either side, is the 2-D attention_mask a tokenizer returns (generation batches
    are left-padded). Packed rows are position_ids restarting at 0 in each segment, with
    attention_mask None, as DataCollatorWithFlattening hands them over: masking_utils detects
    packing from position_ids only then (find_packed_sequence_indices). Raises Unsupported for
    a mask those inputs cannot state (hf.eager / hf.sdpa take any mask as a prepared 4-D one).
    """
    s, m = case.shape, case.mask
    stated = Mask(causal=m.causal, key_padding=m.key_padding, segments=m.segments,
                  padding_side=m.padding_side, fully_masked_rows=m.fully_masked_rows,
                  window=m.window)  # fmt: skip
    if dataclasses.replace(m, per_head=False) != stated:
        raise Unsupported(
            "a model's mask comes from attention_mask (padding) and position_ids (packing) "
            "only; other mask parts need a prepared 4-D mask (hf.eager / hf.sdpa)"
        )
    if m.causal == "bottom-right" and s.query_len != s.kv_len:
        raise Unsupported("without a cache create_causal_mask aligns the causal band top-left")
    sliding_window(case)  # raises Unsupported for a window the config cannot state
    if m.segments is not None:
        if m.key_padding is not None:
            raise Unsupported(
                "masking_utils detects packed rows from position_ids only when attention_mask "
                "is None, so packing and padding cannot be stated together"
            )
        positions = np.stack([np.concatenate([np.arange(n) for n in row]) for row in m.segments])
        return None, positions.astype(np.int64)
    lengths = m.key_padding if m.key_padding is not None else (s.kv_len,) * s.batch
    keys = np.arange(s.kv_len)[None, :]
    counts = np.asarray(lengths)[:, None]
    valid = keys >= s.kv_len - counts if m.padding_side == "left" else keys < counts
    return valid.astype(np.int64), None


def sliding_window(case: Case) -> int | None:
    """config.sliding_window for the case's window, or None without one. Causal: a query sees
    keys q - W < k <= q (sliding_window_overlay), so W = left + 1 (the right edge is the
    diagonal whatever `right` says). Bidirectional: |q - k| <= W, so a symmetric (W, W) only."""
    window = case.mask.window
    if window is None:
        return None
    left, right = window
    if case.mask.causal is not None:
        return left + 1
    if left != right:
        raise Unsupported(
            f"window ({left}, {right}): a bidirectional sliding window in transformers is "
            "symmetric (|q - k| <= config.sliding_window)"
        )
    return left


def masking_utils_mask(case: Case, implementation: str, device: str) -> Any:
    """The mask transformers builds for the case's inputs: masking_utils.create_causal_mask
    (causal cases) or create_bidirectional_mask, config._attn_implementation = implementation,
    no cache. None when transformers leaves the mask to SDPA's is_causal (or to nothing)."""
    import torch
    from transformers import PreTrainedConfig
    from transformers.masking_utils import create_bidirectional_mask, create_causal_mask

    s = case.shape
    attention_mask, position_ids = masking_utils_inputs(case)
    # The builders read only the attention implementation (and is_causal, unset: causal) from
    # the config; a bare one avoids model configs' validation (Llama's rejects odd head dims).
    config = PreTrainedConfig()
    config._attn_implementation = implementation
    # The builders read the batch, query length, dtype and device from the embeddings.
    embeds = torch.zeros(s.batch, s.query_len, 1, dtype=getattr(torch, case.dtype), device=device)
    am = None if attention_mask is None else torch.from_numpy(attention_mask).to(device)
    ids = None if position_ids is None else torch.from_numpy(position_ids).to(device)
    window = sliding_window(case)
    if window is not None:  # the builders read it from the config, as a model's layers do
        from transformers.masking_utils import (
            create_bidirectional_sliding_window_mask,
            create_sliding_window_causal_mask,
        )

        config.sliding_window = window
        if case.mask.causal is not None:
            return create_sliding_window_causal_mask(config, embeds, am, cache=None,
                                                     position_ids=ids)  # fmt: skip
        return create_bidirectional_sliding_window_mask(config, embeds, am, position_ids=ids)
    if case.mask.causal is not None:
        return create_causal_mask(config, embeds, am, cache=None, position_ids=ids)
    return create_bidirectional_mask(config, embeds, am, position_ids=ids)


MASKING_UTILS_FEATURES = (
    KERNEL_SHAPES
    | GROUPED_HEADS
    | {"causal", "causal-top-left", "key-padding", "fully-masked-rows", "scale", "window"}
    | SEGMENTS_AND_LEFT_PADDING
)
MASKING_UTILS_UNSUPPORTED = {
    **UNSUPPORTED,
    "query-padding": "attention_mask marks tokens as keys; a padded query row is computed "
    "over the keys it may see (its output is discarded downstream), not masked",
    "causal-bottom-right": "without a cache create_causal_mask aligns the band top-left "
    "(decoding: hf.llama.attention.dynamic-cache)",
    "bool-mask": "a model builds its mask from attention_mask and position_ids (hf.sdpa "
    "takes any prepared 4-D mask)",
    "per-head-mask": "masking_utils builds one mask for every head",
    "additive-mask": "a model builds its mask from attention_mask and position_ids",
    "attn-bias": "a model builds its mask from attention_mask and position_ids",
    "cache-lengths": "no cache: per-sequence lengths are the cache adapters'",
    "rope-half": "the rotary code is covered by hf.eager / hf.sdpa; this variant is about the "
    "mask builders",
    "rope-interleaved": "the rotary code is covered by hf.eager / hf.sdpa",
    "rope-partial": "the rotary code is covered by hf.eager / hf.sdpa",
    "rope-per-sequence": "the rotary code is covered by hf.eager / hf.sdpa",
}
MASKING_UTILS_NOTES = (
    "The mask is transformers' own, from the model's inputs: masking_utils.create_causal_mask "
    "(causal) or create_bidirectional_mask, with the 2-D attention_mask (1 = token; padding on "
    "the case's side) or, for packed rows, attention_mask None and position_ids restarting "
    "at each segment (packing is detected from them). The layer's is_causal is the case's. "
    "scaling = case scale or K**-0.5."
)


class HfEagerMaskingUtils(HfEagerAdapter):
    """eager_attention_forward with the mask masking_utils builds from the model's inputs."""

    declaration = Declaration(
        name="hf.eager.masking-utils",
        summary="transformers eager_attention_forward with the mask masking_utils builds from a "
        "model's inputs (2-D attention_mask for padding, position_ids for packed rows)",
        framework="transformers",
        features=MASKING_UTILS_FEATURES | {"weights"},
        requires=REQUIRES,
        worker="torch",
        divergences=(EAGER_MASKED_ROWS_FLOAT64, EAGER_MASKED_ROWS, EAGER_FLOAT32_SOFTMAX),
        unsupported_reasons={k: v for k, v in MASKING_UTILS_UNSUPPORTED.items() if k != "weights"},
        notes=MASKING_UTILS_NOTES,
    )

    def arguments(self, case: Case, device: str) -> tuple[Any, Any]:
        mask = masking_utils_mask(case, self.function, device)
        # None: nothing to mask (bidirectional, no padding), as in a model
        if mask is not None and mask.dtype == torch_bool():
            raise RuntimeError("masking_utils built a boolean mask for eager, not an additive one")
        return mask, case.mask.causal is not None


class HfSdpaMaskingUtils(HfSdpaAdapter):
    """sdpa_attention_forward with the mask masking_utils builds from the model's inputs."""

    declaration = Declaration(
        name="hf.sdpa.masking-utils",
        summary="transformers ALL_ATTENTION_FUNCTIONS['sdpa'] with the mask masking_utils builds "
        "from a model's inputs (2-D attention_mask for padding, position_ids for packed rows)",
        framework="transformers",
        features=MASKING_UTILS_FEATURES,
        requires=REQUIRES,
        worker="torch",
        divergences=(SDPA_MASKED_ROWS,),
        unsupported_reasons=MASKING_UTILS_UNSUPPORTED,
        notes=MASKING_UTILS_NOTES + " A mask that is plain causal or empty comes back as None: "
        "SDPA's is_causal (or nothing) then does the masking, as in a model.",
    )

    def arguments(self, case: Case, device: str) -> tuple[Any, Any]:
        mask = masking_utils_mask(case, self.function, device)
        if mask is not None and mask.dtype != torch_bool():
            raise RuntimeError(f"masking_utils built a {mask.dtype} mask for sdpa, not a boolean")
        return mask, case.mask.causal is not None


def torch_bool() -> Any:
    import torch

    return torch.bool


ADAPTERS = [HfEagerAdapter, HfSdpaAdapter, HfEagerMaskingUtils, HfSdpaMaskingUtils]
