"""Behaviour views: for each behaviour implementations disagree on, what each one does.

Built from a results file alone (results + the adapters' declarations it carries), never from
prose: a declared divergence's structured fields say what happens instead (`masked_rows`:
what a fully masked row yields; `compute_dtype`: the precision it computes in), a pass says
the implementation does what the reference does, a fail says it does neither (with its
message). Views:

- fully masked rows: what a query row with no key to attend to yields, per implementation;
- float64: the precision float64 inputs are computed in;
- causal alignment when T != S: which corner the causal mask is aligned to (the cases that
  pass), which it cannot express;
- mask forms: which masks each implementation takes (from its declared capabilities);
- one module, different answers: execution paths of one public API (adapter names that share
  everything but their last part, e.g. torch.mha.fast / torch.mha.slow) that give different
  answers on the same case.
"""

from __future__ import annotations

from collections import Counter, defaultdict

from ..cases.case import Case
from ..cases.written import describe
from .results import adapter_names

REFERENCE_ROWS = {"nan": "NaN", "zeros": "zeros", "uniform": "uniform weights (mean of V)",
                  "unmasked": "its unmasked softmax (as if no key were masked)"}  # fmt: skip
MASK_FORMS = ("bool-mask", "additive-mask", "key-padding", "query-padding", "causal",
              "causal-top-left", "causal-bottom-right", "window", "per-head-mask")  # fmt: skip


def _features(doc: dict) -> dict[str, frozenset[str]]:
    out = {}
    for cid, case in doc["cases"].items():
        try:
            out[cid] = Case.from_dict(case).features
        except Exception:  # noqa: BLE001 - a case this version cannot rebuild has no features
            out[cid] = frozenset()
    return out


def declared(doc: dict, record: dict) -> dict:
    """The result's divergence with its declaration's structured fields (slim results files
    keep only id, reason and link in the result; the adapter's declaration has the rest)."""
    div = dict(record.get("divergence") or {})
    if not div:
        return div
    for entry in (doc["adapters"].get(record["adapter"]) or {}).get("divergences") or []:
        if isinstance(entry, dict) and entry.get("id") == div.get("id"):
            return {**entry, **{k: v for k, v in div.items() if v is not None}}
    return div


def _row_value(doc: dict, record: dict, case: dict | None) -> str | None:
    """What a fully masked row yielded in this result, in words; None if it did not run."""
    verdict = record["verdict"]
    if verdict in ("unsupported", "error"):
        return None
    div = declared(doc, record)
    if verdict == "diverges" and div.get("masked_rows"):
        return REFERENCE_ROWS.get(div["masked_rows"], describe(div["masked_rows"]))
    if verdict == "pass":
        # A case that asks for another convention (fully_masked_rows: zeros) says nothing
        # about the implementation's own; only the reference's NaN is informative.
        expected = ((case or {}).get("mask") or {}).get("fully_masked_rows") or "nan"
        return "NaN" if expected == "nan" else None
    if verdict == "fail":
        return "none of the above: fails"
    return None


def _phrase(values: dict[str, set[str]]) -> str:
    """{"zeros": {case ids}, "NaN": {case id}} as 'zeros (12 cases); NaN (1 case)'."""
    ranked = sorted(values.items(), key=lambda kv: (-len(kv[1]), kv[0]))
    if len(ranked) == 1:
        return ranked[0][0]
    return "; ".join(f"{v} ({len(c)} case{'s' * (len(c) != 1)})" for v, c in ranked)


def fully_masked_rows(doc: dict, features: dict[str, frozenset[str]] | None = None) -> list[dict]:
    """One row per adapter that ran a fully-masked-rows case: what such a row yields."""
    features = features if features is not None else _features(doc)
    seen: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    cases: dict[str, dict[str, str]] = defaultdict(dict)
    links: dict[str, set[str]] = defaultdict(set)
    for record in doc["results"]:
        if "fully-masked-rows" not in features.get(record["case"], frozenset()):
            continue
        case = doc["cases"].get(record["case"])
        value = _row_value(doc, record, case)
        if value is None:
            continue
        # Key/query padding through sequence lengths and additive masks have their own
        # declarations; the plain boolean form is what users compare first.
        seen[record["adapter"]][value].add(record["case"])
        cases[record["adapter"]].setdefault(value, record["case"])
        div = declared(doc, record)
        if div.get("link") and value != "none of the above: fails":
            links[record["adapter"]].add(str(div["link"]))
    return [
        {"adapter": name, "does": _phrase(seen[name]), "example": cases[name],
         "links": sorted(links[name])}
        for name in adapter_names(doc) if name in seen
    ]  # fmt: skip


def float64_precision(doc: dict) -> list[dict]:
    """One row per adapter that ran float64 cases: the precision it computes them in."""
    ran: dict[str, Counter] = defaultdict(Counter)
    for record in doc["results"]:
        if record.get("dtype") == "float64" and record["verdict"] != "unsupported":
            div = declared(doc, record)
            ran[record["adapter"]][div.get("compute_dtype") or "float64"] += 1
    rows = []
    for name in adapter_names(doc):
        if name not in ran:
            continue
        # What the float64 results were held to: the compute_dtype of the divergence that
        # explained them, float64 where none did (most results first).
        dtype = ", ".join(f"{d}" for d, _ in ran[name].most_common())
        rows.append({"adapter": name, "does": dtype})
    return rows


