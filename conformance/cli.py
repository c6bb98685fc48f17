"""The `conformance` command. Bad input exits 2 with one clear message, never a traceback."""

from __future__ import annotations

import argparse
import importlib
import sys

from .errors import ConformanceError

EPILOG = """\
examples:
  conformance run                             every shipped spec, every installed adapter
  conformance run specs/masks.yaml --adapter torch.sdpa --dtype float64
  conformance run --adapter mypkg.attn:MyAttention     validate your own implementation
  conformance list adapters                   what is installed, with versions
  conformance show 'masks/causal-top-left[T=5,S=7,float32]'
  conformance report reports/latest/results.json --format md

exit codes: 0 no fail/error results, 1 some fail or error, 2 bad usage or bad spec
"""

# Subcommands that live in their own modules register themselves: module.register(subparsers).
SUBCOMMAND_MODULES = (
    "conformance.commands",
    "conformance.report.cli",
    "conformance.fuzz",
    "conformance.bench",
    "conformance.importers",
)


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
            raise
        module.register(sub)
    return parser


def _version() -> str:
    from . import __version__

    return f"attention-conformance {__version__}"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    raw = list(sys.argv[1:] if argv is None else argv)
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
