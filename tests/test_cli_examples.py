"""Every example command in README and `conformance --help` works: ids exist, selections select.

`show` and `list` examples run for real; `run` examples are parsed and their case selection
resolved (running them would take minutes); placeholders (mypkg, --resume of a run that is not
there, a results file that is not there) are parsed only.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from conformance.cli import EPILOG, build_parser, main
from conformance.cli.commands import select_cases

ROOT = Path(__file__).resolve().parent.parent


def _examples() -> list[str]:
    lines = [line.strip() for line in EPILOG.splitlines()]
    readme = (ROOT / "README.md").read_text()
    for block in re.findall(r"```bash\n(.*?)```", readme, re.S):
        lines += [line.strip() for line in block.splitlines()]
    found = []
    for line in lines:
        if not line.startswith("conformance "):
            continue
        words = shlex.split(line, comments=True)
        # --help aligns its descriptions after two spaces or more: cut them off.
        text = re.split(r"\s{3,}", line)[0] if "#" not in line else line.split("#")[0]
        found.append(" ".join(shlex.quote(w) for w in shlex.split(text)) or " ".join(words))
    return sorted(set(found))


EXAMPLES = _examples()


def test_examples_were_found() -> None:
    assert any(e.startswith("conformance show") for e in EXAMPLES)
    assert sum(e.startswith("conformance run") for e in EXAMPLES) >= 4


@pytest.mark.parametrize("example", EXAMPLES)
def test_example(example: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    argv = shlex.split(example)[1:]
    if argv[0] in ("show", "list"):
        assert main(argv) == 0, example
        return
    args = build_parser().parse_args(argv)
    if argv[0] == "run" and not args.resume:
        assert select_cases(args), f"{example}: selects no case"
