"""Known findings: machine-readable explanations of real fails, one data file per adapter module.

`adapters/findings/*.json` (in the source checkout) lists, per adapter, case-id patterns whose
fail or error is understood: the explanation, the docs page and the upstream link. A matching
result stays a fail; the reports show the explanation next to it instead of leaving the reader
to find it in prose.
"""

from __future__ import annotations

import fnmatch
import json
from functools import lru_cache
from pathlib import Path


def _findings_dir() -> Path:
    """adapters/findings in a checkout; conformance/adapters/findings in an installed wheel
    (pyproject ships them as package data of conformance.adapters)."""
    import importlib.util

    spec = importlib.util.find_spec("conformance.adapters")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        if (Path(folder) / "findings").is_dir():
            return Path(folder) / "findings"
    return Path(__file__).resolve().parent.parent.parent / "adapters" / "findings"


FINDINGS_DIR = _findings_dir()


@lru_cache(maxsize=1)
def known_findings(directory: Path = FINDINGS_DIR) -> tuple[dict, ...]:
    """Every finding in `directory`/*.json, in file order."""
    found: list[dict] = []
    for path in sorted(directory.glob("*.json")) if directory.is_dir() else ():
        for entry in json.loads(path.read_text()).get("findings", []):
            found.append(entry)
    return tuple(found)


def finding_for(record: dict, findings: tuple[dict, ...] | None = None) -> dict | None:
    """The known finding that explains this fail or error result, or None."""
    if record.get("verdict") not in ("fail", "error"):
        return None
    for entry in known_findings() if findings is None else findings:
        if entry.get("adapter") != record.get("adapter"):
            continue
        if any(fnmatch.fnmatchcase(record["case"], pattern) for pattern in entry.get("cases", [])):
            return entry
    return None
