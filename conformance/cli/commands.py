"""`conformance run`, `conformance list`, `conformance show`."""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import re
import shlex
import shutil
import sys
from pathlib import Path

from .. import __version__
from ..adapter_api.registry import AdapterEntry, all_entries, resolve
from ..cases.case import DTYPES, FEATURES, TIERS, Case, in_tier
from ..errors import UsageError
from ..paths import portable_case_dict
from ..running import maxfail
from ..running.progress import Progress
from ..running.results import (
    SCHEMA_VERSION,
    ResultStream,
    RunLock,
    dedupe,
    read_stream,
    repair_stream,
    write_json_atomic,
)
from ..running.runner import (
    DEFAULT_SETUP_TIMEOUT_S,
    DEFAULT_TIMEOUT_S,
    Runner,
    RunOptions,
    default_jobs,
)
from ..running.summary import summary_lines
from ..spec import SPEC_VERSION, load_specs, shipped_specs_dir
from ..verdicts.evaluate import record_key
from . import suggest

DEFAULT_OUT = Path("reports/latest")
DEFAULT_TIER = "default"  # what `conformance run` checks unless told otherwise


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


def spec_paths(paths: list[str] | None) -> list[str | Path]:
    """Spec paths as given (relative to the current directory), the shipped specs by default.

    `specs/NAME.yaml` that does not exist here names the shipped file (an installed wheel has
    them inside the package), so the documented commands work outside a checkout too.
    """
    if not paths:
        return [shipped_specs_dir()]
    out: list[str | Path] = []
    for text in paths:
        path = Path(text)
        parts = path.parts
        if not path.exists() and len(parts) >= 1 and parts[0] == "specs":
            shipped = shipped_specs_dir().joinpath(*parts[1:])
            if shipped.exists():
                out.append(shipped)
                continue
        out.append(text)
    return out


def select_cases(args: argparse.Namespace) -> list[Case]:
    cases = load_specs(spec_paths(args.specs))
    tier = getattr(args, "tier", None)
    # Cases named with --case run whatever their tier; otherwise the default tier applies.
    if tier is not None or not getattr(args, "case", None):
        cases = [c for c in cases if in_tier(c, tier or DEFAULT_TIER)]
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
                f"no case with id {missing[0]!r}{suggest.hint(missing[0], known)}\n  hint: "
                "`conformance list cases` shows ids; quote ids in the shell because of the brackets"
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
    from ..running.environment import environment

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
        "cases": {c.id: portable_case_dict(c.to_dict()) for c in cases},
        "results": sorted(dedupe(records), key=lambda r: (r["adapter"], r["device"], r["case"])),
    }
    path = out_dir / "results.json"
    write_json_atomic(path, data)
    return path


def _summary(records: list[dict], missing: list[AdapterEntry], stream) -> None:  # noqa: ANN001
    # summary.py: fits 80 columns, or a narrower terminal
    table = summary_lines(records, width=min(80, shutil.get_terminal_size((80, 24)).columns))
    bad_at = next((i for i, line in enumerate(table) if not line), len(table))
    for line in table[:bad_at]:
        print(line, file=stream)
    if missing:
        names = ", ".join(f"{e.name} ({e.declaration.installed()[1]})" for e in missing)
        print(f"\nnot installed, not run: {names}", file=stream)
    for line in table[bad_at:]:
        print(line, file=stream)


def cmd_run(args: argparse.Namespace) -> int:
    """`conformance run`, holding the output folder's lock (one run per --out at a time)."""
    out_dir = Path(args.resume or args.out or DEFAULT_OUT)
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"{out_dir}: is a file, not a folder (--out and --resume need a folder)")
    if not args.resume:
        out_dir.mkdir(parents=True, exist_ok=True)
    elif not (out_dir / "run.json").is_file():
        raise UsageError(f"--resume {out_dir}: no run.json there (not a run folder)")
    with RunLock(out_dir):
        return _cmd_run(args)