def causal_alignment(doc: dict, features: dict[str, frozenset[str]] | None = None) -> list[dict]:
    """Causal masks with T != S: which alignment each implementation passes or cannot express."""
    features = features if features is not None else _features(doc)
    got: dict[str, dict[str, Counter]] = defaultdict(lambda: defaultdict(Counter))
    for record in doc["results"]:
        feats = features.get(record["case"], frozenset())
        for corner in ("causal-top-left", "causal-bottom-right"):
            if corner in feats:
                got[record["adapter"]][corner.removeprefix("causal-")][record["verdict"]] += 1
    rows = []
    for name in adapter_names(doc):
        if name not in got:
            continue
        parts = []
        for corner in ("top-left", "bottom-right"):
            n = got[name].get(corner)
            if not n:
                continue
            if n.get("fail") or n.get("error"):
                parts.append(f"{corner}: fails ({n['fail'] + n['error']})")
            elif n.get("pass") or n.get("diverges"):
                parts.append(f"{corner}: yes")
            else:
                parts.append(f"{corner}: cannot express")
        rows.append({"adapter": name, "does": "; ".join(parts)})
    return rows


def mask_forms(doc: dict) -> list[dict]:
    """The mask forms each implementation declares it takes."""
    rows = []
    for name in adapter_names(doc):
        feats = set(doc["adapters"].get(name, {}).get("features") or [])
        forms = [f for f in MASK_FORMS if f in feats]
        rows.append({"adapter": name, "does": ", ".join(forms) or "no masks"})
    return rows


def _api(name: str) -> str:
    return name.rsplit(".", 1)[0] if name.count(".") >= 2 else name


def one_module_different_answers(doc: dict) -> list[dict]:
    """Execution paths of one API that give different verdicts or behaviours on one case."""
    by_case: dict[tuple[str, str, str], dict[str, str]] = defaultdict(dict)
    for record in doc["results"]:
        if record["verdict"] in ("unsupported", "error"):
            continue
        div = declared(doc, record)
        if div.get("masked_rows"):
            answer = "masked rows: " + REFERENCE_ROWS.get(div["masked_rows"], div["masked_rows"])
        elif div.get("compute_dtype"):
            answer = f"computed in {div['compute_dtype']}"
        elif div:
            answer = str(div.get("id"))
        else:
            answer = "as the reference" if record["verdict"] == "pass" else record["verdict"]
        key = (_api(record["adapter"]), record["case"], record["device"])
        by_case[key][record["adapter"]] = answer
    groups: dict[str, dict] = {}
    for (api, case_id, _device), answers in by_case.items():
        if len(answers) < 2 or len(set(answers.values())) < 2:
            continue
        group = groups.setdefault(api, {"api": api, "cases": [], "answers": {}})
        group["cases"].append(case_id)
        for name, answer in answers.items():
            group["answers"].setdefault(name, Counter())[answer] += 1
    out = []
    for group in groups.values():
        out.append({
            "api": group["api"],
            "paths": {n: ", ".join(a for a, _ in c.most_common()) for n, c in
                      sorted(group["answers"].items())},
            "cases": sorted(set(group["cases"]))[:5],
            "n_cases": len(set(group["cases"])),
        })  # fmt: skip
    return out


def behaviour_tables(doc: dict) -> list[dict]:
    """Every behaviour view: [{"id", "title", "question", "rows": [{"adapter", "does"}]}]."""
    features = _features(doc)
    return [
        {"id": "fully-masked-rows", "title": "Fully masked rows",
         "question": "What does a query row whose every key is masked yield?",
         "rows": fully_masked_rows(doc, features)},
        {"id": "float64", "title": "float64 precision",
         "question": "In which precision are float64 inputs computed?",
         "rows": float64_precision(doc)},
        {"id": "causal-alignment", "title": "Causal alignment when T != S",
         "question": "Which corner is the causal mask aligned to?",
         "rows": causal_alignment(doc, features)},
        {"id": "mask-forms", "title": "Mask forms",
         "question": "Which masks does the implementation take (declared capabilities)?",
         "rows": mask_forms(doc)},
    ]  # fmt: skip


def _md(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def behaviours_markdown(doc: dict, ids: tuple[str, ...] | None = None) -> str:
    """The behaviour tables (and the one-module view) as Markdown, generated from `doc`."""
    lines: list[str] = []
    for table in behaviour_tables(doc):
        if ids is not None and table["id"] not in ids:
            continue
        if not table["rows"]:
            continue
        lines += [f"**{table['title']}**: {table['question']}", "",
                  "| implementation | what it does |", "|---|---|"]  # fmt: skip
        # Implementations that do the same thing share a row: the table stays short.
        same: dict[str, list[str]] = {}
        for row in table["rows"]:
            same.setdefault(row["does"], []).append(row["adapter"])
        for does, names in same.items():
            lines.append(f"| {', '.join(f'`{_md(n)}`' for n in names)} | {_md(does)} |")
        lines.append("")
    if ids is None or "one-module" in ids:
        groups = one_module_different_answers(doc)
        if groups:
            lines += ["**One module, different answers**: execution paths of one API that "
                      "disagree on the same case", "",
                      "| API | path: answers | cases (first) |", "|---|---|---|"]  # fmt: skip
            for g in groups:
                paths = "; ".join(f"`{_md(p)}`: {_md(a)}" for p, a in g["paths"].items())
                cases = ", ".join(f"`{_md(c)}`" for c in g["cases"][:2])
                lines.append(f"| `{_md(g['api'])}` | {paths} | {cases} ({g['n_cases']}) |")
            lines.append("")
    return "\n".join(lines)
