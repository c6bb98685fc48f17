"""Trap adapters for torch: the real torch calls, made the way users get them wrong.

Each class subclasses the careful adapter (adapters.torch_mha / adapters.torch_sdpa) and
changes only how the arguments are passed, so the report shows exactly where the call form
bites (a `fail` against what the user meant) and where it is harmless (a `pass`). See
docs/adapters/traps.md for what each user intended, what happens and the upstream links.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from conformance.cases.case import Case
from conformance.cases.inputs import CaseInputs
from conformance.cases.score_terms import alibi_for_case

from .torch_mha import TorchMhaSlowAdapter
from .torch_sdpa import TorchSdpaAdapter, only_causal


def _trap(base: type, name: str, summary: str, notes: str) -> Any:
    """The base adapter's declaration renamed: same features, dtypes and declared conventions."""
    return dataclasses.replace(base.declaration, name=name, summary=summary, notes=notes)


class TorchMhaSlowIsCausalHint(TorchMhaSlowAdapter):
    """nn.MultiheadAttention(attn_mask=<causal AND more>, is_causal=True), need_weights=False.

    is_causal is a hint that attn_mask *is* the causal mask: F.multi_head_attention_forward
    drops attn_mask and lets SDPA apply is_causal when there is no key_padding_mask and
    need_weights=False, so any extra masking in attn_mask (a window, random or per-head
    entries) silently disappears (pytorch#99282).
    """

    declaration = _trap(
        TorchMhaSlowAdapter,
        "torch.mha.slow.is-causal-hint",
        "TRAP: nn.MultiheadAttention slow path, need_weights=False, with is_causal=True "
        "whenever the mask contains a causal part, even when attn_mask masks more than that",
        "The user's full mask goes in attn_mask and is_causal=True is added because the model "
        "is causal. torch treats is_causal as a hint that attn_mask is exactly the causal mask "
        "and, without key_padding_mask, drops attn_mask (pytorch#99282): the extra masking is "
        "lost. Cases whose mask is only causal, or that have key padding, are unaffected.",
    )

    def _masks(self, case: Case, device: str) -> dict[str, Any]:
        kwargs = super()._masks(case, device)
        if case.mask.causal is not None and "attn_mask" in kwargs:
            kwargs["is_causal"] = True
        return kwargs


class TorchMhaSlowSdpaMaskPolarity(TorchMhaSlowAdapter):
    """nn.MultiheadAttention given boolean masks in SDPA's convention (True = attend).

    MultiheadAttention reads a boolean attn_mask / key_padding_mask as True = masked out, the
    inverse of F.scaled_dot_product_attention's True = attend (torch's own docs warn about it;
    rasbt/LLMs-from-scratch#1061 is the same slip the other way round).
    """

    declaration = _trap(
        TorchMhaSlowAdapter,
        "torch.mha.slow.sdpa-mask-polarity",
        "TRAP: nn.MultiheadAttention slow path given boolean masks in SDPA's convention "
        "(True = attend) where it reads True = masked out",
        "Boolean attn_mask and key_padding_mask are inverted from what MultiheadAttention "
        "expects (the user ported them from F.scaled_dot_product_attention). Every case with a "
        "boolean mask attends to exactly the keys it meant to hide. A mask that is only causal "
        "still passes: is_causal=True without key padding makes torch drop attn_mask.",
    )

    def _masks(self, case: Case, device: str) -> dict[str, Any]:
        kwargs = super()._masks(case, device)
        for name in ("attn_mask", "key_padding_mask"):
            mask = kwargs.get(name)
            if mask is not None and str(mask.dtype) == "torch.bool":
                kwargs[name] = ~mask  # True = attend, SDPA's reading
        return kwargs


class TorchMhaSlowAttnMaskRepeat(TorchMhaSlowAdapter):
    """A per-sample 3-D attn_mask tiled to [B * H, T, S] with `.repeat(H, 1, 1)`.

    MultiheadAttention indexes a 3-D attn_mask as batch * H + head, which
    `mask.repeat_interleave(H, dim=0)` builds; `.repeat(H, 1, 1)` tiles [M0, M1, M0, M1]
    instead, so heads read other samples' masks (line/lighthouse#77, ArrowLuo/CLIP4Clip#22).
    """

    declaration = _trap(
        TorchMhaSlowAdapter,
        "torch.mha.slow.attn-mask-repeat",
        "TRAP: nn.MultiheadAttention slow path given a 3-D attn_mask tiled with "
        ".repeat(num_heads, 1, 1) (head-major) where torch indexes batch * num_heads + head",
        "The user's [B, H, T, S] (or [B, T, S]) mask is flattened head-major, as "
        "mask.repeat(H, 1, 1) does, instead of batch-major (repeat_interleave). Heads of sample "
        "b then read another sample's mask. Masks shared by every sample (2-D attn_mask) and "
        "B = 1 are unaffected.",
    )

    def _masks(self, case: Case, device: str) -> dict[str, Any]:
        kwargs = super()._masks(case, device)
        mask = kwargs.get("attn_mask")
        if mask is not None and mask.dim() == 3:
            b, h = case.shape.batch, case.shape.num_heads
            t, s = mask.shape[-2:]
            # [B * H] batch-major -> the same [B, H] masks laid out head-major
            kwargs["attn_mask"] = mask.reshape(b, h, t, s).transpose(0, 1).reshape(b * h, t, s)
        return kwargs


class TorchSdpaIsCausalDecode(TorchSdpaAdapter):
    """F.scaled_dot_product_attention(is_causal=True) for a query block at the END of the keys.

    SDPA's is_causal is aligned at the top left (query i sees keys 0..i); a decode step or a
    chunked prefill against a cache needs bottom-right alignment (pytorch#103082, #108108,
    #144858; the fix is torch.nn.attention.bias.causal_lower_right).
    """

    declaration = _trap(
        TorchSdpaAdapter,
        "torch.sdpa.is-causal-decode",
        "TRAP: F.scaled_dot_product_attention with is_causal=True for a bottom-right "
        "(decode/cache) causal mask, where SDPA aligns is_causal at the top left",
        "The user wants causal attention of T new queries over S >= T keys (a decode step or "
        "chunk against a cache: bottom-right) and passes is_causal=True. SDPA masks top-left: "
        "query i sees keys 0..i only, so a T=1 decode step sees the first key only. Only "
        "bottom-right causal cases with T != S are affected.",
    )

    def _arguments(self, case: Case, inputs: CaseInputs, device: str) -> dict[str, Any]:
        kwargs = super()._arguments(case, inputs, device)
        # The trap is the causal flag standing in for a causal mask; ALiBi still needs
        # attn_mask (SDPA refuses both), so a user with ALiBi never reaches for the flag.
        if only_causal(case.mask) and alibi_for_case(case) is None:
            kwargs.pop("attn_mask", None)
            kwargs["is_causal"] = True
        return kwargs


ADAPTERS = [
    TorchMhaSlowIsCausalHint,
    TorchMhaSlowSdpaMaskPolarity,
    TorchMhaSlowAttnMaskRepeat,
    TorchSdpaIsCausalDecode,
]
