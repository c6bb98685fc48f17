"""Writing a shrunk counterexample: a minimal spec file, failure.json, inputs and a
reproducer."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import yaml

from ..adapter_api.adapter import Adapter
from ..cases.case import Case, Mask
from ..verdicts.evaluate import evaluate
from .context import Failure

# --- writing a counterexample --------------------------------------------------------------


def case_spec(case: Case) -> dict:
    """The spec-file entry that loads back into exactly this case (same id, same inputs)."""
    s, m = case.shape, case.mask
    entry: dict = {"name": case.name}
    if case.description:
        entry["description"] = case.description
    entry["mode"] = case.mode
    entry["dtype"] = case.dtype
    shape: dict = {"batch": s.batch}
    if s.attention_axes:
        shape.update(query_shape=list(s.query_shape), kv_shape=list(s.kv_shape),
                     attention_axes=list(s.attention_axes))  # fmt: skip
    else:
        shape.update(query_len=s.query_len, kv_len=s.kv_len)
    shape.update(num_heads=s.num_heads, num_kv_heads=s.num_kv_heads, key_dim=s.key_dim,
                 value_dim=s.value_dim)  # fmt: skip
    if case.mode == "layer":
        shape.update(query_dim=s.query_dim, key_input_dim=s.key_input_dim,
                     value_input_dim=s.value_input_dim, output_dim=s.output_dim)  # fmt: skip
    entry["shape"] = shape
    if case.decode is not None:
        d = case.decode
        entry["decode"] = {"prefix": d.prefix, "steps": d.steps}
        if d.chunk != 1:  # issue 14: chunked prefill
            entry["decode"]["chunk"] = d.chunk
        if d.memory:  # issue 14: steps over an encoder memory (no mask)
            entry["decode"]["memory"] = True
    elif not m.is_empty() or m.fully_masked_rows != Mask().fully_masked_rows:
        mask: dict = {}
        if m.causal:
            mask["causal"] = m.causal
        if m.key_padding is not None:
            mask["key_padding"] = list(m.key_padding)
        if m.query_padding is not None:
            mask["query_padding"] = list(m.query_padding)
        if m.random_density is not None:
            mask["random"] = {"density": m.random_density}
        if m.additive_density is not None:
            mask["additive"] = {"density": m.additive_density}
        if m.bias_scale is not None:
            mask["bias"] = {"scale": m.bias_scale}
        if m.per_head:
            mask["per_head"] = True
        if m.window is not None:
            mask["window"] = list(m.window)
        if m.masked_rows:
            mask["masked_rows"] = [list(r) for r in m.masked_rows]
        if m.fully_masked_rows != "nan":
            mask["fully_masked_rows"] = m.fully_masked_rows
        entry["mask"] = mask
    if case.scale is not None:
        entry["scale"] = case.scale
    if case.mode == "layer":
        entry["cross"] = not case.self_attention
        if not case.use_bias:
            entry["bias"] = False
        if case.add_bias_kv:
            entry["add_bias_kv"] = True
        if case.add_zero_attn:
            entry["add_zero_attn"] = True
    if tuple(case.compare) != ("output",):
        entry["compare"] = list(case.compare)
    if getattr(case, "gradients", False):
        entry["gradients"] = True
    dropout = getattr(case, "dropout", None)
    if dropout is not None:
        entry["dropout"] = {"rate": dropout.rate}
        if dropout.training:
            entry["dropout"].update(training=True, draws=dropout.draws)
    terms = getattr(case, "scores", None)  # issue 14
    if terms is not None:
        entry["scores"] = {}
        if terms.softcap is not None:
            entry["scores"]["softcap"] = terms.softcap
        if terms.alibi is not None:
            entry["scores"]["alibi"] = "standard" if terms.alibi_standard else list(terms.alibi)
        if terms.sink is not None:
            entry["scores"]["sink"] = "zero" if terms.off_by_one else list(terms.sink)
    rope = getattr(case, "rope", None)  # issue 14: rotary position embeddings
    if rope is not None:
        entry["rope"] = {"style": rope.style, "theta": rope.theta, "offset": rope.offset}
        if rope.rotary_dim is not None:
            entry["rope"]["rotary_dim"] = rope.rotary_dim
    cache = getattr(case, "cache", None)  # issue 14: lengths and pages (conformance.cases.kv_cache)
    if cache is not None:
        entry["cache"] = {}
        if cache.lengths is not None:
            entry["cache"]["lengths"] = list(cache.lengths)
        if cache.paged:
            entry["cache"]["page_size"] = cache.page_size
            entry["cache"]["num_pages"] = cache.num_pages
            # a seeded table is remade from the case's name and seed; an explicit one is written
            explicit = cache.page_order == "explicit"
            order = [list(r) for r in cache.block_table] if explicit else cache.page_order
            entry["cache"]["pages"] = order
    entry["seed"] = case.seed
    return entry


def spec_text(spec_cases: Iterable[Case], description: str = "", family: str = "fuzz") -> str:
    """A complete spec file holding `spec_cases` (all of one family)."""
    spec_cases = list(spec_cases)
    families = {c.family for c in spec_cases}
    if families != {family}:
        raise ValueError(f"cases must all be of family {family!r}, got {sorted(families)}")
    doc: dict = {"version": 1, "family": family}
    if description:
        doc["description"] = description
    doc["cases"] = [case_spec(c) for c in spec_cases]
    header = "# yaml-language-server: $schema=../conformance/schema/spec.schema.json\n"
    return header + yaml.safe_dump(doc, sort_keys=False, default_flow_style=None, width=100)


def slug(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in text)


def write_failure(
    failure: Failure,
    *,
    adapter: Adapter,
    target: str,
    device: str,
    out_dir: Path,
    seed: int,
    rerun: str,
) -> list[Path]:
    """Write the spec, failure.json, inputs.npz and (if available) the reproducer."""
    name = adapter.declaration.name
    folder = Path(out_dir) / slug(name) / failure.prop
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    failing = [dataclasses.replace(c, description=_describe_for_spec(failure, c, name, seed))
               for c in _unique(failure.cases)]  # fmt: skip
    spec_path = folder / f"fuzz-{slug(name)}-{failure.prop}.yaml"
    spec_path.write_text(spec_text(failing, f"{failure.prop} counterexample for {name}"))
    files.append(spec_path)

    record = failure.record
    if record is None:  # metamorphic: is the spec alone a differential regression too?
        record = evaluate(adapter, failing[0], device)
    summary = {
        "property": failure.prop,
        "adapter": name,
        "target": target,
        "device": device,
        "kind": failure.kind,
        "message": failure.message,
        "seed": seed,
        "rerun": rerun,
        "cases": [c.id for c in failing],
        "spec": str(spec_path),
        "differential_verdict": record["verdict"],
        "differential_message": record["message"],
    }
    if failure.arrays:
        npz = folder / "inputs.npz"
        np.savez(npz, **failure.arrays)
        files.append(npz)
        summary["inputs"] = str(npz)
    try:
        from ..report.reproducer import write_reproducer  # written by another part of the project
    except ImportError:
        summary["reproducer"] = None
    else:
        try:
            path = write_reproducer(failing[0], record, target, folder)
            files.append(Path(path))
            summary["reproducer"] = str(path)
        except Exception as error:  # noqa: BLE001 - the spec file still stands
            summary["reproducer"] = f"failed: {type(error).__name__}: {error}"
    report = folder / "failure.json"
    report.write_text(json.dumps(summary, indent=2, default=str) + "\n")
    files.append(report)
    return files


def _unique(items: list[Case]) -> list[Case]:
    seen, out = set(), []
    for case in items:
        if case.id.split("#")[0] in seen:
            continue
        seen.add(case.id.split("#")[0])
        out.append(case)
    return out


def _describe_for_spec(failure: Failure, case: Case, adapter: str, seed: int) -> str:
    message = failure.message if len(failure.message) < 400 else failure.message[:400] + "..."
    return f"Found by `conformance fuzz` (seed {seed}) on {adapter}: {message}"


def describe(case: Case) -> str:
    """One line: the case's shape and mask, for terminal output."""
    s, m = case.shape, case.mask
    parts = [case.mode, case.dtype, f"B={s.batch} T={s.query_len} S={s.kv_len} "
             f"H={s.num_heads} G={s.num_kv_heads} K={s.key_dim} V={s.value_dim}"]  # fmt: skip
    if case.mode == "layer":
        parts.append(
            f"Dq={s.query_dim} Dk={s.key_input_dim} Dv={s.value_input_dim} "
            f"Do={s.output_dim}" + (" cross" if not case.self_attention else "")
        )
    mask = {k: v for k, v in dataclasses.asdict(m).items()
            if v not in (None, False, ()) and k != "fully_masked_rows"}  # fmt: skip
    if mask:
        parts.append("mask " + ", ".join(f"{k}={v}" for k, v in mask.items()))
    if case.scale is not None:
        parts.append(f"scale={case.scale:g}")
    if case.decode:
        d = case.decode
        parts.append(f"decode {d.prefix}+{d.steps}" + (f"x{d.chunk}" if d.chunk != 1 else "")
                     + (" over a memory" if d.memory else ""))  # fmt: skip
    if case.rope is not None:
        r = case.rope
        parts.append(f"rope {r.style} dims={r.rotary_dim or case.shape.key_dim} "
                     f"theta={r.theta:g} offset={r.offset}")  # fmt: skip
    if case.cache is not None:
        c = case.cache
        if c.lengths is not None:
            parts.append(f"cache lengths {list(c.lengths)}")
        if c.paged:
            parts.append(f"pages of {c.page_size}: {[list(r) for r in c.block_table]}")
    if case.extra_keys:
        parts.append("bias_kv" * case.add_bias_kv + " zero_attn" * case.add_zero_attn)
    if not case.use_bias:
        parts.append("no bias")
    return "; ".join(parts)
