"""Implementations that are not Python: a command, cases in files, results in files.

`conformance run --adapter external:'node examples/js/attention.js'` or
`conformance run --adapter path/to/my.adapter.yaml` (or .toml). The protocol is
"attention-conformance/1"; docs/plugins.md has the full description and a C++/Rust sketch.

Per case the runner makes a directory holding
    request.json   everything below, as JSON
    case.txt       the same essentials as `key value` lines, for languages without JSON
    q.npy k.npy v.npy                        kernel mode: [B,H,T,K] [B,G,S,K] [B,G,S,V]
    query.npy key.npy value.npy              layer mode: [B,T,Dq] [B,S,Dk] [B,S,Dv]
    wq bq wk bk wv bv wo bo .npy             layer mode: canonical weights (biases zeros
                                             when the case has none), bias_k/bias_v too
    mask.npy        [B,H,T,S]: "additive" float (0/-inf + finite bias), "attend" bool
                    (True = attend) or "masked" bool (True = masked out), as the
                    implementation declared; absent when the case has no mask
Arrays are NumPy .npy files (format 1.0, little-endian, C order) in the case dtype's storage
type: <f8 float64, <f4 float32 (and bfloat16, holding bfloat16 values), <f2 float16, |b1.
The implementation writes output.npy ([B,H,T,V] kernel, [B,T,Do] layer) and, when asked
(`compare` lists them), weights.npy [B,H,T,S] and weights_mean.npy [B,T,S], any float dtype.

Two ways to run:
- persistent (default): the command starts once and prints a hello line (JSON) on stdout:
      {"protocol": "attention-conformance/1", "name": ..., "features": [...], "dtypes": [...],
       "mask": "additive", "summary": ..., "versions": {...}}
  then reads one JSON request per line on stdin and answers one JSON line per request:
      {"id": <request id>, "status": "ok" | "unsupported" | "error",
       "reason"/"message": "...", "outputs": {"output": "output.npy", ...}}
  {"type": "shutdown"} (or end of input) asks it to exit. Other stdout lines are logs.
- oneshot: the command runs once per case with the case directory as its last argument,
  writes the outputs there and exits 0 (3 = unsupported, reason on stderr; else an error).
  Its declaration comes from the adapter file, or `command --describe` prints the hello line.

Timeouts: `startup_timeout_s` for the hello, `timeout_s` per case; a process that misses one
is killed (with its process group) and restarted for the next case.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import math
import os
import queue
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..cases.case import Case
from ..cases.inputs import CaseInputs
from ..errors import UsageError, did_you_mean
from .adapter import Adapter, Declaration, Divergence, ToleranceOverride, Unsupported

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


# --- selectors and targets -----------------------------------------------------------------


def is_external(selector: str) -> bool:
    """Whether an --adapter value names an external implementation (command or adapter file)."""
    if selector.startswith(PREFIX):
        return True
    return selector.endswith(ADAPTER_FILE_SUFFIXES) and Path(selector).is_file()


def target_for(selector: str) -> str:
    """An importable "module:attr" target for an external selector, valid in any process.

    The command (with the directory it is relative to) or the adapter file's absolute path is
    encoded in the attribute name; this module's __getattr__ rebuilds the class from it.
    """
    if selector.startswith(PREFIX):
        payload = {"command": selector[len(PREFIX) :], "cwd": os.getcwd()}
    else:
        payload = {"file": str(Path(selector).resolve())}
    encoded = json.dumps(payload, sort_keys=True).encode().hex()
    return f"{__name__}:x_{encoded}"


def adapter_class(selector: str) -> type[ExternalAdapter]:
    """The adapter class for `external:CMD` or an adapter file (starts CMD to read its hello)."""
    return __getattr__(target_for(selector).partition(":")[2])


_CLASSES: dict[str, type[ExternalAdapter]] = {}


def __getattr__(name: str) -> Any:  # PEP 562: resolves targets made by target_for
    if not name.startswith("x_"):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if name not in _CLASSES:
        try:
            payload = json.loads(bytes.fromhex(name[2:]).decode())
        except ValueError:
            raise AttributeError(f"{name!r} is not an external adapter target") from None
        if "file" in payload:
            config = load_adapter_file(payload["file"])
        else:
            config = config_from_command(payload["command"], payload["cwd"])
        _CLASSES[name] = make_adapter_class(config, qualname=name, module=__name__)
    return _CLASSES[name]


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


# --- requests ------------------------------------------------------------------------------


def write_request(
    case: Case,
    inputs: CaseInputs,
    directory: str | Path,
    mask_form: str = "additive",
    device: str = "cpu",
) -> dict:
    """Write a case's arrays, request.json and case.txt into `directory`; return the request."""
    from .plugin import mask_for

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    names = list(inputs.arrays) + list(inputs.weights)
    files = {}
    for name in names:
        np.save(directory / f"{name}.npy", np.ascontiguousarray(inputs.native(name)))
        files[name] = f"{name}.npy"
    mask = mask_for(case, mask_form, broadcast=True)
    if mask is not None:
        np.save(directory / "mask.npy", mask)
    shape = {k: v for k, v in vars(case.shape).items()}
    case_dict = case.to_dict()
    case_dict.pop("expected", None)  # stored peer-suite outputs are not the implementation's
    request = {
        "type": "case",
        "protocol": PROTOCOL,
        "id": case.id,
        "dir": str(directory.resolve()),
        "mode": case.mode,
        "dtype": case.dtype,
        "device": device,
        "scale": case.effective_scale,
        "shape": shape,
        "self_attention": case.self_attention,
        "use_bias": case.use_bias,
        "compare": list(case.compare),
        "features": sorted(case.features),
        "inputs": files,
        "mask": "mask.npy" if mask is not None else None,
        "mask_form": mask_form,
        # "output" always (the report shows its error), weights when the case compares them
        "outputs": {name: f"{name}.npy" for name in ("output", *case.compare)},
        "case": case_dict,
    }
    (directory / "request.json").write_text(json.dumps(request, indent=1, default=list))
    lines = [f"protocol {PROTOCOL}", f"mode {case.mode}", f"dtype {case.dtype}", f"device {device}"]
    lines += [f"{k} {shape[k]}" for k in (
        "batch", "query_len", "kv_len", "num_heads", "num_kv_heads", "key_dim", "value_dim",
        "query_dim", "key_input_dim", "value_input_dim", "output_dim",
    )]  # fmt: skip
    lines += [
        f"scale {case.effective_scale!r}",
        f"self_attention {int(case.self_attention)}",
        f"use_bias {int(case.use_bias)}",
        f"mask {mask_form if mask is not None else 'none'}",
        "inputs " + " ".join(names),
        "compare " + " ".join(case.compare),
        "outputs " + " ".join(dict.fromkeys(("output", *case.compare))),
    ]
    (directory / "case.txt").write_text("\n".join(lines) + "\n")
    return request


