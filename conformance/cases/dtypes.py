"""Floating-point formats: names, rounding, and how arrays travel to adapters.

NumPy has no bfloat16, so bfloat16 values travel as float32 arrays holding exactly
bfloat16-representable numbers; adapters cast them to their framework's bfloat16 losslessly.
"""

from __future__ import annotations

import numpy as np

STORAGE = {
    "float64": np.float64,
    "float32": np.float32,
    "float16": np.float16,
    "bfloat16": np.float32,
}

EPS = {
    "float64": float(np.finfo(np.float64).eps),
    "float32": float(np.finfo(np.float32).eps),
    "float16": float(np.finfo(np.float16).eps),
    "bfloat16": 2.0**-7,
}


def round_bfloat16(x: np.ndarray) -> np.ndarray:
    """Round to the nearest bfloat16 (ties to even); returns float32. NaN/Inf preserved."""
    f32 = np.asarray(x, dtype=np.float32)
    bits = f32.view(np.uint32).astype(np.uint64)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) << 16
    out = rounded.astype(np.uint32).view(np.float32)
    return np.where(np.isnan(f32), np.float32(np.nan), out)


def round_to(x: np.ndarray, dtype: str) -> np.ndarray:
    """Round float64 values to `dtype`'s representable values; result is float64."""
    if dtype == "float64":
        return np.asarray(x, dtype=np.float64)
    if dtype == "bfloat16":
        return round_bfloat16(x).astype(np.float64)
    return np.asarray(x).astype(STORAGE[dtype]).astype(np.float64)


def to_storage(x: np.ndarray, dtype: str) -> np.ndarray:
    """The array an adapter receives for `dtype` (bfloat16 as float32, exactly representable)."""
    if dtype == "bfloat16":
        return round_bfloat16(x)
    return np.asarray(x).astype(STORAGE[dtype])
