"""The HTML report: one self-contained file (inline CSS, script and PNG data URIs).

Python prepares everything a reader may want (pictures included) as one JSON blob in the page;
a small script draws the filterable matrix and the result list from it. The matrix is also
rendered server-side so the page says something useful with scripts disabled.

Pictures are deduplicated by content: a passing implementation's weights quantise to the same
colours as the reference's, so they cost nothing extra.
"""

from __future__ import annotations

import base64
import gzip
import html
import json
from collections import Counter

import numpy as np

from ..cases.case import FEATURES, Case
from ..sanitize import strip_control
from . import images
from .assets import CSS, JS
from .behaviours import behaviour_tables, one_module_different_answers
from .docs_links import docs_page
from .findings import finding_for
from .results import (
    BAD,
    SEVERITY,
    adapter_names,
    counts,
    environment_label,
    families,
    matrix,
    record_family,
    repro_command,
    sort_key,
)

ORDER = ("pass", "diverges", "unsupported", "fail", "error")
MAX_MASK_SIDE = 256  # larger masks are described, not drawn
MAX_RECORD_IMAGES = 3000  # non-passing results that get their own pictures


class _Images:
    """Data URIs deduplicated by content; records refer to them by index."""

    def __init__(self) -> None:
        self.items: list[list] = []
        self._index: dict[str, int] = {}

    def add(self, rgb: np.ndarray | None) -> int | None:
        if rgb is None or rgb.size == 0:
            return None
        uri = images.data_uri(rgb)
        if uri not in self._index:
            self._index[uri] = len(self.items)
            self.items.append([uri, int(rgb.shape[1]), int(rgb.shape[0])])
        return self._index[uri]


class _Strings:
    """Repeated texts (unsupported reasons, tolerances, devices) stored once, used by index."""

    def __init__(self) -> None:
        self.items: list[str] = []
        self._index: dict[str, int] = {}

    def add(self, text: object) -> int | None:
        if text is None:
            return None
        if text not in self._index:
            self._index[text] = len(self.items)
            self.items.append(text)
        return self._index[text]


def _num(value: float | None, digits: int = 4) -> float | None:
    """Four significant digits: what a reader compares, at a third of the bytes."""
    return None if value is None else float(f"{value:.{digits}g}")


def _e(text: object) -> str:
    # Control characters and ANSI sequences from adapters' messages are dropped (issue 18).
    return html.escape(strip_control(text), quote=True)


def spec_text(case: dict) -> str:
    """The resolved case as short readable lines: what a reader needs to rebuild it."""
    shape = case.get("shape") or {}
    lines: list[str] = []  # the id is shown above the spec
    scale = case.get("scale")
    key_dim = shape.get("key_dim")
    scale_text = f"{scale:g}" if scale is not None else (f"1/sqrt({key_dim})" if key_dim else "?")
    tier = f"   tier: {case['tier']}" if case.get("tier", "small") != "small" else ""
    lines.append(
        f"mode: {case.get('mode')}   dtype: {case.get('dtype')}   scale: {scale_text}{tier}"
    )
    kernel_keys = (
        "batch",
        "query_len",
        "kv_len",
        "num_heads",
        "num_kv_heads",
        "key_dim",
        "value_dim",
    )
    keys = kernel_keys if case.get("mode") == "kernel" else tuple(shape)
    sizes = [f"{k}={shape[k]}" for k in keys if k in shape and shape[k] not in ((), [], None)]
    lines.append("shape: " + " ".join(sizes))
    mask = case.get("mask") or {}
    parts = [
        f"{k}={v}"
        for k, v in mask.items()
        if v not in (None, False, [], ()) and not (k == "fully_masked_rows" and v == "nan")
    ]
    lines.append("mask: " + (" ".join(parts) if parts else "none"))
    if case.get("mode") == "layer":
        flags = [
            f"self_attention={case.get('self_attention')}",
            f"use_bias={case.get('use_bias')}",
        ]
        flags += [f"{k}=True" for k in ("add_bias_kv", "add_zero_attn") if case.get(k)]
        lines.append("layer: " + " ".join(flags))
    if case.get("decode"):
        lines.append(f"decode: {case['decode']}")
    if case.get("cache"):  # issue 14: cache lengths, page size and block table
        lines.append("cache: " + " ".join(f"{k}={v}" for k, v in case["cache"].items() if v))
    lines.append(f"compare: {', '.join(case.get('compare') or [])}   seed: {case.get('seed')}")
    if case.get("params"):
        lines.append("params: " + ", ".join(f"{k}={v}" for k, v in case["params"]))
    if case.get("source"):
        lines.append(f"source: {case['source']}")
    if case.get("description"):
        lines.append(f"description: {' '.join(str(case['description']).split())}")
    return "\n".join(lines)


