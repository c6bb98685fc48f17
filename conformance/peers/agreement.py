"""Agreement of the float64 reference with a peer suite's stored expected outputs."""

from __future__ import annotations

from typing import Any

import numpy as np


def agreement(
    case: Any, atol: float | None = None, masked_rows: str | None = None
) -> dict[str, dict]:
    """Our float64 reference vs the case's stored expected outputs, per output name.

    The peer's numbers are held to the case dtype's tolerance (low precision: the same-dtype
    baseline rule), exactly as an implementation's would be; `atol` replaces that with a
    fixed absolute tolerance (Keras's hand-written expectations carry 2-4 digits).
    `masked_rows` is the peer's policy for fully masked rows (ONNX: zeros).
    """
    from ..cases.inputs import make_inputs, stored_array
    from ..oracle.reference import attention, baseline
    from ..verdicts.compare import baseline_error, compare
    from ..verdicts.tolerance import Tolerance, tolerance_for

    inputs = make_inputs(case)
    policy = masked_rows or case.mask.fully_masked_rows
    ref = attention(case, inputs, masked_rows=policy)
    tol = tolerance_for(case.dtype) if atol is None else Tolerance(rtol=0.0, atol=atol)
    base = baseline(case, inputs, masked_rows=policy) if tol.baseline_factor else None
    result = {}
    for name, where in (case.expected or {}).items():
        theirs = stored_array(where).astype(np.float64)
        b_err = baseline_error(base[name], ref[name]) if base is not None else None
        c = compare(name, theirs, ref[name], tol, b_err)
        result[name] = {"ok": c.ok, "max_abs_error": c.max_abs_error, "summary": c.summary()}
    return result
