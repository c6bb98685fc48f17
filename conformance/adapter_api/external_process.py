"""A persistent external process: JSON lines on stdin/stdout with timeouts, stderr kept for
messages, killed with its process group."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import shlex
import signal
import subprocess
import threading
import time
from collections import deque

from .external_config import PROTOCOL, ExternalConfig, ExternalError


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