def _case_digests(cases: list[Case]) -> dict[str, str]:
    """What each case is, compactly: a resumed run refuses to mix in records of edited cases."""
    import hashlib

    return {
        c.id: hashlib.sha256(
            json.dumps(c.to_dict(), sort_keys=True, default=str).encode()
        ).hexdigest()[:16]
        for c in cases
    }


def _check_resumable(saved: dict, cases: list[Case], previous: list[dict]) -> None:
    """Refuse to resume when a case that already has results was edited since (issue 18)."""
    stored = saved.get("cases")
    if not isinstance(stored, dict):
        return  # a run folder from before case digests were kept
    now = _case_digests(cases)
    done = {r["case"] for r in previous}
    changed = sorted(c for c in done if c in now and c in stored and stored[c] != now[c])
    if changed:
        shown = ", ".join(changed[:5]) + (
            f" and {len(changed) - 5} more" if len(changed) > 5 else ""
        )
        raise UsageError(
            f"--resume: {len(changed)} case definition(s) changed since the interrupted run "
            f"started ({shown}); their results would not match the specs any more\n"
            "  hint: start a fresh run (without --resume, or with another --out)"
        )


# With --resume, these flags given on the command line apply (they change how the run goes,
# not what its results mean); every other flag is refused rather than silently ignored.
RESUME_APPLIES = ("jobs", "quiet", "no_report", "no_cache")


def _apply_resume_flags(given: argparse.Namespace, saved: argparse.Namespace) -> None:
    defaults = build_run_parser().parse_args([])
    for dest, value in vars(given).items():
        if (
            dest.startswith("_")
            or dest in ("resume", "func", "command")
            or not hasattr(defaults, dest)
        ):
            continue
        if value == getattr(defaults, dest):
            continue
        if dest in RESUME_APPLIES:
            setattr(saved, dest, value)
            continue
        flag = {"specs": "SPEC_PATH", "keyword": "-k"}.get(dest, "--" + dest.replace("_", "-"))
        raise UsageError(
            f"--resume continues a run with its original options; {flag} cannot be changed "
            f"(only {', '.join('--' + d.replace('_', '-') for d in RESUME_APPLIES)} can)\n"
            "  hint: start a fresh run with the new options (another --out, or without --resume)"
        )


