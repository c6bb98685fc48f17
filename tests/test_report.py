"""Reports from real evaluate() results: validation, Markdown, HTML, JUnit, JSON, merge, diff, CLI."""

from __future__ import annotations

import base64
import gzip
import itertools
import json
import re
import struct
import xml.etree.ElementTree as ET
import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT
from test_report_fixtures import WrongAttention, build_results

from conformance.cli import main
from conformance.errors import ResultsFileError, UsageError
from conformance.report import images as img
from conformance.report import load_results, render, validate, write_all
from conformance.report.diff import diff
from conformance.report.merge import merge


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return build_results(tmp_path_factory.mktemp("specs"))


@pytest.fixture
def results_file(raw: dict, tmp_path: Path) -> Path:
    path = tmp_path / "results.json"
    path.write_text(json.dumps(raw, indent=1))
    return path


@pytest.fixture
def doc(raw: dict) -> dict:
    return validate(json.loads(json.dumps(raw)))


def _bad(doc: dict) -> list[dict]:
    return [r for r in doc["results"] if r["verdict"] in ("fail", "error")]


# --- reading and validation ---------------------------------------------------------------


def test_load_normalises_environment(results_file: Path) -> None:
    doc = load_results(results_file)
    assert [e["id"] for e in doc["environments"]] == ["test-machine"]
    assert {r["environment_id"] for r in doc["results"]} == {"test-machine"}
    assert load_results(results_file.parent)["results"] == doc["results"]  # a run folder works


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("", "empty"),
        ('{"schema_version": 1, "spec_version": 1, "adapt', "ends early"),
        ("not json at all", "not valid JSON at line 1"),
        ('{"name": "left-pad", "version": "1.0.0"}', "not a conformance results file"),
        ("[1, 2, 3]", "not a conformance results file"),
        ('{"schema_version": 99, "results": []}', "schema version 99"),
        ('{"schema_version": 1, "results": []}', "lacks required keys: spec_version, adapters"),
    ],
)
def test_corrupted_or_foreign_files_are_clear_errors(
    tmp_path: Path, content: str, expected: str
) -> None:
    path = tmp_path / "results.json"
    path.write_text(content)
    with pytest.raises(ResultsFileError, match=re.escape(expected)):
        load_results(path)


