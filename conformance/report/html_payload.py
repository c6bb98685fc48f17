"""What the HTML report's script reads: every result with its pictures, the cases as spec text,
adapters, families and machines, repeated texts and pictures stored once.

Pictures are deduplicated by content: a passing implementation's weights quantise to the same
colours as the reference's, so they cost nothing extra."""

from __future__ import annotations

import json

import numpy as np

from ..cases.case import FEATURES, Case
from . import images
from .docs_links import docs_page
from .findings import finding_for
from .html_encoding import _CANNOT, _GROUPABLE, ROW_KEYS, _columns, _deltas, _row
from .results import (
    BAD,
    adapter_names,
    environment_label,
    families,
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


def _tolerance_key(record: dict) -> tuple | None:
    key = (_num(record.get("atol")), _num(record.get("rtol")), record.get("tolerance"))
    return None if key == (None, None, None) else key


def _milliseconds(seconds: float | None) -> int | None:
    """A duration as whole milliseconds (None for 0): what a reader compares, in few bytes."""
    if seconds is None:
        return None
    ms = round(float(seconds) * 1000)
    return ms or None


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
    ran = {r["adapter"] for r in doc["results"]}
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
        "ran": [name in ran for name in adapters],
    }
