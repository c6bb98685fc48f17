"""Code blocks of a Markdown page, with their line numbers (tests of the docs use it)."""

from __future__ import annotations

import re
from pathlib import Path

FENCE = re.compile(r"^```(\w*)\s*$")


def code_blocks(path: Path, language: str = "python") -> list[tuple[int, str]]:
    """[(line of the opening fence, code)] for every ```language block of `path`."""
    blocks, current, start, lang = [], None, 0, ""
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        fence = FENCE.match(line)
        if current is None and fence:
            current, start, lang = [], number, fence.group(1)
        elif current is not None and line.strip() == "```":
            if lang == language:
                blocks.append((start, "\n".join(current) + "\n"))
            current = None
        elif current is not None:
            current.append(line)
    return blocks