def test_truncated_real_file_is_a_clear_error(results_file: Path) -> None:
    text = results_file.read_text()
    results_file.write_text(text[: len(text) // 2])
    with pytest.raises(ResultsFileError, match="ends early"):
        load_results(results_file)


def test_bad_records_are_named(raw: dict) -> None:
    broken = json.loads(json.dumps(raw))
    broken["results"][3]["verdict"] = "maybe"
    with pytest.raises(ResultsFileError, match=r"results\[3\] has verdict 'maybe'"):
        validate(broken)
    broken = json.loads(json.dumps(raw))
    del broken["results"][5]["adapter"]
    with pytest.raises(ResultsFileError, match=r"results\[5\] lacks adapter"):
        validate(broken)
    broken = json.loads(json.dumps(raw))
    broken["results"] = {"not": "a list"}
    with pytest.raises(ResultsFileError, match="'results' should be a list"):
        validate(broken)


def test_cli_reports_bad_file_with_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "results.json"
    path.write_text('{"hello": "world"}')
    assert main(["report", str(path), "--format", "md"]) == 2
    err = capsys.readouterr().err
    assert "not a conformance results file" in err and "Traceback" not in err
    assert main(["report", str(tmp_path / "missing.json")]) == 2
    assert "no such results file" in capsys.readouterr().err


# --- Markdown --------------------------------------------------------------------------------


def test_markdown_matrix_failures_and_divergences(doc: dict) -> None:
    text = render(doc, "md")
    # Only the adapters and families with a fail or error get a row / column.
    header = next(line for line in text.splitlines() if line.startswith("| adapter |"))
    row = next(line for line in text.splitlines() if line.startswith("| `test.wrong`"))
    assert "❌" in row and "💥" in row
    assert not any(line.startswith("| `reference` | ✅") for line in text.splitlines())
    assert "No fail or error (1 adapter): `reference`" in text
    assert header.count("|") - 2 <= 2
    bad = _bad(doc)
    assert f"### Failures ({len(bad)} results," in text
    summaries = [
        line
        for line in text.splitlines()
        if line.startswith("<details><summary>") and " · " in line
    ]
    assert sum(int(s.split(" · ")[1].split()[0]) for s in summaries) == len(bad) == 3
    assert any("RuntimeError: sliding windows are not implemented" in s for s in summaries)
    assert "- `masks/window`" in text
    assert text.count("<details>") == text.count("</details>")
    divergence_lines = [line for line in text.splitlines() if line.startswith("- 🔶")]
    assert len(divergence_lines) == 2
    assert any(
        "masked-rows-zeros" in line and "(https://example.org/issues/1)" in line
        for line in divergence_lines
    )
    assert "--adapter test.wrong --case 'masks/causal-bottom-right[T=5,float32]'" in text
    assert len(text) < 65_536


# --- JUnit -----------------------------------------------------------------------------------


def test_junit_one_testcase_per_result(doc: dict) -> None:
    root = ET.fromstring(render(doc, "junit"))
    cases = root.findall(".//testcase")
    assert len(cases) == len(doc["results"]) == int(root.get("tests"))
    verdicts = [r["verdict"] for r in doc["results"]]
    failures = root.findall(".//testcase/failure")
    errors = root.findall(".//testcase/error")
    skipped = root.findall(".//testcase/skipped")
    assert len(failures) + len(errors) == 3
    assert len(failures) == verdicts.count("fail") and len(errors) == verdicts.count("error")
    assert len(errors) >= 1  # the fixture has an error verdict: JUnit must count it as one
    assert len(skipped) == verdicts.count("diverges") + verdicts.count("unsupported") == 6
    assert int(root.get("failures")) == len(failures) and int(root.get("errors")) == len(errors)
    assert int(root.get("skipped")) == 6
    assert {f.get("type") for f in failures} == {"fail"}
    assert {e.get("type") for e in errors} == {"error"}
    assert {s.get("type") for s in skipped} == {"diverges", "unsupported"}
    for element in failures + errors:
        assert "{" not in element.text  # no dict dumps in the details
    reasons = [s.get("message") for s in skipped]
    assert any("masked-rows-zeros" in m and m.startswith("diverges:") for m in reasons)
    assert any(m.startswith("unsupported: test.wrong cannot express: layer") for m in reasons)
    suites = {s.get("name"): s for s in root.findall("testsuite")}
    assert set(suites) == {"reference", "test.wrong"}
    assert suites["reference"].get("failures") == "0"
    window = next(c for c in cases if c.get("name") == "masks/window [cpu]"
                  and c.get("classname") == "test.wrong.masks")  # fmt: skip
    detail = window.find("failure") if window.find("failure") is not None else window.find("error")
    assert "reproduce: conformance run" in detail.text


def test_junit_survives_control_characters(doc: dict) -> None:
    doc = json.loads(json.dumps(doc))
    doc["results"][0].update(verdict="error", message="boom \x1b[31mred\x00")
    ET.fromstring(render(doc, "junit"))  # parses: no invalid XML characters


# --- HTML ------------------------------------------------------------------------------------


def _rows(columns: list) -> list[list]:
    """html._columns undone: each column plain, run lengths or deltas."""
    full = []
    for col in columns:
        if isinstance(col, dict) and "rle" in col:
            runs = col["rle"]
            col = [v for v, n in zip(runs[::2], runs[1::2], strict=True) for _ in range(n)]
        elif isinstance(col, dict):
            col = list(itertools.accumulate(col["delta"]))
        full.append(col)
    return [list(row) for row in zip(*full, strict=True)]


def _payload(page: str) -> dict:
    """The page's data block with its compact rows expanded as the page's script does."""
    blob = re.search(r'<script type="application/json" id="report-data">(.*?)</script>', page, re.S)
    if blob:
        data = json.loads(blob.group(1))
    else:  # a large report: gzip-compressed, base64 (html.py _data_block)
        packed = re.search(r'id="report-data" data-encoding="gzip\+base64">(.*?)</script>', page)
        data = json.loads(gzip.decompress(base64.b64decode(packed.group(1))))
    order = ["pass", "diverges", "unsupported", "fail", "error"]
    rows = _rows(data["results"])
    groups = [row + [cases] for row, cases in zip(
        _rows(data["unsupported"]["rows"]), data["unsupported"]["cases"], strict=True
    )]  # fmt: skip
    for case in data["cases"]:
        case["spec"] = "\n".join(data["strings"][k] for k in case["spec"])
    for row in groups:
        at = 0
        for delta in row[-1]:
            at += delta
            one = (row[:-1] + [None] * 3)[: max(len(row) - 1, 3)]
            one[0], one[2] = at, order.index("unsupported")
            rows.append(one)
    keys = data["resultKeys"]
    data["results"] = []
    for row in rows:
        r = {k: v for k, v in zip(keys, row, strict=False) if v is not None}
        r["v"] = order[r["v"]]
        if "t" in r:
            atol, rtol, text = data["tolerances"][r.pop("t")]
            r.update(at=atol, rt=rtol, tol=None if text is None else data["strings"][text])
        if "mu" in r:
            pieces = "; ".join(data["strings"][k] for k in r["mu"])
            r["m"] = f"{data['adapters'][r['a']]} cannot express: {pieces}"
        data["results"].append(r)
    return data


def _decode_png(uri: str) -> np.ndarray:
    data = base64.b64decode(uri.split(",", 1)[1])
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    w, h = struct.unpack(">II", data[16:24])
    pos, idat = 8, b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        tag = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        crc = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])[0]
        assert zlib.crc32(tag + body) & 0xFFFFFFFF == crc
        if tag == b"IDAT":
            idat += body
        pos += 12 + length
    raw = np.frombuffer(zlib.decompress(idat), dtype=np.uint8).reshape(h, 1 + 3 * w)
    assert (raw[:, 0] == 0).all()
    return raw[:, 1:].reshape(h, w, 3)


