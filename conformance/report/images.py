"""Small inline images for the HTML report: PNG written with zlib + struct, no plotting library.

Every heatmap is one pixel per cell; the page scales it up with `image-rendering: pixelated`,
so a 48 x 48 weight matrix costs a few hundred bytes as a data URI.
"""

from __future__ import annotations

import base64
import struct
import zlib

import numpy as np

# Viridis anchor colours (matplotlib's, sampled at 9 points): perceptually uniform and
# readable by colour-blind people. Weights in [0, 1] map onto it.
_VIRIDIS = np.array(
    [
        (68, 1, 84), (71, 44, 122), (59, 81, 139), (44, 113, 142), (33, 144, 141),
        (39, 173, 129), (92, 200, 99), (170, 220, 50), (253, 231, 37),
    ],
    dtype=np.float64,
)  # fmt: skip
# Errors: pale blue-grey up to the tolerance (fine), then yellow -> red -> dark red above it.
_ERROR = np.array(
    [
        (250, 250, 252), (214, 222, 235), (170, 186, 210),  # <= atol: within tolerance
        (254, 224, 139), (253, 174, 97), (244, 109, 67), (215, 48, 39), (120, 0, 20),
    ],
    dtype=np.float64,
)  # fmt: skip
_ERROR_STOPS = np.array([-4.0, -2.0, 0.0, 0.0001, 1.0, 2.0, 3.0, 5.0])  # log10(error / atol)

MISSING = (200, 200, 200)  # NaN in both, or no value: light grey
NAN_MISMATCH = (230, 0, 200)  # NaN in one and a number in the other: magenta, hard to miss
ATTEND = (49, 104, 142)
MASKED = (236, 236, 236)
ADDITIVE_NEG_INF = (150, 30, 30)
GAP = (255, 255, 255)


def png(rgb: np.ndarray) -> bytes:
    """Encode an [h, w, 3] uint8 array as an 8-bit RGB PNG."""
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    h, w, _ = rgb.shape
    raw = b"".join(b"\x00" + rgb[y].tobytes() for y in range(h))  # filter type 0 per row

    def chunk(tag: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(tag + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw, 9))
        + chunk(b"IEND", b"")
    )


def data_uri(rgb: np.ndarray) -> str:
    return "data:image/png;base64," + base64.b64encode(png(rgb)).decode("ascii")


def as_array(grid: list | np.ndarray) -> np.ndarray:
    """A preview (nested lists, None for NaN) as float64 with NaN."""
    return np.array([[np.nan if x is None else x for x in row] for row in grid], dtype=np.float64)


def _ramp(values: np.ndarray, stops: np.ndarray, colours: np.ndarray) -> np.ndarray:
    out = np.empty((*values.shape, 3), dtype=np.float64)
    for c in range(3):
        out[..., c] = np.interp(values, stops, colours[:, c])
    return out


def weights_image(grid: list | np.ndarray) -> np.ndarray:
    """Attention weights in [0, 1] on viridis; NaN as light grey."""
    a = as_array(grid) if isinstance(grid, list) else np.asarray(grid, dtype=np.float64)
    stops = np.linspace(0.0, 1.0, len(_VIRIDIS))
    # NaN only needs a placeholder for the colour ramp: those pixels are repainted MISSING below.
    rgb = _ramp(np.clip(np.nan_to_num(a, nan=0.0), 0.0, 1.0), stops, _VIRIDIS)
    rgb[np.isnan(a)] = MISSING
    return rgb.round().astype(np.uint8)


def error_image(
    errors: np.ndarray, atol: float, nan_mismatch: np.ndarray | None = None
) -> np.ndarray:
    """|difference| on a log scale relative to atol: blue-grey within it, warm above it."""
    errors = np.asarray(errors, dtype=np.float64)
    scale = atol if atol and atol > 0 else 1e-6
    with np.errstate(divide="ignore", invalid="ignore"):
        level = np.log10(np.where(errors > 0, errors / scale, 1e-300))
    # Placeholder for the ramp only: NaN errors are repainted MISSING, misplaced NaN flagged below.
    level = np.clip(np.nan_to_num(level, nan=-4.0), -4.0, 5.0)
    rgb = _ramp(level, _ERROR_STOPS, _ERROR)
    rgb[np.isnan(errors)] = MISSING
    if nan_mismatch is not None:
        rgb[nan_mismatch] = NAN_MISMATCH
    return rgb.round().astype(np.uint8)


def weight_difference(reference: list, actual: list) -> tuple[np.ndarray, np.ndarray] | None:
    """(|actual - reference| with NaN where both are NaN, NaN-placement mismatches)."""
    ref, act = as_array(reference), as_array(actual)
    if ref.shape != act.shape:
        return None
    both = np.isnan(ref) & np.isnan(act)
    mismatch = np.isnan(ref) ^ np.isnan(act)
    diff = np.abs(act - ref)
    diff[both] = np.nan
    diff[mismatch] = 0.0
    return diff, mismatch


def mask_image(
    attend: np.ndarray | None, bias: np.ndarray | None, batches: int = 4
) -> np.ndarray | None:
    """Head 0 of up to `batches` batch elements side by side, one column of gap between them.

    Blue = attended, light = masked by the boolean part, dark red = -inf in the additive part.
    """
    if attend is None and bias is None:
        return None
    ref = attend if attend is not None else bias
    b, _, t, s = ref.shape
    panels = []
    for i in range(min(b, batches)):
        grid = np.ones((t, s), dtype=bool) if attend is None else attend[i, 0]
        rgb = np.empty((t, s, 3), dtype=np.uint8)
        rgb[grid] = ATTEND
        rgb[~grid] = MASKED
        if bias is not None:
            rgb[np.isneginf(bias[i, 0]) & grid] = ADDITIVE_NEG_INF
        panels.append(rgb)
        panels.append(np.full((t, 1, 3), GAP, dtype=np.uint8))
    return np.concatenate(panels[:-1], axis=1)


def legend_weights(width: int = 64) -> np.ndarray:
    return weights_image(np.linspace(0.0, 1.0, width)[None, :])


def legend_error(width: int = 90) -> np.ndarray:
    """From atol/10^4 to atol*10^5, the range error_image spans."""
    return error_image(10.0 ** np.linspace(-4.0, 5.0, width)[None, :], 1.0)
