"""Input transformations the metamorphic properties apply to a case's inputs."""

from __future__ import annotations

import dataclasses

import numpy as np
from hypothesis import strategies as st

from ..cases.case import Case
from ..cases.dtypes import round_to
from ..cases.inputs import CaseInputs

# --- input transformations -----------------------------------------------------------------


def derive(case: Case, inputs: CaseInputs, arrays: dict | None = None, weights: dict | None = None
           ) -> CaseInputs:  # fmt: skip
    """A copy of `inputs` with some arrays replaced; self-attention keeps key/value IS query
    (implementations pick fast paths on that identity)."""
    out = dataclasses.replace(inputs, arrays=dict(inputs.arrays), weights=dict(inputs.weights))
    out.arrays.update(arrays or {})
    out.weights.update(weights or {})
    if case.mode == "layer" and case.self_attention:
        out.arrays["key"] = out.arrays["value"] = out.arrays["query"]
    return out


def fresh(rng: np.random.Generator, shape: tuple[int, ...], dtype: str) -> np.ndarray:
    return round_to(rng.standard_normal(shape), dtype)


def evidence(prefix: str, inputs: CaseInputs) -> dict[str, np.ndarray]:
    named_arrays = {**inputs.arrays, **inputs.weights}
    return {f"{prefix}.{k}": np.asarray(v) for k, v in named_arrays.items()}


def permutation(data: st.DataObject, n: int, label: str) -> np.ndarray:
    return np.asarray(data.draw(st.permutations(range(n)), label=label), dtype=int)
