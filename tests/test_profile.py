"""conformance.running.profile: the per-case phase tally, its per-adapter summary, `run --profile`.

Behaviour only (what is counted where, how the table is built); never how long anything took.
"""

from __future__ import annotations

from pathlib import Path

from conftest import run_cli

from conformance.running import profile
from conformance.running.results import read_results


def test_tally_counts_phases_and_resets_on_take() -> None:
    profile.take()
    profile.add("compile", 2.0)
    profile.add("compile", 1.0, count=2)
    profile.add("cache_hits", 0.0)
    with profile.phase("reference"):
        pass
    got = profile.take()
    assert got["compile"] == [3.0, 3]
    assert got["cache_hits"] == [0.0, 1]
    assert got["reference"][1] == 1 and got["reference"][0] >= 0.0
    assert profile.take() == {}


def test_phase_counts_a_block_that_raises() -> None:
    profile.take()
    try:
        with profile.phase("compare"):
            raise ValueError("boom")
    except ValueError:
        pass
    assert profile.take()["compare"][1] == 1


def _record(adapter: str, total: float, duration: float, phases: dict | None = None) -> dict:
    record = {"adapter": adapter, "case": f"c/{total}", "family": "f", "verdict": "pass"}
    record.update(total_s=total, duration_s=duration)
    if phases:
        record["phases"] = phases
    return record


def test_summary_splits_run_into_compile_and_the_rest() -> None:
    records = [
        _record("jax", 3.0, 2.5, {"compile": [2.0, 1], "cache_hits": [0.0, 1]}),
        _record("jax", 0.5, 0.4, {"reference": [0.05, 1], "compare": [0.02, 1]}),
        {"adapter": "jax", "case": "c/u", "verdict": "unsupported", "duration_s": 0.0},
        _record("np", 0.1, 0.05),
    ]
    rows = {r.adapter: r for r in profile.summarize(records, {"jax": {"setup_s": 1.5}})}
    jax = rows["jax"]
    assert jax.executed == 2  # the unsupported record is not a case the adapter ran
    assert jax.seconds["import"] == 1.5
    assert jax.seconds["first"] == 3.0
    assert jax.seconds["compile"] == 2.0 and jax.seconds["compiles"] == 1
    assert jax.seconds["cache_hits"] == 1
    assert abs(jax.seconds["run"] - 0.9) < 1e-12  # (2.5 - 2.0) + 0.4
    assert abs(jax.seconds["reference"] - 0.05) < 1e-12
    assert rows["np"].seconds["import"] == 0.0  # no adapters block entry: no setup time known
    assert [r.adapter for r in profile.summarize(records, {})] == ["jax", "np"]


def test_table_keeps_an_adapter_name_inside_its_cell() -> None:
    records = [_record("evil|name\x1b[31m", 1.0, 0.5)]
    text = profile.table(profile.summarize(records, {}))
    row = text.splitlines()[2]
    assert "\x1b" not in text
    assert row.startswith("| evil\\|name?[31m | 1 | ")
    assert row.count(" | ") == 10  # 11 cells: the escaped pipe does not add a column


def test_programs_by_family_counts_compilations() -> None:
    records = [
        _record("jax", 1.0, 1.0, {"compile": [0.9, 2]}),
        dict(_record("jax", 0.2, 0.1, {"compile": [0.1, 1]}), family="g", case="g/1"),
        dict(_record("jax", 0.2, 0.1), family="g", case="g/2"),
    ]
    lines = profile.programs_by_family(records, ["jax"]).splitlines()
    assert lines[2:] == ["| f | 1 | 2 |", "| g | 2 | 1 |", "| **all** | 3 | 3 |"]


def test_run_profile_prints_the_table_and_records_phases(tiny_spec: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = run_cli("run", str(tiny_spec), "--adapter", "reference", "--adapter", "numpy.einsum",
                   "--out", str(out), "--no-report", "--profile", "-q")  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "| adapter | cases | import s | first case s | compile/export s" in proc.stdout
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| reference |")]
    assert len(rows) == 1 and rows[0].startswith("| reference | 5 | ")
    for record in read_results(out / "results.json")["results"]:
        if record["verdict"] in ("pass", "fail", "diverges"):
            phases = record["phases"]
            # every compared case gets its inputs, its reference and one comparison
            assert phases["inputs"][1] == 1 and phases["compare"][1] == 1
            assert phases["reference"][1] >= 1
            assert "compile" not in phases  # neither adapter compiles anything


def test_default_jobs_follows_the_cpus_this_process_may_use() -> None:
    """A process pinned to one CPU (taskset, a container's cpuset) gets one worker by default,
    whatever os.cpu_count() says about the machine."""
    import os
    import subprocess
    import sys

    import pytest

    if not hasattr(os, "sched_setaffinity"):
        pytest.skip("no CPU affinity on this platform")
    code = (
        "import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); "
        "from conformance.runner import default_jobs; print(default_jobs())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "1"


def test_compile_bound_workers_start_first() -> None:
    """The planner starts workers whose adapters compile (minutes on a fresh machine) before
    eager ones with more cases; among equals, more supported (case, adapter) pairs first.
    Declarations here are test doubles of the harness's own input, nothing is run."""
    import dataclasses

    from conformance.adapter_api.adapter import Declaration
    from conformance.adapter_api.registry import AdapterEntry
    from conformance.running.runner import Runner, RunOptions
    from conformance.spec import load_spec

    spec = Path(__file__).parent / "plugin_cases.yaml"
    cases = load_spec(spec)
    base = Declaration(name="x", summary="x", framework="numpy", features=frozenset())

    def entry(name: str, worker: str, compiles: bool, layer: bool) -> AdapterEntry:
        modes = frozenset({"layer", "kernel"} if layer else {"kernel"})
        decl = dataclasses.replace(base, name=name, worker=worker, compiles=compiles)
        tags = {t for case in cases for t in case.features} - {"layer", "kernel"}
        decl = dataclasses.replace(decl, features=modes | tags)
        return AdapterEntry(name=name, target="m:C", declaration=decl, source="builtin")

    entries = [
        entry("eager.few", "small", False, layer=False),
        entry("eager.many", "eager", False, layer=True),
        entry("jit.few", "jit", True, layer=False),
    ]
    runner = Runner(cases, entries, RunOptions(jobs=1), lambda record: None)
    assert any(c.mode == "layer" for c in cases)  # so "eager" has more pairs than "small"
    assert [unit.spec.key for unit in runner._plan()] == ["jit", "eager", "small"]