def _mask_picture(case: dict, store: _Images) -> tuple[int | None, str]:
    """(image index, caption) for a case's mask, rebuilt from the case dict (NumPy only)."""
    from ..cases.case import Case
    from ..cases.masks import build_mask

    try:
        resolved = Case.from_dict(case)
        shape = resolved.shape
        if max(shape.query_len, shape.kv_len) > MAX_MASK_SIDE:
            return None, ""
        attend, bias = build_mask(resolved)
    except Exception:  # noqa: BLE001 - a case the report cannot rebuild just has no picture
        return None, ""
    if attend is None and bias is None:
        return None, ""
    rgb = images.mask_image(attend, bias)
    batches = min(shape.batch, 4)
    what = "batch 0" if batches == 1 else f"batches 0–{batches - 1}"
    extra = "; plus a finite bias (not drawn)" if resolved.mask.bias_scale is not None else ""
    per_head = "; differs per head" if resolved.mask.per_head else ""
    caption = f"mask, {what}, head 0 (blue attends, light masked, dark red −inf){per_head}{extra}"
    return store.add(rgb), caption


def _record_pictures(record: dict, store: _Images) -> dict:
    """Implementation weights, |weights − reference| and |output − reference| for a result."""
    preview = record.get("preview") or {}
    out: dict = {}
    weights, reference = preview.get("weights"), preview.get("reference_weights")
    if weights:
        out["w"] = store.add(images.weights_image(weights))
    if record["verdict"] in ("fail", "diverges"):
        atol = record.get("atol") or 1e-6
        if preview.get("weights_error"):  # computed before rounding: exact down to 1e-16
            grid = images.as_array(preview["weights_error"])
            placement = (
                images.weight_difference(reference, weights) if weights and reference else None
            )
            mismatch = placement[1] if placement is not None else None
            out["wd"] = store.add(images.error_image(grid, atol, mismatch))
        elif weights and reference:  # from the rounded previews: 6 significant digits
            difference = images.weight_difference(reference, weights)
            if difference is not None:
                out["wd"] = store.add(images.error_image(difference[0], atol, difference[1]))
        if preview.get("output_error"):
            grid = images.as_array(preview["output_error"])
            out["oe"] = store.add(images.error_image(grid, atol))
    return {k: v for k, v in out.items() if v is not None}


# Results travel as positional rows (the page turns them back into objects), keys ordered so an
# unsupported result's row ends early: 17,000 unsupported results of the default matrix would
# otherwise be most of the page. `i` (the row's index) and `byCase` are rebuilt by the page.
ROW_KEYS = ("c", "a", "v", "m", "mu", "d", "e", "s", "x", "rx", "t", "mm", "fm", "dv", "cmd",
            "w", "wd", "oe", "kf")  # fmt: skip
_CANNOT = " cannot express: "
# An unsupported result with nothing but these keys joins its group (the "unsupported" rows:
# the shared row with its case indices appended as a last element).
_GROUPABLE = {"c", "a", "d", "e", "v", "m", "mu", "s", "cmd"}


def _tolerance_key(record: dict) -> tuple | None:
    key = (_num(record.get("atol")), _num(record.get("rtol")), record.get("tolerance"))
    return None if key == (None, None, None) else key


