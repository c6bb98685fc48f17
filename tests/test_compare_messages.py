"""Failure messages read like torch.testing.assert_close: plain numbers, counts, indices."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from conformance.verdicts.compare import compare
from conformance.verdicts.tolerance import Tolerance

TOL = Tolerance(rtol=1e-5, atol=1e-5)


def test_nan_where_reference_is_finite_is_counted_plainly() -> None:
    expected = np.full((2, 4, 3, 8), 0.25)  # B H T K
    actual = np.full_like(expected, np.nan)
    got = compare("output", actual, expected, TOL)
    assert not got.ok
    assert "NaN where the reference is finite: 192 of 192." in got.message
    assert "Mismatched elements: 192 / 192 (100.0%)." in got.message
    assert "np.float64" not in got.message
    # No finite pair: no greatest difference is claimed from zeros standing in for NaN.
    assert "Greatest absolute difference" not in got.message


def test_greatest_differences_are_over_finite_pairs_with_their_index() -> None:
    expected = np.linspace(0.1, 1.0, 24).reshape(2, 3, 4)
    actual = expected.copy()
    actual[1, 2, 3] += 0.01
    actual[0, 0, 0] = np.nan
    got = compare("output", actual, expected, TOL)
    assert "Mismatched elements: 2 / 24 (8.3%)." in got.message
    assert "NaN where the reference is finite: 1 of 24." in got.message
    assert (
        "First misplaced non-finite value at index (0, 0, 0): got NaN, reference 0.1."
        in got.message
    )
    assert "Greatest absolute difference: 0.01 at index (1, 2, 3)" in got.message
    assert "Tolerance: rtol=1e-05, atol=1e-05." in got.message
    assert got.max_abs_error is not None and abs(got.max_abs_error - 0.01) < 1e-12


def test_number_where_reference_is_nan() -> None:
    expected = np.array([[0.5, np.nan], [0.5, np.nan]])
    actual = np.array([[0.5, 0.49], [0.5, 0.49]])
    got = compare("output", actual, expected, TOL)
    assert "A number where the reference is NaN: 2 of 2." in got.message
    assert "got 0.49, reference NaN" in got.message


def test_baseline_rule_is_shown_when_it_applies() -> None:
    tol = Tolerance(rtol=1e-3, atol=1e-3, baseline_factor=2.0, floor_ulps=0.0, eps=2**-7)
    expected = np.ones((4, 4))
    actual = expected + 0.1
    got = compare("output", actual, expected, tol, baseline_error=0.01)
    assert not got.ok
    assert "Same-dtype baseline error 0.01, budget 0.02." in got.message
    # Within the budget the baseline rule passes it, and says so.
    assert compare("output", expected + 0.015, expected, tol, baseline_error=0.01).ok


def test_paths_are_stored_relative(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    from conformance.paths import display_path, safe_file_name
    from conformance.spec import shipped_specs_dir

    monkeypatch.chdir(tmp_path)
    assert display_path(tmp_path / "specs" / "mine.yaml") == "specs/mine.yaml"
    assert display_path(shipped_specs_dir() / "masks.yaml") == "specs/masks.yaml"
    assert safe_file_name("external:cmd a/b") == "external_cmd_a_b"


def test_code_paths_in_messages_are_relative() -> None:
    from conformance.paths import code_path

    assert code_path("/opt/venv/lib/python3.11/site-packages/torch/nn/functional.py") == (
        "site-packages/torch/nn/functional.py"
    )


def test_the_tools_own_code_is_named_from_its_package_from_any_folder(
    tmp_path, monkeypatch
) -> None:  # noqa: ANN001
    import conformance
    from conformance.paths import code_path

    monkeypatch.chdir(tmp_path)  # a user's empty folder, not the checkout
    evaluate = str(Path(conformance.__file__).resolve().parent / "verdicts" / "evaluate.py")
    assert code_path(evaluate) == "conformance/verdicts/evaluate.py"
