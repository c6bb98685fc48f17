"""Where adapters keep what is expensive to rebuild across runs (compiled programs, exports).

One folder for all of them: $CONFORMANCE_CACHE_DIR, default ~/.cache/attention-conformance.
Set CONFORMANCE_CACHE_DIR=off (or `conformance run --no-cache`) to disable. A cache entry is
keyed by everything that determines its content (framework versions included), so a cached
program computes exactly what a fresh one would.
"""

from __future__ import annotations

import os
from pathlib import Path

ENV = "CONFORMANCE_CACHE_DIR"
OFF = ("off", "0", "none", "")


def cache_root() -> Path | None:
    value = os.environ.get(ENV)
    if value is None:
        return Path.home() / ".cache" / "attention-conformance"
    if value.strip().lower() in OFF:
        return None
    return Path(value)


def cache_dir(name: str) -> Path | None:
    """A sub-folder for one kind of cached artifact, or None when caching is off."""
    root = cache_root()
    return None if root is None else root / name