def _milliseconds(seconds: float | None) -> int | None:
    """A duration as whole milliseconds (None for 0): what a reader compares, in few bytes."""
    if seconds is None:
        return None
    ms = round(float(seconds) * 1000)
    return ms or None


def _columns(rows: list[list]) -> list:
    """Rows as columns, each the shortest of: a plain list, run lengths {"rle": [value, count,
    ...]} (a run of one adapter, verdict or tolerance) or {"delta": [...]} (sorted case
    indices). The page (assets.JS decodeColumns) turns them back into rows."""
    width = len(ROW_KEYS)
    columns = [[row[j] if j < len(row) else None for row in rows] for j in range(width)]
    return [_encode_column(column) for column in columns]


def _encode_column(values: list) -> list | dict:
    def size(x: object) -> int:
        return len(json.dumps(x, separators=(",", ":"), default=str))

    runs: list = []
    for value in values:
        if runs and runs[-2] == value:
            runs[-1] += 1
        else:
            runs += [value, 1]
    best: list | dict = values
    if size({"rle": runs}) < size(best):
        best = {"rle": runs}
    if values and all(type(v) is int for v in values):
        deltas = [b - a for a, b in zip([0, *values], values, strict=False)]
        if size({"delta": deltas}) < size(best):
            best = {"delta": deltas}
    return best


def _deltas(row: list) -> list:
    """The case indices at the end of an unsupported row, sorted and as differences."""
    cases = sorted(row[-1])
    return row[:-1] + [[b - a for a, b in zip([0, *cases], cases, strict=False)]]


def _row(entry: dict) -> list:
    row = [entry.get(k) for k in ROW_KEYS]
    while row and row[-1] is None:
        row.pop()
    return row


def _cannot_express(record: dict, strings: _Strings) -> list[int] | None:
    """An unsupported result's "<adapter> cannot express: a (why); b (why)" as indices of its
    pieces: a few hundred distinct pieces instead of 1,700 distinct long messages."""
    message = record.get("message") or ""
    head = record["adapter"] + _CANNOT
    if record["verdict"] != "unsupported" or not message.startswith(head):
        return None
    return [strings.add(piece) for piece in message[len(head) :].split("; ")]