def test_png_roundtrip() -> None:
    rgb = np.arange(5 * 7 * 3, dtype=np.uint8).reshape(5, 7, 3)
    assert (_decode_png(img.data_uri(rgb)) == rgb).all()


def test_html_is_self_contained(doc: dict) -> None:
    page = render(doc, "html")
    # No external resources: every src is a data URI, no stylesheet or script links.
    assert not re.search(r'<(script|img|link|iframe)[^>]+(src|href)="(?!data:)', page)
    assert "@import" not in page and "url(http" not in page
    assert re.findall(r'href="(https?://[^"]+)"', page) == ["https://example.org/issues/1"]
    assert "<table" in page and 'id="matrix-table"' in page


def test_html_pictures(doc: dict) -> None:
    data = _payload(render(doc, "html"))
    cases = {c["id"]: c for c in data["cases"]}
    adapters = data["adapters"]
    # The mask is rebuilt from the case: bottom-right causal, T=5 S=7, batch 0 head 0.
    mask = _decode_png(data["images"][cases["masks/causal-bottom-right[T=5,float32]"]["mask"]][0])
    attend = (mask[:, :7] == img.ATTEND).all(axis=-1)
    assert (attend == (np.arange(7)[None, :] <= np.arange(5)[:, None] + 2)).all()
    assert mask.shape[1] == 2 * 7 + 1  # both batch elements, one column of gap
    # Failing result: reference, implementation and |difference| pictures that differ.
    fail = next(
        r for r in data["results"]
        if r["v"] == "fail" and adapters[r["a"]] == "test.wrong"
        and data["cases"][r["c"]]["id"] == "masks/causal-bottom-right[T=5,float32]"
    )  # fmt: skip
    case = data["cases"][fail["c"]]
    ref, impl = (_decode_png(data["images"][i][0]) for i in (case["ref"], fail["w"]))
    assert ref.shape == impl.shape == (5, 7, 3)
    assert (ref != impl).any()
    diff_png = _decode_png(data["images"][fail["wd"]][0])
    assert diff_png.shape == (5, 7, 3)
    assert "oe" in fail and "cmd" in fail and "--case" in fail["cmd"]
    # A passing result's weights quantise like the reference's: one shared image.
    passing = next(
        r for r in data["results"]
        if r["v"] == "pass" and data["cases"][r["c"]]["id"] == case["id"]
        and adapters[r["a"]] == "reference"
    )  # fmt: skip
    assert passing["w"] == case["ref"]
    # Batch 0 of padded-rows has no valid key: the reference's NaN rows are drawn grey, and
    # the zeros the wrong adapter returns there are NaN-placement mismatches (magenta).
    rows = next(c for c in data["cases"] if c["id"] == "masks/padded-rows")
    assert (_decode_png(data["images"][rows["ref"]][0]) == img.MISSING).all()
    zeros = next(
        r for r in data["results"]
        if data["cases"][r["c"]] is rows and adapters[r["a"]] == "test.wrong"
    )  # fmt: skip
    assert zeros["v"] == "diverges"
    assert (_decode_png(data["images"][zeros["wd"]][0]) == img.NAN_MISMATCH).all()


