"""Exit codes a CI can trust: nothing executed is not green; exact adapter names; no cpu guess."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from conformance.adapter_api.registry import resolve
from conformance.cli import main
from conformance.running.executed import EXIT_NOTHING_EXECUTED, empty_adapters, why_empty

ROOT = Path(__file__).resolve().parent.parent
BASIC = str(ROOT / "specs" / "basic.yaml")
ONE_CASE = ["-k", "basic/kernel[T=1,H=1,float64]"]


def _record(verdict: str, adapter: str = "a") -> dict:
    return {"adapter": adapter, "verdict": verdict}


@pytest.mark.parametrize(
    ("devices", "wanted", "verdicts", "expect"),
    [
        (["cpu"], None, ["pass"], None),
        (["cpu"], None, ["fail", "unsupported"], None),
        ([], None, [], "reports no devices"),
        (["cpu"], ["cuda"], [], "selects none of its devices (cpu)"),
        (["cpu"], ["cdua"], [], "--device cdua"),
        (["cuda:0"], ["cuda"], ["pass"], None),
        (["cpu"], None, ["unsupported", "unsupported"], "all 2 selected case(s) are unsupported"),
    ],
)
def test_why_empty(devices, wanted, verdicts, expect) -> None:  # noqa: ANN001
    why = why_empty(devices, wanted, [_record(v) for v in verdicts])
    assert (why is None) if expect is None else (expect in why)


def test_empty_adapters_per_adapter() -> None:
    info = {"a": {"devices": ["cpu"]}, "b": {"devices": []}}
    assert empty_adapters(["a", "b"], info, None, [_record("pass", "a")]) == {
        "b": "it reports no devices on this machine"
    }


def test_exact_name_selects_that_adapter_only() -> None:
    assert [e.name for e in resolve(["torch.sdpa"])] == ["torch.sdpa"]
    family = [e.name for e in resolve(["torch.sdpa.flash"])]
    assert family == ["torch.sdpa.flash"]
    # A prefix that is no adapter's name still selects the family.
    assert {"torch.mha.fast", "torch.mha.slow"} <= {e.name for e in resolve(["torch.mha"])}


def _run(tmp_path: Path, *extra: str) -> int:
    args = ["run", BASIC, "--adapter", "numpy.einsum", *ONE_CASE]
    return main([*args, "-q", "--jobs", "1", "--no-report", "--out", str(tmp_path), *extra])


def test_device_that_selects_nothing_exits_5(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    assert _run(tmp_path, "--device", "cuda") == EXIT_NOTHING_EXECUTED
    err = capsys.readouterr().err
    assert "numpy.einsum: executed nothing: --device cuda selects none" in err
    assert _run(tmp_path, "--device", "cuda", "--allow-empty") == 0
    assert _run(tmp_path, "--device", "cpu") == 0


def test_pytest_plugin_never_falls_back_to_cpu(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pytest", BASIC, "-p", "no:cacheprovider", "-q",
         "--conformance-adapter", "numpy.einsum", "--conformance-device", "cuda"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 5, done.stdout + done.stderr  # pytest: no tests collected
    assert "numpy.einsum: --conformance-device selects none of its devices (cpu)" in done.stdout


@pytest.mark.parametrize(
    ("source", "words"),
    [("def broken(:\n", "myplugin.py:1"), ("raise RuntimeError('boom')\n", "RuntimeError: boom")],
)
def test_a_plugin_that_does_not_import_is_exit_2_without_traceback(
    source: str, words: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:  # noqa: ANN001
    (tmp_path / "myplugin.py").write_text(source)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert main(["run", BASIC, "--adapter", "myplugin:fn", "-q", "--out", "out"]) == 2
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err
