"""hf.llama.attention.dynamic-cache / static-cache: shipped decode cases pass through
transformers' own cache classes, and the path checks refuse a cache that did not fill.

Skipped when transformers is not installed (it is an optional extra).
"""

from __future__ import annotations

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from conformance.cases.case import Case  # noqa: E402
from conformance.spec import load_spec, shipped_specs_dir  # noqa: E402
from conformance.verdicts.evaluate import ReferenceCache, evaluate  # noqa: E402

CACHE = ReferenceCache()


@pytest.fixture(scope="module")
def decode_cases() -> dict[str, Case]:
    return {c.id: c for c in load_spec(shipped_specs_dir() / "decode.yaml")}


@pytest.fixture(scope="module")
def adapters():
    from conformance.adapters.hf_cache import HfLlamaDynamicCache, HfLlamaStaticCache

    found = {"dynamic": HfLlamaDynamicCache(), "static": HfLlamaStaticCache()}
    for adapter in found.values():
        adapter.setup()
    return found


@pytest.mark.parametrize("which", ["dynamic", "static"])
@pytest.mark.parametrize(
    "case_id",
    [
        "decode/prefix0-steps6-layer[float32]",  # every token a step, from an empty cache
        "decode/grouped-query-layer[float64]",  # H = 8, G = 2: the cache holds G heads
        "decode/long-layer[float32]",  # 4 prefix tokens, 12 steps
    ],
)
def test_shipped_decode_cases_pass(adapters, decode_cases, which: str, case_id: str) -> None:
    record = evaluate(adapters[which], decode_cases[case_id], "cpu", CACHE)
    assert record["verdict"] == "pass", record.get("message")


def test_value_dim_and_kernel_cases_are_unsupported(adapters, decode_cases) -> None:
    adapter = adapters["dynamic"]
    assert "value-dim" in adapter.declaration.unsupported_reason(
        decode_cases["decode/value-dim-layer[float32]"]
    )
    assert "kernel" in adapter.declaration.unsupported_reason(
        decode_cases["decode/prefix3-steps3-kernel[float32]"]
    )


@pytest.mark.parametrize("which", ["dynamic", "static"])
def test_cache_checks_refuse_a_short_cache(adapters, which: str) -> None:
    """The path proof: a cache holding fewer tokens than the case is an error."""
    import torch
    from transformers import LlamaConfig

    config = LlamaConfig(
        hidden_size=8, num_attention_heads=2, num_key_value_heads=2, head_dim=4,
        num_hidden_layers=1,
    )  # fmt: skip
    adapter = adapters[which]
    cache = adapter.make_cache(config, 5)
    k = torch.zeros(1, 2, 3, 4)
    cache.update(k, k, 0)
    with pytest.raises(RuntimeError, match="holds 3 tokens"):
        adapter.check_cache(cache, 5)
    cache.update(k[:, :, :2], k[:, :, :2], 0)
    adapter.check_cache(cache, 5)  # full now: no error