def _cmd_run(args: argparse.Namespace) -> int:
    out_dir = Path(args.out) if args.out else DEFAULT_OUT
    if args.resume:
        out_dir = Path(args.resume)
        saved = out_dir / "run.json"
        if not saved.exists():
            raise UsageError(f"--resume {out_dir}: no run.json there (not a run folder)")
        given = args
        try:
            argv = json.loads(saved.read_text(encoding="utf-8"))["argv"]
            if not isinstance(argv, list) or not all(isinstance(a, str) for a in argv):
                raise TypeError
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError):
            raise UsageError(
                f"--resume {out_dir}: run.json is corrupted (no readable 'argv'); the results "
                f"so far are in {out_dir / 'results.jsonl'}\n  hint: start a fresh run"
            ) from None
        args = build_run_parser().parse_args(argv)
        _apply_resume_flags(given, args)
        args._argv = argv
        args.resume = str(out_dir)
        args.out = str(out_dir)
    if args.no_cache:
        os.environ["CONFORMANCE_CACHE_DIR"] = "off"  # workers inherit the environment
    cases = select_cases(args)
    if not cases:
        near = ""
        if getattr(args, "keyword", None):  # suggest.py: families and ids near the -k words
            near = suggest.keyword_hint(args.keyword, (c.id for c in load_specs(
                args.specs or [shipped_specs_dir()])))  # fmt: skip
        raise UsageError(
            "no cases selected (check the spec paths, --case, -k, --dtype, --shard)" + near
        )
    entries, missing = select_adapters(args.adapter)
    if not entries:
        raise UsageError(
            "no installed adapter selected\n  hint: `conformance list adapters` shows what is installed"
        )

    expected = _load_expected(args, cases, entries)
    out_dir.mkdir(parents=True, exist_ok=True)
    stream_path = out_dir / "results.jsonl"
    previous: list[dict] = []
    if args.resume:
        repair_stream(stream_path)  # a torn last line is dropped: that case runs again
        previous = read_stream(stream_path)
        _check_resumable(json.loads((out_dir / "run.json").read_text()), cases, previous)
    else:
        stream_path.unlink(missing_ok=True)
        (out_dir / "results.json").unlink(missing_ok=True)
        run_info = {"argv": _argv_of(args), "cases": _case_digests(cases)}
        write_json_atomic(out_dir / "run.json", run_info)
    done = {record_key(r["case"], r["adapter"], r["device"]) for r in previous}
    records = list(previous)
    stream = ResultStream(stream_path)
    progress = Progress(len(cases) * len(entries), interactive=None if not args.quiet else False)
    progress.done = len(previous)

    stop_after = maxfail.Counter(getattr(args, "maxfail", None))

    def on_record(record: dict) -> None:
        stream.write(record)
        records.append(record)
        progress.update(record)
        stop_after.see(record)  # raises MaxFailReached at --maxfail N

    runner = Runner(
        cases,
        entries,
        RunOptions(
            devices=args.device,
            jobs=args.jobs or default_jobs(),
            timeout_s=args.timeout,
            setup_timeout_s=args.setup_timeout,
            log_dir=out_dir / "logs",
            done=done,
            reference_dir=out_dir / ".references",
        ),
        on_record,
        on_progress=lambda total: progress.set_total(total),
    )
    command = "conformance run " + " ".join(shlex.quote(a) for a in _argv_of(args))
    interrupted = False
    stopped = None
    try:
        runner.run()
    except KeyboardInterrupt:
        interrupted = True
    except maxfail.MaxFailReached as reason:
        stopped = str(reason)
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
    if args.profile:  # this invocation only: resumed records ran earlier
        _print_profile(records[len(previous) :], runner.adapter_info)
    _user_adapter_help(dedupe(records), entries, cases, out_dir, args.timeout)
    print(f"\nresults: {path}" + "".join(f"\n         {p}" for p in reports))
    if stopped:
        print(f"{stopped}; continue with: conformance run --resume {out_dir}", file=sys.stderr)
    bad = any(r["verdict"] in ("fail", "error") for r in dedupe(records))
    empty = _report_empty(dedupe(records), entries, runner.adapter_info, args)
    if args.write_expected:
        from ..running.expected import write

        count = write(args.write_expected, dedupe(records), command)
        print(f"expected results: {args.write_expected} ({count} known fail/error entries)")
    if expected is not None:
        bad = _report_expected(expected, dedupe(records), args.expected)
    return 1 if bad else empty


def _print_profile(records: list[dict], adapter_info: dict) -> None:
    """--profile: where each adapter's time went (conformance.profile), this run's records."""
    from ..running.profile import summarize, table

    fresh = [r for r in records if "total_s" in r]
    print("\nprofile (seconds summed over each adapter's executed cases; see conformance.profile):")
    print(table(summarize(fresh, adapter_info)))


# --- nothing executed (conformance.executed) -------------------------------------------------