def _payload(doc: dict) -> dict:
    store = _Images()
    adapters = adapter_names(doc)
    fams = families(doc)
    envs = doc["environments"]
    env_index = {env["id"]: i for i, env in enumerate(envs)}
    case_ids = list(doc["cases"])
    for record in doc["results"]:
        if record["case"] not in doc["cases"] and record["case"] not in case_ids:
            case_ids.append(record["case"])
    case_index = {cid: i for i, cid in enumerate(case_ids)}

    strings = _Strings()
    tolerances = _Strings()  # (atol, rtol, tolerance text) triples, used by index
    feature_list = [t for t in FEATURES if t not in ("float64", "float32", "float16", "bfloat16")]
    feature_set = set(feature_list)
    cases = []
    for cid in case_ids:
        case = doc["cases"].get(cid)
        if case is None:  # a record whose case the file does not describe
            cases.append({"id": cid, "f": fams.index(cid.split("/", 1)[0]) if "/" in cid else 0,
                          "dt": "", "mode": "", "spec": [strings.add("(not described in the results file)")],
                          "cmp": ""})  # fmt: skip
            continue
        mask, note = _mask_picture(case, store)
        try:  # the feature x adapter matrix groups results by the features of their case
            tags = sorted(Case.from_dict(case).features & feature_set)
        except Exception:  # noqa: BLE001 - a case this version cannot rebuild has no features
            tags = []
        cases.append(
            {
                "id": cid,
                "f": fams.index(case.get("family") or cid.split("/", 1)[0]),
                "dt": case.get("dtype", ""),
                "mode": case.get("mode", ""),
                # Lines as string indices: cases of one matrix share most of their lines.
                "spec": [strings.add(line) for line in spec_text(case).split("\n")],
                "cmp": ", ".join(case.get("compare") or []),
                "src": str(case.get("source") or "").rsplit(":", 1)[0] or None,
                "mask": mask,
                "maskNote": strings.add(note) if note else None,
                "ft": [feature_list.index(t) for t in tags],
            }
        )
    for record in doc["results"]:  # the reference picture is the same for every adapter
        c = cases[case_index[record["case"]]]
        ref = (record.get("preview") or {}).get("reference_weights")
        if "ref" not in c and ref:
            c["ref"] = store.add(images.weights_image(ref))
        if not c.get("dt"):
            c["dt"] = record.get("dtype", "")

    divergences: list[dict] = []
    div_index: dict[str, int] = {}
    results = []
    pictured = 0
    ordered = sorted(doc["results"], key=sort_key)
    unsupported: dict[str, list] = {}  # same adapter, reason, device: one row, its case indices
    found: list[dict] = []
    finding_index: dict[str, int] = {}
    for record in ordered:
        fam = record_family(record)
        c = case_index[record["case"]]
        if cases[c]["f"] != fams.index(fam):
            cases[c]["f"] = fams.index(fam)
        entry = {
            "c": c,
            "a": adapters.index(record["adapter"]),
            "d": strings.add(record["device"]),
            "e": env_index.get(record.get("environment_id"), 0),
            "v": ORDER.index(record["verdict"]),
            "x": _num(record.get("max_abs_error"), 3),
            "rx": _num(record.get("max_rel_error"), 3),
            "t": tolerances.add(_tolerance_key(record)),
            "mu": _cannot_express(record, strings),
            "s": _milliseconds(record.get("duration_s")),
            "mm": record.get("mismatches") if record["verdict"] != "pass" else None,
            "fm": record.get("first_mismatch"),
        }
        div = record.get("divergence")
        if div:
            key = json.dumps(div, sort_keys=True)
            if key not in div_index:
                div_index[key] = len(divergences)
                divergences.append(div)
            entry["dv"] = div_index[key]
        finding = finding_for(record)  # findings.py: an explained fail stays a fail
        if finding is not None:
            key = finding["id"]
            if key not in finding_index:
                finding_index[key] = len(found)
                found.append({k: finding.get(k) for k in ("id", "explanation", "docs", "link")})
            entry["kf"] = finding_index[key]
        if record["verdict"] in BAD:  # the page builds the others' commands (reproCommand)
            entry["cmd"] = repro_command(doc, record)
        if entry["mu"] is None:
            entry["m"] = strings.add(record.get("message") or "")
        if record["verdict"] == "pass" or pictured < MAX_RECORD_IMAGES:
            pics = _record_pictures(record, store)
            pictured += record["verdict"] != "pass"
            entry.update(pics)
        if entry.get("s") == 0:
            entry["s"] = None
        if (
            record["verdict"] == "unsupported"
            and {k for k, v in entry.items() if v is not None} <= _GROUPABLE
        ):
            key = json.dumps([entry.get(k) for k in ("a", "mu", "m", "d", "e")])
            unsupported.setdefault(key, _row({**entry, "c": None, "v": None}) + [[]])
            unsupported[key][-1].append(c)
            continue
        results.append(_row(entry))
    return {
        "adapters": adapters,
        "families": fams,
        "envs": [{"id": env["id"], "label": environment_label(env)} for env in envs],
        "cases": cases,
        "resultKeys": list(ROW_KEYS),
        "results": _columns(results),
        "tolerances": [
            [at, rt, None if text is None else strings.add(text)]
            for at, rt, text in tolerances.items
        ],
        # Groups of unsupported results: their shared rows as columns, and per group its case
        # indices as differences.
        "unsupported": {
            "rows": _columns([_deltas(row)[:-1] for row in unsupported.values()]),
            "cases": [_deltas(row)[-1] for row in unsupported.values()],
        },
        "divergences": divergences,
        "docs": [docs_page(name) for name in adapters],
        "features": feature_list,
        "findings": found,
        "images": store.items,
        "strings": strings.items,
        "ran": [name in {r["adapter"] for r in doc["results"]} for name in adapters],
    }


