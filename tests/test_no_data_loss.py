"""No data loss (issue 18): one run per --out, torn lines repaired, edited cases refused."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import run_cli

from conformance.running.results import RunLock, read_results, repair_stream

SPEC = """\
version: 1
family: dl
cases:
  - name: c
    mode: kernel
    shape: {query_len: 2, num_heads: 1, key_dim: QK}
    seed: $i
    matrix: {i: [0, 1, 2, 3]}
"""


def _spec(tmp_path: Path, key_dim: int = 2) -> Path:
    path = tmp_path / "dl.yaml"
    path.write_text(SPEC.replace("QK", str(key_dim)))
    return path


def _run(spec: Path, out: Path, *extra: str):  # noqa: ANN202
    return run_cli("run", str(spec), "--adapter", "reference", "--out", str(out), "--no-report",
                   "-q", "--jobs", "1", *extra)  # fmt: skip


def _clean(proc) -> str:  # noqa: ANN001
    text = proc.stdout + proc.stderr
    assert "Traceback" not in text, text
    return text


def test_second_run_into_one_out_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.json").write_text("the first run's results")
    with RunLock(out):  # another run holds the folder
        proc = _run(_spec(tmp_path), out)
    assert proc.returncode == 2 and "another conformance run (pid" in _clean(proc)
    assert (out / "results.json").read_text() == "the first run's results"
    assert _run(_spec(tmp_path), out).returncode == 0  # released: the lock is not stale


def test_resume_repairs_a_torn_last_line(tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert _run(_spec(tmp_path), out).returncode == 0
    stream = out / "results.jsonl"
    lines = stream.read_text().splitlines(keepends=True)
    stream.write_text("".join(lines[:-1]) + lines[-1][:40])  # killed mid-write
    proc = run_cli("run", "--resume", str(out))
    assert proc.returncode == 0, _clean(proc)
    records = [json.loads(line) for line in stream.read_text().splitlines()]  # all whole
    assert len(records) == 4 and len({r["case"] for r in records}) == 4
    assert len(read_results(out)["results"]) == 4


def test_repair_stream_keeps_a_whole_record_without_newline(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    path.write_text('{"a": 1}\n{"b": 2}')
    assert repair_stream(path) == 0 and path.read_text() == '{"a": 1}\n{"b": 2}\n'
    path.write_text('{"a": 1}\n{"b": ')
    assert repair_stream(path) == 6 and path.read_text() == '{"a": 1}\n'


def test_resume_refuses_edited_cases_and_changed_flags(tmp_path: Path) -> None:
    out = tmp_path / "out"
    spec = _spec(tmp_path)
    assert _run(spec, out).returncode == 0
    _spec(tmp_path, key_dim=3)  # the spec is edited after the run
    proc = run_cli("run", "--resume", str(out))
    assert proc.returncode == 2 and "4 case definition(s) changed" in _clean(proc)
    assert "dl/c[i=0]" in proc.stderr and "fresh run" in proc.stderr
    _spec(tmp_path)
    proc = run_cli("run", "--resume", str(out), "--adapter", "numpy.einsum")
    assert proc.returncode == 2 and "--adapter cannot be changed" in _clean(proc)
    proc = run_cli("run", "--resume", str(out), "--jobs", "1", "-q")  # these apply
    assert proc.returncode == 0, _clean(proc)


def test_bad_run_folders_are_clear_errors(tmp_path: Path) -> None:
    afile = tmp_path / "file"
    afile.write_text("x")
    proc = _run(_spec(tmp_path), afile)
    assert proc.returncode == 2 and "is a file, not a folder" in _clean(proc)
    out = tmp_path / "out"
    out.mkdir()
    (out / "run.json").write_text("{not json")
    proc = run_cli("run", "--resume", str(out))
    assert proc.returncode == 2 and "run.json is corrupted" in _clean(proc)