def _report_empty(
    records: list[dict], entries: list[AdapterEntry], adapter_info: dict, args: argparse.Namespace
) -> int:
    """Say which adapters executed nothing; the exit code for that (0 when it is acceptable).

    Non-zero when an adapter the user named exactly (or as module:function) executed nothing,
    or when the whole run executed nothing; adapters picked by a prefix or by default (a
    GPU-only adapter on a CPU machine) are reported but do not change the exit code alone.
    """
    from ..running.executed import EXECUTED_VERDICTS, EXIT_NOTHING_EXECUTED, empty_adapters

    empty = empty_adapters([e.name for e in entries], adapter_info, args.device, records)
    if not empty:
        return 0
    for name, why in empty.items():
        print(f"{name}: executed nothing: {why}", file=sys.stderr)
    named = set(args.adapter or ())
    strict = [
        e.name
        for e in entries
        if e.name in empty and (e.name in named or e.source == "command line")
    ]
    nothing = not any(r["verdict"] in EXECUTED_VERDICTS for r in records)
    if not (strict or nothing):
        return 0
    if args.allow_empty:
        print("(--allow-empty: not an error)", file=sys.stderr)
        return 0
    print(
        f"exit {EXIT_NOTHING_EXECUTED}: "
        + ("nothing was executed" if nothing else f"{', '.join(strict)} executed nothing")
        + " (pass --allow-empty if that is expected)",
        file=sys.stderr,
    )
    return EXIT_NOTHING_EXECUTED


# --- expected results (conformance.expected) -------------------------------------------------


def _load_expected(args: argparse.Namespace, cases: list[Case], entries: list[AdapterEntry]):  # noqa: ANN202
    """The --expected entries, checked against the selection before anything runs."""
    if not args.expected:
        return None
    from ..running.expected import check_patterns, load

    known = load(args.expected)
    check_patterns(known, [c.id for c in cases], [e.name for e in entries])
    return known


def _report_expected(expected: list, records: list[dict], path: str) -> bool:
    """Print every change against the expected file; True when there is one (exit 1)."""
    from ..running.expected import compare

    changes = compare(expected, records)
    known = sum(1 for r in records if r["verdict"] in ("fail", "error")) - sum(
        1 for c in changes if c.kind == "new failure"
    )
    if not changes:
        print(f"\nexpected results ({path}): no change ({known} known fail/error result(s))")
        return False
    print(f"\nexpected results ({path}): {len(changes)} change(s)", file=sys.stderr)
    for change in changes[:50]:
        print("  " + _printable(change.describe()), file=sys.stderr)
    if len(changes) > 50:
        print(f"  ... and {len(changes) - 50} more", file=sys.stderr)
    print(
        "  hint: fix the regression, or update the file (--write-expected writes one from a run)",
        file=sys.stderr,
    )
    return True


def _printable(text: str) -> str:
    """Spec and result text on a terminal: control characters shown escaped, not executed."""
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)


def _argv_of(args: argparse.Namespace) -> list[str]:
    return getattr(args, "_argv", [])


def _write_reports(path: Path, out_dir: Path, args: argparse.Namespace) -> list[Path]:
    if args.no_report:
        return []
    try:
        from ..report import write_all
    except ImportError:
        return []
    return list(write_all(path, out_dir))