def read_outputs(directory: Path, names: dict[str, str]) -> dict[str, np.ndarray]:
    out = {}
    for name, file in names.items():
        path = (directory / file).resolve()
        if path.parent != directory.resolve():
            raise ExternalError(f"output '{name}' names a file outside the case directory: {file}")
        if path.exists():
            out[name] = np.load(path, allow_pickle=False)
    return out


# --- the process ---------------------------------------------------------------------------


def _env(config: ExternalConfig) -> dict[str, str]:
    env = dict(os.environ)
    env.update(dict(config.env))
    return env


def _kill(process: subprocess.Popen) -> None:
    """Kill the process and whatever it started (its own session)."""
    if process.poll() is not None:
        return
    try:
        if hasattr(os, "killpg"):
            os.killpg(process.pid, signal.SIGKILL)
        else:
            process.kill()
    except (ProcessLookupError, PermissionError):
        pass
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=5)


class Channel:
    """One persistent process: JSON lines on stdin/stdout, stderr kept for error messages."""

    def __init__(self, config: ExternalConfig) -> None:
        self.config = config
        try:
            self.process = subprocess.Popen(
                list(config.command), cwd=config.cwd, env=_env(config),
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                text=True, errors="replace", bufsize=1, start_new_session=True,
            )  # fmt: skip
        except OSError as error:
            raise ExternalError(f"cannot start {shlex.join(config.command)}: {error}") from None
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.stderr: deque[str] = deque(maxlen=40)
        self.logs: deque[str] = deque(maxlen=40)
        for stream, sink, eof in (
            (self.process.stdout, self.lines.put, True),
            (self.process.stderr, self.stderr.append, False),
        ):  # reader threads: a chatty process must never block on a full pipe
            threading.Thread(target=self._pump, args=(stream, sink, eof), daemon=True).start()
        self.hello: dict | None = None

    @staticmethod
    def _pump(stream, sink, eof: bool) -> None:  # noqa: ANN001
        with contextlib.suppress(OSError, ValueError):
            for line in stream:
                sink(line.rstrip("\n"))
        if eof:
            sink(None)  # end of stdout

    def tail(self) -> str:
        text = "\n".join(list(self.stderr)[-12:] or list(self.logs)[-12:])
        return f"; its last output:\n{text}" if text else ""

    def receive(self, timeout: float, what: str) -> dict:
        """The next JSON object line; other lines are logs. Raises on timeout or exit."""

        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            try:
                line = self.lines.get(timeout=max(0.0, left))
            except queue.Empty:
                self.close(kill=True)
                raise TimeoutError(
                    f"{shlex.join(self.config.command)} gave no {what} within {timeout:g} s "
                    f"(killed){self.tail()}"
                ) from None
            if line is None:
                code = self.process.wait(timeout=5)
                raise ExternalError(
                    f"{shlex.join(self.config.command)} exited (code {code}) before its "
                    f"{what}{self.tail()}"
                )
            stripped = line.strip()
            if stripped.startswith("{"):
                try:
                    message = json.loads(stripped)
                except json.JSONDecodeError:
                    message = None
                if isinstance(message, dict):
                    return message
            self.logs.append(line)

    def send(self, message: dict) -> None:
        try:
            self.process.stdin.write(json.dumps(message) + "\n")
            self.process.stdin.flush()
        except (BrokenPipeError, OSError, ValueError):
            code = self.process.poll()
            raise ExternalError(
                f"{shlex.join(self.config.command)} is not reading requests (exit code {code})"
                f"{self.tail()}"
            ) from None

    def handshake(self) -> dict:
        hello = self.receive(self.config.startup_timeout_s, "hello line")
        if hello.get("protocol") != PROTOCOL:
            self.close(kill=True)
            raise ExternalError(
                f"{shlex.join(self.config.command)}: the first JSON line must be the hello "
                f'with "protocol": "{PROTOCOL}", got {json.dumps(hello)[:200]}'
            )
        self.hello = hello
        return hello

    def alive(self) -> bool:
        return self.process.poll() is None

    def close(self, kill: bool = False) -> None:
        if not kill and self.alive():
            with contextlib.suppress(ExternalError):
                self.send({"type": "shutdown"})
            with contextlib.suppress(OSError, ValueError):
                self.process.stdin.close()
            try:
                self.process.wait(timeout=2)
            except subprocess.TimeoutExpired:
                pass
        _kill(self.process)
        for stream in (self.process.stdin, self.process.stdout, self.process.stderr):
            with contextlib.suppress(OSError, ValueError):
                stream.close()


