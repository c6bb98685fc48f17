"""jax.dpa.default (implementation=None): JAX's own selection computes what jax.dpa.xla does."""

from __future__ import annotations

import pytest

pytest.importorskip("jax")

from conformance.cases.case import Case, Mask, Shape  # noqa: E402
from conformance.verdicts.evaluate import ReferenceCache, evaluate  # noqa: E402


def test_default_implementation_passes_on_cpu() -> None:
    from conformance.adapters.jax_dpa import JaxDpaDefault

    adapter = JaxDpaDefault()
    adapter.setup()
    assert adapter.devices() == ["cpu"]
    assert adapter.implementation is None
    case = Case(
        id="jaxdefault/gqa-causal-kernel[float32]",
        family="jaxdefault",
        name="gqa-causal",
        mode="kernel",
        shape=Shape(2, 5, 5, 4, 2, 8, 8, 8, 8, 8, 8),
        mask=Mask(causal="top-left", key_padding=(5, 3)),
        dtype="float32",
        compare=("output",),
        params=(("dtype", "float32"),),
    )
    record = evaluate(adapter, case, "cpu", ReferenceCache())
    assert record["verdict"] == "pass", record.get("message")
