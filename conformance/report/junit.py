"""JUnit XML: one testcase per result, so CI systems show conformance results natively.

One testsuite per adapter; testcase classname "<adapter>.<family>", name "<case id> [<device>]".
`fail` is a <failure>, `error` an <error> (so CI counts crashes apart from wrong numbers),
`diverges` and `unsupported` are <skipped> whose type says which, with the reason as message;
`pass` is a plain testcase.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections import Counter

from .results import adapter_names, record_family, repro_command

# XML 1.0 forbids most control characters; messages from crashing implementations carry some.
_INVALID_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def _clean(text: object) -> str:
    return _INVALID_XML.sub("?", str(text))


def _seconds(value: object) -> str:
    try:
        return f"{float(value):.6f}"
    except (TypeError, ValueError):
        return "0.000000"


def render_junit(doc: dict) -> str:
    records = doc["results"]
    envs = {env["id"]: env for env in doc["environments"]}
    root = ET.Element("testsuites", name="attention-conformance")
    by_adapter: dict[str, list[dict]] = {}
    for record in records:
        by_adapter.setdefault(record["adapter"], []).append(record)
    totals: Counter = Counter()
    total_time = 0.0

    def where(record: dict) -> str:  # merged files: one device name on several machines
        return f" @ {record.get('environment_id')}" if len(envs) > 1 else ""

    for name in adapter_names(doc):
        group = by_adapter.get(name, [])
        if not group:
            continue
        suite = ET.SubElement(root, "testsuite", name=name)
        info = doc["adapters"].get(name, {})
        props = ET.SubElement(suite, "properties")
        for key, value in sorted((info.get("versions") or {}).items()):
            ET.SubElement(props, "property", name=f"version.{key}", value=_clean(value))
        if doc.get("spec_version") is not None:
            ET.SubElement(props, "property", name="spec_version", value=str(doc["spec_version"]))
        n: Counter = Counter()
        suite_time = 0.0
        for record in group:
            verdict = record["verdict"]
            n[verdict] += 1
            duration = float(record.get("duration_s") or 0.0)
            suite_time += duration
            case = ET.SubElement(
                suite,
                "testcase",
                classname=_clean(f"{name}.{record_family(record)}"),
                name=_clean(f"{record['case']} [{record['device']}{where(record)}]"),
                time=_seconds(duration),
            )
            message = _clean(record.get("message") or verdict)
            if verdict in ("fail", "error"):
                tag = "failure" if verdict == "fail" else "error"
                failure = ET.SubElement(case, tag, message=message, type=verdict)
                failure.text = _clean(_details(doc, record))
            elif verdict in ("diverges", "unsupported"):
                skipped = ET.SubElement(case, "skipped", message=f"{verdict}: {message}")
                skipped.set("type", verdict)
            env = envs.get(record.get("environment_id"))
            if len(envs) > 1 and env is not None:
                out = ET.SubElement(case, "system-out")
                out.text = _clean(f"environment: {env['id']}")
        suite.set("tests", str(len(group)))
        suite.set("failures", str(n["fail"]))
        suite.set("errors", str(n["error"]))
        suite.set("skipped", str(n["diverges"] + n["unsupported"]))
        suite.set("time", _seconds(suite_time))
        if doc.get("created"):
            suite.set("timestamp", str(doc["created"]))
        totals += n
        total_time += suite_time
    root.set("tests", str(len(records)))
    root.set("failures", str(totals["fail"]))
    root.set("errors", str(totals["error"]))
    root.set("skipped", str(totals["diverges"] + totals["unsupported"]))
    root.set("time", _seconds(total_time))
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def _plain(value: object) -> str:
    """Dicts (tolerance, per-output errors) as `k=v, k=v`, never a Python repr."""
    if isinstance(value, dict):
        return ", ".join(f"{k}={_plain(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return "(" + ", ".join(_plain(v) for v in value) + ")"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _details(doc: dict, record: dict) -> str:
    lines = [f"verdict: {record['verdict']}", f"message: {record.get('message') or ''}"]
    for key in ("max_abs_error", "max_rel_error", "tolerance", "mismatches", "first_mismatch"):
        if record.get(key) is not None:
            lines.append(f"{key}: {_plain(record[key])}")
    lines.append(f"reproduce: {repro_command(doc, record)}")
    return "\n".join(lines)