def test_error_image_scale() -> None:
    errors = np.array([[0.0, 1e-7, 1e-5, 1e-3, np.nan]])
    rgb = img.error_image(errors, atol=1e-5, nan_mismatch=np.array([[0, 0, 0, 0, 0]], bool))
    # within tolerance: pale; far above: dark red; NaN: grey.
    assert rgb[0, 0].min() > 240 and rgb[0, 1].min() > 150
    assert rgb[0, 3][0] > rgb[0, 3][1] + 100  # red dominates
    assert tuple(rgb[0, 4]) == img.MISSING


# --- JSON, write_all -------------------------------------------------------------------------


def test_json_format_reloads_with_summary(doc: dict, tmp_path: Path) -> None:
    out = tmp_path / "summary.json"
    out.write_text(render(doc, "json"))
    again = load_results(out)
    assert again["summary"]["total"]["fail"] == 2
    assert again["summary"]["adapters"]["test.wrong"]["layer"] == {"unsupported": 2}
    assert len(again["results"]) == len(doc["results"])


def test_write_all(results_file: Path, tmp_path: Path) -> None:
    paths = write_all(results_file, tmp_path / "out")
    assert [p.name for p in paths] == ["results.md", "results.html", "results.junit.xml"]
    assert all(p.stat().st_size > 0 for p in paths)


# --- CLI -------------------------------------------------------------------------------------


def test_cli_render_defaults(results_file: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["report", str(results_file)]) == 0
    assert (results_file.parent / "results.html").exists()
    assert main(["report", str(results_file), "--format", "md"]) == 0
    assert "| adapter | masks |" in capsys.readouterr().out
    out = results_file.parent / "junit.xml"
    assert main(["report", str(results_file), "--out", str(out)]) == 0  # format from suffix
    assert ET.parse(out).getroot().tag == "testsuites"


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["report", "R", "R"], "renders one results file"),
        (["report", "R", "--format", "pdf"], "unknown format 'pdf'"),
        (["report", "R", "--force"], "--force does not apply to rendering"),
        (["report", "merge", "R"], "needs --out"),
        (["report", "diff", "R"], "exactly two files"),
        (["report", "diff", "R", "R", "--force"], "--force does not apply to diff"),
    ],
)
def test_cli_usage_errors(
    results_file: Path, argv: list[str], expected: str, capsys: pytest.CaptureFixture
) -> None:
    argv = [str(results_file) if a == "R" else a for a in argv]
    assert main(argv) == 2
    assert expected in capsys.readouterr().err


# --- merge -----------------------------------------------------------------------------------


def _other_machine(raw: dict, machine: str = "gpu-box", device: str = "cuda:0") -> dict:
    other = json.loads(json.dumps(raw))
    other["environment"]["machine_id"] = machine
    other["environment"]["devices"] = ["cpu", device]
    for record in other["results"]:
        record["device"] = device
    for entry in other["adapters"].values():
        entry["devices"] = [device]
    return other


