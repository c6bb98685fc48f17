"""torch.compile.mha / torch.compile.mha.weights: real verdicts on compiled layer cases, the
compiled path proven, and the number of compilations (counts, never time).

Each new structure costs one inductor compilation (seconds), so the module compiles three
graphs in all: one per adapter for a float32 causal structure, reused across batch and
sequence lengths (dynamic=True), and one more for a new dtype.
"""

from __future__ import annotations

import pytest

pytest.importorskip("torch")

from conformance.cases.case import Case, Mask, Shape  # noqa: E402
from conformance.verdicts.evaluate import ReferenceCache, evaluate  # noqa: E402

CACHE = ReferenceCache()


def make_case(B: int, T: int, dtype: str = "float32", compare: tuple = ("output",)) -> Case:  # noqa: N803
    shape = Shape(B, T, T, 2, 2, 4, 4, 8, 8, 8, 8)
    return Case(
        id=f"compilemha/causal-B{B}-T{T}-layer[{dtype}]",
        family="compilemha",
        name="causal",
        mode="layer",
        shape=shape,
        mask=Mask(causal="top-left"),
        dtype=dtype,
        compare=compare,
        params=(("dtype", dtype),),
    )


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    import os

    os.environ.setdefault("CONFORMANCE_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
    from conformance.adapters.torch_compile_mha import (
        TorchCompileMhaAdapter,
        TorchCompileMhaWeightsAdapter,
    )

    found = {"mha": TorchCompileMhaAdapter(), "weights": TorchCompileMhaWeightsAdapter()}
    for adapter in found.values():
        adapter.setup()
    return found


def graphs() -> int:
    """Compilations so far: dynamo's unique graphs (one per compiled structure)."""
    from conformance.adapters.torch_compile import compile_counters

    return compile_counters()["unique_graphs"]


def test_one_compile_per_structure(adapters) -> None:
    start = graphs()
    for B, T in ((2, 5), (3, 7), (2, 9)):  # new batch and sequence lengths: the same graph
        record = evaluate(adapters["mha"], make_case(B, T), "cpu", CACHE)
        assert record["verdict"] == "pass", record.get("message")
    assert graphs() - start == 1
    record = evaluate(adapters["mha"], make_case(2, 5, "float64"), "cpu", CACHE)
    assert record["verdict"] == "pass", record.get("message")
    assert graphs() - start == 2  # a new dtype is a new structure


def test_weights_variant_compiles_its_own_graph(adapters) -> None:
    start = graphs()
    for B, T in ((2, 5), (3, 6)):
        case = make_case(B, T, compare=("output", "weights"))
        record = evaluate(adapters["weights"], case, "cpu", CACHE)
        assert record["verdict"] == "pass", record.get("message")
        assert "weights" in record["compared"]
    assert graphs() - start == 1


def test_compiled_graph_is_the_slow_path(adapters) -> None:
    from conformance.adapters.torch_compile import compile_counters
    from conformance.adapters.torch_compile_mha import _recorded, check_graph

    evaluate(adapters["mha"], make_case(2, 5), "cpu", CACHE)
    assert "multi_head_attention_forward" in _recorded[-1]
    assert "_native_multi_head_attention" not in _recorded[-1]
    assert compile_counters()["graph_breaks"] == 0
    with pytest.raises(RuntimeError, match="eager fast path"):
        check_graph(frozenset({"_native_multi_head_attention"}))
    with pytest.raises(RuntimeError, match="no F.multi_head_attention_forward"):
        check_graph(frozenset({"linear"}))
