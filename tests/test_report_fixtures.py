"""Results files for the report tests, built from real `evaluate()` runs (no hand-made records).

Two adapters run over a few cases: the `reference` adapter (must pass everything) and
`WrongAttention`, a deliberately wrong NumPy implementation whose mistakes cover every verdict:

- bottom-right causal masks computed top-left          -> fail (a real numeric difference)
- fully masked rows give zeros, declared as divergence  -> diverges (verified by the harness)
- float64 computed in float32, declared as divergence   -> diverges
- a sliding window raises                               -> error
- layer mode not declared                               -> unsupported

The other report tests import `build_results` from here; the tests below check the fixture
itself produces every verdict, so a change in the core cannot silently empty the report tests.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import platform
from pathlib import Path

import numpy as np

from conformance import __version__
from conformance.adapter_api.adapter import Adapter, Declaration, Divergence
from conformance.cases.case import FEATURES, Mask
from conformance.oracle.reference import attention
from conformance.spec import load_spec
from conformance.verdicts.evaluate import ReferenceCache, evaluate

MASKS_SPEC = """\
version: 1
family: masks
cases:
  - name: causal-${align}
    mode: kernel
    shape: {batch: 2, query_len: $T, kv_len: 7, num_heads: 2, key_dim: 8}
    mask: {causal: $align}
    compare: [output, weights]
    matrix:
      align: [top-left, bottom-right]
      T: [5, 7]
      dtype: [float32, float64]
  - name: padded-rows
    mode: kernel
    shape: {batch: 2, query_len: 4, kv_len: 6, num_heads: 2, key_dim: 4}
    mask: {key_padding: [0, 3]}  # batch 0: every row fully masked
    compare: [output, weights]
  - name: window
    mode: kernel
    shape: {batch: 1, query_len: 6, num_heads: 2, key_dim: 4}
    mask: {window: [2, 0]}
"""

LAYER_SPEC = """\
version: 1
family: layer
cases:
  - name: basic
    shape: {query_len: 4, num_heads: 2, key_dim: 4}
    compare: [output, weights]
  - name: cross
    cross: true
    shape: {query_len: 3, kv_len: 5, num_heads: 2, key_dim: 4}
"""


class WrongAttention(Adapter):
    """A deliberately wrong kernel-only implementation (see the module docstring)."""

    declaration = Declaration(
        name="test.wrong",
        summary="deliberately wrong NumPy attention for the report tests",
        framework="numpy",
        features=frozenset(FEATURES) - {"layer"},
        worker="numpy",
        divergences=(
            Divergence(
                id="masked-rows-zeros",
                reason="fully masked rows yield zeros instead of NaN",
                link="https://example.org/issues/1",
                when=frozenset({"fully-masked-rows"}),
                masked_rows="zeros",
            ),
            Divergence(
                id="float32-compute",
                reason="float64 inputs are computed in float32",
                when=frozenset({"float64"}),
                compute_dtype="float32",
            ),
        ),
        notes="used only by tests/test_report*.py",
    )

    def run(self, case, inputs, device):  # noqa: ANN001 - signature documented on Adapter
        if case.mask.window is not None:
            raise RuntimeError("sliding windows are not implemented")
        if case.mask.causal == "bottom-right":  # the bug: always aligns top-left
            case = dataclasses.replace(case, mask=dataclasses.replace(case.mask, causal="top-left"))
        out = attention(case, inputs, masked_rows="zeros")
        if case.dtype == "float64":
            out = {k: v.astype(np.float32).astype(np.float64) for k, v in out.items()}
        return out


def _adapter_entry(adapter: Adapter) -> dict:
    decl = adapter.declaration
    return {
        "summary": decl.summary,
        "framework": decl.framework,
        "versions": {"numpy": np.__version__},
        "devices": adapter.devices(),
        "features": sorted(decl.features),
        "dtypes": sorted(decl.dtypes),
        "divergences": [
            {"id": d.id, "reason": d.reason, "link": d.link, "when": sorted(d.when)}
            for d in decl.divergences
        ],
        "tolerances": [],
        "notes": decl.notes,
    }


def build_results(tmp: Path, machine: str = "test-machine", wrong: type = WrongAttention) -> dict:
    """A results document (the dict `conformance run` writes) from real evaluate() runs."""
    from conformance.adapters.reference import ReferenceAdapter

    (tmp / "masks.yaml").write_text(MASKS_SPEC)
    (tmp / "layer.yaml").write_text(LAYER_SPEC)
    cases = load_spec(tmp / "masks.yaml") + load_spec(tmp / "layer.yaml")
    adapters = [ReferenceAdapter(), wrong()]
    cache = ReferenceCache()
    records = [evaluate(a, case, "cpu", cache) for a in adapters for case in cases]
    return {
        "schema_version": 1,
        "tool_version": __version__,
        "spec_version": 1,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": "conformance run masks.yaml layer.yaml",
        "environment": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpu": platform.processor() or platform.machine(),
            "machine_id": machine,
            "frameworks": {"numpy": np.__version__},
            "devices": ["cpu"],
        },
        "adapters": {a.declaration.name: _adapter_entry(a) for a in adapters},
        "cases": {case.id: case.to_dict() for case in cases},
        "results": records,
    }


def verdicts(doc: dict, adapter: str) -> dict[str, str]:
    return {r["case"]: r["verdict"] for r in doc["results"] if r["adapter"] == adapter}


def test_reference_passes_everything(tmp_path: Path) -> None:
    doc = build_results(tmp_path)
    assert set(verdicts(doc, "reference").values()) == {"pass"}


def test_wrong_adapter_covers_every_verdict(tmp_path: Path) -> None:
    got = verdicts(build_results(tmp_path), "test.wrong")
    assert got["masks/causal-bottom-right[T=5,float32]"] == "fail"
    assert got["masks/causal-bottom-right[T=7,float32]"] == "pass"  # T == S: alignments agree
    assert got["masks/causal-top-left[T=5,float64]"] == "diverges"
    assert got["masks/padded-rows"] == "diverges"
    assert got["masks/window"] == "error"
    assert got["layer/basic"] == "unsupported"


def test_fixture_is_json_ready(tmp_path: Path) -> None:
    import json

    doc = build_results(tmp_path)
    assert json.loads(json.dumps(doc, allow_nan=False))["schema_version"] == 1
    assert Mask()  # the case model is importable with defaults