def _finite(value: object) -> object:
    if isinstance(value, float):
        return value if np.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def _json_for_script(data: dict) -> str:
    # "<" escaped so no "</script>" or "<!--" inside a message can end the data block early.
    try:
        text = json.dumps(data, separators=(",", ":"), allow_nan=False, default=str)
    except ValueError:  # a NaN/Infinity from a hand-made file: JSON.parse would reject it
        text = json.dumps(_finite(data), separators=(",", ":"), allow_nan=False, default=str)
    return text.replace("<", "\\u003c").replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


# Above this many characters of JSON the data block is gzip-compressed (base64 in the page):
# a default run's 1.7 MB of data becomes about 0.2 MB; small reports stay plain and readable.
COMPRESS_DATA_ABOVE = 256 * 1024


def _data_block(payload: dict) -> str:
    text = _json_for_script(payload)
    if len(text) <= COMPRESS_DATA_ABOVE:
        return f'<script type="application/json" id="report-data">{text}</script>'
    packed = base64.b64encode(gzip.compress(text.encode(), compresslevel=9, mtime=0)).decode()
    return (
        '<script type="application/octet-stream" id="report-data" data-encoding="gzip+base64">'
        f"{packed}</script>"
    )


def _chips(counter: Counter) -> str:
    return "".join(
        f'<span class="chip v-{v}">{counter[v]} {v}</span>' for v in ORDER if counter.get(v)
    )


def _static_matrix(doc: dict, adapters: list[str], fams: list[str]) -> str:
    grid = matrix(doc)
    rows = []
    ran = {r["adapter"] for r in doc["results"]}
    for ai, name in enumerate(adapters):
        cells = []
        if name not in ran:
            cells.append(
                f'<td class="cell empty" colspan="{len(fams)}">no results (no device for it on '
                "the machines of this run)</td>"
            )
        for fam in fams if name in ran else ():
            counter = grid.get((name, fam))
            if not counter:
                cells.append('<td class="cell empty">·</td>')
                continue
            worst = next(v for v in SEVERITY if counter.get(v))
            # Worst verdict first; no bar here (the script draws it): this table is for readers
            # without JavaScript, and 600 bars are a tenth of the page.
            counts_html = "".join(
                f'<span class="v-{v}">{counter[v]} {v}</span>' for v in SEVERITY if counter.get(v)
            )
            cells.append(f'<td class="cell w-{worst}"><div class="counts">{counts_html}</div></td>')
        rows.append(
            f'<tr><th class="adapter" scope="row"><a href="#adapter-{ai}">{_e(name)}</a></th>'
            + "".join(cells)
            + "</tr>"
        )
    head = "".join(f'<th scope="col">{_e(f)}</th>' for f in fams)
    return (
        f'<table class="matrix" id="matrix-table"><thead><tr><th>adapter \\ family</th>{head}'
        f"</tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )


def _value_list(value: object) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k} {v}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value)
    return str(value)


