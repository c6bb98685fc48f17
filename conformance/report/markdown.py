"""Markdown summary sized for a pull-request comment (GitHub caps comments at 65,536 chars).

The adapter x family matrix with verdict counts, then one line per failure and one line per
declared divergence (grouped per adapter and divergence id, with the number of cases).
"""

from __future__ import annotations

from collections import Counter

from ..sanitize import for_markdown
from .results import (
    BAD,
    SEVERITY,
    adapter_names,
    counts,
    environment_label,
    families,
    matrix,
    one_line,
    repro_command,
    sort_key,
)

MARK = {"pass": "✅", "fail": "❌", "diverges": "🔶", "unsupported": "➖", "error": "💥"}
MAX_FAILURE_LINES = 60
MAX_CHARS = 60_000


def _cell(counter: Counter) -> str:
    if not counter:
        return "·"
    return " ".join(f"{MARK[v]}{counter[v]}" for v in SEVERITY[::-1] if counter.get(v))


def _code(text: str) -> str:
    """Inline code that survives backticks and pipes inside table cells and lists."""
    text = text.replace("|", "\\|")
    fence = "``" if "`" in text else "`"
    return f"{fence}{text}{fence}"


def render_markdown(doc: dict, title: str = "Attention conformance") -> str:
    records = doc["results"]
    total = counts(records)
    lines = [f"## {title}", ""]
    summary = " · ".join(f"{MARK[v]} {v} {total[v]}" for v in SEVERITY[::-1] if total.get(v))
    lines.append(f"**{len(records)} results**: {summary or 'none'}")
    lines.append("")
    meta = [f"tool {doc.get('tool_version', '?')}", f"spec v{doc.get('spec_version', '?')}"]
    if doc.get("created"):
        meta.append(str(doc["created"]))
    lines.append("<sub>" + " · ".join(meta) + "</sub>")
    for env in doc["environments"]:
        frameworks = env.get("frameworks") or {}
        versions = ", ".join(f"{k} {v}" for k, v in sorted(frameworks.items()))
        lines.append(
            f"<sub>machine {environment_label(env)}"
            + (f" · python {env['python']}" if env.get("python") else "")
            + (f" · {versions}" if versions else "")
            + "</sub>"
        )
    lines.append("")

    fams = families(doc)
    grid = matrix(doc)
    ran = {r["adapter"] for r in records}
    if records:
        lines.append("| adapter | " + " | ".join(fams) + " |")
        lines.append("|---|" + "---|" * len(fams))
        for name in adapter_names(doc):
            if name not in ran:
                continue
            cells = [_cell(grid.get((name, fam), Counter())) for fam in fams]
            lines.append(f"| {_code(name)} | " + " | ".join(cells) + " |")
    else:
        lines.append("No results: no selected case ran on any selected adapter.")
    lines.append("")
    idle = [name for name in adapter_names(doc) if name not in ran]
    if idle:
        lines.append(
            "Selected but without results (no device for them here): "
            + ", ".join(_code(n) for n in idle)
        )
        lines.append("")
    lines.append(
        "<sub>" + " ".join(f"{MARK[v]} {v}" for v in SEVERITY[::-1]) + " · counts per cell</sub>"
    )
    lines.append("")

    failing = sorted((r for r in records if r["verdict"] in BAD), key=sort_key)
    if failing:
        lines.append(f"### Failures ({len(failing)})")
        lines.append("")
        for record in failing[:MAX_FAILURE_LINES]:
            device = f" ({record['device']})" if record["device"] != "cpu" else ""
            if len(doc["environments"]) > 1:
                device = f" ({record['device']} @ {record.get('environment_id')})"
            lines.append(
                f"- {MARK[record['verdict']]} {_code(record['adapter'])} "
                f"{_code(record['case'])}{device}: {for_markdown(one_line(record.get('message'), 200))}"
            )
        if len(failing) > MAX_FAILURE_LINES:
            lines.append(f"- … and {len(failing) - MAX_FAILURE_LINES} more (see the HTML report)")
        lines.append("")
        lines.append("<details><summary>Reproduce</summary>")
        lines.append("")
        lines.append("```sh")
        lines.extend(repro_command(doc, r) for r in failing[:MAX_FAILURE_LINES])
        lines.append("```")
        lines.append("")
        lines.append("</details>")
        lines.append("")

    groups: dict[tuple[str, str], list[dict]] = {}
    for record in records:
        if record["verdict"] == "diverges" and record.get("divergence"):
            groups.setdefault((record["adapter"], record["divergence"]["id"]), []).append(record)
    if groups:
        lines.append(f"### Declared divergences ({len(groups)})")
        lines.append("")
        for (adapter, div_id), group in groups.items():
            div = group[0]["divergence"]
            url = str(div.get("link") or "")
            link = (
                f" ([upstream]({url}))" if url.lower().startswith(("https://", "http://")) else ""
            )
            n = len(group)
            lines.append(
                f"- 🔶 {_code(adapter)} **{div_id}** ({n} result{'s' * (n != 1)}): "
                f"{for_markdown(one_line(div.get('reason'), 200))}{link}"
            )
        lines.append("")
    text = "\n".join(lines)
    if len(text) > MAX_CHARS:  # keep it postable: cut whole lines, say so
        cut = text[:MAX_CHARS].rsplit("\n", 1)[0]
        if cut.count("```") % 2:  # do not leave a code block open
            cut += "\n```"
        if cut.count("<details>") > cut.count("</details>"):
            cut += "\n\n</details>"
        text = cut + "\n\n… (cut to fit a comment; the HTML report has everything)\n"
    return text