def test_merge_keeps_each_environment(raw: dict, tmp_path: Path) -> None:
    a, b = tmp_path / "cpu.json", tmp_path / "gpu.json"
    a.write_text(json.dumps(raw))
    b.write_text(json.dumps(_other_machine(raw)))
    out = tmp_path / "merged.json"
    assert main(["report", "merge", str(a), str(b), "--out", str(out)]) == 0
    merged = load_results(out)
    assert [e["machine_id"] for e in merged["environments"]] == ["test-machine", "gpu-box"]
    by_env = {
        e: {r["device"] for r in merged["results"] if r["environment_id"] == e}
        for e in ("test-machine", "gpu-box")
    }
    assert by_env == {"test-machine": {"cpu"}, "gpu-box": {"cuda:0"}}
    assert len(merged["results"]) == 2 * len(raw["results"])
    per_env = merged["adapters"]["test.wrong"]["environments"]
    assert per_env["gpu-box"]["devices"] == ["cuda:0"]
    # The report shows which machine produced each device's results.
    page = render(merged, "html")
    assert 'id="f-env"' in page
    machines = re.search(r'<table class="small" id="device-machines">.*?</table>', page, re.S)
    assert "cuda:0" in machines.group(0) and "gpu-box" in machines.group(0)
    junit = ET.fromstring(render(merged, "junit"))
    names = [(c.get("classname"), c.get("name")) for c in junit.findall(".//testcase")]
    assert len(set(names)) == len(names) == len(merged["results"])
    # Merging the merged file with a third machine keeps all three.
    c = tmp_path / "tpu.json"
    c.write_text(json.dumps(_other_machine(raw, "tpu-box", "tpu:0")))
    again, _ = merge([("m", merged), ("c", load_results(c))])
    assert [e["id"] for e in again["environments"]] == ["test-machine", "gpu-box", "tpu-box"]
    assert len(again["results"]) == 3 * len(raw["results"])


def test_merge_shards_of_one_machine(raw: dict) -> None:
    doc = validate(raw)
    half = len(doc["results"]) // 2
    first = {**doc, "results": doc["results"][:half]}
    second = {**doc, "results": doc["results"][half:]}
    merged, warnings = merge([("1", first), ("2", second)])
    assert len(merged["environments"]) == 1 and not warnings
    assert len(merged["results"]) == len(doc["results"])
    _, warnings = merge([("1", doc), ("2", doc)])
    assert any("more than once" in w for w in warnings)


def test_merge_refuses_other_spec_versions(raw: dict, tmp_path: Path, capsys) -> None:  # noqa: ANN001
    doc = validate(raw)
    newer = {**doc, "spec_version": 2}
    with pytest.raises(UsageError, match="(?s)different spec versions.*--force"):
        merge([("a.json", doc), ("b.json", newer)])
    merged, warnings = merge([("a.json", doc), ("b.json", newer)], force=True)
    assert merged["spec_versions"] == [1, 2] and warnings
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(raw))
    b.write_text(json.dumps({**raw, "spec_version": 2}))
    assert main(["report", "merge", str(a), str(b), "--out", str(tmp_path / "m.json")]) == 2
    assert "b.json has spec_version 2" in capsys.readouterr().err


def test_merge_refuses_one_id_two_cases(raw: dict) -> None:
    doc = validate(raw)
    changed = json.loads(json.dumps(doc))
    case_id = next(iter(changed["cases"]))
    changed["cases"][case_id]["seed"] = 7
    with pytest.raises(UsageError, match="differs between"):
        merge([("a", doc), ("b", changed)])


# --- diff ------------------------------------------------------------------------------------


class FixedAttention(WrongAttention):
    """The next release: bottom-right causal fixed, top-left broken instead (scale dropped)."""

    def run(self, case, inputs, device):  # noqa: ANN001
        import dataclasses

        from conformance.oracle.reference import attention

        if case.mask.window is not None:
            raise RuntimeError("sliding windows are not implemented")
        if case.mask.causal == "top-left" and case.shape.query_len != case.shape.kv_len:
            case = dataclasses.replace(case, scale=1.0)  # the new bug
        out = attention(case, inputs, masked_rows="zeros")
        if case.dtype == "float64":
            out = {k: v.astype(np.float32).astype(np.float64) for k, v in out.items()}
        return out


