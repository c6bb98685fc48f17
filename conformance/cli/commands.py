"""`conformance run`, `conformance list`, `conformance show`: their subcommand parsers.

The commands live one idea per module: `selection` (which cases and adapters), `arguments`
(`run`'s options), `run` (the run itself), `resume` (`--resume`), `run_messages` (what a run
prints besides its results), `list_show` (`list` and `show`). Every name this module had
before that split is still importable from it.
"""

from __future__ import annotations

import argparse

from .arguments import (
    DEFAULT_OUT,
    _positive_int,
    _positive_seconds,
    add_run_arguments,
    add_tier_argument,
    build_run_parser,
)
from .list_show import _framework_version, cmd_list, cmd_show, describe_case
from .resume import RESUME_APPLIES, _apply_resume_flags, _case_digests, _check_resumable
from .run import (
    _adapter_block,
    _argv_of,
    _cmd_run,
    _SignalToInterrupt,
    _write_reports,
    cmd_run,
    write_results,
)
from .run_messages import (
    _load_expected,
    _print_profile,
    _printable,
    _report_empty,
    _report_expected,
    _summary,
    _user_adapter_help,
)
from .selection import (
    DEFAULT_TIER,
    keyword_matcher,
    parse_shard,
    select_adapters,
    select_cases,
    spec_paths,
)

__all__ = [
    "DEFAULT_OUT",
    "DEFAULT_TIER",
    "RESUME_APPLIES",
    "_SignalToInterrupt",
    "_adapter_block",
    "_apply_resume_flags",
    "_argv_of",
    "_case_digests",
    "_check_resumable",
    "_cmd_run",
    "_framework_version",
    "_load_expected",
    "_positive_int",
    "_positive_seconds",
    "_print_profile",
    "_printable",
    "_report_empty",
    "_report_expected",
    "_run_handler",
    "_summary",
    "_user_adapter_help",
    "_write_reports",
    "add_run_arguments",
    "add_tier_argument",
    "build_run_parser",
    "cmd_list",
    "cmd_run",
    "cmd_show",
    "describe_case",
    "keyword_matcher",
    "parse_shard",
    "register",
    "select_adapters",
    "select_cases",
    "spec_paths",
    "write_results",
]


# `_run_handler` looks `cmd_run` up here, in this module, when it runs: a test (or a user's
# wrapper) that replaces `commands.cmd_run` replaces what `conformance run` calls.
def _run_handler(args: argparse.Namespace) -> int:
    args._argv = list(args._raw_argv)
    with _SignalToInterrupt():
        return cmd_run(args)


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