def describe(config: ExternalConfig) -> dict:
    """The implementation's declaration: the adapter file's keys, else its hello line."""
    if "features" in config.declared and "name" in config.declared:
        return dict(config.declared)
    if config.protocol == "oneshot":
        try:
            done = subprocess.run(
                [*config.command, "--describe"], cwd=config.cwd, env=_env(config),
                capture_output=True, text=True, timeout=config.startup_timeout_s,
            )  # fmt: skip
        except (OSError, subprocess.TimeoutExpired) as error:
            raise UsageError(f"{config.source}: `--describe` failed: {error}") from None
        hello = next(
            (json.loads(x) for x in done.stdout.splitlines() if x.strip().startswith("{")), None
        )
        if not isinstance(hello, dict) or hello.get("protocol") != PROTOCOL:
            raise UsageError(
                f"{config.source}: give name and features in the adapter file, or make "
                f"`command --describe` print the hello line (got: {done.stdout[:200]!r})"
            )
    else:
        # Started once just to read the hello (the worker process starts its own): a process
        # kept alive here would idle in the runner's process for the whole run.
        try:
            channel = Channel(config)
            try:
                hello = channel.handshake()
            finally:
                channel.close()
        except (ExternalError, TimeoutError) as error:
            raise UsageError(f"{config.source}: {error}") from None
    merged = {k: v for k, v in hello.items() if k in DECLARATION_KEYS}
    merged.update(config.declared)  # the adapter file wins: it is what the user edits
    return merged


