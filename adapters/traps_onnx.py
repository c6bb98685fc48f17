"""Trap adapter for ONNX Runtime: com.microsoft MultiHeadAttention's `unidirectional` taken at
its word. Subclasses adapters.ort_contrib.OrtContribMHA; see docs/adapters/traps.md.
"""

from __future__ import annotations

import dataclasses

from conformance.cases.case import Case

from .ort_contrib import OrtContribMHA


class OrtContribMhaUnidirectional(OrtContribMHA):
    """unidirectional=1 for every causal case, T < S included (the careful adapter uses it for
    T >= S only). Without past, ORT's CPU kernel masks rows 0..T-2 top-left and leaves the last
    query row seeing every key, so for T < S it is neither alignment."""

    declaration = dataclasses.replace(
        OrtContribMHA.declaration,
        name="ort.contrib.mha.unidirectional",
        summary="TRAP: com.microsoft MultiHeadAttention with unidirectional=1 for every causal "
        "case, T < S included",
        notes="The user sets unidirectional=1 to make attention causal (top-left, as "
        "documented for the op) with fewer queries than keys. The CPU kernel's causal loop "
        "stops before the last query row (right only for T == S), so with T < S the last row "
        "attends to every key. Causal cases with T >= S are unaffected.",
    )

    def _unidirectional(self, case: Case) -> bool:
        return case.mask.causal is not None


ADAPTERS = [OrtContribMhaUnidirectional]
