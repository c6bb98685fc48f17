"""How the HTML report's data travels in the page: results as positional rows, columns as
plain lists, run lengths or deltas (the page's decodeColumns undoes them), and the JSON block
safe inside a script tag, gzip+base64 above a size."""

from __future__ import annotations

import base64
import gzip
import json

import numpy as np

# Results travel as positional rows (the page turns them back into objects), keys ordered so an
# unsupported result's row ends early: 17,000 unsupported results of the default matrix would
# otherwise be most of the page. `i` (the row's index) and `byCase` are rebuilt by the page.
ROW_KEYS = ("c", "a", "v", "m", "mu", "d", "e", "s", "x", "rx", "t", "mm", "fm", "dv", "cmd",
            "w", "wd", "oe", "kf")  # fmt: skip


_CANNOT = " cannot express: "


# An unsupported result with nothing but these keys joins its group (the "unsupported" rows:
# the shared row with its case indices appended as a last element).
_GROUPABLE = {"c", "a", "d", "e", "v", "m", "mu", "s", "cmd"}


def _columns(rows: list[list]) -> list:
    """Rows as columns, each the shortest of: a plain list, run lengths {"rle": [value, count,
    ...]} (a run of one adapter, verdict or tolerance) or {"delta": [...]} (sorted case
    indices). The page (assets.JS decodeColumns) turns them back into rows."""
    width = len(ROW_KEYS)
    columns = [[row[j] if j < len(row) else None for row in rows] for j in range(width)]
    return [_encode_column(column) for column in columns]


def _encode_column(values: list) -> list | dict:
    def size(x: object) -> int:
        return len(json.dumps(x, separators=(",", ":"), default=str))

    runs: list = []
    for value in values:
        if runs and runs[-2] == value:
            runs[-1] += 1
        else:
            runs += [value, 1]
    best: list | dict = values
    if size({"rle": runs}) < size(best):
        best = {"rle": runs}
    if values and all(type(v) is int for v in values):
        deltas = [b - a for a, b in zip([0, *values], values, strict=False)]
        if size({"delta": deltas}) < size(best):
            best = {"delta": deltas}
    return best


def _deltas(row: list) -> list:
    """The case indices at the end of an unsupported row, sorted and as differences."""
    cases = sorted(row[-1])
    return row[:-1] + [[b - a for a, b in zip([0, *cases], cases, strict=False)]]


def _row(entry: dict) -> list:
    row = [entry.get(k) for k in ROW_KEYS]
    while row and row[-1] is None:
        row.pop()
    return row


def _finite(value: object) -> object:
    if isinstance(value, float):
        return value if np.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def _json_for_script(data: dict) -> str:
    # "<" escaped so no "</script>" or "<!--" inside a message can end the data block early.
    try:
        text = json.dumps(data, separators=(",", ":"), allow_nan=False, default=str)
    except ValueError:  # a NaN/Infinity from a hand-made file: JSON.parse would reject it
        text = json.dumps(_finite(data), separators=(",", ":"), allow_nan=False, default=str)
    return text.replace("<", "\\u003c").replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


# Above this many characters of JSON the data block is gzip-compressed (base64 in the page):
# a default run's 1.7 MB of data becomes about 0.2 MB; small reports stay plain and readable.
COMPRESS_DATA_ABOVE = 256 * 1024


def _data_block(payload: dict) -> str:
    text = _json_for_script(payload)
    if len(text) <= COMPRESS_DATA_ABOVE:
        return f'<script type="application/json" id="report-data">{text}</script>'
    packed = base64.b64encode(gzip.compress(text.encode(), compresslevel=9, mtime=0)).decode()
    return (
        '<script type="application/octet-stream" id="report-data" data-encoding="gzip+base64">'
        f"{packed}</script>"
    )
