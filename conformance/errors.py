"""Errors the user can act on: each names the file, line and key, and carries a hint.

The CLI prints these as one clear message and exits with code 2, never with a traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class ConformanceError(Exception):
    """Base class for errors that are the user's input, not the tool's bug."""

    exit_code = 2


class SpecError(ConformanceError):
    """A spec file is malformed: invalid YAML, wrong type, unknown key, impossible shape..."""

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        line: int | None = None,
        key: str | None = None,
        hint: str | None = None,
    ) -> None:
        self.message = message
        self.file = file
        self.line = line
        self.key = key
        self.hint = hint
        super().__init__(self.format())

    def format(self) -> str:
        where = self.file or "<spec>"
        if self.line is not None:
            where += f":{self.line}"
        text = f"{where}: "
        if self.key:
            key = self.key if len(self.key) <= 60 else self.key[:57] + "..."
            text += f"'{key}': "
        text += self.message
        if self.hint:
            text += f"\n  hint: {self.hint}"
        return text

    def located(self, file: str | None, line: int | None) -> SpecError:
        """A copy that fills in file and line where they were still unknown."""
        return SpecError(
            self.message,
            file=self.file or file,
            line=self.line if self.line is not None else line,
            key=self.key,
            hint=self.hint,
        )


class UsageError(ConformanceError):
    """Bad command-line usage: unknown adapter, missing file, contradictory flags."""


class ResultsFileError(ConformanceError):
    """A results file is corrupted, foreign, or of an unknown schema version."""


def did_you_mean(word: str, choices: Iterable[str]) -> str | None:
    """A 'did you mean' hint for a misspelt key or name, or None when nothing is close."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"did you mean '{close[0]}'?" if close else None
