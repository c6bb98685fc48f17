"""The progress line fits the terminal, honours NO_COLOR, and its ETA is stable."""

from __future__ import annotations

import io
import re

import pytest

from conformance.running.progress import Progress, use_colour

ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _fed(total: int = 30_000, n: int = 1200, colour: bool = True) -> Progress:
    progress = Progress(total, stream=io.StringIO(), interactive=False, colour=colour)
    verdicts = ["pass", "unsupported", "diverges", "fail", "error"]
    for i in range(n):
        # Times given, not measured: one result every 10 ms, with a slow one every 100.
        progress.update({"verdict": verdicts[i % 5]}, now=progress.start + 5 + i * 0.01 + i // 100)
    return progress


@pytest.mark.parametrize("width", [20, 40, 70, 80, 132])
def test_line_never_wraps(width: int) -> None:
    progress = _fed()
    text, visible = progress.line(progress.start + 30, width)
    assert visible <= width - 1
    assert len(ANSI.sub("", text)) == visible


def test_seventy_columns_keeps_counts_and_eta() -> None:
    progress = _fed(colour=False)
    text, _ = progress.line(progress.start + 30, 70)
    assert "1200/30000" in text and "eta" in text and "\x1b" not in text


def test_no_color(monkeypatch: pytest.MonkeyPatch) -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm-256color")
    assert use_colour(Tty())
    monkeypatch.setenv("NO_COLOR", "1")
    assert not use_colour(Tty())
    assert not use_colour(io.StringIO())


def test_eta_is_smoothed() -> None:
    progress = Progress(1000, stream=io.StringIO(), interactive=False)
    etas = []
    for i in range(200):
        # A steady 0.1 s per result with one 5 s outlier in the middle.
        progress.update(
            {"verdict": "pass"}, now=progress.start + 10 + i * 0.1 + (5 if i >= 100 else 0)
        )
        etas.append(progress._eta)
    before, after = etas[99], etas[100]
    assert after is not None and before is not None
    assert abs(after - before) / before < 0.25  # one slow case moves it little


def test_summary_fits_eighty_columns() -> None:
    from conformance.running.summary import summary_lines

    records = [
        {"adapter": "keras.gqa.torch.explicit-with-a-very-long-plugin-name", "device": "cuda:0",
         "verdict": v, "case": "masks/causal-bottom-right[T=5,S=9,float32]", "message": "x " * 200}
        for v in ("pass", "fail", "error", "diverges", "unsupported")
    ]  # fmt: skip
    lines = summary_lines(records * 3000)
    assert all(len(line) <= 79 for line in lines)
    assert lines[0].split() == ["adapter", "pass", "fail", "div", "unsup", "error"]
    assert "3000" in lines[1] and "…" in lines[1]
