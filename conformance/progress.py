"""Progress on long runs: a bar on a terminal, plain periodic lines in CI logs."""

from __future__ import annotations

import sys
import time
from collections import Counter


class Progress:
    def __init__(self, total: int, stream=None, interactive: bool | None = None) -> None:  # noqa: ANN001
        self.stream = stream or sys.stderr
        self.total = max(total, 1)
        self.done = 0
        self.counts: Counter[str] = Counter()
        self.start = time.monotonic()
        self.interactive = self.stream.isatty() if interactive is None else interactive
        self._last_line = 0.0

    def set_total(self, total: int) -> None:
        self.total = max(total, self.done, 1)

    def update(self, record: dict) -> None:
        self.done += 1
        self.counts[record["verdict"]] += 1
        now = time.monotonic()
        if self.interactive:
            if now - self._last_line > 0.1 or self.done == self.total:
                self._draw(now)
                self._last_line = now
        elif now - self._last_line > 10 or self.done == self.total:
            self.stream.write(self._text(now) + "\n")
            self.stream.flush()
            self._last_line = now

    def _text(self, now: float) -> str:
        elapsed = now - self.start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.done) / rate if rate > 0 else 0.0
        verdicts = " ".join(
            f"{v} {self.counts[v]}" for v in ("pass", "fail", "diverges", "unsupported", "error")
            if self.counts[v]
        )  # fmt: skip
        return (
            f"{self.done}/{self.total} results  {verdicts}  {elapsed:.0f}s elapsed, eta {eta:.0f}s"
        )

    def _draw(self, now: float) -> None:
        width = 28
        filled = int(width * min(self.done / self.total, 1.0))
        bar = "#" * filled + "." * (width - filled)
        self.stream.write(f"\r[{bar}] {self._text(now)}\x1b[K")
        self.stream.flush()

    def close(self) -> None:
        if self.interactive:
            self.stream.write("\n")
            self.stream.flush()