def test_diff_regressions_fixes_and_exit_code(raw: dict, tmp_path: Path, capsys) -> None:  # noqa: ANN001
    (tmp_path / "new").mkdir()
    new_raw = build_results(tmp_path / "new", wrong=FixedAttention)
    old, new = validate(raw), validate(new_raw)
    result = diff(old, new)
    key = "masks/causal-{}[T=5,{}]"
    assert sorted(c.case for c in result.regressions) == [
        key.format("top-left", "float32"),  # pass -> fail
        key.format("top-left", "float64"),  # diverges -> fail: not float32 rounding any more
    ]
    assert sorted(c.case for c in result.changes["fixes"]) == [
        key.format("bottom-right", "float32"),  # fail -> pass
        key.format("bottom-right", "float64"),  # fail -> diverges (verified float32 compute)
    ]
    assert len(result.changes["fixes"]) == 2 and len(result.regressions) == 2
    a, b = tmp_path / "old.json", tmp_path / "new.json"
    a.write_text(json.dumps(raw))
    b.write_text(json.dumps(new_raw))
    assert main(["report", "diff", str(a), str(b)]) == 1
    text = capsys.readouterr().out
    assert "Regressions (2)" in text and "Fixes (2)" in text
    assert main(["report", "diff", str(b), str(a), "--format", "json"]) == 1  # and back
    back = json.loads(capsys.readouterr().out)
    assert len(back["fixes"]) == 2 and len(back["regressions"]) == 2
    assert main(["report", "diff", str(a), str(a)]) == 0


def test_diff_changed_errors_and_new_failures(raw: dict) -> None:
    old = validate(raw)
    new = json.loads(json.dumps(old))
    target = next(r for r in new["results"] if r["verdict"] == "pass" and r["dtype"] == "float32")
    target["max_abs_error"] = 5e-6  # still within atol 1e-5, but 10x+ worse than before
    unsupported = next(r for r in new["results"] if r["verdict"] == "unsupported")
    unsupported.update(verdict="fail", message="now claims layer support and gets it wrong")
    crash = next(r for r in new["results"] if r["verdict"] == "error")
    crash["message"] = "MemoryError: out of memory"
    result = diff(old, new)
    assert sorted(c.case for c in result.changes["changed_errors"]) == sorted(
        [target["case"], crash["case"]]
    )
    assert [c.case for c in result.changes["new_failures"]] == [unsupported["case"]]
    assert result.exit_code() == 0 and result.exit_code(strict=True) == 1
    noise = json.loads(json.dumps(old))
    for record in noise["results"]:
        if record["verdict"] == "pass" and record["dtype"] == "float64":
            record["max_abs_error"] = (record["max_abs_error"] or 0) * 3 + 1e-16
    assert not diff(old, noise).changes["changed_errors"]  # 1e-16-level moves are noise


def test_cli_files_after_options(raw: dict, tmp_path: Path, capsys) -> None:  # noqa: ANN001
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(raw))
    b.write_text(json.dumps(_other_machine(raw)))
    out = tmp_path / "m.json"
    assert main(["report", "merge", "--out", str(out), str(a), str(b)]) == 0
    assert len(load_results(out)["environments"]) == 2
    assert main(["report", "diff", str(a), "--format", "json", str(a)]) == 0
    assert json.loads(capsys.readouterr().out)["regressions"] == []
    assert main(["report", "diff", str(a), str(b), "--ratio", "0.5"]) == 2


