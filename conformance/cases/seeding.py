"""Deterministic random streams: the same case gives bit-identical arrays on any machine.

A stream is keyed by the case's data key (its id without the dtype, plus its seed) and a
stream name, hashed with SHA-256 into a PCG64 seed. NumPy guarantees PCG64's bit stream and
`standard_normal`/`random` for a fixed seed across platforms.
"""

from __future__ import annotations

import hashlib

import numpy as np


def stream(key: str, name: str) -> np.random.Generator:
    digest = hashlib.sha256(f"{key}|{name}".encode()).digest()
    return np.random.Generator(np.random.PCG64(int.from_bytes(digest[:16], "little")))
