"""`conformance fuzz`: the command line (adapter selection, child processes per worker
group, exit codes)."""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

from ..errors import UsageError
from .adapter_run import DEFAULT_MAX_EXAMPLES, DEFAULT_OUT, fuzz_adapter
from .limits import LIMITS_BY_TIER
from .properties import PROPERTIES

# --- the command ---------------------------------------------------------------------------


def _entries(selectors: list[str] | None):  # noqa: ANN202 - list[AdapterEntry]
    from ..adapter_api.registry import resolve

    entries = resolve(selectors)
    usable, missing = [], []
    for entry in entries:
        installed, detail = entry.declaration.installed()
        (usable if installed else missing).append((entry, detail))
    return [e for e, _ in usable], missing


def _group_key(entry) -> tuple:  # noqa: ANN001 - AdapterEntry
    decl = entry.declaration
    return (decl.worker or decl.name, tuple(sorted(decl.env.items())))


def _forbidden_for(name: str, values: Iterable[str]) -> frozenset[str]:
    """--forbid TAG (every adapter) and --forbid ADAPTER=TAG (that adapter only)."""
    tags = set()
    for value in values:
        adapter, _, tag = value.rpartition("=")
        if not adapter or adapter == name:
            tags.add(tag)
    return frozenset(tags)


def handle(args: argparse.Namespace) -> int:
    if args.max_examples < 1:
        raise UsageError("--max-examples must be at least 1")
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**31)
    entries, missing = _entries(args.adapter)
    for entry, detail in missing:
        where = "skipped" if not args.adapter else "cannot run"
        print(f"{entry.name}: not installed ({detail}); {where}")
    if args.adapter and missing:
        return 2
    if not entries:
        raise UsageError("no installed adapter to fuzz")
    groups: dict[tuple, list] = {}
    for entry in entries:
        groups.setdefault(_group_key(entry), []).append(entry)
    if len(groups) > 1:  # one framework configuration per process: fuzz each in a child
        code = 0
        for group in groups.values():
            argv = [sys.executable, "-m", "conformance.cli", "fuzz", "--seed", str(seed),
                    "--max-examples", str(args.max_examples), "--out", str(args.out)]  # fmt: skip
            for entry in group:
                argv += [
                    "--adapter",
                    entry.target if entry.source == "command line" else entry.name,
                ]
            for prop in args.property or ():
                argv += ["--property", prop]
            for tag in args.forbid or ():
                argv += ["--forbid", tag]
            if args.device:
                argv += ["--device", args.device]
            argv += ["--tier", args.tier]
            sys.stdout.flush()
            code = max(code, subprocess.call(argv))
        return code

    (group,) = groups.values()
    os.environ.update(dict(group[0].declaration.env))
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from ..adapter_api.registry import load_target

    code = 0
    for entry in group:
        try:
            adapter = load_target(entry.target)()
            adapter.setup()
            devices = list(adapter.devices())
        except Exception as error:  # noqa: BLE001 - the adapter's own failure, reported
            print(f"{entry.name}: setup failed: {type(error).__name__}: {error}")
            code = 1
            continue
        if args.device is None and not devices:
            print(f"{entry.name}: no device on this machine; skipped")
            continue
        report = fuzz_adapter(
            adapter, target=entry.target, max_examples=args.max_examples, seed=seed,
            out_dir=Path(args.out), properties=args.property, device=args.device,
            selector=entry.target if entry.source == "command line" else entry.name,
            forbid=_forbidden_for(entry.name, args.forbid or ()), limits=LIMITS_BY_TIER[args.tier],
        )  # fmt: skip
        code = max(code, 0 if report.ok else 1)
        sys.stdout.flush()
    return code


EPILOG = (
    """\
properties:
"""
    + "\n".join(f"  {p.name:<19} {p.summary}" for p in PROPERTIES.values())
    + """

examples:
  conformance fuzz --adapter reference --max-examples 200
  conformance fuzz --adapter torch.sdpa --seed 1234       rerun a reported seed
  conformance fuzz --adapter mypkg.attn:MyAttention --property differential
  conformance fuzz                                        every installed adapter

exit codes: 0 no counterexample, 1 a counterexample or an error, 2 bad usage
"""
)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "fuzz",
        help="property-based differential fuzzing of an adapter (Hypothesis)",
        description="Generate cases an adapter claims to support, compare it with the "
        "reference and check metamorphic properties; shrink and save any counterexample.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--adapter", "-a", action="append", metavar="NAME",
                        help="adapter name, prefix or module:Class (repeatable; default: every "
                        "installed adapter)")  # fmt: skip
    parser.add_argument(
        "--max-examples",
        "-n",
        type=int,
        default=DEFAULT_MAX_EXAMPLES,
        metavar="N",
        help=f"examples per property (default {DEFAULT_MAX_EXAMPLES})",
    )
    parser.add_argument("--seed", type=int, help="Hypothesis seed (default: random, printed)")
    parser.add_argument(
        "--out",
        "-o",
        default=str(DEFAULT_OUT),
        metavar="DIR",
        help=f"where counterexamples are written (default {DEFAULT_OUT})",
    )
    parser.add_argument("--property", "-p", action="append", choices=list(PROPERTIES),
                        metavar="NAME", help="only this property (repeatable)")  # fmt: skip
    parser.add_argument("--forbid", action="append", metavar="[ADAPTER=]TAG",
                        help="never generate this feature tag (for every adapter, or one): fuzz "
                        "around a known bug to find the others (repeatable)")  # fmt: skip
    parser.add_argument("--device", help="device to run on (default: the adapter's first)")
    parser.add_argument("--tier", choices=list(LIMITS_BY_TIER), default="small",
                        help="example sizes: small (default; rows up to 6), default (rows "
                        "crossing kernel blocks up to 1025, <= 2^20 logits each) or large "
                        "(up to 8193)")  # fmt: skip
    parser.set_defaults(handler=handle)
