"""Student's t quantiles of conformance.stats against SciPy's (installed with JAX) and tables."""

import math

import pytest

from conformance.oracle.stats import t_quantile_upper, t_upper_tail


@pytest.mark.parametrize(
    ("tail", "dof", "expected"),
    [(0.025, 19, 2.093024), (0.005, 10, 3.169273), (0.05, 1, 6.313752), (0.025, 1000, 1.962339)],
)
def test_table_values(tail: float, dof: int, expected: float) -> None:
    assert t_quantile_upper(tail, dof) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("dof", [1, 2, 4, 9, 19, 49, 99, 999])
@pytest.mark.parametrize("tail", [0.1, 1e-3, 1e-5, 2.6e-7, 1e-10])
def test_matches_scipy(tail: float, dof: int) -> None:
    scipy_stats = pytest.importorskip("scipy.stats")
    assert t_quantile_upper(tail, dof) == pytest.approx(scipy_stats.t.isf(tail, dof), rel=1e-8)
    assert t_upper_tail(t_quantile_upper(tail, dof), dof) == pytest.approx(tail, rel=1e-8)


def test_heavier_than_normal_at_small_dof() -> None:
    """The reason it exists: at N = 20 draws the normal quantile is far too small."""
    from statistics import NormalDist

    tail = 1e-4 / (2 * 192)
    z = NormalDist().inv_cdf(1 - tail)
    assert t_quantile_upper(tail, 19) > 1.4 * z
    assert t_quantile_upper(tail, 10**6) == pytest.approx(z, rel=1e-4)


@pytest.mark.parametrize("bad", [(0.0, 5), (0.5, 5), (0.1, 0)])
def test_rejects_bad_arguments(bad: tuple) -> None:
    with pytest.raises(ValueError):
        t_quantile_upper(*bad)


def test_symmetric_tail_at_zero() -> None:
    assert math.isclose(t_upper_tail(0.0, 7), 0.5)
