"""An external implementation's configuration: the protocol's constants, `external:CMD`, and
YAML/TOML adapter files (FILE_KEYS), each mistake a UsageError naming the file."""

from __future__ import annotations

import json
import math
import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UsageError, did_you_mean

PROTOCOL = "attention-conformance/1"


PREFIX = "external:"


ADAPTER_FILE_SUFFIXES = (".yaml", ".yml", ".toml")


EXIT_UNSUPPORTED = 3


MASK_FORMS = ("additive", "attend", "masked")


FILE_KEYS = {
    "command": "what to run: a string (split like a shell) or a list; relative to this file",
    "protocol": "persistent (default: one process, JSON lines) or oneshot (one run per case)",
    "timeout_s": "seconds per case (default 60)",
    "startup_timeout_s": "seconds until the hello line (default 60)",
    "env": "environment variables for the command",
    "mask": "mask form the implementation reads: additive (default), attend or masked",
    "name": "adapter name, e.g. mylib.attention",
    "summary": "one line: what this runs",
    "framework": "what to report as the framework (default: external)",
    "features": "supported feature tags (`conformance list features`)",
    "dtypes": "supported dtypes (default float64, float32)",
    "notes": "free text shown in reports",
    "divergences": "documented differences: [{id, reason, link, when: [tags], ...}]",
    "tolerances": "tolerance overrides: [{dtype, rtol, atol, reason}]",
    "unsupported_reasons": "{feature: why} for the report",
    "versions": "{package: version} for the report",
    "devices": "devices it runs on, e.g. [cpu, cuda:0] (default [cpu]); each request names one",
}


DECLARATION_KEYS = set(FILE_KEYS) - {"command", "protocol", "timeout_s", "startup_timeout_s", "env"}


class ExternalError(RuntimeError):
    """The external implementation misbehaved (crashed, timed out, broke the protocol)."""


@dataclass(frozen=True)
class ExternalConfig:
    command: tuple[str, ...]
    cwd: str
    protocol: str = "persistent"
    timeout_s: float = 60.0
    startup_timeout_s: float = 60.0
    env: tuple[tuple[str, str], ...] = ()
    declared: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)
    source: str = ""  # the selector it came from, for messages


def config_from_command(command: str, cwd: str | None = None) -> ExternalConfig:
    parts = tuple(shlex.split(command))
    if not parts:
        raise UsageError("external: needs a command, e.g. --adapter external:'node attention.js'")
    return ExternalConfig(command=parts, cwd=cwd or os.getcwd(), source=f"{PREFIX}{command}")


def _read_file(path: Path) -> dict:
    if path.suffix == ".toml":
        try:
            import tomllib
        except ModuleNotFoundError:  # Python 3.10
            try:
                import tomli as tomllib
            except ModuleNotFoundError:
                raise UsageError(f"{path}: reading TOML needs Python 3.11+ or tomli") from None
        try:
            return tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as error:
            raise UsageError(f"{path}: {error}") from None
    from ..spec.yamlload import load_yaml_file

    data = load_yaml_file(path)
    return json.loads(json.dumps(data))  # LocatedDict -> plain data


def _seconds(path: Path, data: dict, key: str) -> float:
    """A timeout from the adapter file: a positive finite number (default 60)."""
    value = data.get(key, 60.0)
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not (math.isfinite(value) and value > 0)
    ):
        raise UsageError(f"{path}: '{key}' must be a positive number of seconds, got {value!r}")
    return float(value)


def load_adapter_file(path: str | Path) -> ExternalConfig:
    """Read a YAML/TOML adapter file (keys: FILE_KEYS)."""
    path = Path(path).resolve()
    if not path.is_file():
        raise UsageError(f"adapter file {path} does not exist")
    data = _read_file(path)
    if not isinstance(data, dict):
        raise UsageError(f"{path}: an adapter file is a mapping of keys ({', '.join(FILE_KEYS)})")
    for key in data:
        if key not in FILE_KEYS:
            hint = did_you_mean(key, FILE_KEYS)
            raise UsageError(f"{path}: unknown key '{key}'" + (f"; {hint}" if hint else ""))
    command = data.get("command")
    if isinstance(command, str):
        parts = tuple(shlex.split(command))
    elif isinstance(command, list) and all(isinstance(p, str) for p in command):
        parts = tuple(command)
    else:
        raise UsageError(f"{path}: 'command' must be a string or a list of strings")
    protocol = data.get("protocol", "persistent")
    if protocol not in ("persistent", "oneshot"):
        raise UsageError(f"{path}: 'protocol' must be persistent or oneshot, not {protocol!r}")
    env = data.get("env") or {}
    if not isinstance(env, dict):
        raise UsageError(f"{path}: 'env' must be a mapping")
    return ExternalConfig(
        command=parts,
        cwd=str(path.parent),
        protocol=protocol,
        timeout_s=_seconds(path, data, "timeout_s"),
        startup_timeout_s=_seconds(path, data, "startup_timeout_s"),
        env=tuple(sorted((str(k), str(v)) for k, v in env.items())),
        declared={k: v for k, v in data.items() if k in DECLARATION_KEYS},
        source=str(path),
    )
