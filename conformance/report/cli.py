"""`conformance report`: render, merge and diff results files.

One subcommand with three forms (argparse cannot mix a positional file with sub-subcommands,
so the first word decides):

    conformance report RESULTS [--format html|md|junit|json] [--out PATH]
    conformance report merge A.json B.json ... --out M.json [--force]
    conformance report diff OLD.json NEW.json [--format text|md|json] [--strict] [--ratio R]
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from ..errors import UsageError
from . import FORMATS, SUFFIXES, render
from .results import load_results

USAGE = """\
conformance report RESULTS [--format html|md|junit|json] [--out PATH] [--slim]
       conformance report merge A.json B.json ... --out M.json [--force]
       conformance report diff OLD.json NEW.json [--format text|md|json] [--strict]"""

DESCRIPTION = """\
Render a results.json (written by `conformance run`) as a self-contained HTML page, a Markdown
summary for pull-request comments, JUnit XML for CI, or JSON with a summary block; merge results
from shards or machines into one file; or diff two runs."""

EPILOG = """\
render:
  default format: from --out's suffix, else html. html and junit go beside RESULTS
  (results.html, results.junit.xml) unless --out says otherwise; md and json go to stdout.
  --out - writes any format to stdout.
merge:
  every result keeps the machine (environment) it ran on; results of different spec
  versions, or a case id that means different cases, are refused unless --force.
diff:
  regressions (pass/diverges -> fail/error), new failures, fixes, changed errors (max abs
  error moved by more than --ratio), other verdict changes. Exit code 1 on regressions
  (also on new failures with --strict), else 0.

examples:
  conformance report out/results.json                       writes out/results.html
  conformance report out/results.json --format md > comment.md
  conformance report merge cpu/results.json gpu/results.json --out all.json
  conformance report diff main/results.json pr/results.json --format md
  conformance report diff --baseline ci/baseline.json out/results.json --strict
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "report",
        help="render (html, md, junit, json), merge or diff results files",
        usage=USAGE,
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "paths",
        nargs="+",
        metavar="RESULTS | merge FILE... | diff OLD NEW",
        help="a results.json to render, or `merge`/`diff` followed by files",
    )
    parser.add_argument(
        "-f", "--format", help="render: html, md, junit, json; diff: text (default), md, json"
    )
    parser.add_argument("-o", "--out", help="output file ('-' for stdout)")
    parser.add_argument(
        "--slim",
        action="store_true",
        help="json: drop heatmap previews and per-record duplicates (a file to keep in git)",
    )
    parser.add_argument(
        "--force", action="store_true", help="merge: merge despite different spec versions"
    )
    parser.add_argument(
        "--strict",
        action="store_true",
        help="diff: exit 1 on new failures too, not only regressions",
    )
    parser.add_argument(
        "--ratio",
        type=float,
        default=None,
        help="diff: how far the max abs error must move to count as changed (default 10)",
    )
    # CI baselines (issue 16): `report diff --baseline KEPT.json NEW.json` names the kept file.
    parser.add_argument(
        "--baseline",
        metavar="OLD",
        help="diff: the results file kept as the baseline (then give only NEW)",
    )
    parser.set_defaults(handler=run_report)
    _accept_files_after_options(parser)


def _accept_files_after_options(parser: argparse.ArgumentParser) -> None:
    """Let files follow options (`report merge --out M.json A.json B.json`).

    argparse fills a nargs="+" positional from the first run of words only and reports later
    words as unrecognised; this collects them into `paths`, in order. Unknown options still fail.
    """
    parse = parser.parse_known_args

    def parse_known_args(args=None, namespace=None):  # noqa: ANN001, ANN202 - argparse's signature
        namespace, extras = parse(args, namespace)
        words = [a for a in extras if not a.startswith("-")]
        namespace.paths = list(namespace.paths or []) + words
        return namespace, [a for a in extras if a.startswith("-")]

    parser.parse_known_args = parse_known_args


