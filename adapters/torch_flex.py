"""`torch.flex.*`: torch.nn.attention.flex_attention in kernel mode (torch 2.13, CPU and CUDA).

FlexAttention takes the attention pattern as two user functions, as its users write them:

- the mask as a `mask_mod(b, h, q_idx, kv_idx) -> bool` turned into a BlockMask
  (create_block_mask), here indexing the case's neutral boolean mask [B, 1|H, T, S]; packed
  sequences as the document mask_mod (document ids of query and key equal), and-ed with it;
- everything added to the logits as a `score_mod(score, b, h, q_idx, kv_idx)`, in the order
  conformance.score_terms documents: logit soft-capping cap * tanh(score / cap) (Gemma 2),
  ALiBi natively as -slope[h] * |q_idx + offset - kv_idx| (the FlexAttention blog's alibi
  score_mod), then any additive mask or bias from the case.

Variants (each its own adapter):

- `torch.flex.eager`     flex_attention called directly: torch's unfused eager path, which
                         materialises the scores (torch warns that it is not the fused kernel)
- `torch.flex.compiled`  torch.compile(flex_attention, dynamic=False, fullgraph=True): the
                         generated fused kernel users run in production (Inductor, a C++
                         kernel on CPU)
- `torch.flex.eager.lse-sink`  attention sinks composed by the caller from flex's log-sum-exp
                         (return_aux=AuxRequest(lse=True)): out * sigmoid(lse - sink[h]).
                         FlexAttention has no sink term (a score_mod cannot reach the softmax
                         denominator), so the composition is named as one.

Compile cost: score_mod and mask_mod are built from one code shape per feature combination;
their parameters (cap, slopes, offset, mask and bias tensors) are captured tensors, so a case
that changes only parameters reuses the compiled graph; each new size compiles once
(static shapes; measured in docs/adapters/torch.md, with why not dynamic=True).
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any

import numpy as np

from conformance.adapter_api.adapter import Adapter, Declaration, Divergence, Unsupported
from conformance.adapter_api.feature_sets import (
    ADDITIVE_MASKS,
    ALIBI,
    EVERY_BOOLEAN_MASK,
    GROUPED_HEADS,
    KERNEL_SHAPES,
    SEGMENTS_AND_LEFT_PADDING,
)
from conformance.cases.case import Case
from conformance.cases.inputs import CaseInputs
from conformance.cases.masks import build_mask, segment_ids
from conformance.cases.score_terms import alibi_offset, without_alibi

from .torch_compile import check_compiled, compile_counters, inductor_cache_setup, report_compiles
from .torch_sdpa import (
    REQUIRES,
    WORKER,
    to_numpy,
    to_torch,
    torch_devices,
    torch_setup,
    torch_versions,
)

_COMPILED: dict[str, Any] = {}  # one torch.compile(flex_attention) per worker process


def _compiled_flex() -> Any:
    if "flex" not in _COMPILED:
        import torch
        import torch._dynamo.config as dynamo_config
        from torch.nn.attention.flex_attention import flex_attention

        # Static shapes: with symbolic sizes Inductor's CPU FlexAttention template emits C++
        # that g++ rejects ('cur_kvSplitSize5' was not declared): it puts the block sizes back
        # into the generated code by text replacement of their size-argument names, so "ks4"
        # also rewrites "ks45" once a kernel has that many size arguments (bias + mask cases;
        # docs/adapters/torch.md). dynamic=True and torch's default (dynamic=None, dimensions
        # made symbolic on the first recompile, even with the batch kept static) both hit it:
        # 16 of 264 default-tier cases errored. Each shape compiles once; past dynamo's
        # recompile limit it would silently run eagerly, so the limit is raised and hitting it
        # is an error, never a quiet fallback.
        dynamo_config.recompile_limit = 4096
        dynamo_config.accumulated_recompile_limit = 1 << 16
        dynamo_config.fail_on_recompile_limit_hit = True
        _COMPILED["flex"] = torch.compile(flex_attention, dynamic=False, fullgraph=True)
    return _COMPILED["flex"]


def score_mod_for(case: Case, device: str) -> Any:
    """The case's score terms and additive bias as one score_mod (None when there is none)."""
    import torch

    terms = case.scores
    cap = terms.softcap if terms else None
    slopes = terms.alibi if terms else None
    _, bias = build_mask(without_alibi(case))  # ALiBi goes natively, from the slopes
    dtype = torch.float64 if case.dtype == "float64" else torch.float32
    mods = []
    if cap is not None:
        cap_t = torch.tensor(cap, dtype=dtype, device=device)
        mods.append(lambda score, b, h, q, kv: cap_t * torch.tanh(score / cap_t))
    if slopes is not None:
        slopes_t = torch.tensor(slopes, dtype=dtype, device=device)
        offset = torch.tensor(alibi_offset(case), device=device)
        mods.append(lambda score, b, h, q, kv: score - slopes_t[h] * (q + offset - kv).abs())
    if bias is not None:
        bias_t = to_torch(bias, "float64" if case.dtype == "float64" else "float32", device)
        many = bias_t.shape[1] > 1
        if many:
            mods.append(lambda score, b, h, q, kv: score + bias_t[b, h, q, kv])
        else:
            mods.append(lambda score, b, h, q, kv: score + bias_t[b, 0, q, kv])
    if not mods:
        return None

    def score_mod(score, b, h, q_idx, kv_idx):  # noqa: ANN001, ANN202 - flex's signature
        for mod in mods:
            score = mod(score, b, h, q_idx, kv_idx)
        return score

    return score_mod


