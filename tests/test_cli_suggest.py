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
