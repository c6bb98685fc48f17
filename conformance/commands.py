"""`conformance run`, `conformance list`, `conformance show`."""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import re
import shlex
import sys
from collections import Counter, defaultdict
from pathlib import Path

from . import __version__
from .case import DTYPES, FEATURES, Case
from .errors import UsageError
from .evaluate import VERDICTS, record_key
from .progress import Progress
from .registry import AdapterEntry, all_entries, resolve
from .results import (
    SCHEMA_VERSION,
    ResultStream,
    dedupe,
    read_stream,
    write_json_atomic,
)
from .runner import DEFAULT_TIMEOUT_S, Runner, RunOptions, default_jobs
from .spec import SPEC_VERSION, load_specs, shipped_specs_dir

DEFAULT_OUT = Path("reports/latest")


# --- selection -----------------------------------------------------------------------------


def keyword_matcher(expr: str):  # noqa: ANN201 - returns a predicate
    """pytest-style -k: substrings combined with and/or/not and parentheses."""
    tokens = re.findall(r"\(|\)|[^\s()]+", expr)
    if not tokens:
        raise UsageError("-k needs an expression, e.g. -k 'causal and not float16'")

    def predicate(text: str) -> bool:
        parts = []
        for token in tokens:
            if token in ("and", "or", "not", "(", ")"):
                parts.append(token)
            else:
                parts.append(str(token.lower() in text.lower()))
        try:
            return bool(eval(" ".join(parts), {"__builtins__": {}}, {}))  # noqa: S307 - only True/False/and/or/not
        except SyntaxError:
            raise UsageError(f"-k expression {expr!r} is not well formed") from None

    return predicate


