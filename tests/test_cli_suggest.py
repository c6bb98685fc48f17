"""Mistyped subcommands, case ids and -k words get a 'did you mean', exit code 2, no traceback."""

from __future__ import annotations

import pytest

from conformance.cli import main


def test_mistyped_subcommand(capsys: pytest.CaptureFixture) -> None:
    assert main(["rn"]) == 2
    err = capsys.readouterr().err
    assert "unknown command 'rn'" in err and "did you mean: 'run'" in err
    assert "Traceback" not in err


def test_mistyped_case_id(capsys: pytest.CaptureFixture, tmp_path) -> None:  # noqa: ANN001
    case = "basic/kernal[T=1,H=1,float32]"
    assert main(["run", "--case", case, "-a", "reference", "-q", "-o", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "did you mean: 'basic/kernel[T=1,H=1,float32]'" in err


def test_mistyped_family_in_k(capsys: pytest.CaptureFixture, tmp_path) -> None:  # noqa: ANN001
    assert main(["run", "-k", "fully_maskd", "-a", "reference", "-q", "-o", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "-k 'fully_maskd' matches no case id; did you mean: 'fully_masked'" in err


def test_exitfirst_stops_after_the_first_failure(tmp_path) -> None:  # noqa: ANN001
    import json

    from conftest import run_cli
    from test_report_fixtures import MASKS_SPEC

    (tmp_path / "masks.yaml").write_text(MASKS_SPEC)
    out = tmp_path / "out"
    proc = run_cli("run", str(tmp_path / "masks.yaml"), "--adapter",
                   "test_report_fixtures:WrongAttention", "-x", "-j", "1", "-q", "--no-report",
                   "--out", str(out))  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    assert "stopped after 1 fail/error result(s)" in proc.stderr
    records = json.loads((out / "results.json").read_text())["results"]
    assert sum(r["verdict"] in ("fail", "error") for r in records) == 1
