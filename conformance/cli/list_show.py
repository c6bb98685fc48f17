"""`conformance list cases|adapters|features` and `conformance show CASE_ID`."""

from __future__ import annotations

import argparse
import importlib.metadata
import sys

from ..adapter_api.registry import all_entries
from ..cases.case import FEATURES, Case
from ..errors import UsageError
from ..spec import load_specs
from .selection import select_cases, spec_paths


def _framework_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "-"


def cmd_list(args: argparse.Namespace) -> int:
    if args.what == "adapters":
        entries = all_entries()
        width = max(len(e.name) for e in entries) + 2
        for entry in entries:
            ok, why = entry.declaration.installed()
            d = entry.declaration
            status = f"{d.framework} {_framework_version(d.framework)}" if ok else f"missing: {why}"
            summary = f"{d.summary} [opt-in: {d.opt_in}]" if d.opt_in else d.summary
            print(f"{entry.name.ljust(width)}{status:28s} {summary}")
        return 0
    if args.what == "features":
        for tag, text in FEATURES.items():
            print(f"{tag:22s} {text}")
        return 0
    cases = select_cases(args)
    for case in cases:
        print(case.id)
    print(f"{len(cases)} case(s)", file=sys.stderr)
    return 0


def describe_case(case: Case) -> str:
    from ..cases.masks import build_mask, picture

    s = case.shape
    lines = [
        case.id,
        f"  from        {case.source}",
        f"  mode        {case.mode}"
        + (
            ""
            if case.mode == "kernel"
            else (" (self-attention)" if case.self_attention else " (cross-attention)")
        ),
        f"  dtype       {case.dtype}",
        f"  shape       B={s.batch} T={s.query_len} S={s.kv_len} H={s.num_heads} G={s.num_kv_heads} "
        f"K={s.key_dim} V={s.value_dim}",
    ]
    if case.mode == "layer":
        lines.append(
            f"  model dims  Dq={s.query_dim} Dk={s.key_input_dim} Dv={s.value_input_dim} Do={s.output_dim}"
        )
    if s.attention_axes:
        lines.append(
            f"  multi-axis  query_shape={list(s.query_shape)} attention_axes={list(s.attention_axes)}"
        )
    lines.append(
        f"  scale       {case.effective_scale:.6g}"
        + (" (default 1/sqrt(K))" if case.scale is None else "")
    )
    if case.mode == "layer":
        lines.append(
            f"  biases      {'on' if case.use_bias else 'off'}"
            + (", add_bias_kv" if case.add_bias_kv else "")
            + (", add_zero_attn" if case.add_zero_attn else "")
        )
    if case.decode:
        d = case.decode  # issue 14: chunk > 1 is chunked prefill
        each = "single-token steps" if d.chunk == 1 else f"steps of {d.chunk} tokens"
        lines.append(f"  decode      prefix {d.prefix}, then {d.steps} {each}")
        if d.memory:
            lines.append(f"              over a cached encoder memory of {case.shape.kv_len} keys")
    lines.append(f"  compares    {', '.join(case.compare)}")
    lines.append(f"  features    {', '.join(sorted(case.features))}")
    if "fully-masked-rows" in case.features:
        lines.append(f"  expects     fully masked rows -> {case.mask.fully_masked_rows}")
    if case.description:
        lines.append(f"  why         {case.description}")
    if case.scores is not None:  # issue 14
        from ..cases.score_terms import describe_terms

        lines.extend(describe_terms(case))
    if case.rope is not None:  # issue 14: rotary position embeddings
        from ..cases.rotary import describe_rope

        lines.extend(describe_rope(case))
    if case.cache is not None:  # issue 14: cache lengths, pages
        from ..cases.kv_cache import describe_cache

        lines.extend(describe_cache(case))
    attend, bias = build_mask(case)
    lines.append("  mask (batch 0, head 0; # attend, . masked, - additive -inf):")
    lines.extend("    " + line for line in picture(attend, bias).splitlines())
    return "\n".join(lines)  # fmt: skip


def cmd_show(args: argparse.Namespace) -> int:
    cases = load_specs(spec_paths(args.specs))
    found = [c for c in cases if c.id == args.case_id]
    if not found:
        near = [c.id for c in cases if args.case_id.lower() in c.id.lower()][:8]
        hint = ("\n  did you mean one of:\n    " + "\n    ".join(near)) if near else ""
        raise UsageError(f"no case with id {args.case_id!r}{hint}")
    print(describe_case(found[0]))
    return 0