def parse_shard(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    m = re.fullmatch(r"(\d+)/(\d+)", text)
    if not m or not (1 <= int(m.group(1)) <= int(m.group(2))):
        raise UsageError(f"--shard {text!r}: expected I/N with 1 <= I <= N, e.g. --shard 2/4")
    return int(m.group(1)), int(m.group(2))


def select_cases(args: argparse.Namespace) -> list[Case]:
    paths = args.specs or [shipped_specs_dir()]
    cases = load_specs(paths)
    if getattr(args, "dtype", None):
        for dtype in args.dtype:
            if dtype not in DTYPES:
                raise UsageError(f"--dtype {dtype!r}: choose from {', '.join(DTYPES)}")
        cases = [c for c in cases if c.dtype in args.dtype]
    if getattr(args, "case", None):
        wanted = set(args.case)
        known = {c.id for c in cases}
        missing = sorted(wanted - known)
        if missing:
            raise UsageError(
                f"no case with id {missing[0]!r}\n  hint: `conformance list cases` shows ids; "
                "quote ids in the shell because of the brackets"
            )
        cases = [c for c in cases if c.id in wanted]
    if getattr(args, "keyword", None):
        match = keyword_matcher(args.keyword)
        cases = [c for c in cases if match(c.id)]
    shard = parse_shard(getattr(args, "shard", None))
    if shard:
        index, count = shard
        ordered = sorted(cases, key=lambda c: c.id)
        cases = [c for i, c in enumerate(ordered) if i % count == index - 1]
    return cases


def select_adapters(names: list[str] | None) -> tuple[list[AdapterEntry], list[AdapterEntry]]:
    """(to run, not installed). Named adapters that are not installed are an error."""
    entries = resolve(names)
    runnable, missing = [], []
    for entry in entries:
        ok, why = entry.declaration.installed()
        if ok:
            runnable.append(entry)
        elif names and any(n == entry.name or ":" in n for n in names):
            extra = entry.declaration.framework
            raise UsageError(
                f"adapter '{entry.name}' is not installed: it {why}\n  hint: pip install "
                f"'attention-conformance[{extra}]' (or the framework itself)"
            )
        else:
            missing.append(entry)
    return runnable, missing


# --- run -----------------------------------------------------------------------------------


def _adapter_block(entry: AdapterEntry, info: dict) -> dict:
    d = entry.declaration
    return {
        "summary": d.summary,
        "framework": d.framework,
        "source": entry.source,
        "target": entry.target,
        "worker": d.worker,
        "versions": info.get("versions", {}),
        "devices": info.get("devices", []),
        "error": info.get("error"),
        "setup_s": info.get("setup_s"),
        "features": sorted(d.features),
        "dtypes": sorted(d.dtypes),
        "divergences": [
            {
                "id": v.id,
                "reason": v.reason,
                "link": v.link,
                "when": sorted(v.when),
                "dtypes": sorted(v.dtypes) if v.dtypes else None,
                "devices": list(v.devices) if v.devices else None,
                "masked_rows": v.masked_rows,
                "compute_dtype": v.compute_dtype,
            }
            for v in d.divergences
        ],
        "tolerances": [
            {"dtype": t.dtype, "rtol": t.rtol, "atol": t.atol, "reason": t.reason}
            for t in d.tolerances
        ],
        "notes": d.notes,
    }


def write_results(
    out_dir: Path,
    records: list[dict],
    cases: list[Case],
    entries: list[AdapterEntry],
    adapter_info: dict,
    command: str,
) -> Path:
    from .environment import environment

    frameworks: dict[str, str] = {}
    devices: list[str] = []
    for info in adapter_info.values():
        frameworks.update(info.get("versions", {}))
        devices.extend(info.get("devices", []))
    data = {
        "schema_version": SCHEMA_VERSION,
        "tool_version": __version__,
        "spec_version": SPEC_VERSION,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "environment": environment(frameworks, devices),
        "adapters": {e.name: _adapter_block(e, adapter_info.get(e.name, {})) for e in entries},
        "cases": {c.id: c.to_dict() for c in cases},
        "results": sorted(dedupe(records), key=lambda r: (r["adapter"], r["device"], r["case"])),
    }
    path = out_dir / "results.json"
    write_json_atomic(path, data)
    return path


def _summary(records: list[dict], missing: list[AdapterEntry], stream) -> None:  # noqa: ANN001
    by_adapter: dict[str, Counter] = defaultdict(Counter)
    for record in records:
        by_adapter[f"{record['adapter']} ({record['device']})"][record["verdict"]] += 1
    if by_adapter:
        width = max(len(k) for k in by_adapter) + 2
        header = "adapter".ljust(width) + "".join(v.rjust(12) for v in VERDICTS)
        print(header, file=stream)
        for name in sorted(by_adapter):
            counts = by_adapter[name]
            print(
                name.ljust(width) + "".join(str(counts[v]).rjust(12) for v in VERDICTS), file=stream
            )
    if missing:
        names = ", ".join(f"{e.name} ({e.declaration.installed()[1]})" for e in missing)
        print(f"\nnot installed, not run: {names}", file=stream)
    bad = [r for r in records if r["verdict"] in ("fail", "error")]
    if bad:
        print(f"\n{len(bad)} failing result(s); first ones:", file=stream)
        for record in bad[:12]:
            print(
                f"  {record['verdict'].upper():5s} {record['case']} [{record['adapter']}-"
                f"{record['device']}]: {record['message'][:160]}",
                file=stream,
            )
        if len(bad) > 12:
            print(f"  ... and {len(bad) - 12} more (see the report)", file=stream)


def cmd_run(args: argparse.Namespace) -> int:
    out_dir = Path(args.out) if args.out else DEFAULT_OUT
    if args.resume:
        out_dir = Path(args.resume)
        saved = out_dir / "run.json"
        if not saved.exists():
            raise UsageError(f"--resume {out_dir}: no run.json there (not a run folder)")
        argv = json.loads(saved.read_text())["argv"]
        args = build_run_parser().parse_args(argv)
        args.resume = str(out_dir)
        args.out = str(out_dir)
    if args.no_cache:
        os.environ["CONFORMANCE_CACHE_DIR"] = "off"  # workers inherit the environment
    cases = select_cases(args)
    if not cases:
        raise UsageError("no cases selected (check the spec paths, --case, -k, --dtype, --shard)")
    entries, missing = select_adapters(args.adapter)
    if not entries:
        raise UsageError(
            "no installed adapter selected\n  hint: `conformance list adapters` shows what is installed"
        )

    out_dir.mkdir(parents=True, exist_ok=True)
    stream_path = out_dir / "results.jsonl"
    previous: list[dict] = []
    if args.resume:
        previous = read_stream(stream_path)
    else:
        stream_path.unlink(missing_ok=True)
        (out_dir / "results.json").unlink(missing_ok=True)
        write_json_atomic(out_dir / "run.json", {"argv": _argv_of(args)})
    done = {record_key(r["case"], r["adapter"], r["device"]) for r in previous}
    records = list(previous)
    stream = ResultStream(stream_path)
    progress = Progress(len(cases) * len(entries), interactive=None if not args.quiet else False)
    progress.done = len(previous)

    def on_record(record: dict) -> None:
        stream.write(record)
        records.append(record)
        progress.update(record)

    runner = Runner(
        cases,
        entries,
        RunOptions(
            devices=args.device,
            jobs=args.jobs or default_jobs(),
            timeout_s=args.timeout,
            log_dir=out_dir / "logs",
            done=done,
        ),
        on_record,
        on_progress=lambda total: progress.set_total(total),
    )
    command = "conformance run " + " ".join(shlex.quote(a) for a in _argv_of(args))
    interrupted = False
    try:
        runner.run()
    except KeyboardInterrupt:
        interrupted = True
    finally:
        stream.close()
        progress.close()
        path = write_results(out_dir, records, cases, entries, runner.adapter_info, command)
    if interrupted:
        print(
            f"interrupted: {len(records)} result(s) kept in {path}\n"
            f"  continue with: conformance run --resume {out_dir}",
            file=sys.stderr,
        )
        return 130
    reports = _write_reports(path, out_dir, args)
    _summary(dedupe(records), missing, sys.stdout)
    _user_adapter_help(dedupe(records), entries, cases, out_dir)
    print(f"\nresults: {path}" + "".join(f"\n         {p}" for p in reports))
    bad = any(r["verdict"] in ("fail", "error") for r in dedupe(records))
    return 1 if bad else 0


def _argv_of(args: argparse.Namespace) -> list[str]:
    return getattr(args, "_argv", [])


def _write_reports(path: Path, out_dir: Path, args: argparse.Namespace) -> list[Path]:
    if args.no_report:
        return []
    try:
        from .report import write_all
    except ImportError:
        return []
    return list(write_all(path, out_dir))


def _user_adapter_help(
    records: list[dict], entries: list[AdapterEntry], cases: list[Case], out_dir: Path
) -> None:
    """For user adapters: which features pass and fail, and a reproducer for the first failure.

    Built-in adapters have their reports; a user validating their own implementation wants the
    shortest path to the fix.
    """
    users = [e for e in entries if e.source != "builtin"]
    if not users:
        return
    from .feature_table import feature_table
    from .reproducer import write_reproducer

    by_id = {c.id: c for c in cases}
    for entry in users:
        mine = [r for r in records if r["adapter"] == entry.name]
        if not mine:
            continue
        print(f"\n{entry.name}: features\n" + feature_table(mine))
        failing = next((r for r in mine if r["verdict"] == "fail"), None)
        if failing is None:
            continue
        script = write_reproducer(
            by_id[failing["case"]], failing, entry.target, out_dir / "reproducers"
        )
        print(f"first failure: {failing['case']}\n  reproduce with: python {script}")


class _SignalToInterrupt:
    """SIGTERM (CI cancelling a job) is handled like Ctrl-C: keep what is done."""

    def __enter__(self):  # noqa: ANN204
        import signal

        self._old = signal.signal(signal.SIGTERM, self._raise)
        return self

    @staticmethod
    def _raise(signum, frame):  # noqa: ANN001, ANN205
        raise KeyboardInterrupt

    def __exit__(self, *exc):  # noqa: ANN002, ANN204
        import signal

        signal.signal(signal.SIGTERM, self._old)
        return False


def _run_handler(args: argparse.Namespace) -> int:
    args._argv = list(args._raw_argv)
    with _SignalToInterrupt():
        return cmd_run(args)


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "specs",
        nargs="*",
        metavar="SPEC_PATH",
        help="spec files or folders (default: every shipped spec in specs/)",
    )
    p.add_argument(
        "--adapter",
        "-a",
        action="append",
        metavar="NAME",
        help="adapter name, prefix (torch = every torch.* adapter) or module:Class; "
        "repeatable (default: every installed adapter)",
    )
    p.add_argument(
        "--device",
        action="append",
        metavar="DEV",
        help="cpu, cuda, cuda:0 ... (default: every device each adapter sees)",
    )
    p.add_argument("--dtype", action="append", metavar="DT", help=f"one of {', '.join(DTYPES)}")
    p.add_argument("--case", action="append", metavar="ID", help="exact case id; repeatable")
    p.add_argument(
        "-k",
        dest="keyword",
        metavar="EXPR",
        help="select case ids by substring expression, e.g. -k 'causal and not float16'",
    )
    p.add_argument(
        "--shard", metavar="I/N", help="run the I-th of N deterministic slices of the cases"
    )
    p.add_argument("--out", "-o", metavar="DIR", help=f"output folder (default {DEFAULT_OUT})")
    p.add_argument(
        "--jobs", "-j", type=int, metavar="N", help="worker processes at once (default: CPU count)"
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT_S,
        metavar="S",
        help=f"per-case timeout in seconds (default {DEFAULT_TIMEOUT_S:g})",
    )
    p.add_argument(
        "--resume",
        metavar="DIR",
        help="continue an interrupted run in DIR without redoing finished results",
    )
    p.add_argument("--no-report", action="store_true", help="write results.json only")
    p.add_argument(
        "--no-cache",
        action="store_true",
        help="do not read or write the compilation/export cache "
        "(~/.cache/attention-conformance, or $CONFORMANCE_CACHE_DIR)",
    )
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")  # fmt: skip


