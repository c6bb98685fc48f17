"""Text from a spec, an adapter or a result file made safe to show or to embed.

Spec authors, plugins and external processes control case ids, names, descriptions and
messages. Before such text reaches a terminal, a Markdown or HTML report, or generated code it
passes through one of these helpers, so that it cannot move the cursor, rewrite the screen
(ANSI/OSC escape sequences), break a Markdown table, or end a Python string early.
"""

from __future__ import annotations

import re

# CSI (ESC [ ... final byte), OSC (ESC ] ... BEL or ESC \), and any other two-byte ESC sequence.
_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[@-_]?")
# C0 and C1 control characters except tab and newline, DEL, and the Unicode line/paragraph
# separators and bidirectional overrides that can make shown text differ from what it is.
_CONTROL = re.compile(
    "[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\u200e\u200f]"
)
# What a generated script's docstring may hold: printable ASCII without quote or backslash.
_DOC_UNSAFE = re.compile(r"[^\n\x20-\x7e]|[\"\\]")


def strip_control(text: object, *, newlines: bool = True) -> str:
    """`text` as str without ANSI escape sequences and control characters.

    newlines=False also turns newlines and tabs into spaces (one-line terminal output).
    """
    clean = _CONTROL.sub("", _ANSI.sub("", str(text)))
    if not newlines:
        clean = clean.replace("\r", " ").replace("\n", " ").replace("\t", " ")
    return clean


def for_terminal(text: object) -> str:
    """A value safe to print: no escape sequences or control characters (newlines kept)."""
    return strip_control(text)


def for_markdown(text: object) -> str:
    """A value safe in a Markdown table cell or line: one line, markup characters escaped."""
    clean = strip_control(text, newlines=False)
    clean = clean.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return re.sub(r"([\\`*_\[\]|#!])", r"\\\1", clean)


def for_docstring(text: object) -> str:
    """A value safe inside a generated Python triple-quoted docstring: it cannot end it.

    Quotes, backslashes and everything outside printable ASCII become '?': the script's
    docstring is a human summary; the exact values live in the JSON beside it.
    """
    return _DOC_UNSAFE.sub("?", strip_control(text))


def truncate(text: str, limit: int) -> str:
    """`text` cut to at most `limit` characters, saying how much was left out."""
    if len(text) <= limit:
        return text
    note = f" ... [{len(text) - limit} more characters]"
    return text[: max(0, limit - len(note))] + note
