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

Here: selectors, targets and the adapter classes. The parts: external_config.py (the
constants, `external:CMD`, adapter files), external_request.py (a case's files),
external_process.py (the persistent process), external_adapter.py (declaration, per case).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from .external_adapter import ExternalAdapter, _declaration, describe
from .external_config import (
    ADAPTER_FILE_SUFFIXES,
    DECLARATION_KEYS,
    EXIT_UNSUPPORTED,
    FILE_KEYS,
    MASK_FORMS,
    PREFIX,
    PROTOCOL,
    ExternalConfig,
    ExternalError,
    _read_file,
    _seconds,
    config_from_command,
    load_adapter_file,
)
from .external_process import Channel, _env, _kill
from .external_request import read_outputs, write_request

# Every name this module offered before it was split (issue 20). The selectors, targets and
# adapter classes stay here: a target "conformance.adapter_api.external:x_..." is resolved by
# this module's __getattr__ in every process.
__all__ = [
    "ADAPTER_FILE_SUFFIXES",
    "DECLARATION_KEYS",
    "EXIT_UNSUPPORTED",
    "FILE_KEYS",
    "MASK_FORMS",
    "PREFIX",
    "PROTOCOL",
    "Channel",
    "ExternalAdapter",
    "ExternalConfig",
    "ExternalError",
    "_CLASSES",
    "_declaration",
    "_env",
    "_kill",
    "_read_file",
    "_seconds",
    "adapter_class",
    "config_from_command",
    "describe",
    "external_adapter",
    "is_external",
    "load_adapter_file",
    "make_adapter_class",
    "read_outputs",
    "target_for",
    "write_request",
]


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