def _user_adapter_help(
    records: list[dict],
    entries: list[AdapterEntry],
    cases: list[Case],
    out_dir: Path,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> None:
    """For user adapters: which features pass and fail, and a reproducer for the first failure.

    Built-in adapters have their reports; a user validating their own implementation wants the
    shortest path to the fix.
    """
    users = [e for e in entries if e.source != "builtin"]
    if not users:
        return
    from ..report.reproducer import ReproducerError, write_reproducer_isolated
    from ..running.feature_table import feature_table

    by_id = {c.id: c for c in cases}
    for entry in users:
        mine = [r for r in records if r["adapter"] == entry.name]
        if not mine:
            continue
        print(f"\n{entry.name}: features\n" + feature_table(mine))
        failing = next((r for r in mine if r["verdict"] == "fail"), None)
        if failing is None:
            continue
        # In a child process with the run's timeout: writing it imports and runs user code.
        try:
            script = write_reproducer_isolated(
                by_id[failing["case"]], failing, entry.target, out_dir / "reproducers",
                timeout_s=timeout_s,
            )  # fmt: skip
        except ReproducerError as error:
            print(f"first failure: {failing['case']}\n  no reproducer: {error}")
            continue
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


def _positive_seconds(text: str) -> float:
    """A timeout: a positive finite number of seconds (nan, inf, 0 and -1 are refused)."""
    import math

    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text!r}")
    return value


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
    add_tier_argument(p)
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
        "--jobs",
        "-j",
        type=_positive_int,
        metavar="N",
        help="worker processes at once (default: CPU count)",
    )
    p.add_argument(
        "--timeout",
        type=_positive_seconds,
        default=DEFAULT_TIMEOUT_S,
        metavar="S",
        help=f"per-case timeout in seconds (default {DEFAULT_TIMEOUT_S:g})",
    )
    p.add_argument(
        "--setup-timeout",
        type=_positive_seconds,
        default=DEFAULT_SETUP_TIMEOUT_S,
        metavar="S",
        help="seconds a worker may take to import its framework and set up "
        f"(default {DEFAULT_SETUP_TIMEOUT_S:g})",
    )
    p.add_argument(
        "--resume",
        metavar="DIR",
        help="continue an interrupted run in DIR without redoing finished results",
    )
    p.add_argument("--no-report", action="store_true", help="write results.json only")
    p.add_argument(
        "--profile",
        action="store_true",
        help="print where each adapter's time went: import, first case, compile/export, run, "
        "inputs, reference, comparison",
    )
    p.add_argument(
        "--no-cache",
        action="store_true",
        help="do not read or write the compilation/export cache "
        "(~/.cache/attention-conformance, or $CONFORMANCE_CACHE_DIR)",
    )
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")  # fmt: skip
    # --- CI trust (conformance.executed, conformance.expected) ---
    p.add_argument(
        "--allow-empty",
        action="store_true",
        help="exit 0 even when a named adapter executed nothing (no device, every case "
        "unsupported); by default that exits 5",
    )
    p.add_argument(
        "--expected",
        metavar="FILE",
        help="known results (docs/ci.md): exit 0 when every result matches the file, 1 on any "
        "change (a new fail, or a known fail that now passes)",
    )
    p.add_argument(
        "--write-expected",
        metavar="FILE",
        help="write an expected-results file listing this run's fail/error results",
    )
    maxfail.add_arguments(p)  # -x / --maxfail N (maxfail.py)


def add_tier_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--tier",
        choices=TIERS,
        help=f"size tier, each including the smaller ones: small (toy sizes, seconds), default "
        f"(adds kernel-scale cases: rows across tile and block boundaries), large (adds 8k-32k "
        f"contexts, for GPU runners and nightly jobs). Default: {DEFAULT_TIER}",
    )


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


def register(sub: argparse._SubParsersAction) -> None:
    run = sub.add_parser(
        "run",
        help="run specs on adapters and write results + reports",
        description="Run every selected case on every selected adapter and device, compare with "
        "the float64 reference, and write results.json (streamed to results.jsonl as results "
        "complete) plus reports into the output folder.",
        epilog="exit codes: 0 no fail/error, 1 some fail or error, 2 bad usage or spec, "
        "5 a named adapter (or the whole run) executed nothing (see --allow-empty), "
        "130 interrupted (resume with --resume DIR)",
    )
    add_run_arguments(run)
    run.set_defaults(handler=_run_handler)

    lst = sub.add_parser("list", help="list cases, adapters or feature tags")
    lst.add_argument("what", choices=["cases", "adapters", "features"])
    lst.add_argument("specs", nargs="*", metavar="SPEC_PATH", help="for cases: spec files/folders")
    lst.add_argument("--dtype", action="append", metavar="DT")
    lst.add_argument("-k", dest="keyword", metavar="EXPR")
    add_tier_argument(lst)
    lst.set_defaults(handler=cmd_list)

    show = sub.add_parser("show", help="print one resolved case: shapes, mask picture, semantics")
    show.add_argument("case_id", metavar="CASE_ID")
    show.add_argument("specs", nargs="*", metavar="SPEC_PATH")
    show.set_defaults(handler=cmd_show)
