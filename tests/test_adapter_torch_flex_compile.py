"""torch.flex.compiled / torch.flex.eager: compile counts, not time (issue 19).

Cases that share a structure (shape, dtype, score_mod/mask_mod code) and differ only in the
mask's content and the data reuse one compiled graph: the mask and bias are captured tensors,
so only their shapes are guarded. The compiled path is proven (dynamo graph, no break) and
what each call compiled reaches conformance.profile. One small graph: a few seconds cold.
"""

from __future__ import annotations

import os

import pytest

pytest.importorskip("torch")

from conformance.running import profile  # noqa: E402
from conformance.spec import load_spec  # noqa: E402
from conformance.verdicts.evaluate import ReferenceCache, evaluate  # noqa: E402

SPEC = """
version: 1
family: flexcount
cases:
  - name: padded-a
    mode: kernel
    shape: {batch: 2, query_len: 6, kv_len: 6, num_heads: 2, key_dim: 4}
    mask: {key_padding: [6, 4]}
    seed: 1
  - name: padded-b
    mode: kernel
    shape: {batch: 2, query_len: 6, kv_len: 6, num_heads: 2, key_dim: 4}
    mask: {key_padding: [3, 5]}
    seed: 2
  - name: random
    mode: kernel
    shape: {batch: 2, query_len: 6, kv_len: 6, num_heads: 2, key_dim: 4}
    mask: {random: {density: 0.3}}
    seed: 3
"""


@pytest.fixture(scope="module")
def flex_cases(tmp_path_factory: pytest.TempPathFactory) -> list:
    path = tmp_path_factory.mktemp("flexspec") / "flexcount.yaml"
    path.write_text(SPEC)
    cases = [c for c in load_spec(path) if c.dtype == "float32"]
    assert len(cases) == 3
    return cases


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    old = os.environ.get("CONFORMANCE_CACHE_DIR")
    os.environ["CONFORMANCE_CACHE_DIR"] = str(tmp_path_factory.mktemp("flex-cache"))
    try:
        from conformance.adapters.torch_flex import TorchFlexCompiled

        adapter = TorchFlexCompiled()
        adapter.setup()
        yield adapter
    finally:
        if old is None:
            os.environ.pop("CONFORMANCE_CACHE_DIR")
        else:
            os.environ["CONFORMANCE_CACHE_DIR"] = old


def test_one_compilation_serves_cases_sharing_a_structure(compiled, flex_cases) -> None:  # noqa: ANN001
    from conformance.adapters.torch_compile import compile_counters

    cache = ReferenceCache()
    profile.take()
    start = compile_counters()["unique_graphs"]
    for n, case in enumerate(flex_cases):
        graphs = compile_counters()["unique_graphs"]
        record = evaluate(compiled, case, "cpu", cache)
        assert record["verdict"] == "pass", record["message"]
        programs = profile.take().get("compile", [0.0, 0])[1]
        # --profile sees exactly the graphs dynamo compiled (0 when this process already had
        # the structure); the first case compiles at most one, the others only change tensors.
        assert programs == compile_counters()["unique_graphs"] - graphs
        assert programs <= (1 if n == 0 else 0), (case.id, programs)
    assert compile_counters()["unique_graphs"] - start <= 1
    assert compile_counters()["graph_breaks"] == 0


def test_eager_flex_reports_its_dynamo_graphs(flex_cases) -> None:  # noqa: ANN001
    # Eager flex_attention traces score_mod/mask_mod with dynamo (backend "eager"): the cost
    # --profile shows for it; cases sharing a structure trace once.
    from conformance.adapters.torch_flex import TorchFlexAdapter

    adapter = TorchFlexAdapter()
    adapter.setup()
    cache = ReferenceCache()
    profile.take()
    from conformance.adapters.torch_compile import compile_counters

    counts = []
    for case in flex_cases:
        graphs = compile_counters()["unique_graphs"]
        record = evaluate(adapter, case, "cpu", cache)
        assert record["verdict"] == "pass", record["message"]
        counts.append(profile.take().get("compile", [0.0, 0])[1])
        assert counts[-1] == compile_counters()["unique_graphs"] - graphs
    assert counts[0] <= 1 and counts[1:] == [0, 0], counts
