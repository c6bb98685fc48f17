"""Progress on long runs: one line on a terminal (never wider than it), plain lines in CI logs.

The terminal line is cut to the terminal's width (COLUMNS or the tty's size) minus one, so a
redraw never wraps onto a second line; colour only on a colour terminal, never with NO_COLOR
(https://no-color.org) or TERM=dumb. The ETA leaves out worker start-up (framework imports
dominate the first result) and is smoothed, so it does not jump from one redraw to the next.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections import Counter
from typing import TextIO

VERDICTS = ("pass", "fail", "diverges", "unsupported", "error")
_COLOURS = {"pass": "32", "fail": "31", "error": "35", "diverges": "33", "unsupported": "2"}
_SMOOTHING = 0.15  # weight of the newest estimate in the ETA's moving average


def use_colour(stream: TextIO) -> bool:
    """Colour only on a terminal that is not dumb, and never when NO_COLOR is set."""
    if os.environ.get("NO_COLOR"):
        return False
    if os.environ.get("TERM") == "dumb":
        return False
    return bool(getattr(stream, "isatty", lambda: False)())


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class Progress:
    def __init__(
        self,
        total: int,
        stream: TextIO | None = None,
        interactive: bool | None = None,
        colour: bool | None = None,
        width: int | None = None,
    ) -> None:
        self.stream = stream or sys.stderr
        self.total = max(total, 1)
        self.done = 0
        self.counts: Counter[str] = Counter()
        self.start = time.monotonic()
        self.interactive = self.stream.isatty() if interactive is None else interactive
        self.colour = use_colour(self.stream) if colour is None else colour
        self._width = width  # None: ask the terminal at each redraw (it may be resized)
        self._last_line = 0.0
        self._first_at: float | None = None
        self._eta: float | None = None

    def set_total(self, total: int) -> None:
        self.total = max(total, self.done, 1)

    def update(self, record: dict, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self.done += 1
        self.counts[record["verdict"]] += 1
        self._estimate(now)
        if self.interactive:
            if now - self._last_line > 0.1 or self.done == self.total:
                self._draw(now)
                self._last_line = now
        elif now - self._last_line > 10 or self.done == self.total:
            self.stream.write(self._text(now) + "\n")
            self.stream.flush()
            self._last_line = now

    def _estimate(self, now: float) -> None:
        if self._first_at is None:
            self._first_at = now  # start-up (imports, first compile) ends at the first result
            return
        rate = (self.done - 1) / max(now - self._first_at, 1e-9)
        eta = (self.total - self.done) / rate
        # Moving average, so one slow case (a compile, a big shape) does not swing the ETA.
        self._eta = eta if self._eta is None else (1 - _SMOOTHING) * self._eta + _SMOOTHING * eta
        self._eta = min(self._eta, eta * 4)  # but follow a real slowdown within a few updates

    def eta_text(self) -> str:
        if self._eta is None or self.done < 3:
            return "eta ?"
        return f"eta {_duration(self._eta)}" if self.done < self.total else "done"

    def _parts(self, now: float) -> list[tuple[str, str | None]]:
        """(text, verdict or None) pieces, most important first."""
        parts: list[tuple[str, str | None]] = [(f"{self.done}/{self.total}", None)]
        parts += [(f"{v} {self.counts[v]}", v) for v in VERDICTS if self.counts[v]]
        parts.append((f"{_duration(now - self.start)} {self.eta_text()}", None))
        return parts

    def _text(self, now: float) -> str:
        return "  ".join(text for text, _ in self._parts(now))

    def line(self, now: float, width: int) -> tuple[str, int]:
        """The progress line for a terminal `width` columns wide, and its visible length.

        Drops the bar first, then shortens verdict names to initials, then cuts; the visible
        length stays <= width - 1 so the cursor never reaches the last column and wraps.
        """
        room = max(width - 1, 1)
        parts = self._parts(now)
        plain = "  ".join(t for t, _ in parts)
        if len(plain) > room:
            parts = [(t if v is None else f"{v[0]}{t.split()[-1]}", v) for t, v in parts]
            plain = " ".join(t for t, _ in parts)
        bar = ""
        free = room - len(plain) - 3
        if free >= 10:
            size = min(28, free)
            filled = int(size * min(self.done / self.total, 1.0))
            bar = "[" + "#" * filled + "." * (size - filled) + "] "
        if len(plain) > room:
            cut = plain[: room - 1] + "…"
            return cut, len(cut)
        sep = "  " if "  " in plain else " "
        text = sep.join(
            f"\x1b[{_COLOURS[v]}m{t}\x1b[0m" if self.colour and v else t for t, v in parts
        )
        return bar + text, len(bar) + len(plain)

    def _draw(self, now: float) -> None:
        width = self._width or shutil.get_terminal_size(fallback=(80, 24)).columns
        text, _ = self.line(now, width)
        self.stream.write(f"\r{text}\x1b[K")
        self.stream.flush()

    def close(self) -> None:
        if self.interactive:
            self.stream.write("\n")
            self.stream.flush()
