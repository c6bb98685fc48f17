"""`conformance run`: select, run on workers, stream and write results, then reports and exit code."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import sys
from pathlib import Path

from .. import __version__
from ..adapter_api.registry import AdapterEntry
from ..cases.case import Case
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
from ..running.runner import Runner, RunOptions, default_jobs
from ..spec import SPEC_VERSION, load_specs, shipped_specs_dir
from ..verdicts.evaluate import record_key
from . import suggest
from .arguments import DEFAULT_OUT, build_run_parser
from .resume import _apply_resume_flags, _case_digests, _check_resumable
from .run_messages import (
    _load_expected,
    _print_profile,
    _report_empty,
    _report_expected,
    _summary,
    _user_adapter_help,
)
from .selection import select_adapters, select_cases


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
