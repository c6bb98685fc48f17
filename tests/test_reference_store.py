"""The reference store: workers of a run, and later runs, share float64 references through a
folder. What matters is that a shared reference is exactly the fresh one, that anything which
changes a reference changes its key, and that a damaged entry is recomputed, never trusted."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from conformance.oracle import reference_cache
from conformance.oracle.reference_cache import ReferenceCache, ReferenceStore
from conformance.spec import load_spec, shipped_specs_dir

SPECS = shipped_specs_dir()


@pytest.fixture(scope="module")
def cases() -> list:
    return [c for c in load_spec(SPECS / "gradients.yaml") if c.dtype == "float32"][:2] + [
        c for c in load_spec(SPECS / "masks.yaml") if c.mode == "kernel"
    ][:2]


def _refuse(*args, **kwargs):  # noqa: ANN002, ANN003
    raise AssertionError("computed although the store holds this reference")


def test_a_second_worker_reads_what_the_first_computed(
    cases: list, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = ReferenceStore(tmp_path)
    first = ReferenceCache(store=store)
    fresh = {}
    for case in cases:
        policy = case.mask.fully_masked_rows
        fresh[case.id] = (
            first.reference(case, policy),
            first.reference(case, policy, same_dtype=True),
            first.at(case, policy, "float16"),
        )
    assert len(list(store.folder.glob("*.npz"))) == 3 * len(cases)
    assert not list(store.folder.glob("*.tmp"))

    for name in ("attention", "baseline", "gradients", "baseline_gradients"):
        monkeypatch.setattr(reference_cache, name, _refuse)
    second = ReferenceCache(store=store)
    for case in cases:
        policy = case.mask.fully_masked_rows
        shared = (
            second.reference(case, policy),
            second.reference(case, policy, same_dtype=True),
            second.at(case, policy, "float16"),
        )
        for ref, again in zip(fresh[case.id], shared, strict=True):
            assert ref.keys() == again.keys()
            for name in ref:
                np.testing.assert_array_equal(again[name], ref[name], strict=True)
    assert any("grad_q" in fresh[c.id][0] for c in cases), "a gradient case is covered"


def test_what_changes_a_reference_changes_its_key(cases: list) -> None:
    case = cases[2]
    key = ReferenceStore.key(case, "nan", None)
    assert key == ReferenceStore.key(case, "nan", None)
    others = {
        ReferenceStore.key(case, "zeros", None),
        ReferenceStore.key(case, "nan", case.dtype),
        ReferenceStore.key(case, "nan", "compute:float16"),
        ReferenceStore.key(dataclasses.replace(case, seed=case.seed + 1), "nan", None),
        ReferenceStore.key(dataclasses.replace(case, scale=0.5), "nan", None),
    }
    assert key not in others and len(others) == 5
    # A case carrying a stored data file is not stored: the file's content is not in its key.
    assert ReferenceStore.key(dataclasses.replace(case, inputs="x.npz#g"), "nan", None) is None


def test_a_damaged_entry_is_recomputed(cases: list, tmp_path: Path) -> None:
    case = cases[2]
    policy = case.mask.fully_masked_rows
    store = ReferenceStore(tmp_path)
    expected = ReferenceCache().reference(case, policy)
    ReferenceCache(store=store).reference(case, policy)
    entry = store.folder / f"{ReferenceStore.key(case, policy, None)}.npz"
    entry.write_bytes(entry.read_bytes()[:40])  # torn, as by a crash mid-write elsewhere
    again = ReferenceCache(store=store).reference(case, policy)
    np.testing.assert_array_equal(again["output"], expected["output"])


def test_the_store_is_the_runs_and_gone_after_it(tmp_path: Path) -> None:
    """`conformance run` shares references through <out>/.references: a poisoned entry left
    there (by a killed run of other code, say) is never read, and the folder is removed."""
    import json
    import subprocess
    import sys

    case = next(c for c in load_spec(SPECS / "basic.yaml") if c.mode == "kernel")
    out = tmp_path / "run"
    poisoned = out / ".references"
    poisoned.mkdir(parents=True)
    key = ReferenceStore.key(case, case.mask.fully_masked_rows, None)
    np.savez(poisoned / f"{key}.npz", output=np.zeros((1,)))
    run = subprocess.run(
        [sys.executable, "-m", "conformance.cli", "run", "--case", case.id, "--adapter",
         "numpy.einsum", "--out", str(out), "-q", "--jobs", "2"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    records = json.loads((out / "results.json").read_text())["results"]
    assert [r["verdict"] for r in records] == ["pass"]
    assert not poisoned.exists()


def test_workers_find_the_store_in_their_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(reference_cache.STORE_ENV, raising=False)
    assert reference_cache.run_store() is None
    monkeypatch.setenv(reference_cache.STORE_ENV, str(tmp_path / "refs"))
    assert reference_cache.run_store().folder == tmp_path / "refs"