def document_mask_mod(case: Case, device: str) -> Any:
    """Packed sequences as FlexAttention's document mask (issue 14): a mask_mod comparing the
    document ids of query and key, `document_id[b, q_idx] == document_id[b, kv_idx]`, as the
    FlexAttention blog and torchtune's packed-sample masks write it."""
    import torch

    document_id = torch.from_numpy(segment_ids(case).astype(np.int64)).to(device)

    def document(b, h, q_idx, kv_idx):  # noqa: ANN001, ANN202 - flex's signature
        return document_id[b, q_idx] == document_id[b, kv_idx]

    return document


def block_mask_for(case: Case, device: str) -> Any:
    """The case's boolean mask as a BlockMask (None without one).

    Packed segments go in as a document mask_mod of their own (document_mask_mod), and-ed
    (flex's and_masks) with a mask_mod indexing the rest of the neutral mask (causal, windows,
    padding on either side, random parts), as users compose a document mask with causal."""
    from torch.nn.attention.flex_attention import and_masks, create_block_mask

    base = without_alibi(case)
    packed = base.mask.segments is not None
    if packed:
        base = dataclasses.replace(base, mask=dataclasses.replace(base.mask, segments=None))
    attend, _ = build_mask(base)
    if attend is None and not packed:
        return None
    s = case.shape
    mods = [document_mask_mod(case, device)] if packed else []
    heads = None
    if attend is not None:
        attend_t = to_torch(np.ascontiguousarray(attend), "bool", device)
        if attend_t.shape[1] > 1:

            def mask_mod(b, h, q_idx, kv_idx):  # noqa: ANN001, ANN202
                return attend_t[b, h, q_idx, kv_idx]

            heads = s.num_heads
        else:

            def mask_mod(b, h, q_idx, kv_idx):  # noqa: ANN001, ANN202
                return attend_t[b, 0, q_idx, kv_idx]

        mods.insert(0, mask_mod)
    mask_mod = mods[0] if len(mods) == 1 else and_masks(*mods)
    return create_block_mask(mask_mod, s.batch, heads, s.query_len, s.kv_len, device=device)


class TorchFlexAdapter(Adapter):
    """flex_attention called eagerly (torch's unfused implementation)."""

    compiled = False
    lse_sink = False

    def setup(self) -> None:
        if self.compiled:
            inductor_cache_setup()  # Inductor's FX graph cache in conformance's cache folder
        torch_setup()

    def devices(self) -> list[str]:
        return torch_devices()

    def versions(self) -> dict[str, str]:
        return torch_versions()

    def run(self, case: Case, inputs: CaseInputs, device: str) -> dict[str, np.ndarray]:
        import torch
        from torch.nn.attention.flex_attention import AuxRequest, flex_attention

        s = case.shape
        q, k, v = (to_torch(inputs.native(n), case.dtype, device) for n in ("q", "k", "v"))
        kwargs: dict[str, Any] = {
            "score_mod": score_mod_for(case, device),
            "block_mask": block_mask_for(case, device),
            "enable_gqa": s.num_kv_heads != s.num_heads,
        }
        if case.scale is not None:
            kwargs["scale"] = case.scale
        sink = case.scores.sink if case.scores else None
        if sink is not None:
            if not self.lse_sink:  # the declaration already refuses; keep run() honest too
                raise Unsupported("FlexAttention has no sink term")
            kwargs["return_aux"] = AuxRequest(lse=True)
        call = _compiled_flex() if self.compiled else flex_attention
        before = compile_counters()
        with torch.no_grad(), warnings.catch_warnings():
            # The eager path warns that it is unfused; that is what this variant tests.
            warnings.filterwarnings("ignore", message="flex_attention called without")
            result = call(q, k, v, **kwargs)
        if self.compiled:
            check_compiled(before)
        # Eager flex_attention traces score_mod/mask_mod with dynamo too (backend "eager"):
        # those graphs are its compile cost, reported the same way.
        report_compiles(before)
        if sink is None:
            return {"output": to_numpy(result)}
        out, aux = result
        sink_t = torch.tensor(sink, dtype=aux.lse.dtype, device=device)[None, :, None]
        gate = torch.sigmoid(aux.lse - sink_t)  # exp(lse) / (exp(lse) + exp(sink))
        return {"output": to_numpy(out * gate[..., None].to(out.dtype))}