def build_run_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="conformance run")
    add_run_arguments(parser)
    return parser


# --- list / show ---------------------------------------------------------------------------


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
            print(f"{entry.name.ljust(width)}{status:28s} {d.summary}")
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
    from .masks import build_mask, picture

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
        lines.append(
            f"  decode      prefix {case.decode.prefix}, then {case.decode.steps} single-token steps"
        )
    lines.append(f"  compares    {', '.join(case.compare)}")
    lines.append(f"  features    {', '.join(sorted(case.features))}")
    if "fully-masked-rows" in case.features:
        lines.append(f"  expects     fully masked rows -> {case.mask.fully_masked_rows}")
    if case.description:
        lines.append(f"  why         {case.description}")
    if case.scores is not None:  # issue 14
        from .score_terms import describe_terms

        lines.extend(describe_terms(case))
    attend, bias = build_mask(case)
    lines.append("  mask (batch 0, head 0; # attend, . masked, - additive -inf):")
    lines.extend("    " + line for line in picture(attend, bias).splitlines())
    return "\n".join(lines)  # fmt: skip


def cmd_show(args: argparse.Namespace) -> int:
    cases = load_specs(args.specs or [shipped_specs_dir()])
    found = [c for c in cases if c.id == args.case_id]
    if not found:
        near = [c.id for c in cases if args.case_id.lower() in c.id.lower()][:8]
        hint = ("\n  did you mean one of:\n    " + "\n    ".join(near)) if near else ""
        raise UsageError(f"no case with id {args.case_id!r}{hint}")
    print(describe_case(found[0]))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    run = sub.add_parser(
        "run",
        help="run specs on adapters and write results + reports",
        description="Run every selected case on every selected adapter and device, compare with "
        "the float64 reference, and write results.json (streamed to results.jsonl as results "
        "complete) plus reports into the output folder.",
        epilog="exit codes: 0 no fail/error, 1 some fail or error, 2 bad usage or spec, "
        "130 interrupted (resume with --resume DIR)",
    )
    add_run_arguments(run)
    run.set_defaults(handler=_run_handler)

    lst = sub.add_parser("list", help="list cases, adapters or feature tags")
    lst.add_argument("what", choices=["cases", "adapters", "features"])
    lst.add_argument("specs", nargs="*", metavar="SPEC_PATH", help="for cases: spec files/folders")
    lst.add_argument("--dtype", action="append", metavar="DT")
    lst.add_argument("-k", dest="keyword", metavar="EXPR")
    lst.set_defaults(handler=cmd_list)

    show = sub.add_parser("show", help="print one resolved case: shapes, mask picture, semantics")
    show.add_argument("case_id", metavar="CASE_ID")
    show.add_argument("specs", nargs="*", metavar="SPEC_PATH")
    show.set_defaults(handler=cmd_show)