def test_slim_json_is_still_a_results_file(results_file: Path, tmp_path: Path, capsys) -> None:  # noqa: ANN001
    slim = tmp_path / "slim.json"
    assert (
        main(["report", str(results_file), "--format", "json", "--slim", "--out", str(slim)]) == 0
    )
    doc = load_results(slim)
    assert all("preview" not in r and "features" not in r for r in doc["results"])
    assert slim.stat().st_size < results_file.stat().st_size / 2
    assert main(["report", "diff", str(results_file), str(slim)]) == 0
    assert "0 regressions" in capsys.readouterr().out
    assert "<!doctype html>" in render(doc, "html")  # renders without pictures of weights
    assert main(["report", str(results_file), "--slim"]) == 2  # html: --slim does not apply


# --- end to end: `conformance run` leaves every format; merge and diff on real runs ----------


def test_run_leaves_every_format_and_shards_merge(tmp_path: Path) -> None:
    from conftest import run_cli
    from test_report_fixtures import LAYER_SPEC, MASKS_SPEC

    (tmp_path / "masks.yaml").write_text(MASKS_SPEC)
    (tmp_path / "layer.yaml").write_text(LAYER_SPEC)
    specs = [str(tmp_path / "masks.yaml"), str(tmp_path / "layer.yaml")]
    adapters = ["--adapter", "reference", "--adapter", "test_report_fixtures:WrongAttention"]
    full = tmp_path / "full"
    proc = run_cli("run", *specs, *adapters, "--out", str(full), "-q", "-j", "1")
    assert proc.returncode == 1, proc.stdout + proc.stderr  # the wrong adapter fails
    for name in ("results.json", "results.md", "results.html", "results.junit.xml"):
        assert (full / name).stat().st_size > 0, name
    doc = load_results(full / "results.json")
    assert "### Failures (3 results," in (full / "results.md").read_text()
    junit = ET.parse(full / "results.junit.xml").getroot()
    assert int(junit.get("tests")) == len(doc["results"]) == 24
    data = _payload((full / "results.html").read_text())
    assert sum(r["v"] == "fail" for r in data["results"]) == 2

    shards = []
    for i in (1, 2):
        out = tmp_path / f"shard{i}"
        run_cli("run", *specs, *adapters, "--shard", f"{i}/2", "--out", str(out), "-q",
                "-j", "1", "--no-report")  # fmt: skip
        shards.append(str(out / "results.json"))
    merged = tmp_path / "merged.json"
    proc = run_cli("report", "merge", *shards, "--out", str(merged))
    assert proc.returncode == 0, proc.stderr
    joined = load_results(merged)
    assert len(joined["environments"]) == 1  # two shards, one machine

    def verdicts(d: dict) -> list[tuple]:
        return sorted((r["case"], r["adapter"], r["verdict"]) for r in d["results"])

    assert verdicts(joined) == verdicts(doc)
    proc = run_cli("report", "diff", str(full / "results.json"), str(merged))
    assert proc.returncode == 0 and "0 regressions" in proc.stdout, proc.stdout + proc.stderr


def test_two_machines_same_device_stay_apart(raw: dict) -> None:
    merged, _ = merge([("a", validate(raw)), ("b", validate(_other_machine(raw, "box2", "cpu")))])
    assert len(merged["results"]) == 2 * len(raw["results"])
    junit = ET.fromstring(render(validate(merged), "junit"))
    names = [(c.get("classname"), c.get("name")) for c in junit.findall(".//testcase")]
    assert len(set(names)) == len(names)
    assert "masks/window [cpu @ box2]" in {n for _, n in names}
    md = render(validate(merged), "md")
    assert "(cpu @ box2)" in md and "(cpu @ test-machine)" in md


def test_only_web_links_become_links(doc: dict) -> None:
    hostile = json.loads(json.dumps(doc))
    for entry in hostile["adapters"].values():
        for div in entry["divergences"]:
            div["link"] = "javascript:alert(1)"
    for record in hostile["results"]:
        if record.get("divergence"):
            record["divergence"]["link"] = "javascript:alert(1)"
        record["message"] = "</script><script>alert(1)</script>"
    page = render(hostile, "html")
    assert 'href="javascript' not in page and "<script>alert" not in page
    assert _payload(page)["strings"]  # the data block still parses
    assert "](javascript" not in render(hostile, "md")


