"""Student's t quantiles in pure Python (the core depends on NumPy only, not SciPy).

The dropout mean check compares a sample mean over N draws with its standard error s/sqrt(N);
with s estimated from the same N draws the statistic follows Student's t with N - 1 degrees of
freedom, not the normal distribution. At N = 20 draws and a Bonferroni-corrected tail of
2.6e-7 (alpha 1e-4 over 192 elements) the normal quantile (5.02) is a third below the t
quantile (7.40): using it would raise false alarms far above the advertised rate, and which case trips them would depend on the
framework's random stream (that is, on the CPU).
"""

from __future__ import annotations

import math


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        m2 = 2 * m
        for num in (
            m * (b - m) * x / ((a + m2 - 1.0) * (a + m2)),
            -(a + m) * (a + b + m) * x / ((a + m2) * (a + m2 + 1.0)),
        ):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = (
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def t_upper_tail(t: float, dof: float) -> float:
    """P(T > t) for Student's t with `dof` degrees of freedom, t >= 0."""
    return 0.5 * _betainc(dof / 2.0, 0.5, dof / (dof + t * t))


def t_quantile_upper(tail: float, dof: float) -> float:
    """The t with P(T > t) = tail (0 < tail < 0.5), by bisection on the exact tail."""
    if not 0.0 < tail < 0.5:
        raise ValueError(f"tail must be in (0, 0.5), got {tail}")
    if dof <= 0:
        raise ValueError(f"dof must be positive, got {dof}")
    lo, hi = 0.0, 1.0
    while t_upper_tail(hi, dof) > tail:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if t_upper_tail(mid, dof) > tail:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-12 * hi:
            break
    return 0.5 * (lo + hi)
