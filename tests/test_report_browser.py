"""The HTML report in a real headless browser (Debian's chromium driven by Playwright).

Needs: `apt-get install -y chromium` (the Debian package, /usr/bin/chromium) and
`pip install playwright` (the Python package only: no `playwright install`, no browser
download). Without either, the test skips and says which one is missing.

Checks: the page loads from disk without console errors or network requests, the matrix is
visible and its device/dtype filters recount the cells, a failing case's detail opens and shows
its heatmaps (decoded images, not broken ones). A screenshot is saved under tmp_path, or under
$REPORT_SCREENSHOT_DIR when set (CI can keep it as an artifact).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from test_report_fixtures import build_results

from conformance.report import render, validate
from conformance.report.merge import merge

sync_api = pytest.importorskip(
    "playwright.sync_api",
    reason="the Python package 'playwright' is not installed (pip install playwright)",
)

CHROMIUM = os.environ.get("CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-dev-shm-usage",
    "--no-first-run",
]


@pytest.fixture(scope="module")
def report_page(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no chromium at {CHROMIUM} (apt-get install -y chromium)")
    tmp = tmp_path_factory.mktemp("browser")
    cpu = validate(build_results(tmp))
    gpu = json.loads(json.dumps(build_results(tmp, machine="gpu-box")))
    for record in gpu["results"]:
        record["device"] = "cuda:0"
    merged, _ = merge([("cpu", cpu), ("gpu", validate(gpu))])
    page = tmp / "results.html"
    page.write_text(render(validate(merged), "html"), encoding="utf-8")
    return page


def test_report_in_headless_chromium(report_page: Path, tmp_path: Path) -> None:
    shots = Path(os.environ.get("REPORT_SCREENSHOT_DIR") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    problems: list[str] = []
    with sync_api.sync_playwright() as p:
        try:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        except Exception as error:  # noqa: BLE001 - a browser that cannot start is a skip reason
            pytest.skip(f"chromium at {CHROMIUM} does not start: {error}")
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(30_000)
            page.on(
                "console",
                lambda m: (
                    problems.append(f"console {m.type}: {m.text}")
                    if m.type in ("error", "warning")
                    else None
                ),
            )
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.on(
                "request",
                lambda r: (
                    None
                    if r.url.startswith(("file:", "data:"))
                    else problems.append(f"network request: {r.url}")
                ),
            )
            page.goto(report_page.as_uri())
            page.wait_for_selector("body[data-ready='1']")

            matrix = page.locator("#matrix-table")
            assert matrix.is_visible()
            assert matrix.locator("tbody tr").count() == 2  # reference, test.wrong
            cell = page.locator("td.cell[data-adapter='test.wrong'][data-family='masks']")
            assert "w-error" in cell.get_attribute("class")  # coloured by its worst verdict
            assert "4 fail" in cell.inner_text() and "2 error" in cell.inner_text()

            page.select_option("#f-device", "cuda:0")  # one machine's results
            assert "2 fail" in cell.inner_text() and "1 error" in cell.inner_text()
            page.select_option("#f-dtype", "float64")
            text = cell.inner_text()
            assert "1 fail" in text and "3 diverges" in text and "pass" not in text
            page.select_option("#f-dtype", "")
            page.select_option("#f-device", "")

            cell.click()  # lists that cell's results, worst first
            rows = page.locator("#results-body tr.row")
            assert rows.count() == 20
            failing = page.locator("#results-body tr.row[data-verdict='fail']").first
            failing.click()
            detail = page.locator("#results-body tr.detail").first
            heatmap = detail.locator("img[alt='|weights − reference|']")
            heatmap.wait_for(state="visible")
            for alt in ("reference weights", "implementation weights", "mask"):
                image = detail.locator(f"img[alt^='{alt}']")
                assert image.is_visible(), alt
                assert image.evaluate("i => i.complete && i.naturalWidth > 0"), alt
            assert heatmap.evaluate("i => i.naturalWidth") == 7  # one pixel per key (S = 7)
            assert "--case" in detail.locator("pre.repro").inner_text()
            detail.scroll_into_view_if_needed()
            shot = shots / "report-failing-case.png"
            page.screenshot(path=str(shot), full_page=False)
            assert shot.stat().st_size > 10_000
        finally:
            browser.close()
    assert not problems, problems


def test_scoreboard_answers_the_three_questions(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """The committed full-CPU scoreboard (reports/results.json.gz) as a user sees it: which
    implementations differ on fully masked rows and what each returns, why a given fail
    happened and where it is explained, whether an adapter passes everything it supports."""
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no chromium at {CHROMIUM} (apt-get install -y chromium)")
    page_path = tmp_path / "results.html"
    # The page test_report.py checks, rendered once per session (after the skips above).
    page_path.write_text(request.getfixturevalue("scoreboard_html"))
    assert page_path.stat().st_size <= 1_500_000  # see test_report.py
    shots = Path(os.environ.get("REPORT_SCREENSHOT_DIR") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    problems: list[str] = []
    with sync_api.sync_playwright() as p:
        try:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        except Exception as error:  # noqa: BLE001 - a browser that cannot start is a skip reason
            pytest.skip(f"chromium at {CHROMIUM} does not start: {error}")
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.set_default_timeout(30_000)
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.goto(page_path.as_uri())
            page.wait_for_selector("body[data-ready='1']")
            # The page fits a 1280 px window: nothing scrolls sideways but the matrix's box.
            assert page.evaluate("document.documentElement.scrollWidth") <= 1280

            # 1. Fully masked rows: one table, implementations grouped by what they return.
            table = page.locator("#behaviour-fully-masked-rows")
            rows = {
                r.locator("td").nth(1).inner_text(): r.locator("td").nth(0).inner_text()
                for r in table.locator("tbody tr").all()
            }
            zeros = next(v for k, v in rows.items() if k.startswith("zeros"))
            assert "torch.sdpa" in zeros
            # ORT's fused kernel: zeros, plus one float16 finite-fill fail (docs/adapters/onnx.md)
            assert any(k.startswith("zeros") and "onnx.attention.4d" in v for k, v in rows.items())
            nan = next(v for k, v in rows.items() if k.startswith("NaN"))
            assert "torch.mha.fast" in nan and "reference" in nan
            assert any(k.startswith("uniform") and "flax.linen" in v for k, v in rows.items())
            table.scroll_into_view_if_needed()
            page.screenshot(path=str(shots / "behaviour-fully-masked-rows.png"))
            assert "torch.mha" in page.locator("#behaviour-one-module").inner_text()

            # 2. Why did torch.onnx.sdpa.opset18 fail, and where is it explained? A linked view.
            adapters = page.evaluate(
                "Array.from(document.querySelectorAll('#f-adapter option')).map(o => o.text)"
            )
            index = adapters.index("torch.onnx.sdpa.opset18") - 1  # first option is "all"
            hide = "pass,diverges,unsupported,error"
            page.goto(
                f"{page_path.as_uri()}#f=adapter%3D{index}%26hide%3D{hide.replace(',', '%2C')}"
            )
            page.reload()
            page.wait_for_selector("body[data-ready='1']")
            assert page.locator("#f-adapter").input_value() == str(index)
            failing = page.locator("#results-body tr.row[data-verdict='fail']")
            assert failing.count() >= 1
            assert page.locator("#results-body tr.row:not([data-verdict='fail'])").count() == 0
            failing.first.click()
            detail = page.locator("#results-body tr.detail").first
            assert "docs/adapters/onnx.md" in detail.inner_text()
            # The fail is a known finding: its explanation sits next to it (it stays a fail).
            assert "torchlib-bool-mask-dtype-min" in detail.inner_text()
            assert "--adapter torch.onnx.sdpa.opset18" in detail.locator("pre.repro").inner_text()
            page.screenshot(path=str(shots / "failing-result-detail.png"))
            page.click("#reset")
            assert "#f=" not in page.url

            # The feature x adapter matrix: the same results, one column per case feature.
            page.select_option("#f-by", "feature")
            cell = page.locator(
                "td.cell[data-adapter='torch.onnx.sdpa.opset18'][data-feature='fully-masked-rows']"
            )
            assert "fail" in cell.inner_text()
            assert "by%3Dfeature" in page.url or "by=feature" in page.url
            page.locator("#matrix").scroll_into_view_if_needed()
            page.screenshot(path=str(shots / "feature-matrix.png"))
            page.click("#reset")

            # 3. Does an adapter pass everything it supports? Its matrix row: no fail or error.
            row = page.locator("#matrix-table tbody tr", has_text="torch.sdpa.math").first
            text = row.inner_text()
            assert "fail" not in text and "error" not in text and "pass" in text
        finally:
            browser.close()
    assert not problems, problems
