"""Trap adapter for Hugging Face transformers: a rotary convention ported without its
permutation. Subclasses adapters.hf_attention.HfSdpaAdapter; see docs/adapters/traps.md.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from conformance.cases.case import Case

from .hf_attention import HfSdpaAdapter, hf_rotary


class HfSdpaRopeHalfForInterleaved(HfSdpaAdapter):
    """Llama-style rotate-half (GPT-NeoX's rotary code) for every rotary case, interleaved ones
    included: a GPT-J / RoFormer checkpoint (pairs (2i, 2i + 1)) run in a rotate-half model
    without permuting its query and key weights (conformance.rotary.half_to_interleaved)."""

    declaration = dataclasses.replace(
        HfSdpaAdapter.declaration,
        name="hf.sdpa.rope-half-for-interleaved",
        summary="TRAP: transformers' rotate-half rotary code (GPT-NeoX/Llama) applied to "
        "interleaved-pair (GPT-J) rotary cases, then ALL_ATTENTION_FUNCTIONS['sdpa']",
        notes="The user ports a model whose rotary embedding pairs dims (2i, 2i + 1) (GPT-J, "
        "RoFormer, ONNX interleaved=1) into a Llama-style model, which pairs (i, i + d/2), and "
        "copies the query/key weights unchanged. Nothing errors and the shapes agree, but every "
        "pair but the first is rotated by the wrong angle. Rotate-half cases are unaffected.",
    )

    def rotary(self, case: Case, q: Any, k: Any) -> tuple[Any, Any]:
        return hf_rotary(case, q, k, style="half")


ADAPTERS = [HfSdpaRopeHalfForInterleaved]
