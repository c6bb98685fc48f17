"""The out-of-process protocol: the Node.js example end to end, adapter files, timeouts, errors."""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from conformance.adapter_api import external
from conformance.adapter_api.adapter import Declaration
from conformance.adapter_api.registry import AdapterEntry, load_target
from conformance.cases.inputs import make_inputs
from conformance.errors import UsageError
from conformance.spec import load_spec
from conformance.verdicts.evaluate import evaluate

ROOT = Path(__file__).resolve().parent.parent
JS = ROOT / "examples" / "js" / "attention.js"
CASES = load_spec(Path(__file__).parent / "plugin_cases.yaml")
NODE = shutil.which("node")
needs_node = pytest.mark.skipif(NODE is None, reason="Node.js is not installed")


def by_id(fragment: str):  # noqa: ANN201
    return next(c for c in CASES if fragment in c.id)


def python_command(code: str) -> tuple[str, ...]:
    """A tiny protocol peer written in Python, for exercising the harness's error paths."""
    return (sys.executable, "-c", textwrap.dedent(code))


HELLO = json.dumps({
    "protocol": external.PROTOCOL, "name": "t.peer",
    "features": ["kernel", "weights", "causal", "causal-top-left", "kv-len"],
})  # fmt: skip


def peer(code: str, **kw) -> type[external.ExternalAdapter]:  # noqa: ANN003
    config = external.ExternalConfig(command=python_command(code), cwd=str(ROOT), **kw)
    return external.make_adapter_class(config)


# --- the JavaScript example ------------------------------------------------------------------


@needs_node
def test_js_example_passes_every_case_it_declares() -> None:
    cls = external.adapter_class(f"external:node {JS}")
    assert cls.declaration.name == "js.example.mha"
    assert {"kernel", "layer", "grouped-query", "attn-bias"} <= cls.declaration.features
    adapter = cls()
    try:
        records = [evaluate(adapter, case, "cpu") for case in CASES]
    finally:
        adapter.close()
    verdicts = {r["case"]: r["verdict"] for r in records}
    bad = {r["case"]: r["message"] for r in records if r["verdict"] in ("fail", "error")}
    assert not bad
    ran = [r for r in records if r["verdict"] == "pass"]
    assert {r["mode"] for r in ran} == {"kernel", "layer"}
    assert len(ran) >= 15
    # float64 cases are computed in float64: errors at rounding level, not float32's
    assert all(r["max_abs_error"] < 1e-12 for r in ran if r["dtype"] == "float64")
    assert verdicts["plugins/layer-decode-multi-query"] == "unsupported"


@needs_node
def test_js_example_through_the_runner_in_a_worker_process() -> None:
    from conformance.running.runner import Runner, RunOptions

    selector = f"external:node {JS}"
    cls = external.adapter_class(selector)
    target = external.target_for(selector)
    assert load_target(target) is cls  # what the worker resolves is the same class
    entry = AdapterEntry(cls.declaration.name, target, cls.declaration, "command line")
    records: list[dict] = []
    cases = [by_id("kernel-gqa[G=2]"), by_id("layer-cross"), by_id("layer-decode-multi-query")]
    Runner(cases, [entry], RunOptions(jobs=1, timeout_s=60), records.append).run()
    verdicts = sorted(r["verdict"] for r in records)
    assert verdicts == ["pass", "pass", "unsupported"], records


@needs_node
@pytest.mark.parametrize("suffix", [".yaml", ".toml"])
def test_adapter_file_oneshot(tmp_path: Path, suffix: str) -> None:
    if suffix == ".toml":
        pytest.importorskip("tomllib")
        text = f'command = ["node", "{JS}"]\nprotocol = "oneshot"\ntimeout_s = 30\n'
    else:
        text = f"command: [node, {JS}]\nprotocol: oneshot\ntimeout_s: 30\n"
    path = tmp_path / f"js.adapter{suffix}"
    path.write_text(text)
    assert external.is_external(str(path))
    cls = external.adapter_class(str(path))  # declaration from `node attention.js --describe`
    assert cls.declaration.name == "js.example.mha"
    adapter = cls()
    for case in (by_id("kernel-masks"), by_id("layer-float32")):
        record = evaluate(adapter, case, "cpu")
        assert record["verdict"] == "pass", record["message"]
    adapter.close()


