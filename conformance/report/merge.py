"""`conformance report merge`: rejoin shards, or runs from different machines, into one file.

Each result keeps the environment it was produced in: the merged file lists every distinct
environment under "environments" (identical ones, such as shards of one run on one machine,
collapse into one) and every record names its "environment_id". Adapter versions and devices,
which belong to a machine, are kept per environment too.
"""

from __future__ import annotations

import datetime as dt
import json

from .. import __version__
from ..errors import UsageError
from .results import SCHEMA_VERSION, environment_id


def _strip_id(env: dict) -> str:
    return json.dumps({k: v for k, v in env.items() if k != "id"}, sort_keys=True, default=str)


def _comparable_case(case: dict) -> str:
    # Where a case was read from does not change what it computes.
    return json.dumps({k: v for k, v in case.items() if k != "source"}, sort_keys=True, default=str)


def _declaration(entry: dict) -> dict:
    return {k: v for k, v in entry.items() if k not in ("versions", "devices", "environments")}


def merge(
    inputs: list[tuple[str, dict]], *, force: bool = False, command: str = ""
) -> tuple[dict, list[str]]:
    """Merge normalised results documents (source name, document); return (merged, warnings).

    Raises UsageError when the inputs disagree in a way that makes one matrix meaningless
    (different spec versions, one case id meaning two different cases) unless `force`.
    """
    if not inputs:
        raise UsageError("report merge needs at least one results file")
    warnings: list[str] = []
    versions = {src: doc.get("spec_version") for src, doc in inputs}
    if len(set(versions.values())) > 1:
        listing = ", ".join(f"{src} has spec_version {v}" for src, v in versions.items())
        if not force:
            raise UsageError(
                f"refusing to merge results of different spec versions ({listing}): the same "
                "case id may mean a different case under another spec version, so one matrix "
                "would mix incomparable results\n  hint: re-run them with one spec version, or "
                "pass --force to merge anyway (the merged file records every version)"
            )
        warnings.append(f"merged different spec versions: {listing}")

    envs: list[dict] = []
    env_by_content: dict[str, str] = {}
    adapters: dict[str, dict] = {}
    cases: dict[str, dict] = {}
    case_origin: dict[str, str] = {}
    records: dict[tuple, dict] = {}
    replaced = 0
    merged_from = []
    for src, doc in inputs:
        remap: dict[str, str] = {}
        for env in doc["environments"]:
            content = _strip_id(env)
            if content not in env_by_content:
                new_id = environment_id(env, {e["id"] for e in envs})
                envs.append({**env, "id": new_id})
                env_by_content[content] = new_id
            remap[env["id"]] = env_by_content[content]
        doc_envs = sorted(set(remap.values()))

        for case_id, case in doc["cases"].items():
            if case_id in cases and _comparable_case(cases[case_id]) != _comparable_case(case):
                message = (
                    f"case '{case_id}' differs between {case_origin[case_id]} and {src} "
                    "(was the spec edited between the runs?)"
                )
                if not force:
                    raise UsageError(
                        f"refusing to merge: {message}\n  hint: re-run both with the same specs, "
                        "or pass --force to keep the first definition"
                    )
                warnings.append(message + "; kept the first definition")
                continue
            cases.setdefault(case_id, case)
            case_origin.setdefault(case_id, src)

        for name, entry in doc["adapters"].items():
            per_env = _per_environment(entry, remap, doc_envs)
            if name not in adapters:
                adapters[name] = {**_declaration(entry), "environments": {}}
            elif _declaration(adapters[name]) != _declaration(entry):
                warnings.append(
                    f"adapter '{name}' is declared differently in {src}; "
                    "kept the first declaration (versions and devices are kept per machine)"
                )
            adapters[name]["environments"].update(per_env)

        for record in doc["results"]:
            record = {**record, "environment_id": remap[record["environment_id"]]}
            key = (record["case"], record["adapter"], record["device"], record["environment_id"])
            if key in records:
                replaced += 1
            records[key] = record
        merged_from.append(
            {
                "file": src,
                "created": doc.get("created"),
                "command": doc.get("command"),
                "tool_version": doc.get("tool_version"),
                "spec_version": doc.get("spec_version"),
                "results": len(doc["results"]),
            }
        )
    if replaced:
        warnings.append(
            f"{replaced} result(s) appeared more than once for the same case, adapter, device "
            "and machine; the later file's result was kept"
        )

    for entry in adapters.values():  # flat views for readers that ignore machines
        devices: list[str] = []
        for info in entry["environments"].values():
            devices += [d for d in info.get("devices", []) if d not in devices]
        entry["devices"] = devices
        first = next(iter(entry["environments"].values()), {})
        entry["versions"] = first.get("versions", {})

    spec_versions = sorted({v for v in versions.values() if v is not None})
    merged = {
        "schema_version": SCHEMA_VERSION,
        "tool_version": __version__,
        "spec_version": spec_versions[0] if len(spec_versions) == 1 else spec_versions[-1],
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "environments": envs,
        "adapters": adapters,
        "cases": cases,
        "results": list(records.values()),
        "merged_from": merged_from,
    }
    if len(spec_versions) > 1:
        merged["spec_versions"] = spec_versions
    return merged, warnings


def _per_environment(entry: dict, remap: dict[str, str], doc_envs: list[str]) -> dict[str, dict]:
    """{environment id: {"versions", "devices"}} for one adapter entry of one input file."""
    if isinstance(entry.get("environments"), dict):  # an already-merged file
        return {remap.get(k, k): dict(v) for k, v in entry["environments"].items()}
    info = {"versions": entry.get("versions") or {}, "devices": entry.get("devices") or []}
    return {env_id: dict(info) for env_id in doc_envs}
