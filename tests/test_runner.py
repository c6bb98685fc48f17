"""The runner end to end, through the CLI as users run it, with real worker processes.

Broken adapters (tests/broken_adapters.py) prove that a crash, hang, exception, wrong shape
or NaN output costs only its own cases, and that interrupted runs lose nothing.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import ROOT, TESTS, run_cli

from conformance.running.results import read_results, read_stream

BROKEN = "broken_adapters"


def verdicts(out: Path) -> dict[tuple[str, str], dict]:
    data = read_results(out / "results.json")
    return {(r["case"], r["adapter"]): r for r in data["results"]}


def test_reference_and_numpy_pass_and_results_are_complete(tiny_spec: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = run_cli("run", str(tiny_spec), "--adapter", "reference", "--adapter", "numpy.einsum",
                   "--out", str(out), "--no-report")  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = read_results(out / "results.json")
    assert data["schema_version"] == 1
    assert {"python", "platform", "cpu", "frameworks", "devices"} <= set(data["environment"])
    got = verdicts(out)
    assert len(got) == 5 * 2  # five cases, two adapters, one device
    assert all(r["verdict"] == "pass" for r in got.values())
    for record in got.values():
        for key in ("case", "adapter", "device", "dtype", "verdict", "max_abs_error",
                    "max_rel_error", "atol", "rtol", "message", "duration_s"):  # fmt: skip
            assert key in record
    # results.jsonl streamed the same records
    assert len(read_stream(out / "results.jsonl")) == 10


def test_each_misbehaviour_costs_only_its_own_cases(tiny_spec: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    names = ["raises", "wrong-shape", "wrong-dtype", "all-nan", "segfault", "hang", "oom",
             "setup-fails", "correct"]  # fmt: skip
    args = ["run", str(tiny_spec), "--out", str(out), "--no-report", "--timeout", "3", "-j", "2"]
    for name in names:
        args += ["--adapter", f"{BROKEN}:{_class_of(name)}"]
    proc = run_cli(*args)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    got = verdicts(out)
    cases = [
        "tiny/self[float32]",
        "tiny/self[float64]",
        "tiny/kernel",
        "tiny/hang",
        "tiny/after-hang",
    ]

    def verdict(case: str, name: str) -> str:
        return got[(case, f"test.{name}")]["verdict"]

    assert all(verdict(c, "correct") == "pass" for c in cases)
    assert all(verdict(c, "raises") == "error" for c in cases)
    assert "kernel exploded" in got[("tiny/kernel", "test.raises")]["message"]
    assert all(verdict(c, "wrong-shape") == "error" for c in cases)
    assert "shape" in got[("tiny/kernel", "test.wrong-shape")]["message"]
    assert all(verdict(c, "wrong-dtype") == "error" for c in cases)
    assert all(verdict(c, "all-nan") == "fail" for c in cases)
    assert "NaN where the reference is finite" in got[("tiny/kernel", "test.all-nan")]["message"]
    assert all(verdict(c, "oom") == "error" for c in cases)
    assert "MemoryError" in got[("tiny/kernel", "test.oom")]["message"]
    assert all(verdict(c, "setup-fails") == "error" for c in cases)
    # The segfault kills the worker on one case only; the rest run in a new worker.
    assert verdict("tiny/kernel", "segfault") == "error"
    assert "SIGSEGV" in got[("tiny/kernel", "test.segfault")]["message"]
    assert [verdict(c, "segfault") for c in cases].count("pass") == 4
    # The hang times out; the case after it still runs.
    assert verdict("tiny/hang", "hang") == "error"
    assert "timed out" in got[("tiny/hang", "test.hang")]["message"]
    assert verdict("tiny/after-hang", "hang") == "pass"


def _class_of(name: str) -> str:
    return {
        "raises": "Raises", "wrong-shape": "WrongShape", "wrong-dtype": "WrongDtype",
        "all-nan": "AllNan", "segfault": "Segfaults", "hang": "Hangs", "oom": "ExhaustsMemory",
        "setup-fails": "FailsSetup", "correct": "Correct", "slow": "Slow",
        "inverted-mask": "InvertedMask",
    }[name]  # fmt: skip


def test_inverted_mask_is_caught(tiny_spec: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = run_cli("run", str(tiny_spec), "--adapter", f"{BROKEN}:InvertedMask", "--out",
                   str(out), "--no-report")  # fmt: skip
    assert proc.returncode == 1
    got = verdicts(out)
    assert got[("tiny/kernel", "test.inverted-mask")]["verdict"] == "fail"
    assert got[("tiny/hang", "test.inverted-mask")]["verdict"] == "pass"  # no mask: no bug


def test_interrupted_run_keeps_results_and_resumes_without_duplicates(
    tiny_spec: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    spec = tmp_path / "many.yaml"
    spec.write_text(
        "version: 1\nfamily: many\ncases:\n  - name: c\n    mode: kernel\n"
        "    shape: {query_len: 2, num_heads: 1, key_dim: 2}\n    seed: $i\n"
        "    matrix: {i: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19]}\n"
    )
    gate = tmp_path / "gate"
    proc = _gated_run(spec, out, gate)
    _wait_for_gate(proc, out, gate, done=3)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "--resume" in err and "Traceback" not in err
    partial = read_results(out / "results.json")["results"]
    assert 3 <= len(partial) < 20

    (gate / "open").touch()  # (the resumed run has no gate anyway: it runs without the env)
    resumed = run_cli("run", "--resume", str(out), "--no-report")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    final = read_results(out / "results.json")["results"]
    keys = [(r["case"], r["adapter"], r["device"]) for r in final]
    assert len(keys) == len(set(keys)) == 20
    assert all(r["verdict"] == "pass" for r in final)


def test_sigterm_is_handled_like_ctrl_c(tmp_path: Path) -> None:
    out = tmp_path / "out"
    spec = tmp_path / "s.yaml"
    spec.write_text(
        "version: 1\ncases:\n  - name: c\n    mode: kernel\n"
        "    shape: {query_len: 2, num_heads: 1, key_dim: 2}\n    seed: $i\n"
        "    matrix: {i: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]}\n"
    )
    gate = tmp_path / "gate"
    proc = _gated_run(spec, out, gate)
    _wait_for_gate(proc, out, gate, done=3)
    proc.terminate()
    proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert len(read_results(out / "results.json")["results"]) >= 3


def _gate_env(gate: Path) -> dict:
    return dict(os.environ, PYTHONPATH=str(TESTS), CONFORMANCE_TEST_GATE=str(gate))


def _gated_run(spec: Path, out: Path, gate: Path) -> subprocess.Popen:
    """`conformance run` with the Gated adapter: it stops at seed 3 until the gate opens."""
    gate.mkdir()
    return subprocess.Popen(
        [sys.executable, "-m", "conformance.cli", "run", str(spec), "--adapter",
         f"{BROKEN}:Gated", "--out", str(out), "--no-report", "-q", "--jobs", "1"],
        cwd=ROOT, env=_gate_env(gate), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def _wait_for_gate(proc: subprocess.Popen, out: Path, gate: Path, done: int) -> None:
    """Wait for the events, not for time: the adapter is at the gate and `done` results are on
    disk (the run cannot finish meanwhile: the gate is closed)."""
    deadline = time.monotonic() + 300
    while not ((gate / "reached").exists() and len(read_stream(out / "results.jsonl")) >= done):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the run never reached the gate"
        time.sleep(0.05)


def test_two_runs_give_identical_verdicts_and_errors(tiny_spec: Path, tmp_path: Path) -> None:
    runs = []
    for i in range(2):
        out = tmp_path / f"out{i}"
        run_cli(
            "run", str(tiny_spec), "--adapter", "numpy.einsum", "--out", str(out), "--no-report"
        )
        runs.append({k: (r["verdict"], r["max_abs_error"]) for k, r in verdicts(out).items()})
    assert runs[0] == runs[1]


def test_sharding_partitions_the_cases(tiny_spec: Path, tmp_path: Path) -> None:
    seen = []
    for i in (1, 2, 3):
        out = tmp_path / f"shard{i}"
        proc = run_cli("run", str(tiny_spec), "--adapter", "reference", "--shard", f"{i}/3",
                       "--out", str(out), "--no-report")  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        seen.extend(r["case"] for r in read_results(out / "results.json")["results"])
    assert sorted(seen) == sorted(set(seen)) and len(seen) == 5


def test_bad_usage_exits_2_with_one_message(tiny_spec: Path, tmp_path: Path) -> None:
    proc = run_cli("run", str(tiny_spec), "--adapter", "referense", "--out", str(tmp_path))
    assert proc.returncode == 2
    assert "did you mean 'reference'" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = run_cli("run", str(tmp_path / "nope.yaml"))
    assert proc.returncode == 2 and "no such file" in proc.stderr
    proc = run_cli("run", str(tiny_spec), "--shard", "4/3")
    assert proc.returncode == 2 and "--shard" in proc.stderr
    proc = run_cli("run", str(tiny_spec), "--case", "tiny/nothing")
    assert proc.returncode == 2 and "no case with id" in proc.stderr


def test_results_json_is_never_half_written(tmp_path: Path) -> None:
    from conformance.errors import ResultsFileError
    from conformance.running.results import write_json_atomic

    path = tmp_path / "results.json"
    write_json_atomic(path, {"schema_version": 1, "results": []})
    assert json.loads(path.read_text()) == {"schema_version": 1, "results": []}
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    path.write_text('{"schema_version": 1, "results": [')  # a torn file
    try:
        read_results(path)
    except ResultsFileError as error:
        assert "corrupted or truncated" in str(error)
    else:
        raise AssertionError("a torn results file must be refused")
    path.write_text('{"hello": "world"}')
    try:
        read_results(path)
    except ResultsFileError as error:
        assert "not a conformance results file" in str(error)
    else:
        raise AssertionError("a foreign file must be refused")


def test_list_and_show(tiny_spec: Path) -> None:
    proc = run_cli("list", "cases", str(tiny_spec))
    assert proc.returncode == 0 and "tiny/self[float32]" in proc.stdout
    proc = run_cli("list", "adapters")
    assert proc.returncode == 0 and "reference" in proc.stdout and "numpy.einsum" in proc.stdout
    proc = run_cli("show", "tiny/self[float64]", str(tiny_spec))
    assert proc.returncode == 0
    assert "t=0   #..." in proc.stdout and "causal" in proc.stdout


def test_pytest_plugin_runs_specs_as_items(tiny_spec: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(TESTS))
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", str(tiny_spec), "-q",
         "--conformance-adapter", "numpy.einsum", "--conformance-adapter",
         f"{BROKEN}:InvertedMask", "-k", "kernel", "-rA"],
        capture_output=True, text=True, env=env, cwd=tiny_spec.parent, timeout=300,
    )  # fmt: skip
    assert "tiny/kernel[numpy.einsum-cpu-float32] PASSED" in proc.stdout.replace("::", " ") or (
        "PASSED" in proc.stdout
    ), proc.stdout
    assert "FAILED" in proc.stdout and "test.inverted-mask" in proc.stdout
    assert proc.returncode == 1


def test_pytest_plugin_works_under_xdist(tiny_spec: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", str(tiny_spec), "-q", "-n", "2",
         "--conformance-adapter", "numpy.einsum", "--conformance-adapter", "reference"],
        capture_output=True, text=True, cwd=tiny_spec.parent, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "10 passed" in proc.stdout
