"""Reports from a results.json: HTML (self-contained), Markdown (PR comments), JUnit XML, JSON.

    doc = load_results("out/results.json")   # validated; ResultsFileError when it is not one
    render(doc, "md")                         # -> str
    write_all(Path("out/results.json"), Path("out"))   # what `conformance run` calls

Also `merge` (rejoin shards and machines) and `diff` (regressions between runs).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from .results import SEVERITY, adapter_names, families, load_results, matrix, validate

FORMATS = ("html", "md", "junit", "json")
FILE_NAMES = {"html": "results.html", "md": "results.md", "junit": "results.junit.xml"}
SUFFIXES = {".html": "html", ".htm": "html", ".md": "md", ".xml": "junit", ".json": "json"}

__all__ = ["FORMATS", "load_results", "render", "validate", "write_all"]


def render(doc: dict, fmt: str, slim: bool = False) -> str:
    """One report of a validated (normalised) results document as text.

    `slim` (json only): without the heatmap previews and the per-record copies of what the case
    already says (features, compared), on one line: the size to keep in a repository.
    """
    if fmt == "html":
        from .html import render_html

        return render_html(doc)
    if fmt == "md":
        from .markdown import render_markdown

        return render_markdown(doc)
    if fmt == "junit":
        from .junit import render_junit

        return render_junit(doc)
    if fmt == "json":
        if slim:
            return json.dumps(with_summary(slimmed(doc)), separators=(",", ":")) + "\n"
        return json.dumps(with_summary(doc), indent=1) + "\n"
    raise ValueError(f"unknown report format {fmt!r}; expected one of {', '.join(FORMATS)}")


def with_summary(doc: dict) -> dict:
    """The document plus a "summary" block (counts overall, per adapter, per adapter x family).

    It stays a valid results file: `conformance report` reads it back.
    """
    grid = matrix(doc)
    total: Counter = Counter(r["verdict"] for r in doc["results"])
    summary = {
        "total": {v: total.get(v, 0) for v in SEVERITY},
        "adapters": {},
    }
    for name in adapter_names(doc):
        per_family = {
            fam: {v: n for v, n in grid[(name, fam)].items()}
            for fam in families(doc)
            if (name, fam) in grid
        }
        summary["adapters"][name] = per_family
    return {**doc, "summary": summary}


SLIM_DROPS = ("preview", "features", "compared")


def slimmed(doc: dict) -> dict:
    """The document without previews and per-record duplicates; still a valid results file."""
    records = [{k: v for k, v in r.items() if k not in SLIM_DROPS} for r in doc["results"]]
    return {**doc, "results": records}


def write_all(results_path: Path, out_dir: Path) -> list[Path]:
    """Write results.md, results.html and results.junit.xml for a results file; return paths."""
    doc = load_results(results_path)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for fmt in ("md", "html", "junit"):
        path = out_dir / FILE_NAMES[fmt]
        path.write_text(render(doc, fmt), encoding="utf-8")
        written.append(path)
    return written
