"""The HTML report's server-side sections: the family matrix (for readers without scripts),
adapter cards, machines, behaviour tables, and the escaping they share."""

from __future__ import annotations

import html
from collections import Counter

from ..cases.case import FEATURES
from ..sanitize import strip_control
from .behaviours import behaviour_tables, one_module_different_answers
from .docs_links import docs_page
from .html_payload import ORDER
from .results import SEVERITY, environment_label, matrix


def _e(text: object) -> str:
    # Control characters and ANSI sequences from adapters' messages are dropped (issue 18).
    return html.escape(strip_control(text), quote=True)


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
