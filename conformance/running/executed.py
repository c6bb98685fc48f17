"""Did a selected adapter execute anything? Exit codes a CI can trust.

A run where an adapter computed nothing (a GPU-only adapter on a CPU machine, `--device cuda`
without CUDA, a device typo, an adapter that reports no devices, or every case unsupported)
must not look like a green run: it is said per adapter, and `conformance run` exits
EXIT_NOTHING_EXECUTED (pytest's "no tests collected") unless `--allow-empty`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

EXIT_NOTHING_EXECUTED = 5
EXECUTED_VERDICTS = frozenset({"pass", "fail", "diverges", "error"})


def device_selected(device: str, wanted: Iterable[str] | None) -> bool:
    """`device` ("cpu", "cuda:0") is chosen by --device values ("cuda" picks every cuda:N)."""
    wanted = list(wanted or ())
    if not wanted:
        return True
    return any(device == w or device.split(":")[0] == w for w in wanted)


def selected_devices(available: Iterable[str], wanted: Iterable[str] | None) -> list[str]:
    """The adapter's devices that --device selects; never a device the adapter did not report."""
    wanted = list(wanted or ())
    return [d for d in available if device_selected(d, wanted)]


def why_empty(devices: list[str], wanted: Iterable[str] | None, records: list[dict]) -> str | None:
    """Why an adapter executed nothing, or None when it computed at least one result.

    devices: what the adapter reported; records: its results in this run.
    """
    if any(r["verdict"] in EXECUTED_VERDICTS for r in records):
        return None
    wanted = list(wanted or ())
    if not devices:
        return "it reports no devices on this machine"
    if not selected_devices(devices, wanted):
        return (
            f"--device {' '.join(wanted)} selects none of its devices ({', '.join(devices)})"
            "\n    hint: device names are cpu, cuda, cuda:0, ...; `conformance list adapters`"
        )
    if records:
        return f"all {len(records)} selected case(s) are unsupported by it"
    return "no case was selected for it"


def empty_adapters(
    names: Iterable[str],
    adapter_info: Mapping[str, dict],
    wanted_devices: Iterable[str] | None,
    records: list[dict],
) -> dict[str, str]:
    """{adapter: why it executed nothing} for each of `names` that executed nothing."""
    by_adapter: dict[str, list[dict]] = {}
    for record in records:
        by_adapter.setdefault(record["adapter"], []).append(record)
    out = {}
    for name in names:
        info = adapter_info.get(name, {})
        if info.get("error"):
            continue  # its setup error is already a result (verdict error)
        why = why_empty(list(info.get("devices", [])), wanted_devices, by_adapter.get(name, []))
        if why:
            out[name] = why
    return out
