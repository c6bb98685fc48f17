"""The Adapter that runs cases through an external command: its declaration (the adapter file
or the hello line) and the persistent or oneshot protocol per case."""

from __future__ import annotations

import atexit
import json
import shlex
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from ..cases.case import Case
from ..cases.inputs import CaseInputs
from ..errors import UsageError
from .adapter import Adapter, Declaration, Divergence, ToleranceOverride, Unsupported
from .external_config import (
    DECLARATION_KEYS,
    EXIT_UNSUPPORTED,
    MASK_FORMS,
    PROTOCOL,
    ExternalConfig,
    ExternalError,
)
from .external_process import Channel, _env, _kill
from .external_request import read_outputs, write_request


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
