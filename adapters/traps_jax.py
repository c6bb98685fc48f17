"""Trap adapter for JAX: jax.nn.dot_product_attention called the way users get it wrong.

Subclasses the careful adapter (adapters.jax_dpa) and changes only the causal flag; see
docs/adapters/traps.md.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from conformance.cases.case import Case

from .jax_dpa import JaxDpaXla


class JaxDpaIsCausalDecode(JaxDpaXla):
    """is_causal=True for queries at the END of the keys (a decode step or cache chunk).

    jax.nn.dot_product_attention's is_causal is tril(ones(T, S)) (_get_causal_mask): top-left,
    so a decode step with T=1 sees the first key only (the same trap as google/flax#5591).
    """

    declaration = dataclasses.replace(
        JaxDpaXla.declaration,
        name="jax.dpa.xla.is-causal-decode",
        summary="TRAP: jax.nn.dot_product_attention(implementation='xla') with is_causal=True "
        "for a bottom-right (decode/cache) causal mask, where JAX aligns it at the top left",
        notes="The user wants T new queries to attend causally over S >= T keys (decode or "
        "chunked prefill against a cache: bottom-right) and passes is_causal=True, which JAX "
        "builds as tril(ones(T, S)): top-left. Only bottom-right causal cases with T != S are "
        "affected.",
    )

    def arguments(self, case: Case) -> dict[str, Any]:
        if case.mask.causal == "bottom-right":
            top_left = dataclasses.replace(case.mask, causal="top-left")
            case = dataclasses.replace(case, mask=top_left)
        return super().arguments(case)


ADAPTERS = [JaxDpaIsCausalDecode]
