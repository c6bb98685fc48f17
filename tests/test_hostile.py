"""Hostile input (issue 18): spec data never becomes code, markup or terminal control.

The loader refuses unsafe case ids (see tests/malformed/case-id-*.yaml); these tests check the
second line of defence: even a case that bypassed the loader cannot inject into what the tool
writes.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from conformance.report.reproducer import write_reproducer
from conformance.sanitize import for_docstring, for_markdown, for_terminal, truncate
from conformance.spec import load_spec

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
REFERENCE = "conformance.adapters.reference:ReferenceAdapter"
PAYLOAD = '"""\nimport pathlib; pathlib.Path("PWNED").write_text("x")\n"""\\'


@pytest.fixture(scope="module")
def hostile_case():  # noqa: ANN201
    case = load_spec(TESTS / "plugin_cases.yaml")[0]
    return dataclasses.replace(case, id=case.id + PAYLOAD, description=PAYLOAD)


def test_reproducer_embeds_a_hostile_id_as_data(tmp_path: Path, hostile_case) -> None:  # noqa: ANN001
    record = {"adapter": 'ref"""' + PAYLOAD, "device": "cpu", "verdict": "pass", "message": PAYLOAD}
    script = write_reproducer(hostile_case, record, REFERENCE, tmp_path, search_path=[str(ROOT)])
    tree = ast.parse(script.read_text())
    # The only string the payload could reach is the docstring; no statement carries it.
    assert "PWNED" not in "".join(ast.unparse(node) for node in tree.body[1:])
    assert '"""' not in ast.get_docstring(tree)
    meta = json.loads((script.parent / "case.json").read_text())
    assert meta["case"]["id"] == hostile_case.id  # the exact value, as data
    done = subprocess.run(
        [sys.executable, str(script)], cwd=script.parent, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert not (script.parent / "PWNED").exists()
    assert not any(p.name == "PWNED" for p in tmp_path.rglob("*"))


def test_sanitizers_remove_escape_sequences_and_markup() -> None:
    hostile = "ok\x1b[2J\x1b]0;title\x07\x1b[31mred\x1b[0m\x00\x08\u202e|x|\r\n`y`"
    shown = for_terminal(hostile)
    assert "\x1b" not in shown and "\x07" not in shown and "\x00" not in shown
    assert "\u202e" not in shown and "\r" not in shown and shown.startswith("okred")
    cell = for_markdown(hostile)
    assert "\n" not in cell and "\\|x\\|" in cell and "\\`y\\`" in cell
    assert for_markdown("<script>") == "&lt;script&gt;"
    doc = for_docstring('a"""b\\c\u00e9\n')
    assert doc == "a???b?c?\n"
    assert truncate("x" * 100, 40).endswith("[60 more characters]")
    assert len(truncate("x" * 100, 40)) == 40


HOSTILE_MESSAGE = "boom\x1b[2J\x1b]0;owned\x07 <img src=x onerror=alert(1)>\n| injected | row |"


def test_markdown_report_shows_hostile_messages_as_text(tmp_path: Path) -> None:
    from test_report_fixtures import build_results

    from conformance.report import render, validate

    doc = validate(json.loads(json.dumps(build_results(tmp_path))))
    for record in doc["results"]:
        record.update(verdict="error", message=HOSTILE_MESSAGE)
    text = render(doc, "md")
    assert "\x1b" not in text and "\x07" not in text
    assert "<img" not in text and "&lt;img" in text
    # The message stays on its <details><summary> line: an HTML block, where a pipe is text.
    lines = [line for line in text.splitlines() if "injected" in line]
    assert lines and all(line.startswith("<details><summary>") for line in lines)


def test_terminal_summary_strips_escape_sequences() -> None:
    import io

    from conformance.cli.commands import _summary

    record = {"adapter": "a", "device": "cpu", "case": "f/c", "verdict": "error"}
    out = io.StringIO()
    _summary([dict(record, message=HOSTILE_MESSAGE)], [], out)
    assert "\x1b" not in out.getvalue() and "\x07" not in out.getvalue()
    assert "boom" in out.getvalue() and "| injected" in out.getvalue()


def test_reproducer_writer_runs_user_code_in_a_child_with_the_timeout(tmp_path: Path) -> None:
    import time

    from conftest import run_cli

    spec = tmp_path / "one.yaml"
    spec.write_text(
        "version: 1\nfamily: one\ncases:\n  - name: c\n    mode: kernel\n"
        "    shape: {query_len: 3, num_heads: 1, key_dim: 2}\n    mask: {causal: top-left}\n"
    )
    start = time.monotonic()
    proc = run_cli("run", str(spec), "--adapter", "broken_adapters:HangsInReproducer",
                   "--out", str(tmp_path / "out"), "--no-report", "--timeout", "5")  # fmt: skip
    assert proc.returncode == 1, proc.stdout + proc.stderr  # the fail, reported; no hang
    assert "no reproducer: writing it timed out after 5 s" in proc.stdout
    assert "Traceback" not in proc.stdout + proc.stderr
    assert time.monotonic() - start < 120


# --- resource limits ---------------------------------------------------------------------------


def test_devices_and_fifos_are_refused_not_read(tmp_path: Path) -> None:
    import os

    from conformance.errors import SpecError

    fifo = tmp_path / "spec.yaml"
    os.mkfifo(fifo)  # reading it would block forever
    for path in (fifo, Path("/dev/zero")):
        with pytest.raises(SpecError, match="not a regular file"):
            load_spec(path)


def test_total_case_count_is_limited_across_items_and_files(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    from conformance.errors import SpecError
    from conformance.spec import load_specs
    from conformance.spec import loading as spec_module

    monkeypatch.setattr(spec_module, "MAX_TOTAL_CASES", 5)
    item = (
        "  - name: c{n}\n    shape: {{query_len: 2, num_heads: 1, key_dim: 2}}\n    seed: $i\n"
        "    matrix: {{i: [0, 1, 2]}}\n"
    )
    one = tmp_path / "one.yaml"
    one.write_text("family: one\ncases:\n" + item.format(n=1) + item.format(n=2))
    with pytest.raises(SpecError, match="the file expands to more than 5 cases"):
        load_spec(one)
    for name in ("a", "b"):
        (tmp_path / "many" / name).mkdir(parents=True)
        (tmp_path / "many" / name / "s.yaml").write_text(
            f"family: {name}\ncases:\n" + item.format(n=1)
        )
    with pytest.raises(SpecError, match="expand to more than 5 cases together"):
        load_specs([tmp_path / "many"])


def test_run_knobs_must_be_positive_finite(tmp_path: Path) -> None:
    from conftest import run_cli

    for flag, value in (("--timeout", "nan"), ("--timeout", "-1"), ("--timeout", "inf"),
                        ("--jobs", "0"), ("--jobs", "-3")):  # fmt: skip
        proc = run_cli("run", "--adapter", "reference", flag, value, "--out", str(tmp_path))
        assert proc.returncode == 2, (flag, value)
        assert f"argument {flag}" in proc.stderr and "Traceback" not in proc.stderr


def test_stored_input_bombs_are_refused_before_inflating(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    import io
    import zipfile

    import numpy as np

    from conformance.cases import inputs as inputs_module
    from conformance.errors import SpecError

    # The limit scaled down so the bomb stays small: 4 MiB of zeros compress to ~4 KB, and
    # only the declared size may be looked at.
    monkeypatch.setattr(inputs_module, "MAX_STORED_BYTES", 2**20)
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f8", "fortran_order": False, "shape": (2**19,)}
    )
    with zipfile.ZipFile(tmp_path / "bomb.npz", "w", zipfile.ZIP_DEFLATED) as archive:
        with archive.open("t/q.npy", "w") as member:
            member.write(header.getvalue() + bytes(2**22))
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    for name, message in (("bomb", "stored inputs are limited to"), ("junk", "not a readable")):
        spec = tmp_path / f"{name}.yaml"
        spec.write_text(
            "cases:\n  - name: a\n    mode: kernel\n"
            "    shape: {query_len: 2, num_heads: 1, key_dim: 2}\n"
            f"    inputs: {name}.npz#t\n"
        )
        with pytest.raises(SpecError, match=message):
            load_spec(spec)


# --- adapters that misbehave -------------------------------------------------------------------


def _misbehaving(behaviour: str):  # noqa: ANN202
    import numpy as np

    from conformance.adapter_api.adapter import Adapter, Declaration
    from conformance.cases.case import FEATURES
    from conformance.oracle.reference import attention

    class Misbehaves(Adapter):  # a test double of a *user's* adapter, run for real
        declaration = Declaration(name=f"test.{behaviour}", summary="misbehaves",
                                  framework="numpy", features=frozenset(FEATURES))  # fmt: skip

        def run(self, case, inputs, device):  # noqa: ANN001, ANN202
            out = attention(case, inputs)
            if behaviour == "mutates":
                for array in [*inputs.arrays.values(), *inputs.weights.values()]:
                    array[...] = np.nan  # written in place, after computing a right answer
            elif behaviour == "none":
                return None
            elif behaviour == "list":
                return [out["output"]]
            elif behaviour == "exit":
                raise SystemExit(3)
            elif behaviour == "long":
                raise RuntimeError("x" * 100_000)
            return out

    return Misbehaves()


def test_misbehaving_adapters_give_clear_records() -> None:
    from conformance.verdicts.evaluate import MAX_MESSAGE_CHARS, ReferenceCache, evaluate

    case = load_spec(TESTS / "plugin_cases.yaml")[0]
    cache = ReferenceCache()
    # One adapter writing into its inputs corrupts neither the reference nor the next adapter.
    assert evaluate(_misbehaving("mutates"), case, "cpu", cache)["verdict"] == "pass"
    assert evaluate(_misbehaving("fine"), case, "cpu", cache)["verdict"] == "pass"
    for behaviour, text in (("none", "returned NoneType, not a mapping"),
                            ("list", "returned list, not a mapping"),
                            ("exit", "SystemExit: 3")):  # fmt: skip
        record = evaluate(_misbehaving(behaviour), case, "cpu", cache)
        assert record["verdict"] == "error" and text in record["message"], record["message"]
    record = evaluate(_misbehaving("long"), case, "cpu", cache)
    assert record["verdict"] == "error" and "more characters]" in record["message"]
    assert len(record["message"]) < MAX_MESSAGE_CHARS + 200


def test_plugin_import_failures_and_duplicate_names_are_clear(tmp_path: Path) -> None:
    from conftest import run_cli

    (tmp_path / "badrt.py").write_text('raise RuntimeError("boom at import")\n')
    (tmp_path / "badsyn.py").write_text("def f(:\n")
    (tmp_path / "dup.py").write_text(
        "from broken_adapters import Correct\n\n\nclass Other(Correct):\n    pass\n"
    )
    spec = TESTS / "plugin_cases.yaml"
    for target, text in (("badrt:X", "RuntimeError: boom at import"),
                         ("badsyn:X", "SyntaxError")):  # fmt: skip
        proc = run_cli("run", str(spec), "--adapter", target, "--out", str(tmp_path / "o"),
                       cwd=tmp_path)  # fmt: skip
        assert proc.returncode == 2 and text in proc.stderr, proc.stderr
        assert "failed to import" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_cli("run", str(spec), "--adapter", "broken_adapters:Correct", "--adapter",
                   "dup:Other", "--out", str(tmp_path / "o"), cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 2 and "two adapters are named 'test.correct'" in proc.stderr
    assert "broken_adapters:Correct" in proc.stderr and "dup:Other" in proc.stderr


def test_unserialisable_values_become_text_not_a_lost_file(tmp_path: Path) -> None:
    import numpy as np

    from conformance.running.results import dumps, write_json_atomic

    class Version:
        def __str__(self) -> str:
            return "1.2.3+odd"

    data = {"versions": {"lib": Version(), "n": np.int64(3)}, "results": []}
    write_json_atomic(tmp_path / "results.json", data)
    back = json.loads((tmp_path / "results.json").read_text())
    assert back["versions"] == {"lib": "1.2.3+odd", "n": 3}
    assert json.loads(dumps(data))["versions"]["lib"] == "1.2.3+odd"


def test_full_disk_is_one_message(monkeypatch, capsys) -> None:  # noqa: ANN001
    import errno

    from conformance.cli import commands, main

    def full(args):  # noqa: ANN001, ANN202
        raise OSError(errno.ENOSPC, "No space left on device", "out/results.jsonl")

    monkeypatch.setattr(commands, "cmd_run", full)
    assert main(["run", str(TESTS / "plugin_cases.yaml")]) == 2
    err = capsys.readouterr().err
    assert "No space left on device (out/results.jsonl)" in err and "--resume" in err


# --- the external protocol ---------------------------------------------------------------------


def _peer(code: str, **kw):  # noqa: ANN003, ANN202
    import textwrap

    from conformance.adapter_api import external

    config = external.ExternalConfig(
        command=(sys.executable, "-c", textwrap.dedent(code)), cwd=str(ROOT), **kw
    )
    return external.make_adapter_class(config)


def _hello() -> str:
    from conformance.adapter_api import external

    return json.dumps({"protocol": external.PROTOCOL, "name": "t.hostile",
                       "features": ["kernel", "weights", "causal", "causal-top-left", "kv-len"]})  # fmt: skip


def test_external_garbage_and_endless_wrong_replies_time_out() -> None:
    import time

    from conformance.verdicts.evaluate import evaluate

    # Non-UTF-8 bytes before the hello are logs, not a crash; then every request gets an
    # endless stream of replies for other ids: the case must still time out.
    cls = _peer(
        f"""
        import json, sys, time
        sys.stdout.buffer.write(b"\\xff\\xfe garbage \\x80\\n"); sys.stdout.flush()
        print({_hello()!r}, flush=True)
        for line in sys.stdin:
            request = json.loads(line)
            if request.get("type") == "shutdown":
                break
            while True:
                print(json.dumps({{"id": "not-" + str(request.get("id")), "status": "ok"}}),
                      flush=True)
                time.sleep(0.01)
        """,
        timeout_s=1.5,
        startup_timeout_s=30.0,
    )
    adapter = cls()
    case = next(c for c in load_spec(TESTS / "plugin_cases.yaml") if "kernel-float64" in c.id)
    start = time.monotonic()
    record = evaluate(adapter, case, "cpu")
    assert time.monotonic() - start < 30
    assert record["verdict"] == "error" and "gave no reply" in record["message"], record
    adapter.close()


def test_external_timeouts_must_be_positive(tmp_path: Path) -> None:
    from conformance.adapter_api import external
    from conformance.errors import UsageError

    path = tmp_path / "peer.adapter.json"
    path.write_text(json.dumps({"command": "python3 peer.py", "timeout_s": float("nan")}))
    with pytest.raises(UsageError, match="'timeout_s' must be a positive number"):
        external.load_adapter_file(path)


# --- processes ---------------------------------------------------------------------------------


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in state  # a zombie is dead, only not yet reaped


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc to see processes")
def test_workers_may_fork_and_their_children_die_with_the_run(tmp_path: Path) -> None:
    import os
    import time

    gate = tmp_path / "gate"
    gate.mkdir()
    spec = tmp_path / "one.yaml"
    spec.write_text(
        "version: 1\nfamily: one\ncases:\n  - name: c\n    mode: kernel\n"
        "    shape: {query_len: 2, num_heads: 1, key_dim: 2}\n"
    )
    env = dict(os.environ, CONFORMANCE_TEST_GATE=str(gate))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, "-m", "conformance.cli", "run", str(spec), "--adapter",
         "broken_adapters:ForksChildren", "--out", str(tmp_path / "out"), "--no-report",
         "--setup-timeout", "120"],
        capture_output=True, text=True, timeout=300, env=env, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr  # multiprocessing inside: a pass
    pid = int((gate / "child.pid").read_text())
    deadline = time.monotonic() + 30
    while _alive(pid) and time.monotonic() < deadline:  # killed: wait for it to be reaped
        time.sleep(0.05)
    assert not _alive(pid), "a child the adapter forked outlived the run"
