"""results.jsonl (streamed as results complete) and results.json (written atomically).

results.json:
    {"schema_version": 1, "tool_version", "spec_version", "created", "command",
     "environment": {...}, "adapters": {name: declaration summary}, "cases": {id: case dict},
     "results": [record, ...]}
A record is built by conformance.evaluate (one per case x adapter x device).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

from .errors import ResultsFileError

SCHEMA_VERSION = 1
REQUIRED_RECORD_KEYS = ("case", "adapter", "device", "dtype", "verdict")


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


def read_results(path: str | Path) -> dict:
    """Load and validate a results.json; a corrupted or foreign file is a clear error."""
    path = Path(path)
    if path.is_dir():
        path = path / "results.json"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ResultsFileError(f"{path}: no such results file") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ResultsFileError(f"{path}: cannot read: {error}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise ResultsFileError(
            f"{path}:{error.lineno}: not valid JSON ({error.msg}); the file is corrupted or "
            "truncated. If a run was interrupted, `conformance run --resume DIR` rebuilds it."
        ) from None
    if not isinstance(data, dict) or "schema_version" not in data or "results" not in data:
        raise ResultsFileError(
            f"{path}: not a conformance results file (no schema_version/results)"
        )
    if data["schema_version"] != SCHEMA_VERSION:
        raise ResultsFileError(
            f"{path}: results schema_version {data['schema_version']!r}; this tool reads "
            f"{SCHEMA_VERSION}"
        )
    if not isinstance(data["results"], list):
        raise ResultsFileError(f"{path}: 'results' must be a list")
    for i, record in enumerate(data["results"]):
        if not isinstance(record, dict) or any(k not in record for k in REQUIRED_RECORD_KEYS):
            raise ResultsFileError(f"{path}: results[{i}] is not a result record")
    return data
