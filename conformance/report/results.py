"""Reading results.json: validation with clear errors, and the helpers every format shares.

A results file is written by `conformance run` (one environment, under "environment") or by
`conformance report merge` (several, under "environments", each record naming its
"environment_id"). `load_results` validates either and returns the *normalised* form used by
every renderer: "environments" is always a list of dicts with an "id", and every record has an
"environment_id". The normalised form is in memory only; merge writes it back on purpose.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..errors import ResultsFileError
from ..evaluate import VERDICTS
from ..sanitize import strip_control

SCHEMA_VERSION = 1
REQUIRED_KEYS = ("schema_version", "spec_version", "adapters", "cases", "results")
RECORD_KEYS = ("case", "adapter", "device", "verdict")
# Verdicts from worst to best: the order failures are listed and cells are coloured in.
SEVERITY = ("error", "fail", "diverges", "unsupported", "pass")
BAD = ("fail", "error")
GOOD = ("pass", "diverges")


def load_results(path: str | Path) -> dict:
    """Read and validate a results file; raise ResultsFileError with a clear message."""
    path = Path(path)
    if path.is_dir():  # a run's output folder
        if not (path / "results.json").exists():
            raise ResultsFileError(f"{path}: a folder without a results.json")
        path = path / "results.json"
    if not path.exists():
        raise ResultsFileError(f"{path}: no such results file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ResultsFileError(
            f"{path}: not a results file (not UTF-8 text; is it compressed or binary?)"
        ) from None
    except OSError as error:
        raise ResultsFileError(f"{path}: cannot read: {error.strerror or error}") from None
    if not text.strip():
        raise ResultsFileError(f"{path}: the file is empty (was the run interrupted?)")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        cut = (
            " (the file ends early: was the run interrupted? `conformance run --resume DIR` "
            "finishes it)"
            if _truncated(text)
            else ""
        )
        raise ResultsFileError(
            f"{path}: not valid JSON at line {error.lineno}, column {error.colno}: {error.msg}{cut}"
        ) from None
    return validate(data, str(path))


def _truncated(text: str) -> bool:
    """Whether JSON text stops inside a string or with brackets still open (only on errors)."""
    depth, in_string, escape = 0, False, False
    for ch in text:
        if in_string:
            if escape:
                escape = False
            elif ch == "\\":
                escape = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
    return in_string or depth > 0


def validate(data: Any, source: str = "<results>") -> dict:
    """Check a parsed results document and return its normalised form (a new dict)."""
    if not isinstance(data, dict) or "schema_version" not in data:
        what = type(data).__name__ if not isinstance(data, dict) else "an object without it"
        raise ResultsFileError(
            f"{source}: not a conformance results file: expected a JSON object with "
            f"'schema_version', got {what}\n  hint: pass the results.json that "
            "`conformance run` writes into its output folder"
        )
    version = data["schema_version"]
    if version != SCHEMA_VERSION:
        raise ResultsFileError(
            f"{source}: results schema version {version!r}; this tool reads version "
            f"{SCHEMA_VERSION}\n  hint: use the attention-conformance version that wrote it "
            f"(tool_version {data.get('tool_version', 'unknown')!s})"
        )
    missing = [key for key in REQUIRED_KEYS if key not in data]
    if "environment" not in data and "environments" not in data:
        missing.append("environment")
    if missing:
        raise ResultsFileError(
            f"{source}: results file lacks required keys: {', '.join(missing)} "
            "(truncated or hand-edited?)"
        )
    _expect(source, "adapters", data["adapters"], dict)
    _expect(source, "cases", data["cases"], dict)
    _expect(source, "results", data["results"], list)
    for name, entry in data["adapters"].items():
        _expect(source, f"adapters.{name}", entry, dict)
    for case_id, entry in data["cases"].items():
        _expect(source, f"cases[{case_id!r}]", entry, dict)

    out = dict(data)
    out["environments"] = _environments(data, source)
    known = {env["id"] for env in out["environments"]}
    default_env = out["environments"][0]["id"]
    records = []
    for i, record in enumerate(data["results"]):
        if not isinstance(record, dict):
            raise ResultsFileError(
                f"{source}: results[{i}] is a {type(record).__name__}, not an object"
            )
        lacking = [key for key in RECORD_KEYS if key not in record]
        if lacking:
            raise ResultsFileError(f"{source}: results[{i}] lacks {', '.join(lacking)}")
        if record["verdict"] not in VERDICTS:
            raise ResultsFileError(
                f"{source}: results[{i}] has verdict {record['verdict']!r}; "
                f"expected one of {', '.join(VERDICTS)}"
            )
        record = dict(record)
        env_id = record.setdefault("environment_id", default_env)
        if env_id not in known:
            raise ResultsFileError(
                f"{source}: results[{i}] names environment {env_id!r}, "
                f"which is not in 'environments' ({', '.join(sorted(known))})"
            )
        records.append(record)
    out["results"] = records
    out.pop("environment", None)
    return out


def _expect(source: str, key: str, value: Any, kind: type) -> None:
    if not isinstance(value, kind):
        want = {dict: "an object", list: "a list"}[kind]
        raise ResultsFileError(f"{source}: '{key}' should be {want}, got {type(value).__name__}")


def _environments(data: dict, source: str) -> list[dict]:
    if "environments" in data:
        envs = data["environments"]
        _expect(source, "environments", envs, list)
        if not envs:
            raise ResultsFileError(f"{source}: 'environments' is empty")
        out = []
        for i, env in enumerate(envs):
            if not isinstance(env, dict) or not isinstance(env.get("id"), str):
                raise ResultsFileError(f"{source}: environments[{i}] needs a string 'id'")
            out.append(dict(env))
        return out
    env = data["environment"]
    _expect(source, "environment", env, dict)
    return [{"id": environment_id(env, set()), **env}]


def environment_id(env: dict, taken: set[str]) -> str:
    """A short id for an environment (the runner's own id, else the machine), unique in `taken`."""
    base = str(env.get("id") or env.get("machine_id") or env.get("platform") or "env")
    base = re.sub(r"[^A-Za-z0-9._-]+", "-", base).strip("-")[:40] or "env"
    name, n = base, 2
    while name in taken:
        name, n = f"{base}-{n}", n + 1
    return name


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
    names = list(doc["adapters"])
    for record in doc["results"]:
        if record["adapter"] not in names:
            names.append(record["adapter"])
    return names


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
