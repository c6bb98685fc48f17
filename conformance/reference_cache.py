"""The oracle's memo: inputs and reference results per case, shared by the adapters (and
adapter variants) one worker runs, so each case's reference is computed once.

Used by conformance.evaluate (one case on one adapter) and conformance.dropout (training-mode
draws); kept apart from both so neither imports the other's module for it.
"""

from __future__ import annotations

import numpy as np

from .backward import baseline_gradients, gradients
from .case import Case
from .divergences import rounded_inputs
from .dtypes import round_to
from .inputs import CaseInputs, make_inputs
from .reference import attention, baseline


class ReferenceCache:
    """Reference results per (case, policy), so variants of one adapter share them.

    Bounded by entries and by bytes, so kernel-scale cases do not pile up in a worker."""

    def __init__(self, size: int = 64, max_bytes: int = 1 << 30) -> None:
        self._inputs: dict[str, CaseInputs] = {}
        self._refs: dict[tuple, dict] = {}  # (case id, policy, same_dtype | compute dtype)
        self._size = size
        self._max_bytes = max_bytes
        self._bytes = 0

    def _account(self, arrays) -> None:  # noqa: ANN001 - iterable of arrays
        self._bytes += sum(int(getattr(x, "nbytes", 0)) for x in arrays)

    def inputs(self, case: Case) -> CaseInputs:
        if case.id not in self._inputs:
            if len(self._inputs) >= self._size or self._bytes > self._max_bytes:
                self._inputs.clear()
                self._refs.clear()
                self._bytes = 0
            made = make_inputs(case)
            self._account([*made.arrays.values(), *made.weights.values()])
            self._inputs[case.id] = made
        return self._inputs[case.id]

    def reference(self, case: Case, policy: str, same_dtype: bool = False) -> dict:
        """Outputs (and, for gradient cases, gradients) under a fully-masked-row policy."""
        key = (case.id, policy, same_dtype)
        if key not in self._refs:
            fn = baseline if same_dtype else attention
            ref = fn(case, self.inputs(case), masked_rows=policy)
            if case.gradients:
                grad_fn = baseline_gradients if same_dtype else gradients
                ref.update(grad_fn(case, self.inputs(case), masked_rows=policy))
            self._account(ref.values())
            self._refs[key] = ref
        return self._refs[key]

    def at(self, case: Case, policy: str, dtype: str | None) -> dict:
        """The float64 reference (dtype None), or a straightforward implementation computing
        in `dtype` from inputs rounded to it: the same-dtype baseline when dtype is the case
        dtype, else the baseline of a declared compute dtype (conformance.divergences)."""
        if dtype is None:
            return self.reference(case, policy)
        if dtype == case.dtype:
            return self.reference(case, policy, same_dtype=True)
        key = (case.id, policy, dtype)
        if key not in self._refs:
            inputs = rounded_inputs(self.inputs(case), dtype)

            def rounding(x: np.ndarray) -> np.ndarray:
                return round_to(x, dtype)

            ref = attention(case, inputs, masked_rows=policy, rounding=rounding)
            if case.gradients:
                ref.update(gradients(case, inputs, masked_rows=policy, rounding=rounding))
            self._account(ref.values())
            self._refs[key] = ref
        return self._refs[key]
