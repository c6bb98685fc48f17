"""The tolerance policy, per dtype.

Fixed rule (every element): |actual - expected| <= atol + rtol * |expected|, with (rtol, atol)
as in torch.testing.assert_close's defaults, except float64, which is tighter on purpose:
torch's float64 default (1e-7, 1e-7) would let an implementation that quietly computes float64
layers in float32 (errors ~1e-7) slip through. A genuine float64 computation of these small
cases errs by ~1e-15, so 1e-9 leaves six orders of margin on both sides.

Baseline rule (float32, float16, bfloat16; the FlashAttention test rule): the result also passes
when max|actual - expected| <= K * max|baseline - expected| + floor, where `baseline` is a
straightforward implementation in the same dtype (every op rounded to it; see
reference.baseline). K is 2 for outputs (3 for gradients, as FlashAttention uses). The floor is `floor_ulps` units
of the dtype's epsilon at the largest reference magnitude (one ulp of the biggest value): an
implementation that merely rounds differently than the baseline cannot be told apart below it.

Why float32 has the baseline rule too: the fixed float32 rule is calibrated on short rows and
moderate logits. A correct float32 kernel's error grows with the row length (accumulation over
S keys) and with the logits' magnitude (exp amplifies the rounding error of a large logit), so
at kernel scale it exceeds rtol 1.3e-6 / atol 1e-5 (seen: 1.7e-5 on a correct blockwise kernel
at scale 40 and 300 keys). The float32 baseline computes natively in float32 (reference.baseline),
so its error grows the same way; 2x of it holds a correct kernel at every size and still fails
every tiled-kernel bug by orders of magnitude (docs/tolerance.md has the measurements and plot).
float64 keeps the fixed rule only: nothing about float64 needs the slack, and the tight rule is
what catches float64 computed in float32.

Logit-rounding floor (the baseline rule's lower end, logit_rounding_floor below): the baseline is
one draw of rounding error; at large logits a correct implementation that rounds its logits
differently (scale folded into q and k, another summation order) errs up to ~6x that draw
(torch's CPU math path, seen at scale 100). Any implementation that stores a logit l in the
dtype perturbs it by up to u * |l| (u = eps / 2); softmax turns that into an output change of
up to u * max|l| * max|v| (weights: u * max|l|). That first-order bound, with max|l| bounded by
scale * max|q| * max|k| (Cauchy-Schwarz; flat memory), is what the baseline error is raised to
when it is smaller. At ordinary logits (|l| ~ 10) it is far below atol and changes nothing; at
|l| ~ 10^3 it is the honest size of float32's answer (docs/tolerance.md).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from ..cases.case import Case
    from ..cases.inputs import CaseInputs


@dataclass(frozen=True)
class Tolerance:
    rtol: float
    atol: float
    baseline_factor: float | None = None  # K of the baseline rule, None = fixed rule only
    floor_ulps: float = 0.0  # floor = floor_ulps * eps(dtype) * max|expected|
    eps: float = 0.0
    source: str = "policy"

    def floor(self, magnitude: float) -> float:
        return self.floor_ulps * self.eps * max(magnitude, 1.0)

    def describe(self) -> str:
        text = f"rtol={self.rtol:g}, atol={self.atol:g}"
        if self.baseline_factor:
            text += (
                f", or <= {self.baseline_factor:g}x same-dtype baseline error"
                f" + {self.floor_ulps:g} ulp"
            )
        return text


POLICY: dict[str, Tolerance] = {
    "float64": Tolerance(rtol=1e-9, atol=1e-9),
    "float32": Tolerance(rtol=1.3e-6, atol=1e-5, baseline_factor=2.0, floor_ulps=1.0, eps=2.0**-23),
    "float16": Tolerance(rtol=1e-3, atol=1e-5, baseline_factor=2.0, floor_ulps=1.0, eps=2.0**-10),
    "bfloat16": Tolerance(rtol=1.6e-2, atol=1e-5, baseline_factor=2.0, floor_ulps=1.0, eps=2.0**-7),
}

GRADIENT_BASELINE_FACTOR = 3.0


def for_gradients(tol: Tolerance) -> Tolerance:
    """The same policy for a gradient: only the baseline rule's factor changes (2 -> 3).

    Gradients go through about twice the operations of the forward pass, so FlashAttention's
    tests allow them 3x the error of a same-dtype implementation instead of 2x.
    """
    if tol.baseline_factor is None:
        return tol
    return dataclasses.replace(tol, baseline_factor=GRADIENT_BASELINE_FACTOR)


def tolerance_for(dtype: str, override=None) -> Tolerance:  # noqa: ANN001 - ToleranceOverride
    """The policy for `dtype`, or an adapter's declared override (which carries its reason)."""
    base = POLICY[dtype]
    if override is None:
        return base
    return Tolerance(
        rtol=override.rtol,
        atol=override.atol,
        baseline_factor=base.baseline_factor,
        floor_ulps=base.floor_ulps,
        eps=base.eps,
        source=f"override: {override.reason}",
    )


def logit_rounding_floor(case: Case, inputs: CaseInputs, dtype: str) -> dict[str, float]:
    """Per compared output, the error that storing the logits in `dtype` alone implies (see the
    module docstring); {} where it does not apply (float64, layer mode: the projected q and k
    are not at hand, and no shipped layer case has large logits)."""
    tol = tolerance_for(dtype)
    if tol.baseline_factor is None or case.mode != "kernel":
        return {}
    a = inputs.arrays
    u = tol.eps / 2

    def peak_norm(x: np.ndarray) -> float:
        return float(np.sqrt(np.max(np.sum(np.square(x, dtype=np.float64), axis=-1))))

    peak = abs(case.effective_scale) * peak_norm(a["q"]) * peak_norm(a["k"])
    v_peak = float(np.max(np.abs(a["v"]))) if a["v"].size else 0.0
    floor = {"output": u * peak * v_peak, "weights": u * peak, "weights_mean": u * peak}
    return {name: f for name, f in floor.items() if np.isfinite(f)}
