"""Every Python block of docs/plugins.md parses, and every complete one runs.

A block defining adapters is written to a module, imported, and each adapter it defines runs a
few shipped cases (gradient and dropout cases too when it declares them): no `error`, no `fail`.
Sketches that cannot run by design (a fictional `mylib`, `...` bodies) are listed in SKETCHES
with the reason; any other block must run. The five-minute block also runs from the built
wheel in a fresh environment (tests/test_packaging.py).
"""

from __future__ import annotations

import ast
import importlib
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import shipped_cases  # noqa: E402
from docs_blocks import code_blocks  # noqa: E402

from conformance.adapter_api.adapter import Adapter  # noqa: E402
from conformance.verdicts.evaluate import ReferenceCache, evaluate  # noqa: E402

DOC = Path(__file__).resolve().parent.parent / "docs" / "plugins.md"
BLOCKS = code_blocks(DOC)

# A text found in the block -> why it is a sketch, not a program.
SKETCHES = {
    "def my_attention(q, k, v, mask, *, scale, device): ...": "the kernel_adapter signature",
    '@layer_adapter(name="mylib.mha", weights="linear", arrays="torch")': "a layer sketch (...)",
    "class MyAttention(Adapter):": "an Adapter class for a fictional mylib",
    "# mylib/conformance_adapters.py": "an entry-point module of a fictional mylib",
    'external_adapter("attention.adapter.yaml"': "needs an external program (test_external.py)",
}

CASES = [c for c in shipped_cases() if c.dtype in ("float64", "float32")]


def _sample(features: frozenset[str]) -> list:
    """A few cases the adapter declares it can run: basic ones, gradients, dropout, masks."""
    picked = []
    for family, extra in (
        ("basic", None), ("masks", "attn-bias"), ("gradients", "gradients"),
        ("dropout", "dropout-training"), ("fully_masked", None),
    ):  # fmt: skip
        if extra and extra not in features:
            continue
        fits = [
            c for c in CASES
            if c.family == family and c.features <= features | {c.dtype}
            and (extra is None or extra in c.features)
        ]  # fmt: skip
        picked += fits[:2]
    return picked


def _sketch(code: str) -> str | None:
    return next((why for text, why in SKETCHES.items() if text in code), None)


@pytest.mark.parametrize(("line", "code"), BLOCKS, ids=[f"plugins.md:{n}" for n, _ in BLOCKS])
def test_block_parses(line: int, code: str) -> None:
    ast.parse(code, filename=f"docs/plugins.md:{line}")


RUNNABLE = [(n, c) for n, c in BLOCKS if _sketch(c) is None]


def test_sketch_list_is_current() -> None:
    """Every sketch entry still names a block (a removed block must leave the list)."""
    for text in SKETCHES:
        assert any(text in code for _, code in BLOCKS), text


@pytest.mark.parametrize(("line", "code"), RUNNABLE, ids=[f"plugins.md:{n}" for n, _ in RUNNABLE])
def test_block_runs(line: int, code: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if "import torch" in code:
        pytest.importorskip("torch")
    name = f"docs_plugins_block_{line}"
    (tmp_path / f"{name}.py").write_text(code)
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module(name)
    adapters = [
        obj for obj in vars(module).values()
        if isinstance(obj, type) and issubclass(obj, Adapter) and obj.__module__ == name
    ]  # fmt: skip
    for cls in adapters:
        adapter = cls()
        adapter.setup()
        cache = ReferenceCache()
        cases = _sample(cls.declaration.features)
        assert cases, f"no shipped case fits {cls.declaration.name}"
        for case in cases:
            record = evaluate(adapter, case, "cpu", cache)
            assert record["verdict"] in ("pass", "diverges", "unsupported"), (
                f"docs/plugins.md:{line} {cls.declaration.name} on {case.id}: "
                f"{record['verdict']}: {record['message']}"
            )