def _declaration(config: ExternalConfig, info: dict) -> Declaration:
    if "name" not in info or "features" not in info:
        raise UsageError(f"{config.source}: the declaration needs 'name' and 'features'")
    mask = info.get("mask", "additive")
    if mask not in MASK_FORMS:
        raise UsageError(f"{config.source}: 'mask' must be one of {MASK_FORMS}, got {mask!r}")
    try:
        divergences = tuple(
            Divergence(**{**d, "when": frozenset(d.get("when", ())),
                          **({"dtypes": frozenset(d["dtypes"])} if d.get("dtypes") else {})})
            for d in info.get("divergences", ())
        )  # fmt: skip
        tolerances = tuple(ToleranceOverride(**t) for t in info.get("tolerances", ()))
        return Declaration(
            name=str(info["name"]),
            summary=str(info.get("summary", shlex.join(config.command))),
            framework=str(info.get("framework", "external")),
            features=frozenset(info["features"]),
            dtypes=frozenset(info.get("dtypes", ("float64", "float32"))),
            worker=f"external:{info['name']}",
            env=dict(config.env),
            divergences=divergences,
            tolerances=tolerances,
            unsupported_reasons=dict(info.get("unsupported_reasons", {})),
            notes=str(info.get("notes", "")),
        )
    except (TypeError, ValueError) as error:
        raise UsageError(f"{config.source}: bad declaration: {error}") from None