def test_empty_run_still_reports(raw: dict, tmp_path: Path) -> None:
    empty = {**raw, "cases": {}, "results": []}
    path = tmp_path / "results.json"
    path.write_text(json.dumps(empty))
    md, page, junit = (p.read_text() for p in write_all(path, tmp_path))
    assert "No results" in md and "| adapter |" not in md
    assert _payload(page)["results"] == []
    assert ET.fromstring(junit).get("tests") == "0"


def test_markdown_of_the_committed_scoreboard_fits_a_pr_comment(scoreboard_markdown: str) -> None:
    """The full default CPU matrix (reports/results.json.gz) as a PR comment: under 65,536 chars,
    not cut, every failure group folded in <details>."""
    text = scoreboard_markdown
    assert len(text) < 65_536
    assert "cut to fit" not in text
    assert text.count("<details>") == text.count("</details>") >= 1


def test_html_of_the_committed_scoreboard_is_small(scoreboard: dict, scoreboard_html: str) -> None:
    """The full default CPU matrix (reports/results.json.gz, 65,778 results) as HTML, within
    issue 17's 1.5 MB: unsupported results summarised as groups, the data gzip-compressed in
    the page (about 0.7 MB in all), every result still in the data."""
    doc, page = scoreboard, scoreboard_html
    assert len(page.encode()) <= 1_500_000
    assert 'data-encoding="gzip+base64"' in page
    data = _payload(page)
    assert len(data["results"]) == len(doc["results"])
    assert sum(r["v"] == "unsupported" for r in data["results"]) == sum(
        r["verdict"] == "unsupported" for r in doc["results"]
    )


def test_markdown_has_the_behaviour_views(doc: dict) -> None:
    text = render(doc, "md")
    assert "Behaviours implementations disagree on" in text
    assert "**Fully masked rows**" in text


def test_known_findings_explain_fails_but_keep_them_fails(scoreboard_markdown: str) -> None:
    from conformance.report.findings import finding_for, known_findings

    assert known_findings(), "adapters/findings/*.json"
    record = {
        "adapter": "torch.onnx.sdpa.opset18",
        "case": "fully_masked/all-random-kernel[float32]",
    }
    assert finding_for({**record, "verdict": "fail"})["id"] == "torchlib-bool-mask-dtype-min"
    assert finding_for({**record, "verdict": "pass"}) is None
    assert (
        finding_for({**record, "verdict": "fail", "case": "scale/negative-kernel[float32]"}) is None
    )
    assert "Known finding **torchlib-bool-mask-dtype-min**" in scoreboard_markdown


def test_every_known_finding_explains_a_fail_of_the_scoreboard(scoreboard: dict) -> None:
    """A finding that matches no fail of the committed scoreboard has rotted (the fail was
    fixed, renamed or moved): each must explain at least one, and point somewhere real."""
    from conformance.report.findings import finding_for, known_findings

    explained = {finding_for(r)["id"] + "|" + r["adapter"]
                 for r in scoreboard["results"] if finding_for(r) is not None}  # fmt: skip
    ran = {r["adapter"] for r in scoreboard["results"]}  # opt-in adapters run when named only
    checked = [entry for entry in known_findings() if entry["adapter"] in ran]
    assert len(checked) >= 5
    for entry in known_findings():
        if entry["adapter"] in ran:
            assert f"{entry['id']}|{entry['adapter']}" in explained, entry["id"]
        assert str(entry.get("link", "")).startswith("https://"), entry["id"]
        assert (ROOT / entry["docs"]).is_file(), entry["docs"]


def test_a_gzipped_results_file_reads_like_the_plain_one(raw: dict, tmp_path: Path) -> None:
    import gzip

    plain, packed = tmp_path / "results.json", tmp_path / "results.json.gz"
    plain.write_text(json.dumps(raw))
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    assert load_results(packed) == load_results(plain)
    (tmp_path / "bad.json.gz").write_bytes(b"not gzip")
    with pytest.raises(ResultsFileError, match="not a readable gzip file"):
        load_results(tmp_path / "bad.json.gz")
