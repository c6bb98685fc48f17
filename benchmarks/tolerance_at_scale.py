"""Tolerance evidence: max error vs row length per dtype, for correct implementations.

    python benchmarks/tolerance_at_scale.py [--out docs/images/tolerance_at_scale.png]
                                            [--json results.json] [--adapter NAME ...]

Kernel cases B = 1, H = 2, T = 64 queries, K = V = 64, key rows S = 16 .. 4096, at the
default scale 1/sqrt(K) and at scale 20 (|logits| ~ 10^2, past float32's exp overflow), in
each dtype. For each: the same-dtype baseline (reference.baseline), the correct blockwise
kernel of tests/blockwise_kernel.py, and real built-in adapters, each judged by
conformance.evaluate (the verdict printed is the harness's), against the budget line: the
larger of the fixed rule at the output's largest magnitude and K x baseline error + floor.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np

from conformance.adapter_api.plugin import kernel_adapter
from conformance.adapter_api.registry import load_target, resolve
from conformance.oracle.reference import attention, baseline
from conformance.spec import load_spec
from conformance.verdicts.evaluate import ReferenceCache, evaluate
from conformance.verdicts.tolerance import POLICY

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from blockwise_kernel import blockwise_attention  # noqa: E402

LENGTHS = [16, 64, 128, 256, 512, 1024, 2048, 4096]
DTYPES = ["float64", "float32", "float16", "bfloat16"]
SCALES = {"default": None, "scale 20": 20.0}
ADAPTERS = ["torch.sdpa.math", "torch.sdpa.flash", "numpy.einsum"]

SPEC = """
version: 1
family: tolerance
cases:
  - name: sweep-${S}
    description: tolerance sweep, S = ${S}
    mode: kernel
    tier: default
    shape: {batch: 1, query_len: 64, kv_len: $S, num_heads: 2, key_dim: 64}
    matrix:
      S: %s
      dtype: %s
  - name: hard-${S}
    description: tolerance sweep at scale 20, S = ${S}
    mode: kernel
    tier: default
    scale: 20.0
    shape: {batch: 1, query_len: 64, kv_len: $S, num_heads: 2, key_dim: 64}
    matrix:
      S: %s
      dtype: %s
"""


@kernel_adapter(name="tests.blockwise.correct", mask="additive")
def blockwise(q, k, v, mask, *, scale):  # noqa: ANN001, ANN201
    """The correct blockwise kernel of tests/blockwise_kernel.py (64 x 128 blocks, split-KV)."""
    return blockwise_attention(q, k, v, mask, scale=scale)


def load_cases() -> list:
    text = SPEC % (LENGTHS, DTYPES, LENGTHS, DTYPES)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "tolerance.yaml"
        path.write_text(text)
        return load_spec(path)


def measure(names: list[str]) -> list[dict]:
    adapters = {"blockwise (tests)": blockwise()}
    for entry in resolve(names):
        adapters[entry.name] = load_target(entry.target)()
    for adapter in adapters.values():
        adapter.setup()
    rows = []
    cache = ReferenceCache()
    for case in load_cases():
        inputs = cache.inputs(case)
        ref = attention(case, inputs)["output"]
        tol = POLICY[case.dtype]
        peak = float(np.abs(ref).max())
        row = {"case": case.id, "dtype": case.dtype, "S": case.shape.kv_len,
               "scale": "scale 20" if case.scale else "default"}  # fmt: skip
        budget = tol.atol + tol.rtol * peak
        if tol.baseline_factor is not None:
            base_err = float(np.abs(baseline(case, inputs)["output"] - ref).max())
            row["baseline"] = base_err
            budget = max(budget, tol.baseline_factor * base_err + tol.floor(peak))
        row["budget"] = budget
        for name, adapter in adapters.items():
            record = evaluate(adapter, case, "cpu", cache)
            if record["verdict"] in ("pass", "fail"):
                row[name] = record["max_abs_error"]
                row[name + " verdict"] = record["verdict"]
        rows.append(row)
        print(json.dumps(row))
    return rows


def plot(rows: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    meta = {"case", "dtype", "S", "scale", "budget"}
    keys = dict.fromkeys(k for r in rows for k in r)
    series = [k for k in keys if k not in meta and not k.endswith(" verdict")]
    colours = dict(zip(series, plt.rcParams["axes.prop_cycle"].by_key()["color"], strict=False))
    fig, axes = plt.subplots(2, 4, figsize=(18, 8), sharex=True)
    for i, scale in enumerate(SCALES):
        for j, dtype in enumerate(DTYPES):
            ax = axes[i][j]
            sel = [r for r in rows if r["dtype"] == dtype and r["scale"] == scale]
            xs = [r["S"] for r in sel]
            ax.plot(xs, [r["budget"] for r in sel], "k-", lw=2.5, label="budget (pass below)")
            for name in series:
                pts = [(r["S"], r[name]) for r in sel if r.get(name) is not None]
                if pts:
                    xs_, ys_ = zip(*pts, strict=True)
                    style = "s:" if name == "baseline" else "o--"
                    ax.plot(xs_, ys_, style, ms=4, label=name, color=colours[name])
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_title(f"{dtype}, {scale}")
            ax.grid(True, which="major", alpha=0.3)
            if i == 1:
                ax.set_xlabel("key row length S (T = 64, K = 64)")
            if j == 0:
                ax.set_ylabel("max |output - float64 reference|")
    handles, labels = axes[1][1].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=len(labels))
    fig.suptitle("same-dtype baseline = a straightforward implementation in the case dtype "
                 "(numpy.einsum is one: its points coincide)", y=0.955, fontsize=9)  # fmt: skip
    fig.tight_layout(rect=(0, 0, 1, 0.94))
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "docs" / "images" / "tolerance_at_scale.png"))
    parser.add_argument("--json", help="also write the measurements here")
    parser.add_argument("--adapter", action="append", help="built-in adapters to measure")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    rows = measure(args.adapter or ADAPTERS)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    plot(rows, Path(args.out))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
