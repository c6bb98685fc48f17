"""`reference`: the oracle itself, run through the same path as every adapter.

It must pass every case: a failure here is a bug in the plumbing (inputs, masks, comparison),
never in an implementation.
"""

from __future__ import annotations

from conformance.adapter_api.adapter import Adapter, Declaration
from conformance.cases.case import FEATURES
from conformance.oracle.backward import gradients
from conformance.oracle.dropout import numpy_dropout
from conformance.oracle.reference import attention


class ReferenceAdapter(Adapter):
    declaration = Declaration(
        name="reference",
        summary="the float64 NumPy oracle (conformance.reference) through the adapter path",
        framework="numpy",
        features=frozenset(FEATURES),
        worker="numpy",
    )

    def run(self, case, inputs, device):  # noqa: ANN001 - signature documented on Adapter
        if case.dropout is not None and case.dropout.training:
            return numpy_dropout(case, inputs)  # NumPy dropout on the weights, seeded per draw
        out = attention(case, inputs)
        if case.gradients:
            out.update(gradients(case, inputs))  # the analytic float64 backward pass
        return out


ADAPTERS = [ReferenceAdapter]
