"""The HTML report: one self-contained file (inline CSS, script and PNG data URIs).

Python prepares everything a reader may want (pictures included) as one JSON blob in the page;
a small script draws the filterable matrix and the result list from it. The matrix is also
rendered server-side so the page says something useful with scripts disabled.

The page is assembled here (`render_html`) from html_payload.py (the data: every result, its
pictures, the cases), html_encoding.py (how that data travels in the page) and html_sections.py
(the parts rendered server-side).
"""

from __future__ import annotations

from . import images
from .assets import CSS, JS
from .html_encoding import (
    _CANNOT,
    _GROUPABLE,
    COMPRESS_DATA_ABOVE,
    ROW_KEYS,
    _columns,
    _data_block,
    _deltas,
    _encode_column,
    _finite,
    _json_for_script,
    _row,
)
from .html_payload import (
    MAX_MASK_SIDE,
    MAX_RECORD_IMAGES,
    ORDER,
    _cannot_express,
    _Images,
    _mask_picture,
    _milliseconds,
    _num,
    _payload,
    _record_pictures,
    _Strings,
    _tolerance_key,
    spec_text,
)
from .html_sections import (
    _adapter_cards,
    _behaviours,
    _chips,
    _e,
    _machines,
    _options,
    _static_matrix,
    _tolerance_text,
    _value_list,
)
from .results import (
    BAD,
    counts,
    environment_label,
)

# Every name this module had before it was split (issue 20): html_payload.py (what the page's
# script reads), html_encoding.py (how it travels in the page), html_sections.py (the parts
# rendered server-side); the page itself is assembled here.
__all__ = [
    "COMPRESS_DATA_ABOVE",
    "MAX_MASK_SIDE",
    "MAX_RECORD_IMAGES",
    "ORDER",
    "ROW_KEYS",
    "_CANNOT",
    "_GROUPABLE",
    "_Images",
    "_Strings",
    "_adapter_cards",
    "_behaviours",
    "_cannot_express",
    "_chips",
    "_columns",
    "_data_block",
    "_deltas",
    "_e",
    "_encode_column",
    "_finite",
    "_json_for_script",
    "_machines",
    "_mask_picture",
    "_milliseconds",
    "_num",
    "_options",
    "_payload",
    "_record_pictures",
    "_row",
    "_static_matrix",
    "_tolerance_key",
    "_tolerance_text",
    "_value_list",
    "render_html",
    "spec_text",
]


def render_html(doc: dict, title: str = "Attention conformance report") -> str:
    payload = _payload(doc)
    adapters, fams = payload["adapters"], payload["families"]
    records = doc["results"]
    total = counts(records)
    devices = sorted({r["device"] for r in records})
    dtypes = [d for d in ("float64", "float32", "float16", "bfloat16") if any(
        c["dt"] == d for c in payload["cases"])]  # fmt: skip
    envs = doc["environments"]
    env_filter = (
        f'<label>machine <select id="f-env">{_options([(str(i), e["id"]) for i, e in enumerate(envs)], "all")}'
        "</select></label>"
        if len(envs) > 1
        else ""
    )
    meta = [
        f"{len(records)} results",
        f"{len(adapters)} adapters",
        f"{len(payload['cases'])} cases",
        f"tool {doc.get('tool_version', '?')}",
        f"spec v{doc.get('spec_version', '?')}",
    ]
    if doc.get("created"):
        meta.append(f"created {doc['created']}")
    machines = "; ".join(environment_label(e) for e in envs)
    command = doc.get("command")
    failing = sum(total[v] for v in BAD)
    legend = (
        " ".join(f'<span><span class="swatch" style="background:var(--{v})"></span>{v}</span>' for v in ORDER)
        + f'<span>weights <img alt="0 to 1" src="{images.data_uri(images.legend_weights())}"> 0 → 1</span>'
        + f'<span>|difference| <img alt="error scale" src="{images.data_uri(images.legend_error())}">'
        " atol/10⁴ → atol → 10⁵·atol</span>"
    )  # fmt: skip
    verdict_boxes = "".join(
        f'<label><input type="checkbox" class="f-verdict" value="{v}" checked> {v}</label>'
        for v in ORDER
    )
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_e(title)}</title>
<link rel="icon" href="data:,">
<style>{CSS}</style>
</head>
<body>
<header>
<h1>{_e(title)}</h1>
<div class="meta">{_e(" · ".join(meta))}</div>
<div class="meta">machines: {_e(machines)}</div>
{f'<div class="meta">command: <code>{_e(command)}</code></div>' if command else ""}
<div class="totals" id="totals">{_chips(total)}</div>
<div class="meta">{"every result within tolerance or explained" if not failing else f"{failing} results fail or error"}</div>
</header>
<nav><a href="#matrix">Matrix</a><a href="#behaviours">Behaviours</a><a href="#results">Results</a><a href="#adapters">Adapters</a><a href="#machines">Machines</a></nav>
<main>
<section id="matrix">
<h2>Compatibility matrix</h2>
<div class="filters">
<label>device <select id="f-device">{_options([(d, d) for d in devices], "all")}</select></label>
<label>dtype <select id="f-dtype">{_options([(d, d) for d in dtypes], "all")}</select></label>
{env_filter}
<label>columns <select id="f-by"><option value="">family</option><option value="feature">feature</option></select></label>
<span class="note">click a cell to list its results</span>
</div>
<div class="legend">{legend}</div>
<div id="matrix-holder">{_static_matrix(doc, adapters, fams)}</div>
</section>
<section id="behaviours">
<h2>Behaviours implementations disagree on</h2>
<div class="note">generated from the results and the adapters' declared divergences</div>
{_behaviours(doc, adapters)}
</section>
<section id="results">
<h2>Results</h2>
<div class="filters">
{verdict_boxes}
<label>adapter <select id="f-adapter">{_options([(str(i), a) for i, a in enumerate(adapters)], "all")}</select></label>
<label>family <select id="f-family">{_options([(str(i), f) for i, f in enumerate(fams)], "all")}</select></label>
<label>search <input type="search" id="f-text" placeholder="case, adapter, message"></label>
<button type="button" id="reset">clear</button>
</div>
<div class="note" id="results-count"></div>
<table class="results"><thead><tr><th>verdict</th><th>adapter</th><th>case</th><th>device</th>
<th>dtype</th><th>max abs err</th><th>atol / rtol</th><th>message</th></tr></thead>
<tbody id="results-body"></tbody></table>
<button type="button" class="more" id="more" hidden>show more</button>
<noscript><p>The result list needs JavaScript; the Markdown and JUnit reports list failures without it.</p></noscript>
</section>
<section id="adapters">
<h2>Adapters</h2>
{_adapter_cards(doc, adapters)}
</section>
<section id="machines">
<h2>Machines</h2>
{_machines(doc)}
</section>
</main>
<footer>Generated by attention-conformance {_e(doc.get("tool_version", ""))} from a results file
(schema {doc.get("schema_version")}). Every result is checked against a float64 NumPy reference;
a <b>diverges</b> verdict is a documented, verified difference, a <b>fail</b> is not explained.</footer>
{_data_block(payload)}
<script>{JS}</script>
</body>
</html>
"""
