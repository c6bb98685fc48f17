"""Expected-results files for users' CI: green on known fails, red on any change."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from conformance.cli import main
from conformance.errors import SpecError
from conformance.running.expected import check_patterns, compare, load

ROOT = Path(__file__).resolve().parent.parent
MASKS = str(ROOT / "specs" / "masks.yaml")
BROKEN = "broken_attention:broken_attention"  # examples/broken_attention.py: masked cases fail


def _file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "expected.yaml"
    path.write_text(text)
    return path


def _rec(case: str, verdict: str, adapter: str = "a", device: str = "cpu") -> dict:
    return {"case": case, "adapter": adapter, "device": device, "verdict": verdict, "message": ""}


ENTRY = """\
expected:
  - case: "masks/causal-*[*,float64]"
    adapter: "a"
    verdict: fail
    reason: known upstream bug
    link: https://example.org/1
"""


def test_patterns_are_literal_except_star_and_question_mark(tmp_path: Path) -> None:
    (entry,) = load(_file(tmp_path, ENTRY))
    assert entry.line == 2 and entry.link == "https://example.org/1"
    assert entry.matches("masks/causal-top-left-kernel[T=5,S=7,float64]", "a", "cpu")
    assert not entry.matches("masks/causal-top-left-kernel[T=5,S=7,float32]", "a", "cpu")
    assert not entry.matches("masks/causal-x[float64]", "ab", "cpu")


def test_compare_finds_new_failures_stale_entries_and_changes(tmp_path: Path) -> None:
    entries = load(_file(tmp_path, ENTRY))
    known = "masks/causal-a[T=1,float64]"
    assert compare(entries, [_rec(known, "fail"), _rec("other", "pass")]) == []
    kinds = [c.kind for c in compare(entries, [_rec(known, "pass"), _rec("other", "error")])]
    assert kinds == ["stale entry", "new failure"]
    assert [c.kind for c in compare(entries, [_rec(known, "error")])] == ["changed"]


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ("expected: 3\n", 1, "must be a list"),
        ("cases: []\n", 1, "top-level `expected:`"),
        ("expected:\n  - case: x\n    adapter: a\n    verdict: fial\n    reason: r\n", 4, "fial"),
        ("expected:\n  - case: x\n    adapter: a\n    verdict: fail\n", 2, "missing `reason`"),
        ("expected:\n  - case: x\n    adaptor: a\n", 3, "unknown key"),
        ("expected:\n  - [1, 2\n", None, ""),
    ],
)
def test_malformed_file_names_file_and_line(tmp_path: Path, text, line, words) -> None:  # noqa: ANN001
    with pytest.raises(SpecError) as info:
        load(_file(tmp_path, text))
    assert "expected.yaml" in str(info.value) and words in str(info.value)
    if line is not None:
        assert info.value.line == line


def test_pattern_matching_nothing_is_an_error_before_the_run(tmp_path: Path) -> None:
    entries = load(_file(tmp_path, ENTRY))
    with pytest.raises(SpecError, match="matches none of the 1 selected cases") as info:
        check_patterns(entries, ["basic/x[float64]"], ["a"])
    assert info.value.line == 2
    with pytest.raises(SpecError, match="adapter pattern 'a' matches none"):
        check_patterns(entries, ["masks/causal-a[T=1,float64]"], ["b"])


@pytest.fixture
def user_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    shutil.copy(ROOT / "examples" / "broken_attention.py", tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def _run(*extra: str) -> int:
    args = ["run", MASKS, "--adapter", BROKEN, "-k", "causal and kernel and float64"]
    return main([*args, "-q", "--jobs", "1", "--no-report", "--out", "out", *extra])


def test_cli_write_then_expect(user_dir: Path, capsys: pytest.CaptureFixture) -> None:
    assert _run("--write-expected", "known.yaml") == 1  # real failures, nothing expected
    text = (user_dir / "known.yaml").read_text()
    assert text.count("verdict: fail") >= 2
    assert _run("--expected", "known.yaml") == 0  # the same failures, now known: green
    assert "no change" in capsys.readouterr().out
    kept = user_dir / "baseline.json"
    shutil.copy(user_dir / "out" / "results.json", kept)
    assert main(["report", "diff", "--baseline", str(kept), "out/results.json", "--strict"]) == 0

    # A known fail claimed to pass, and one entry dropped: both are changes (red).
    lines = text.splitlines()
    first = next(i for i, line in enumerate(lines) if "verdict: fail" in line)
    lines[first] = lines[first].replace("fail", "pass")
    (user_dir / "changed.yaml").write_text("\n".join(lines) + "\n")
    assert _run("--expected", "changed.yaml") == 1
    err = capsys.readouterr().err
    assert "CHANGED" in err and "expected pass" in err

    (user_dir / "bad.yaml").write_text(ENTRY.replace('"a"', '"nobody"'))
    assert _run("--expected", "bad.yaml") == 2
    err = capsys.readouterr().err
    assert "bad.yaml:2" in err and "adapter pattern 'nobody'" in err and "Traceback" not in err
