"""Markdown summary sized for a pull-request comment (GitHub caps comments at 65,536 chars).

Only what needs a reader's attention is in the open: the adapter x family matrix keeps just the
adapters and families with a fail or error (the all-green adapters are named on one line);
failures are grouped by cause (adapter and message with its numbers blanked), one line per group
with the number of results, each group's results and reproduce commands inside <details>;
declared divergences one line per adapter and divergence id.
"""

from __future__ import annotations

import re
from collections import Counter

from ..sanitize import for_markdown, strip_control
from .behaviours import behaviours_markdown
from .findings import finding_for
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
MAX_PER_GROUP = 8  # results listed inside one cause's <details>
_NUMBER = re.compile(r"-?\d+(\.\d+)?(e[-+]?\d+)?")


def cause(record: dict) -> tuple[str, str]:
    """(adapter, message with numbers blanked): results failing for the same reason group."""
    text = one_line(record.get("message"), 160)
    return record["adapter"], _NUMBER.sub("#", text)


def _cell(counter: Counter) -> str:
    if not counter:
        return "·"
    return " ".join(f"{MARK[v]}{counter[v]}" for v in SEVERITY[::-1] if counter.get(v))


def _code(text: str) -> str:
    """Inline code that survives backticks and pipes inside table cells and lists."""
    text = text.replace("|", "\\|")
    fence = "``" if "`" in text else "`"
    return f"{fence}{text}{fence}"


def _html(text: str) -> str:
    """Text inside <summary>, where Markdown is not parsed: escape it as HTML."""
    import html

    return html.escape(strip_control(text, newlines=False), quote=False)


# Detail levels, richest first: (results listed per failure group, characters of a message or
# a divergence's reason, failures grouped per adapter instead of per cause). The first that fits
# MAX_CHARS is used, so a large run loses detail, not whole sections.
DETAIL_LEVELS = (
    (MAX_PER_GROUP, 200, False), (3, 140, False), (1, 90, False), (1, 90, True), (1, 60, True),
    (1, 40, True),
)  # fmt: skip


def render_markdown(doc: dict, title: str = "Attention conformance") -> str:
    views = _Views(doc)
    for per_group, chars, by_adapter in DETAIL_LEVELS:
        text = _render(doc, views, title, per_group, chars, by_adapter)
        if len(text) <= MAX_CHARS:
            return text
    return _cut(text)


class _Views:
    """What every detail level shows the same: computed once, not once per level (an 80,000
    result run is otherwise re-scanned for each level tried)."""

    def __init__(self, doc: dict) -> None:
        records = doc["results"]
        self.total = counts(records)
        self.families = families(doc)
        self.grid = matrix(doc)
        seen = {r["adapter"] for r in records}
        self.names = adapter_names(doc)
        self.ran = [n for n in self.names if n in seen]
        self.failing = sorted((r for r in records if r["verdict"] in BAD), key=sort_key)
        self.behaviours = behaviours_markdown(doc)


def _render(
    doc: dict, views: _Views, title: str, per_group: int, chars: int, by_adapter: bool
) -> str:
    records = doc["results"]
    total = views.total
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

    fams, grid, ran = views.families, views.grid, views.ran
    red = [n for n in ran if any(grid.get((n, f), Counter()).get(v) for f in fams for v in BAD)]
    red_fams = [
        f for f in fams if any(grid.get((n, f), Counter()).get(v) for n in red for v in BAD)
    ]
    if red:
        lines.append("| adapter | " + " | ".join(red_fams) + " |")
        lines.append("|---|" + "---|" * len(red_fams))
        for name in red:
            cells = [_cell(grid.get((name, fam), Counter())) for fam in red_fams]
            lines.append(f"| {_code(name)} | " + " | ".join(cells) + " |")
        lines.append("")
    if not records:
        lines.append("No results: no selected case ran on any selected adapter.")
        lines.append("")
    green = [n for n in ran if n not in red]
    if green:
        lines.append(
            f"No fail or error ({len(green)} adapter{'s' * (len(green) != 1)}): "
            + ", ".join(_code(n) for n in green)
        )
        lines.append("")
    idle = [name for name in views.names if name not in ran]
    if idle:
        lines.append(
            "Selected but without results (no device for them here): "
            + ", ".join(_code(n) for n in idle)
        )
        lines.append("")
    if red:
        lines.append(
            "<sub>"
            + " ".join(f"{MARK[v]} {v}" for v in SEVERITY[::-1])
            + " · counts per cell · only adapters and families with a fail or error</sub>"
        )
        lines.append("")

    failing = views.failing
    by_cause: dict[tuple[str, str], list[dict]] = {}
    for record in failing:
        by_cause.setdefault(
            (record["adapter"], record["verdict"]) if by_adapter else cause(record), []
        ).append(record)
    if failing:
        groups_of = "adapters" if by_adapter else "causes"
        lines.append(f"### Failures ({len(failing)} results, {len(by_cause)} {groups_of})")
        lines.append("")
        multi_env = len(doc["environments"]) > 1
        for n_group, ((adapter, _), group) in enumerate(by_cause.items()):
            if n_group >= MAX_FAILURE_LINES:
                rest = sum(len(g) for g in list(by_cause.values())[MAX_FAILURE_LINES:])
                lines.append(f"… and {rest} more results (see the HTML report)")
                lines.append("")
                break
            first = group[0]
            n = len(group)
            lines.append(
                f"<details><summary>{MARK[first['verdict']]} {_html(adapter)} · {n} "
                f"result{'s' * (n != 1)}: {_html(one_line(first.get('message'), chars))}"
                "</summary>"
            )
            lines.append("")
            finding = finding_for(first)  # findings.py: the explanation, where one is known
            if finding is not None:
                url = str(finding.get("link") or "")
                link = f" ([upstream]({url}))" if url.startswith(("https://", "http://")) else ""
                docs = f" See `{finding['docs']}`." if finding.get("docs") else ""
                lines.append(
                    f"Known finding **{finding['id']}**: "
                    f"{one_line(finding.get('explanation'), 400)}{link}.{docs}"
                )
                lines.append("")
            for record in group[:per_group]:
                where = f" ({record['device']})" if record["device"] != "cpu" else ""
                if multi_env:
                    where = f" ({record['device']} @ {record.get('environment_id')})"
                lines.append(f"- {_code(record['case'])}{where}")
            if n > per_group:
                lines.append(f"- … and {n - per_group} more")
            lines.append("")
            lines.append("```sh")
            lines.extend(repro_command(doc, r) for r in group[:per_group])
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
                f"{for_markdown(one_line(div.get('reason'), chars))}{link}"
            )
        lines.append("")
    behaviours = views.behaviours
    if behaviours.strip():
        lines += ["<details><summary>Behaviours implementations disagree on (generated from the "
                  "results and declarations)</summary>", "", behaviours.strip(), "",
                  "</details>", ""]  # fmt: skip
    return "\n".join(lines)


def _cut(text: str) -> str:
    """Keep it postable: cut whole lines, close what is open, say so."""
    if len(text) > MAX_CHARS:
        cut = text[:MAX_CHARS].rsplit("\n", 1)[0]
        if cut.count("```") % 2:  # do not leave a code block open
            cut += "\n```"
        if cut.count("<details>") > cut.count("</details>"):
            cut += "\n\n</details>"
        text = cut + "\n\n… (cut to fit a comment; the HTML report has everything)\n"
    return text