def _adapter_cards(doc: dict, adapters: list[str]) -> str:
    by_adapter: dict[str, Counter] = {}
    for record in doc["results"]:
        by_adapter.setdefault(record["adapter"], Counter())[record["verdict"]] += 1
    envs = {env["id"]: env for env in doc["environments"]}
    cards = []
    for ai, name in enumerate(adapters):
        info = doc["adapters"].get(name) or {}
        counter = by_adapter.get(name, Counter())
        parts = [f'<div class="card" id="adapter-{ai}"><h3><code>{_e(name)}</code></h3>']
        if info.get("summary"):
            parts.append(f"<div>{_e(info['summary'])}</div>")
        if docs_page(name):
            parts.append(f'<div class="note">explained in <code>{_e(docs_page(name))}</code></div>')
        parts.append(f'<div class="totals">{_chips(counter)}</div>')
        rows = []
        if info.get("framework"):
            rows.append(("framework", _e(info["framework"])))
        per_env = info.get("environments")
        if isinstance(per_env, dict) and per_env:
            for env_id, block in per_env.items():
                label = environment_label(envs[env_id]) if env_id in envs else env_id
                rows.append(
                    (
                        f"on {_e(label)}",
                        _e(
                            "versions: " + (_value_list(block.get("versions") or {}) or "–")
                            + "; devices: " + (_value_list(block.get("devices") or []) or "–")
                        ),
                    )
                )  # fmt: skip
        else:
            if info.get("versions"):
                rows.append(("versions", _e(_value_list(info["versions"]))))
            if info.get("devices"):
                rows.append(("devices", _e(_value_list(info["devices"]))))
        if info.get("dtypes"):
            rows.append(("dtypes", _e(_value_list(info["dtypes"]))))
        if rows:
            parts.append(
                '<dl class="kv">' + "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in rows) + "</dl>"
            )
        features = set(info.get("features") or [])
        if features:
            # The page draws every known tag, struck out where not in data-on (indices into the
            # data's feature list): 58 cards x 45 tags of markup would be ~80 KB. The meaning of
            # each tag is in the glossary once, not repeated per adapter.
            known = [t for t in FEATURES if t not in ("float64", "float32", "float16", "bfloat16")]
            on = " ".join(str(i) for i, tag in enumerate(known) if tag in features)
            extra = [f'<span class="tag">{_e(t)}</span>' for t in sorted(features - set(FEATURES))]
            parts.append(
                '<div class="note">capabilities (struck out: cannot express)</div>'
                f'<div class="tags" data-on="{on}">{"".join(extra)}</div>'
            )
        divs = info.get("divergences") or []
        if divs:
            body = []
            for div in divs:
                div = div if isinstance(div, dict) else {"id": str(div)}
                link = div.get("link")
                if link and str(link).lower().startswith(("https://", "http://")):
                    link_html = f'<a href="{_e(link)}" rel="noopener noreferrer">upstream</a>'
                else:  # only web links: a results file may come from anywhere
                    link_html = _e(link) if link else "–"
                when = _value_list(div.get("when") or [])
                body.append(
                    f"<tr><td><code>{_e(div.get('id', '?'))}</code></td><td>{_e(div.get('reason', ''))}"
                    f"</td><td>{_e(when) or '–'}</td><td>{link_html}</td></tr>"
                )
            parts.append(
                '<div class="note">declared divergences (verified against the behaviour they '
                'describe)</div><table class="small"><thead><tr><th>id</th><th>reason</th>'
                f"<th>when</th><th>link</th></tr></thead><tbody>{''.join(body)}</tbody></table>"
            )
        tols = info.get("tolerances") or []
        if tols:
            items = "".join(
                f"<li>{_e(_value_list(t) if not isinstance(t, dict) else _tolerance_text(t))}</li>"
                for t in tols
            )
            parts.append(f'<div class="note">tolerance overrides</div><ul>{items}</ul>')
        if info.get("notes"):
            parts.append(f'<div class="note">notes</div><div>{_e(info["notes"])}</div>')
        parts.append("</div>")
        cards.append("".join(parts))
    glossary = "".join(
        f"<dt><code>{_e(tag)}</code></dt><dd>{_e(why)}</dd>" for tag, why in FEATURES.items()
    )
    return (
        '<div class="cards">' + "".join(cards) + "</div>"
        '<details id="capabilities"><summary>what each capability tag means</summary>'
        f'<dl class="kv">{glossary}</dl></details>'
    )


def _tolerance_text(t: dict) -> str:
    head = f"{t.get('dtype', '?')}: rtol={t.get('rtol')}, atol={t.get('atol')}"
    return head + (f" ({t['reason']})" if t.get("reason") else "")


