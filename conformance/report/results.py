"""The helpers every report format shares, over a loaded results file.

Reading is conformance.running.results.load_results (re-exported here): it validates a file written by
`conformance run` (one environment, under "environment") or by `conformance report merge`
(several, under "environments", each record naming its "environment_id") and returns the
*normalised* form used by every renderer: "environments" is always a list of dicts with an
"id", and every record has an "environment_id". The normalised form is in memory only; merge
writes it back on purpose.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

# The reader is conformance.running.results (next to the writer); re-exported for the renderers.
from ..running.results import (  # noqa: F401
    RECORD_KEYS,
    REQUIRED_KEYS,
    SCHEMA_VERSION,
    environment_id,
    load_results,
    validate,
)
from ..sanitize import strip_control

# Verdicts from worst to best: the order failures are listed and cells are coloured in.
SEVERITY = ("error", "fail", "diverges", "unsupported", "pass")
BAD = ("fail", "error")
GOOD = ("pass", "diverges")


def environment_label(env: dict) -> str:
    """One line describing a machine: what produced a result."""
    parts = [env.get("machine_id") or env["id"]]
    for key in ("platform", "cpu"):
        if env.get(key):
            parts.append(str(env[key]))
    gpus = [d for d in env.get("devices", []) if not str(d).startswith("cpu")]
    if gpus:
        parts.append(", ".join(str(d) for d in gpus))
    return " · ".join(parts)


# --- shared views ------------------------------------------------------------------------


def adapter_names(doc: dict) -> list[str]:
    """Adapters in the file's declaration order, then any only seen in records."""
    names = dict.fromkeys(doc["adapters"])
    for record in doc["results"]:
        names.setdefault(record["adapter"])
    return list(names)


def families(doc: dict) -> list[str]:
    """Case families, alphabetical: the shipped specs' order, and the same for every shard."""
    found = {case.get("family") for case in doc["cases"].values()} - {None, ""}
    found |= {record_family(record) for record in doc["results"]}
    return sorted(found)


def record_family(record: dict) -> str:
    return record.get("family") or record["case"].split("/", 1)[0]


def counts(records: Iterable[dict]) -> Counter:
    return Counter(r["verdict"] for r in records)


def worst(counter: Counter) -> str | None:
    """The most severe verdict present, or None for no results."""
    return next((v for v in SEVERITY if counter.get(v)), None)


def matrix(doc: dict) -> dict[tuple[str, str], Counter]:
    """(adapter, family) -> verdict counts."""
    out: dict[tuple[str, str], Counter] = {}
    for record in doc["results"]:
        key = (record["adapter"], record_family(record))
        out.setdefault(key, Counter())[record["verdict"]] += 1
    return out


def sort_key(record: dict) -> tuple:
    """Worst verdicts first, then adapter, case and device."""
    return (SEVERITY.index(record["verdict"]), record["adapter"], record["case"], record["device"])


def repro_command(doc: dict, record: dict) -> str:
    """The command that re-runs exactly this result."""
    import shlex

    parts = ["conformance", "run"]
    case = doc["cases"].get(record["case"]) or {}
    spec = str(case.get("source") or "").rsplit(":", 1)[0]
    if spec:
        parts.append(spec)
    parts += ["--adapter", record["adapter"], "--case", record["case"]]
    if record["device"] != "cpu":
        parts += ["--device", record["device"]]
    return " ".join(shlex.quote(p) for p in parts)


def one_line(text: str | None, limit: int = 240) -> str:
    """A message squeezed onto one line, cut at `limit` characters, without control
    characters or ANSI escape sequences (issue 18: messages come from adapters)."""
    text = " ".join(strip_control(text or "", newlines=False).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