@needs_node
def test_adapter_file_declaration_wins_over_hello(tmp_path: Path) -> None:
    path = tmp_path / "narrow.yaml"
    path.write_text(
        f"command: node {JS}\nname: js.kernel-only\nfeatures: [kernel]\ndtypes: [float64]\n"
    )
    cls = external.adapter_class(str(path))
    assert cls.declaration.name == "js.kernel-only"
    assert cls.declaration.features == frozenset({"kernel"})
    adapter = cls()
    assert evaluate(adapter, by_id("kernel-float64"), "cpu")["verdict"] == "unsupported"  # weights
    assert evaluate(adapter, by_id("layer-float64"), "cpu")["verdict"] == "unsupported"
    adapter.close()


def test_adapter_file_errors(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("comand: node x.js\n")
    with pytest.raises(UsageError, match="did you mean 'command'"):
        external.load_adapter_file(path)
    path.write_text("command: node x.js\nprotocol: http\n")
    with pytest.raises(UsageError, match="persistent or oneshot"):
        external.load_adapter_file(path)
    path.write_text("command: node x.js\nname: x\nfeatures: [kernel, telepathy]\n")
    with pytest.raises(UsageError, match="telepathy"):
        external.adapter_class(str(path))
    with pytest.raises(UsageError, match="cannot start"):
        external.adapter_class("external:/nonexistent/attention-binary")


def test_targets_round_trip(tmp_path: Path) -> None:
    assert external.is_external("external:./my-binary --fast")
    assert not external.is_external("mypkg.attn:MyAttention")
    assert not external.is_external(str(tmp_path / "missing.yaml"))
    target = external.target_for("external:./my-binary --fast")
    module, _, attr = target.partition(":")
    assert module == "conformance.adapter_api.external" and "." not in attr and " " not in attr


def test_request_files(tmp_path: Path) -> None:
    case = by_id("layer-cross")
    request = external.write_request(case, make_inputs(case), tmp_path, "attend")
    assert request["mode"] == "layer" and request["mask"] == "mask.npy"
    assert set(request["outputs"]) == {"output"}
    mask = np.load(tmp_path / "mask.npy")
    s = case.shape
    assert mask.dtype == np.bool_ and mask.shape == (s.batch, s.num_heads, s.query_len, s.kv_len)
    assert mask[1, 0, 0].tolist() == [True, True, False, False, False, False]  # key_padding 2
    for name in ("query", "key", "value", "wq", "bq", "wk", "bk", "wv", "bv", "wo", "bo"):
        assert np.load(tmp_path / f"{name}.npy").dtype == np.float64
    text = (tmp_path / "case.txt").read_text().splitlines()
    assert "kv_len 6" in text and "mask attend" in text and "self_attention 0" in text
    assert json.loads((tmp_path / "request.json").read_text())["case"]["id"] == case.id


# --- timeouts and protocol errors --------------------------------------------------------------


def test_case_timeout_kills_and_restarts() -> None:
    cls = peer(
        f"""
        import json, sys, time
        print({HELLO!r}, flush=True)
        for line in sys.stdin:
            request = json.loads(line)
            if request.get("type") == "shutdown":
                break
            time.sleep(30)
        """,
        timeout_s=1.0,
        startup_timeout_s=20.0,
    )
    adapter = cls()
    case = by_id("kernel-float64")
    record = evaluate(adapter, case, "cpu")
    assert record["verdict"] == "error" and "gave no reply" in record["message"]
    first = adapter._channel.process
    assert first.poll() is not None  # killed
    record = evaluate(adapter, case, "cpu")  # a fresh process for the next case
    assert record["verdict"] == "error" and adapter._channel.process is not first
    adapter.close()


def test_startup_timeout_and_bad_hello() -> None:
    config = external.ExternalConfig(
        command=python_command("import time; time.sleep(30)"), cwd=str(ROOT),
        startup_timeout_s=1.0,
    )  # fmt: skip
    with pytest.raises(UsageError, match="no hello line within 1 s"):
        external.make_adapter_class(config)
    config = external.ExternalConfig(
        command=python_command('print("starting"); print(\'{"hello": 1}\')'), cwd=str(ROOT)
    )
    with pytest.raises(UsageError, match="must be the hello"):
        external.make_adapter_class(config)


def test_statuses_and_crash() -> None:
    cls = peer(
        f"""
        import json, sys
        print({HELLO!r}, flush=True)
        for n, line in enumerate(sys.stdin):
            request = json.loads(line)
            print("a log line, not a reply", flush=True)
            if n == 0:
                reply = {{"status": "unsupported", "reason": "no GPU here"}}
            elif n == 1:
                reply = {{"status": "error", "message": "kernel exploded"}}
            else:
                sys.stderr.write("segfault-ish\\n"); sys.exit(7)
            reply["id"] = request["id"]
            print(json.dumps(reply), flush=True)
        """
    )
    adapter = cls()
    case = by_id("kernel-float64")
    record = evaluate(adapter, case, "cpu")
    assert record["verdict"] == "unsupported" and "no GPU here" in record["message"]
    record = evaluate(adapter, case, "cpu")
    assert record["verdict"] == "error" and "kernel exploded" in record["message"]
    record = evaluate(adapter, case, "cpu")
    assert record["verdict"] == "error" and "exited (code 7)" in record["message"]
    assert "segfault-ish" in record["message"]
    adapter.close()


def test_wrong_outputs_are_caught() -> None:
    """A reply whose output has the wrong shape is a failure, not a pass."""
    cls = peer(
        f"""
        import json, sys, os
        import numpy as np
        print({HELLO!r}, flush=True)
        for line in sys.stdin:
            r = json.loads(line)
            q = np.load(os.path.join(r["dir"], "q.npy"))
            np.save(os.path.join(r["dir"], "output.npy"), q[..., :-1])
            print(json.dumps({{"id": r["id"], "status": "ok"}}), flush=True)
        """
    )
    adapter = cls()
    record = evaluate(adapter, by_id("kernel-causal-top-left"), "cpu")
    assert record["verdict"] in ("fail", "error") and "shape" in record["message"]
    adapter.close()


def test_declaration_is_a_real_declaration() -> None:
    cls = peer(f"print({HELLO!r}, flush=True)")
    assert isinstance(cls.declaration, Declaration)
    assert cls.declaration.worker == "external:t.peer"
    assert shlex.join(cls.config.command).startswith(shlex.quote(sys.executable))


@pytest.mark.skipif(shutil.which("g++") is None, reason="no C++ compiler")
def test_cpp_example_oneshot(tmp_path: Path) -> None:
    """The C++ example reads case.txt (no JSON) and runs once per case."""
    binary = tmp_path / "attention"
    built = subprocess.run(
        ["g++", "-O1", "-std=c++17", "-o", str(binary), str(ROOT / "examples/cpp/attention.cpp")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr
    adapter_file = tmp_path / "cpp.adapter.yaml"
    adapter_file.write_text("command: ./attention\nprotocol: oneshot\ntimeout_s: 30\n")
    cls = external.adapter_class(str(adapter_file))
    assert cls.declaration.name == "cpp.example.sdpa" and "layer" not in cls.declaration.features
    adapter = cls()
    records = {c.id: evaluate(adapter, c, "cpu") for c in CASES}
    bad = {k: r["message"] for k, r in records.items() if r["verdict"] in ("fail", "error")}
    assert not bad
    kernel = [c.id for c in CASES if c.mode == "kernel"]
    assert all(records[k]["verdict"] == "pass" for k in kernel)
    assert records["plugins/layer-float64"]["verdict"] == "unsupported"


def test_setup_starts_the_process_and_reports_failure(tmp_path: Path) -> None:
    path = tmp_path / "gone.yaml"
    path.write_text(
        "command: ./no-such-binary\nname: t.gone\nfeatures: [kernel]\ndevices: [cpu, cuda:0]\n"
    )
    cls = external.adapter_class(str(path))  # declared in the file: nothing started yet
    adapter = cls()
    assert adapter.devices() == ["cpu", "cuda:0"]
    with pytest.raises(external.ExternalError, match="cannot start"):
        adapter.setup()