def run_report(args: argparse.Namespace) -> int:
    first, rest = args.paths[0], args.paths[1:]
    if first == "merge":
        _only(args, "merge", allowed={"out", "force"})
        return _merge(rest, args)
    if args.ratio is not None and not args.ratio > 1.0:
        raise UsageError(f"--ratio must be greater than 1, got {args.ratio:g}")
    if first == "diff":
        _only(args, "diff", allowed={"format", "out", "strict", "ratio", "baseline"})
        if args.baseline:
            if len(rest) != 1:
                raise UsageError(
                    f"report diff --baseline {args.baseline} needs exactly one NEW results "
                    f"file, got {len(rest)}"
                )
            rest = [args.baseline, *rest]
        return _diff(rest, args)
    _only(args, "rendering", allowed={"format", "out", "slim"})
    if rest:
        raise UsageError(
            f"report renders one results file, got {len(args.paths)}: "
            + " ".join(args.paths)
            + "\n  hint: to combine files use `conformance report merge A.json B.json --out M.json`"
        )
    return _render(Path(first), args)


def _only(args: argparse.Namespace, what: str, allowed: set[str]) -> None:
    given = {
        "format": args.format is not None,
        "out": args.out is not None,
        "force": args.force,
        "strict": args.strict,
        "ratio": args.ratio is not None,
        "slim": args.slim,
        "baseline": args.baseline is not None,
    }
    bad = [f"--{name}" for name, on in given.items() if on and name not in allowed]
    if bad:
        raise UsageError(f"{', '.join(bad)} does not apply to {what}\n  usage: {USAGE}")


def _write(text: str, out: str | None) -> None:
    if out is None or out == "-":
        sys.stdout.write(text)
        return
    path = Path(out)
    if path.is_dir():
        raise UsageError(f"--out {out} is a directory; name a file")
    if not path.parent.exists():
        raise UsageError(f"--out {out}: folder {path.parent} does not exist")
    path.write_text(text, encoding="utf-8")
    print(f"wrote {path}", file=sys.stderr)


def _render(path: Path, args: argparse.Namespace) -> int:
    fmt = args.format
    if fmt is None:
        fmt = (
            SUFFIXES.get(Path(args.out).suffix.lower(), "html")
            if args.out not in (None, "-")
            else "html"
        )
    if fmt not in FORMATS:
        raise UsageError(f"unknown format '{fmt}'; choose one of {', '.join(FORMATS)}")
    if args.slim and fmt != "json":
        raise UsageError("--slim applies to --format json only")
    doc = load_results(path)
    out = args.out
    if out is None and fmt in ("html", "junit"):
        suffix = ".html" if fmt == "html" else ".junit.xml"
        out = str(path.with_name(path.stem + suffix))
    _write(render(doc, fmt, slim=args.slim), out)
    return 0


def _merge(files: list[str], args: argparse.Namespace) -> int:
    from .merge import merge

    if len(files) < 1:
        raise UsageError(
            "report merge needs results files: report merge A.json B.json --out M.json"
        )
    if not args.out:
        raise UsageError("report merge needs --out M.json (where to write the merged file)")
    docs = [(name, load_results(name)) for name in files]
    command = "conformance report merge " + " ".join(shlex.quote(f) for f in files)
    merged, warnings = merge(docs, force=args.force, command=command + f" --out {args.out}")
    for warning in warnings:
        print(f"conformance: warning: {warning}", file=sys.stderr)
    import json

    _write(json.dumps(merged, indent=1) + "\n", args.out)
    print(
        f"merged {len(files)} files: {len(merged['results'])} results from "
        f"{len(merged['environments'])} machine(s)",
        file=sys.stderr,
    )
    return 0


def _diff(files: list[str], args: argparse.Namespace) -> int:
    from .diff import diff, render_json, render_text

    if len(files) != 2:
        raise UsageError(f"report diff needs exactly two files (OLD NEW), got {len(files)}")
    fmt = args.format or "text"
    if fmt not in ("text", "md", "json"):
        raise UsageError(f"unknown diff format '{fmt}'; choose text, md or json")
    old, new = load_results(files[0]), load_results(files[1])
    result = diff(old, new, ratio=args.ratio if args.ratio is not None else 10.0)
    text = render_json(result) if fmt == "json" else render_text(result, markdown=fmt == "md")
    _write(text, args.out)
    return result.exit_code(strict=args.strict)
