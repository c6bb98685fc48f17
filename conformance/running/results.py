"""results.jsonl (streamed as results complete) and results.json (written atomically).

results.json:
    {"schema_version": 1, "tool_version", "spec_version", "created", "command",
     "environment": {...}, "adapters": {name: declaration summary}, "cases": {id: case dict},
     "results": [record, ...]}
A record is built by conformance.verdicts.evaluate (one per case x adapter x device). A merged file
(`conformance report merge`) has "environments" instead, each record naming its
"environment_id". Writing and reading both live here: load_results/read_results validate
either form (conformance.report renders what load_results returns).
"""

from __future__ import annotations

import gzip
import json
import math
import os
import re
import tempfile
from pathlib import Path
from typing import Any

from ..errors import ResultsFileError
from ..verdicts.evaluate import VERDICTS

SCHEMA_VERSION = 1
REQUIRED_RECORD_KEYS = ("case", "adapter", "device", "dtype", "verdict")  # of a stream line
REQUIRED_KEYS = ("schema_version", "spec_version", "adapters", "cases", "results")
RECORD_KEYS = ("case", "adapter", "device", "verdict")  # of a results.json record


def _clean(value: Any) -> Any:
    """JSON has no NaN/Infinity: write them as null so every JSON reader can load the file."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def _as_text(value: Any) -> str:
    """A value JSON cannot hold (a version object, a numpy scalar...) as its text: a plugin's
    odd `versions()` must never cost the results file (issue 18)."""
    if hasattr(value, "item") and callable(value.item):  # numpy scalars keep their number
        try:
            item = value.item()
            if isinstance(item, (int, float, str, bool)):
                return item  # type: ignore[return-value]
        except Exception:  # noqa: BLE001 - fall back to the text
            pass
    return str(value)


def dumps(value: Any) -> str:
    return json.dumps(_clean(value), allow_nan=False, default=_as_text)


def write_json_atomic(path: Path, data: Any) -> None:
    """Write to a temporary file in the same folder, then rename: never half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(_clean(data), handle, indent=1, allow_nan=False, default=_as_text)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def repair_stream(path: Path) -> int:
    """Cut a torn last line (a run killed mid-write) off results.jsonl; return bytes dropped.

    Appending after the fragment would glue the next record onto it and corrupt both; the
    dropped case has no record, so a resumed run runs it again.
    """
    if not path.exists():
        return 0
    data = path.read_bytes()
    if not data or data.endswith(b"\n"):
        return 0
    start = data.rfind(b"\n") + 1
    try:
        record = json.loads(data[start:].decode("utf-8"))
        complete = isinstance(record, dict)
    except (UnicodeDecodeError, json.JSONDecodeError):
        complete = False
    with open(path, "r+b") as handle:  # noqa: PTH123
        if complete:  # the record is whole, only its newline is missing
            handle.seek(0, os.SEEK_END)
            handle.write(b"\n")
            return 0
        handle.truncate(start)
    return len(data) - start


class RunLock:
    """An exclusive lock on an output folder for the life of a run (`.conformance.lock`).

    A second run into the same --out is refused instead of deleting or interleaving the first
    one's results. The lock is an OS file lock (flock), so a killed run never leaves a stale
    lock behind; the file names the holder's pid for the error message.
    """

    NAME = ".conformance.lock"

    def __init__(self, folder: Path) -> None:
        self.path = folder / self.NAME
        self._handle = None

    def acquire(self) -> None:
        try:
            import fcntl
        except ImportError:  # Windows: no flock; runs are not protected from each other there
            return
        handle = open(self.path, "a+", encoding="utf-8")  # noqa: SIM115 - held until release()
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise ResultsFileError(
                f"{self.path.parent}: another conformance run (pid {holder}) is writing there; "
                "wait for it to finish, or choose another --out"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._handle = handle

    def release(self) -> None:
        if self._handle is not None:
            self._handle.close()  # closing the file releases the flock
            self._handle = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class ResultStream:
    """Appends one JSON line per record and flushes it, so a killed run loses nothing done."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        repair_stream(path)
        self._handle = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()

    def write(self, record: dict) -> None:
        self._handle.write(dumps(record) + "\n")
        self._handle.flush()

    def close(self) -> None:
        self._handle.close()


def read_stream(path: Path) -> list[dict]:
    """Records from a results.jsonl; a torn last line (killed mid-write) is dropped."""
    records = []
    if not path.exists():
        return records
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):
                break  # the run was killed while writing this line
            raise ResultsFileError(f"{path}:{number}: not a JSON record") from None
        if not isinstance(record, dict) or any(k not in record for k in REQUIRED_RECORD_KEYS):
            raise ResultsFileError(f"{path}:{number}: not a result record")
        records.append(record)
    return records


def dedupe(records: list[dict]) -> list[dict]:
    """Keep the last record per (case, adapter, device)."""
    latest: dict[tuple, dict] = {}
    for record in records:
        latest[(record["case"], record["adapter"], record["device"])] = record
    return list(latest.values())


# --- reading results.json: the one reader (conformance.report renders what it returns) -------


def load_results(path: str | Path) -> dict:
    """Read and validate a results file (a run's folder names its results.json); return the
    normalised form every report renders. ResultsFileError with a clear message otherwise."""
    path = _results_path(path)
    return validate(_read_json(path), str(path))


def read_results(path: str | Path) -> dict:
    """Read and validate a results file like load_results; return it as written (a run's
    single "environment" kept, records without "environment_id")."""
    path = _results_path(path)
    data = _read_json(path)
    validate(data, str(path))
    return data


def _results_path(path: str | Path) -> Path:
    path = Path(path)
    if path.is_dir():  # a run's output folder
        if not (path / "results.json").exists():
            raise ResultsFileError(f"{path}: a folder without a results.json")
        path = path / "results.json"
    return path


def _read_json(path: Path) -> Any:
    """The parsed JSON of a results file; ResultsFileError with a clear message otherwise."""
    if not path.exists():
        raise ResultsFileError(f"{path}: no such results file")
    try:
        if path.suffix == ".gz":  # a committed scoreboard: results.json.gz
            text = gzip.decompress(path.read_bytes()).decode("utf-8")
        else:
            text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ResultsFileError(
            f"{path}: not a results file (not UTF-8 text; is it compressed or binary?)"
        ) from None
    except (EOFError, gzip.BadGzipFile) as error:
        raise ResultsFileError(f"{path}: not a readable gzip file: {error}") from None
    except OSError as error:
        raise ResultsFileError(f"{path}: cannot read: {error.strerror or error}") from None
    if not text.strip():
        raise ResultsFileError(f"{path}: the file is empty (was the run interrupted?)")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        cut = (
            " (it ends early: was the run interrupted? `conformance run --resume DIR` finishes it)"
            if _truncated(text)
            else ""
        )
        raise ResultsFileError(
            f"{path}: not valid JSON at line {error.lineno}, column {error.colno}: {error.msg}; "
            f"the file is corrupted or truncated{cut}"
        ) from None
    return data


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