def _machines(doc: dict) -> str:
    envs = doc["environments"]
    usage: dict[str, Counter] = {}
    for record in doc["results"]:
        usage.setdefault(record["device"], Counter())[record["environment_id"]] += 1
    labels = {env["id"]: environment_label(env) for env in envs}
    rows = "".join(
        f"<tr><td><code>{_e(device)}</code></td><td>"
        + "<br>".join(f"{_e(labels.get(e, e))} ({n} results)" for e, n in per.items())
        + "</td></tr>"
        for device, per in sorted(usage.items())
    )
    parts = [
        '<table class="small" id="device-machines"><thead><tr><th>device</th>'
        f"<th>machine that produced its results</th></tr></thead><tbody>{rows}</tbody></table>",
        '<div class="cards" style="margin-top:12px">',
    ]
    for env in envs:
        kv = []
        for key in ("machine_id", "platform", "python", "cpu"):
            if env.get(key):
                kv.append((key, _e(env[key])))
        if env.get("devices"):
            kv.append(("devices", _e(_value_list(env["devices"]))))
        if env.get("frameworks"):
            kv.append(("frameworks", _e(_value_list(env["frameworks"]))))
        for key, value in env.items():
            if key not in (
                "id",
                "machine_id",
                "platform",
                "python",
                "cpu",
                "devices",
                "frameworks",
            ):
                kv.append((key, _e(_value_list(value))))
        parts.append(
            f'<div class="card"><h3>machine <code>{_e(env["id"])}</code></h3><dl class="kv">'
            + "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in kv)
            + "</dl></div>"
        )
    parts.append("</div>")
    return "".join(parts)


def _behaviours(doc: dict, adapters: list[str]) -> str:
    """The behaviour views: one table per behaviour, implementations sharing a row when they do
    the same thing, each linked to its adapter card (declarations and upstream links)."""
    index = {name: i for i, name in enumerate(adapters)}

    def names(group: list[str]) -> str:
        return ", ".join(
            f'<a href="#adapter-{index[n]}"><code>{_e(n)}</code></a>' if n in index
            else f"<code>{_e(n)}</code>" for n in group
        )  # fmt: skip

    parts = []
    for table in behaviour_tables(doc):
        if not table["rows"]:
            continue
        same: dict[str, list[str]] = {}
        links: dict[str, set[str]] = {}
        for row in table["rows"]:
            same.setdefault(row["does"], []).append(row["adapter"])
            links.setdefault(row["does"], set()).update(row.get("links") or [])
        body = "".join(
            f"<tr><td>{names(group)}</td><td>{_e(does)}"
            + "".join(
                f' <a href="{_e(u)}" rel="noopener noreferrer">[upstream]</a>'
                for u in sorted(links[does])[:2] if u.lower().startswith(("https://", "http://"))
            )
            + "</td></tr>"
            for does, group in same.items()
        )  # fmt: skip
        parts.append(
            f'<div class="behaviour" id="behaviour-{_e(table["id"])}"><h3>{_e(table["title"])}</h3>'
            f'<div class="note">{_e(table["question"])}</div><table class="small"><thead><tr>'
            f"<th>implementations</th><th>what they do</th></tr></thead><tbody>{body}</tbody>"
            "</table></div>"
        )
    groups = one_module_different_answers(doc)
    if groups:
        rows = "".join(
            f"<tr><td><code>{_e(g['api'])}</code></td><td>"
            + "<br>".join(f"{names([p])}: {_e(a)}" for p, a in g["paths"].items())
            + "</td><td>" + "<br>".join(f"<code>{_e(c)}</code>" for c in g["cases"][:3])
            + (f"<br>… {g['n_cases']} cases in all" if g["n_cases"] > 3 else "") + "</td></tr>"
            for g in groups
        )  # fmt: skip
        parts.append(
            '<div class="behaviour" id="behaviour-one-module"><h3>One module, different answers'
            '</h3><div class="note">execution paths of one API that disagree on the same case'
            '</div><table class="small"><thead><tr><th>API</th><th>path: answers</th>'
            f"<th>cases</th></tr></thead><tbody>{rows}</tbody></table></div>"
        )
    return "".join(parts) or '<p class="note">no behaviour to compare in this run</p>'


def _options(values: list[tuple[str, str]], all_label: str) -> str:
    return f'<option value="">{_e(all_label)}</option>' + "".join(
        f'<option value="{_e(v)}">{_e(label)}</option>' for v, label in values
    )


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
