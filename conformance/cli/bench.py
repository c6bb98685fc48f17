"""`conformance bench`: an attention benchmark across adapters.

For each adapter: forward latency at a few sizes (kernel and layer mode as the adapter supports),
and for incremental decoding the per-step latency and the key/value-cache bytes of multi-head,
grouped-query and multi-query attention at the same model size (the multi-query paper's claim:
the cache shrinks by the head count, and decoding gets faster where it is memory-bound).

Each adapter group runs in its own worker process, as in `conformance run`. Times are the
median of `--repeat` calls after one warm-up call (which includes building and compiling).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import time
from pathlib import Path

from ..cases.case import Case, Decode, Mask, Shape
from ..errors import UsageError

DTYPE_BYTES = {"float64": 8, "float32": 4, "float16": 2, "bfloat16": 2}


def _shape(b: int, t: int, h: int, g: int, k: int, s: int | None = None) -> Shape:
    s = t if s is None else s
    d = h * k
    return Shape(batch=b, query_len=t, kv_len=s, num_heads=h, num_kv_heads=g, key_dim=k,
                 value_dim=k, query_dim=d, key_input_dim=d, value_input_dim=d, output_dim=d)  # fmt: skip


def bench_cases(sizes: list[tuple[int, int]], dtype: str, decode_steps: int) -> list[Case]:
    """Forward cases at (T, K) sizes with H=8, and decode cases for H=8 with G = 8, 2, 1."""
    cases = []
    for t, k in sizes:
        for mode in ("kernel", "layer"):
            name = f"forward-{mode}"
            cases.append(Case(id=f"bench/{name}[T={t},K={k},{dtype}]", family="bench", name=name,
                              mode=mode, shape=_shape(1, t, 8, 8, k), dtype=dtype,
                              mask=Mask(causal="top-left"),
                              params=(("T", t), ("K", k), ("dtype", dtype))))  # fmt: skip
    t, k = sizes[-1]
    for g, label in ((8, "multi-head"), (2, "grouped-query"), (1, "multi-query")):
        for mode in ("kernel", "layer"):
            name = f"decode-{label}-{mode}"
            total = decode_steps
            cases.append(Case(id=f"bench/{name}[S={total},K={k},{dtype}]", family="bench",
                              name=name, mode=mode, shape=_shape(1, total, 8, g, k), dtype=dtype,
                              mask=Mask(causal="top-left"), decode=Decode(prefix=0, steps=total),
                              params=(("S", total), ("K", k), ("dtype", dtype))))  # fmt: skip
    return cases


def kv_cache_bytes(case: Case) -> int:
    """Bytes of the key/value cache after the last step: 2 x B x G x S x K (K = V here)."""
    s = case.shape
    return 2 * s.batch * s.num_kv_heads * s.kv_len * s.key_dim * DTYPE_BYTES[case.dtype]


def _bench_worker(conn, entries: list[tuple[str, str]], env: dict, cases, repeat: int) -> None:  # noqa: ANN001
    os.environ.update(env)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from ..adapter_api.registry import load_target
    from ..cases.inputs import make_inputs

    rows = []
    for name, target in entries:
        try:
            adapter = load_target(target)()
            adapter.setup()
            devices = adapter.devices()
        except Exception as error:  # noqa: BLE001
            rows.append({"adapter": name, "error": f"setup failed: {error}"})
            continue
        for device in devices:
            for case in cases:
                row = {"adapter": name, "device": device, "case": case.id, "mode": case.mode,
                       "decode": case.decode is not None, "kv_heads": case.shape.num_kv_heads}  # fmt: skip
                reason = adapter.declaration.unsupported_reason(case)
                if reason:
                    continue
                inputs = make_inputs(case)
                try:
                    start = time.perf_counter()
                    adapter.run(case, inputs, device)
                    row["first_s"] = time.perf_counter() - start
                    times = []
                    for _ in range(repeat):
                        start = time.perf_counter()
                        adapter.run(case, inputs, device)
                        times.append(time.perf_counter() - start)
                    row["median_s"] = statistics.median(times)
                    if case.decode:
                        row["per_step_s"] = row["median_s"] / case.decode.steps
                        row["kv_cache_bytes"] = kv_cache_bytes(case)
                except Exception as error:  # noqa: BLE001 - a benchmark row, not a verdict
                    row["error"] = f"{type(error).__name__}: {error}"[:200]
                rows.append(row)
    conn.send(rows)
    conn.close()


def run_bench(selectors: list[str] | None, cases: list[Case], repeat: int) -> list[dict]:
    from .selection import select_adapters

    entries, _missing = select_adapters(selectors)
    groups: dict[str, list] = {}
    for entry in entries:
        groups.setdefault(entry.declaration.worker or entry.name, []).append(entry)
    ctx = multiprocessing.get_context("spawn")
    rows: list[dict] = []
    for group in groups.values():  # one at a time: timings should not compete for cores
        env: dict[str, str] = {}
        for entry in group:
            env.update(entry.declaration.env)
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_bench_worker,
                           args=(child, [(e.name, e.target) for e in group], env, cases, repeat))  # fmt: skip
        proc.start()
        child.close()
        try:
            rows.extend(parent.recv())
        except EOFError:
            rows.extend({"adapter": e.name, "error": "worker died"} for e in group)
        proc.join()
    return rows


def format_table(rows: list[dict]) -> str:
    lines = ["| adapter | device | case | first call | median | per step | KV cache |",
             "|---|---|---|---:|---:|---:|---:|"]  # fmt: skip
    for r in rows:
        if "error" in r and "median_s" not in r:
            lines.append(f"| {r['adapter']} | {r.get('device', '-')} | {r.get('case', '-')} | "
                         f"error: {r['error'][:60]} | | | |")  # fmt: skip
            continue
        step = f"{r['per_step_s'] * 1e3:.3f} ms" if "per_step_s" in r else ""
        cache = f"{r['kv_cache_bytes'] / 1024:.0f} KiB" if "kv_cache_bytes" in r else ""
        lines.append(f"| {r['adapter']} | {r['device']} | {r['case']} | {r['first_s'] * 1e3:.2f} ms"
                     f" | {r['median_s'] * 1e3:.3f} ms | {step} | {cache} |")  # fmt: skip
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> Path | None:
    """Per-step decode latency and KV-cache bytes for MHA/GQA/MQA, per adapter (PNG)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    decode = [r for r in rows if r.get("decode") and "per_step_s" in r]
    if not decode:
        return None
    labels = {8: "multi-head (G=8)", 2: "grouped (G=2)", 1: "multi-query (G=1)"}
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    series = sorted({(r["adapter"], r["device"], r["mode"]) for r in decode})
    width = 0.8 / max(len(series), 1)
    for i, key in enumerate(series):
        mine = sorted((r for r in decode if (r["adapter"], r["device"], r["mode"]) == key),
                      key=lambda r: -r["kv_heads"])  # fmt: skip
        xs = [j + i * width for j in range(len(mine))]
        left.bar(
            xs, [r["per_step_s"] * 1e3 for r in mine], width, label=f"{key[0]} {key[2]} ({key[1]})"
        )
    groups = sorted({r["kv_heads"] for r in decode}, reverse=True)
    left.set_xticks(
        [j + 0.4 - width / 2 for j in range(len(groups))], [labels.get(g, g) for g in groups]
    )
    left.set_ylabel("ms per decoding step")
    left.set_title("decode step latency")
    left.legend(fontsize=7)
    caches = {r["kv_heads"]: r["kv_cache_bytes"] for r in decode}
    right.bar([labels.get(g, g) for g in groups], [caches[g] / 1024 for g in groups], color="#5b8")
    right.set_ylabel("KiB")
    right.set_title("key/value cache after the last step")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def cmd_bench(args: argparse.Namespace) -> int:
    sizes = []
    for item in args.size:
        try:
            t, k = (int(x) for x in item.split("x"))
        except ValueError:
            raise UsageError(f"--size {item!r}: expected TxK, e.g. 128x64") from None
        sizes.append((t, k))
    cases = bench_cases(sizes, args.dtype, args.decode_steps)
    rows = run_bench(args.adapter, cases, args.repeat)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps(rows, indent=1))
    table = format_table(rows)
    (out / "bench.md").write_text("# Attention benchmark\n\n" + table + "\n")
    picture = plot(rows, out / "bench.png")
    print(table)
    print(
        f"\nwritten: {out / 'bench.json'}, {out / 'bench.md'}" + (f", {picture}" if picture else "")
    )
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench",
        help="forward and decoding latency per adapter, KV-cache bytes for MHA/GQA/MQA",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--adapter", "-a", action="append", metavar="NAME", help="as in `run`")
    p.add_argument(
        "--size",
        action="append",
        default=None,
        metavar="TxK",
        help="sequence length x head dim (H=8); repeatable (default 64x32 128x64)",
    )
    p.add_argument("--dtype", default="float32", choices=sorted(DTYPE_BYTES))
    p.add_argument("--decode-steps", type=int, default=64, metavar="N")
    p.add_argument("--repeat", type=int, default=5, metavar="N")
    p.add_argument("--out", "-o", default="reports/bench", metavar="DIR")  # fmt: skip
    p.set_defaults(handler=lambda a: cmd_bench(_defaults(a)))


def _defaults(args: argparse.Namespace) -> argparse.Namespace:
    if not args.size:
        args.size = ["64x32", "128x64"]
    return args
