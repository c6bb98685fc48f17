"""torch.compile.sdpa: real verdicts on a few compiled cases and the compiled path proven.

One shape signature compiles once (dynamic=True), so the module costs a few seconds.
"""

from __future__ import annotations

import pytest

pytest.importorskip("torch")

from conformance.cases.case import Case, Mask, Shape  # noqa: E402
from conformance.verdicts.evaluate import ReferenceCache, evaluate  # noqa: E402

CACHE = ReferenceCache()


def make_case(name: str, T: int, mask: Mask) -> Case:
    shape = Shape(2, T, T, 4, 2, 8, 8, 8, 8, 8, 8)
    return Case(
        id=f"compiletest/{name}-kernel[float32]",
        family="compiletest",
        name=name,
        mode="kernel",
        shape=shape,
        mask=mask,
        dtype="float32",
        compare=("output",),
        params=(("dtype", "float32"),),
    )


@pytest.fixture(scope="module")
def adapter(tmp_path_factory):
    import os

    os.environ.setdefault("CONFORMANCE_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
    from conformance.adapters.torch_compile import TorchCompileSdpaAdapter

    found = TorchCompileSdpaAdapter()
    found.setup()
    return found


def test_compiled_sdpa_passes_and_compiles(adapter) -> None:
    from conformance.adapters.torch_compile import compile_counters

    from conformance.running import profile

    profile.take()
    start = compile_counters()["unique_graphs"]
    for T in (5, 7):  # a second shape reuses the dynamic graph
        record = evaluate(adapter, make_case("causal", T, Mask(causal="top-left")), "cpu", CACHE)
        assert record["verdict"] == "pass", record.get("message")
        # issue 19: counts, not time: the second shape compiles nothing, and --profile sees it
        assert profile.take().get("compile", [0.0, 0])[1] <= (1 if T == 5 else 0)
    assert compile_counters()["unique_graphs"] - start <= 1
    assert compile_counters()["unique_graphs"] >= 1
    assert compile_counters()["graph_breaks"] == 0


def test_graph_break_is_an_error() -> None:
    from conformance.adapters.torch_compile import check_compiled

    with pytest.raises(RuntimeError, match="broke the graph"):
        check_compiled({"unique_graphs": 0, "graph_breaks": -1})