FLEX_FEATURES = (
    KERNEL_SHAPES
    | GROUPED_HEADS
    | EVERY_BOOLEAN_MASK
    | ADDITIVE_MASKS
    | {"scale", "softcap"}
    | ALIBI
    | {"cache-lengths"}  # issue 14: per-sequence lengths and causal ends in the mask_mod
    # issue 14: packed rows as the document mask_mod (document_mask_mod), left padding in
    # the mask_mod indexing the neutral mask (valid keys end the row)
    | SEGMENTS_AND_LEFT_PADDING
)

FLEX_UNSUPPORTED = {
    "layer": "flex_attention is the kernel only: no projections",
    "weights": "flex_attention returns the output (and log-sum-exp), never the weights",
    "weights-mean": "flex_attention returns the output (and log-sum-exp), never the weights",
    "decode": "no key/value cache; decoding is the caller's loop",
    "sink": "no sink term: a score_mod cannot reach the softmax denominator "
    "(torch.flex.eager.lse-sink composes it from the log-sum-exp)",
    "sink-zero": "no off-by-one softmax (torch.flex.eager.lse-sink composes it)",
    "gradients": "not wired: torch 2.13 raises NotImplementedError ('FlexAttention does not "
    "support backward on CPU') and no CUDA machine has run flex's backward here yet",
    "dropout": "flex_attention has no dropout",
    "dropout-training": "flex_attention has no dropout",
}

FLEX_MASKED_ROWS = Divergence(
    id="flex-masked-rows-zero",
    reason="flex_attention returns zeros (and a log-sum-exp of -inf) for a query row whose "
    "every key is masked, not NaN",
    link="https://pytorch.org/docs/stable/nn.attention.flex_attention.html",
    when=frozenset({"fully-masked-rows"}),
    masked_rows="zeros",
)

NOTES = (
    "Boolean mask parts -> mask_mod indexing the neutral mask, as a BlockMask "
    "(create_block_mask); packed segments -> a document mask_mod (document_id[b, q_idx] == "
    "document_id[b, kv_idx]) and-ed with it (and_masks); softcap, ALiBi (natively from the "
    "slopes) and any additive mask or bias -> one score_mod, in that order. enable_gqa=True "
    "when G < H; scale passed when set."
)


def _declaration(name: str, summary: str, **kw: Any) -> Declaration:
    return Declaration(
        name=name,
        summary=summary,
        framework="torch",
        features=kw.pop("features", FLEX_FEATURES),
        dtypes=kw.pop("dtypes", frozenset({"float32", "float64", "float16", "bfloat16"})),
        requires=REQUIRES,
        worker=WORKER,
        divergences=(FLEX_MASKED_ROWS,),
        unsupported_reasons=kw.pop("unsupported_reasons", FLEX_UNSUPPORTED),
        notes=kw.pop("notes", NOTES),
        **kw,
    )


TorchFlexAdapter.declaration = _declaration(
    "torch.flex.eager",
    "torch.nn.attention.flex_attention called eagerly (unfused): mask_mod/BlockMask masks, "
    "score_mod for softcap, ALiBi and biases",
)


class TorchFlexCompiled(TorchFlexAdapter):
    """torch.compile(flex_attention): the fused kernel Inductor generates."""

    compiled = True
    declaration = _declaration(
        "torch.flex.compiled",
        "torch.compile(flex_attention, dynamic=False, fullgraph=True): Inductor's fused "
        "FlexAttention kernel, same mask_mod/score_mod as torch.flex.eager",
        dtypes=frozenset({"float32"}),
        unsupported_reasons={
            **FLEX_UNSUPPORTED,
            "float64": "Inductor's CPU FlexAttention lowering raises NotImplementedError: only "
            "float32, float16 and bfloat16 are supported on CPU (torch 2.13)",
            "float16": "kept out of the default run: each dtype compiles its own kernel",
            "bfloat16": "kept out of the default run: each dtype compiles its own kernel",
        },
    )


class TorchFlexLseSink(TorchFlexAdapter):
    """Sinks composed by the caller: out * sigmoid(lse - sink[h]) from flex's log-sum-exp."""

    lse_sink = True
    declaration = _declaration(
        "torch.flex.eager.lse-sink",
        "flex_attention (eager) plus attention sinks composed from its log-sum-exp "
        "(out * sigmoid(lse - sink)), as GPT-OSS ports on FlexAttention do",
        features=FLEX_FEATURES | {"sink", "sink-zero"},
        unsupported_reasons={k: v for k, v in FLEX_UNSUPPORTED.items() if "sink" not in k},
        notes=NOTES + " Sinks: return_aux=AuxRequest(lse=True), then out * sigmoid(lse - "
        "sink[h]) = out * exp(lse) / (exp(lse) + exp(sink)).",
    )


ADAPTERS = [TorchFlexAdapter, TorchFlexCompiled, TorchFlexLseSink]

__all__ = [*(cls.__name__ for cls in ADAPTERS), "block_mask_for", "score_mod_for"]