class ExternalAdapter(Adapter):
    """Runs cases through an external command; subclasses carry `config` and `declaration`."""

    config: ExternalConfig
    info: dict

    def __init__(self) -> None:
        self._channel: Channel | None = None
        self._root = Path(tempfile.mkdtemp(prefix="conformance-external-"))
        self._count = 0
        atexit.register(self.close)

    def setup(self) -> None:
        # Start now, so a command that cannot start or never says hello fails the adapter's
        # setup (every case reports it once) instead of timing out case after case.
        if self.config.protocol == "persistent":
            try:
                self._live_channel()
            except (ExternalError, TimeoutError) as error:
                raise ExternalError(f"{self.config.source}: {error}") from None

    def devices(self) -> list[str]:
        return [str(d) for d in self.info.get("devices", ["cpu"])]

    def versions(self) -> dict[str, str]:
        return {str(k): str(v) for k, v in (self.info.get("versions") or {}).items()}

    def _live_channel(self) -> Channel:
        if self._channel is not None and self._channel.alive():
            return self._channel
        if self._channel is not None:
            self._channel.close(kill=True)
        self._channel = Channel(self.config)
        self._channel.handshake()
        return self._channel

    def run(self, case: Case, inputs: CaseInputs, device: str) -> dict[str, np.ndarray]:
        self._count += 1
        directory = self._root / f"case-{self._count:05d}"
        request = write_request(
            case, inputs, directory, self.info.get("mask", "additive"), device=device
        )
        request["id"] = f"{self._count}:{case.id}"
        try:
            if self.config.protocol == "oneshot":
                return self._run_oneshot(directory, request)
            return self._run_persistent(directory, request)
        finally:
            shutil.rmtree(directory, ignore_errors=True)

    def _run_persistent(self, directory: Path, request: dict) -> dict[str, np.ndarray]:
        channel = self._live_channel()
        channel.send(request)
        # One deadline for the case, not one per line: a process that keeps sending wrong
        # replies must still time out (issue 18).
        deadline = time.monotonic() + self.config.timeout_s
        while True:
            left = max(0.0, deadline - time.monotonic())
            reply = channel.receive(left, f"reply to case {request['id']} (timeout "
                                    f"{self.config.timeout_s:g} s)")  # fmt: skip
            if reply.get("id") == request["id"]:
                break
            channel.logs.append(f"(ignored a reply for id {reply.get('id')!r})")
        status = reply.get("status")
        if status == "unsupported":
            raise Unsupported(str(reply.get("reason", "the implementation said so")))
        if status != "ok":
            raise ExternalError(str(reply.get("message", f"status {status!r}")))
        return read_outputs(directory, reply.get("outputs") or request["outputs"])

    def _run_oneshot(self, directory: Path, request: dict) -> dict[str, np.ndarray]:
        process = subprocess.Popen(
            [*self.config.command, str(directory)], cwd=self.config.cwd, env=_env(self.config),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, errors="replace",
            start_new_session=True,
        )  # fmt: skip
        try:
            stdout, stderr = process.communicate(timeout=self.config.timeout_s)
        except subprocess.TimeoutExpired:
            _kill(process)
            raise TimeoutError(
                f"{shlex.join(self.config.command)} took longer than {self.config.timeout_s:g} s"
            ) from None
        if process.returncode == EXIT_UNSUPPORTED:
            raise Unsupported((stderr or stdout).strip() or "the implementation said so")
        if process.returncode != 0:
            tail = "\n".join((stderr or stdout).strip().splitlines()[-12:])
            raise ExternalError(f"exit code {process.returncode}: {tail}")
        return read_outputs(directory, request["outputs"])

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None
        shutil.rmtree(self._root, ignore_errors=True)


def make_adapter_class(
    config: ExternalConfig, *, qualname: str | None = None, module: str | None = None
) -> type[ExternalAdapter]:
    """An ExternalAdapter subclass for `config` (reads the declaration now)."""
    info = describe(config)
    declaration = _declaration(config, info)
    name = qualname or "ExternalAdapter_" + "".join(
        c if c.isalnum() else "_" for c in declaration.name
    )
    cls = type(name, (ExternalAdapter,), {
        "config": config, "info": info, "declaration": declaration,
        "__module__": module or __name__,
    })  # fmt: skip
    cls.__qualname__ = name
    return cls


def external_adapter(selector: str, *, class_name: str, module: str) -> type[ExternalAdapter]:
    """For a Python module listing external adapters in ADAPTERS (an entry-point plugin):

        JsAttention = external_adapter("attention.adapter.yaml", class_name="JsAttention",
                                       module=__name__)
        ADAPTERS = [JsAttention]

    A relative adapter-file path is taken relative to the calling module's file.
    """
    if not selector.startswith(PREFIX) and not Path(selector).is_absolute():
        base = Path(sys.modules[module].__file__).parent if module in sys.modules else Path.cwd()
        candidate = base / selector
        if candidate.is_file():
            selector = str(candidate)
    if selector.startswith(PREFIX):
        config = config_from_command(selector[len(PREFIX) :])
    else:
        config = load_adapter_file(selector)
    return make_adapter_class(config, qualname=class_name, module=module)
