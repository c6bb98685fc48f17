"""Benchmark helper: distinct XLA signatures per case family for jax.dpa.*, without compiling.

    python benchmarks/signatures.py [--tier TIER] [SPEC ...]

jax.dpa's jitted call compiles one program per distinct call signature: the shapes and dtypes
of q, k, v, bias, mask, the sequence lengths and dY, plus its static flags (scale, causal,
window). This script computes those signatures from the adapter's own argument planning
(`arguments()`, NumPy only) for every case the adapter supports, and prints per family: cases,
distinct case shapes (B T S H G K V), distinct signatures, signatures no other family
shares, and the floor: the signatures left if every case used one shape (only dtype, flags,
scale, mask/bias ranks and broadcasting, grouped-query or not would still differ). A family with many signatures per case is where shared shapes would save compilations;
whether a shape can change without losing the case's intent is a decision for the spec's
author. The counts are exact for jax.dpa.*; the measured program counts of every JAX-based
adapter come from `benchmarks/matrix.py` (conformance.profile).
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict

from conformance.adapters.jax_dpa import JaxDpaXla, JaxDpaXlaSeqLengths

from conformance.adapter_api.adapter import Unsupported
from conformance.cases.case import Case, in_tier
from conformance.spec import load_specs, shipped_specs_dir


def _shape(x: object) -> tuple | None:
    return None if x is None else tuple(getattr(x, "shape", ()))


def signature(adapter: JaxDpaXla, case: Case) -> tuple:
    """What the jitted call's cache key depends on, as jax.dpa.run() passes it."""
    s = case.shape
    args = adapter.arguments(case)
    return (
        case.dtype,
        (s.batch, s.query_len, s.num_heads, s.key_dim),
        (s.batch, s.kv_len, s.num_kv_heads, s.key_dim),
        (s.batch, s.kv_len, s.num_kv_heads, s.value_dim),
        _shape(args["bias"]),
        _shape(args["mask"]),
        _shape(args["q_len"]),
        _shape(args["kv_len"]),
        case.gradients,
        args["scale"],
        args["is_causal"],
        args["window"],
    )


def shapeless(sig: tuple) -> tuple:
    """The signature with every size replaced by its rank (and whether it broadcasts over a
    dimension): what would still differ if every case of a family used one shape."""

    def rank(shape: tuple | None) -> tuple | None:
        return None if shape is None else tuple(1 if n == 1 else 0 for n in shape)

    dtype, q, k, v, bias, mask, q_len, kv_len, grads, scale, causal, window = sig
    return (dtype, rank(bias), rank(mask), q_len is None, kv_len is None, grads, scale, causal,
            window, q[2] == k[2], k[2] == 1)  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("specs", nargs="*", help="spec files or folders (default: shipped)")
    parser.add_argument("--tier", default="default")
    args = parser.parse_args()
    cases = [c for c in load_specs(args.specs or [shipped_specs_dir()]) if in_tier(c, args.tier)]
    adapters = [JaxDpaXla(), JaxDpaXlaSeqLengths()]
    by_family: dict[str, set] = defaultdict(set)
    shapes: dict[str, set] = defaultdict(set)
    counts: dict[str, set] = defaultdict(set)
    for case in cases:
        for adapter in adapters:
            if adapter.declaration.unsupported_reason(case):
                continue
            try:
                sig = signature(adapter, case)
            except Unsupported:
                continue
            by_family[case.family].add(sig)
            counts[case.family].add(case.id)
            s = case.shape
            shapes[case.family].add(
                (s.batch, s.query_len, s.kv_len, s.num_heads, s.num_kv_heads, s.key_dim,
                 s.value_dim)
            )  # fmt: skip
    owners: dict[tuple, set] = defaultdict(set)
    for family, sigs in by_family.items():
        for sig in sigs:
            owners[sig].add(family)
    print(f"jax.dpa.xla + jax.dpa.xla.seq-lengths, tier {args.tier}: {len(cases)} cases\n")
    print(
        "| family | cases | distinct shapes | signatures | not shared with another family "
        "| floor with one shape per family |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for family in sorted(by_family, key=lambda f: -len(by_family[f])):
        own = sum(1 for sig in by_family[family] if owners[sig] == {family})
        floor = len({shapeless(sig) for sig in by_family[family]})
        print(f"| {family} | {len(counts[family])} | {len(shapes[family])} | "
              f"{len(by_family[family])} | {own} | {floor} |")  # fmt: skip
    total = sum(len(c) for c in counts.values())
    print(f"| **all** | {total} | {len({x for v in shapes.values() for x in v})} | "
          f"{len(owners)} | | {len({shapeless(sig) for sig in owners})} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
