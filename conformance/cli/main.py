"""The `conformance` command. Bad input exits 2 with one clear message, never a traceback."""

from __future__ import annotations

import argparse
import importlib
import sys

from ..errors import ConformanceError, UsageError

EPILOG = """\
examples:
  conformance run                             every shipped spec, every installed adapter
  conformance run specs/masks.yaml --adapter torch.sdpa --dtype float64
  conformance run --adapter mypkg.attn:MyAttention     validate your own implementation
  conformance list adapters                   what is installed, with versions
  conformance show 'masks/causal-top-left-kernel[T=5,S=7,float32]'
  conformance report reports/latest/results.json --format md

exit codes: 0 no fail/error results, 1 some fail or error, 2 bad usage or bad spec,
            5 nothing executed (conformance run --help), 130 interrupted
"""

# Subcommands that live in their own modules register themselves: module.register(subparsers).
SUBCOMMAND_MODULES = (
    "conformance.cli.commands",
    "conformance.report.cli",
    "conformance.fuzz",
    "conformance.cli.bench",
    "conformance.peers.importers",
)

# Optional dependencies a subcommand module may need -> the extra that installs them. The core
# install (numpy, pyyaml) must run every other subcommand; these say what to install instead of
# a traceback from the import.
OPTIONAL_EXTRAS = {"hypothesis": "fuzz"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="conformance",
        description="Check multi-head attention implementations against a float64 reference.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as error:
            if error.name == name:
                continue  # not part of this install
            missing = (error.name or "").split(".")[0]
            if missing not in OPTIONAL_EXTRAS:
                raise
            _register_unavailable(sub, name.rsplit(".", 1)[-1], missing)
            continue
        module.register(sub)
    return parser


def _register_unavailable(sub: argparse._SubParsersAction, command: str, missing: str) -> None:
    """A subcommand whose optional dependency is missing: it exits 2 saying which extra."""
    extra = OPTIONAL_EXTRAS[missing]
    message = (
        f"`conformance {command}` needs {missing}, which is not installed\n"
        f"  hint: pip install 'attention-conformance[{extra}]' (or pip install {missing})"
    )
    # prefix_chars without "-": every option the real subcommand takes lands in `rest`, so the
    # user sees the missing dependency, not "unrecognized arguments".
    parser = sub.add_parser(
        command,
        help=f"(needs the [{extra}] extra: pip install {missing})",
        prefix_chars="\0",
        add_help=False,
    )
    parser.add_argument("rest", nargs="*", help=argparse.SUPPRESS)

    def unavailable(args: argparse.Namespace) -> int:
        raise UsageError(message)

    parser.set_defaults(handler=unavailable)


def unknown_command(parser: argparse.ArgumentParser, raw: list[str]) -> str | None:
    """The error for a mistyped subcommand (with the closest ones), or None."""
    from .suggest import hint

    if not raw or raw[0].startswith("-"):
        return None
    for action in parser._actions:  # noqa: SLF001 - argparse keeps subparsers only here
        if isinstance(action, argparse._SubParsersAction) and raw[0] not in action.choices:  # noqa: SLF001
            return f"unknown command {raw[0]!r}{hint(raw[0], action.choices)}"
    return None


def _version() -> str:
    from .. import __version__

    return f"attention-conformance {__version__}"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    raw = list(sys.argv[1:] if argv is None else argv)
    unknown = unknown_command(parser, raw)  # suggest.py: 'did you mean' for subcommands
    if unknown:
        print(f"conformance: error: {unknown}", file=sys.stderr)
        return 2
    args = parser.parse_args(raw)
    args._raw_argv = raw[1:] if raw and raw[0] == "run" else raw
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    try:
        return int(args.handler(args) or 0)
    except ConformanceError as error:
        print(f"conformance: error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("conformance: interrupted", file=sys.stderr)
        return 130
    except OSError as error:  # a full disk, a read-only or vanished folder: no traceback
        import errno

        where = f" ({error.filename})" if error.filename else ""
        text = f"conformance: error: {error.strerror or error}{where}"
        if error.errno == errno.ENOSPC:
            text += (
                "\n  the disk is full: results written so far are kept in results.jsonl;"
                " free some space and continue with `conformance run --resume DIR`"
            )
        print(text, file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
