"""The environment block of a results file: where and with what the results were produced."""

from __future__ import annotations

import hashlib
import platform
import sys


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(frameworks: dict[str, str], devices: list[str]) -> dict:
    import numpy

    info = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu": cpu_name(),
        "machine": platform.machine(),
        "numpy": numpy.__version__,
        "frameworks": dict(sorted(frameworks.items())),
        "devices": sorted(set(devices)),
    }
    digest = hashlib.sha256(repr(sorted(info.items())).encode()).hexdigest()[:12]
    info["id"] = digest
    return info
