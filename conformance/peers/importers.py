"""`conformance import onnx|keras`: peer test suites turned into ordinary spec files.

The command is here; the suites are one module each: onnx_import.py (the ONNX Attention
operator's backend tests, and how ONNX semantics map onto the case model), keras_port.py (the
hand port of Keras's MultiHeadAttention tests), with spec_writing.py (the spec files they
write) and agreement.py (the reference against the peer's expected outputs). Every name this
module had before that split is still importable from it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import UsageError
from ..spec import shipped_specs_dir
from .agreement import agreement
from .keras_port import (
    KERAS_NOT_PORTED,
    KERAS_OWN_KEY,
    KERAS_TEST_FILE,
    _keras_cases,
    _keras_correctness_arrays,
    keras_test_file,
    write_keras,
)
from .onnx_import import (
    ONNX_MASKED_ROWS,
    Imported,
    Skipped,
    _attributes,
    _band,
    _dtype_name,
    _f64,
    _has_empty_rows,
    _heads,
    convert_onnx,
    import_onnx,
    onnx_testcases,
    write_onnx,
)
from .spec_writing import SCHEMA_LINE, _relative, _yaml_value, render_spec

ONNX_SPEC = "onnx_imported.yaml"
ONNX_DATA = "data/onnx_attention.npz"
KERAS_SPEC = "keras_ported.yaml"
KERAS_DATA = "data/keras_attention.npz"

__all__ = [
    "KERAS_DATA",
    "KERAS_NOT_PORTED",
    "KERAS_OWN_KEY",
    "KERAS_SPEC",
    "KERAS_TEST_FILE",
    "ONNX_DATA",
    "ONNX_MASKED_ROWS",
    "ONNX_SPEC",
    "SCHEMA_LINE",
    "Imported",
    "Skipped",
    "_attributes",
    "_band",
    "_dtype_name",
    "_f64",
    "_has_empty_rows",
    "_heads",
    "_keras_cases",
    "_keras_command",
    "_keras_correctness_arrays",
    "_onnx_command",
    "_relative",
    "_report_agreement",
    "_yaml_value",
    "agreement",
    "convert_onnx",
    "import_onnx",
    "keras_test_file",
    "onnx_testcases",
    "register",
    "render_spec",
    "write_keras",
    "write_onnx",
]


# --- the command -----------------------------------------------------------------------------


def _onnx_command(args: argparse.Namespace) -> int:
    try:
        import onnx  # noqa: F401
    except ImportError:
        raise UsageError(
            "`conformance import onnx` needs the onnx package: pip install onnx"
        ) from None
    out = Path(args.out) if args.out else shipped_specs_dir() / ONNX_SPEC
    data = Path(args.data) if args.data else out.parent / ONNX_DATA
    imported, skipped, version = write_onnx(out, data)
    print(f"onnx {version}: imported {len(imported)} Attention tests into {out} (arrays: {data})")
    partial = [i for i in imported if i.left_out]
    if partial:
        print(f"\n{len(partial)} imported with parts not compared:")
        for item in partial:
            print(f"  {item.test}: {'; '.join(item.left_out)}")
    print(f"\n{len(skipped)} not imported:")
    for item in skipped:
        print(f"  {item.test}: {item.reason}")
    return _report_agreement(out, masked_rows=ONNX_MASKED_ROWS)


def _keras_command(args: argparse.Namespace) -> int:
    out = Path(args.out) if args.out else shipped_specs_dir() / KERAS_SPEC
    data = Path(args.data) if args.data else out.parent / KERAS_DATA
    entries, missing = write_keras(out, data)
    print(f"ported {len(entries)} cases from {KERAS_TEST_FILE} into {out}")
    if keras_test_file() is None:
        print("keras is not installed: the port table was not checked against its test file")
    for test in missing:
        print(f"  warning: {test} is no longer in the installed Keras test file")
    print(f"\n{len(KERAS_NOT_PORTED)} tests not ported:")
    for test, why in KERAS_NOT_PORTED.items():
        print(f"  {test}: {why}")
    return _report_agreement(out, atol=1e-2)


def _report_agreement(spec: Path, atol: float | None = None, masked_rows: str | None = None) -> int:
    from ..spec import load_spec

    disagree = []
    checked = 0
    for case in load_spec(spec):
        if not case.expected:
            continue
        checked += 1
        for name, result in agreement(case, atol, masked_rows).items():
            if not result["ok"]:
                disagree.append(f"  {case.id} {name}: {result['summary']}")
    print(f"\nreference vs stored expected outputs: {checked - len(disagree)} of {checked} agree")
    for line in disagree:
        print(line)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "import",
        help="import a peer test suite (onnx, keras) as spec files",
        description="Turn a peer project's attention tests into spec files: `onnx` imports the "
        "ONNX Attention operator's backend tests (inputs and expected outputs stored as data), "
        "`keras` writes the port of Keras's MultiHeadAttention tests. Prints what was left out "
        "and whether the reference agrees with the peer's expected outputs.",
    )
    parser.add_argument("suite", choices=["onnx", "keras"])
    parser.add_argument("--out", metavar="SPEC", help="spec file to write (default: specs/...)")
    parser.add_argument("--data", metavar="NPZ", help="data file (default: beside the spec)")
    parser.set_defaults(
        handler=lambda a: (_onnx_command if a.suite == "onnx" else _keras_command)(a)
    )
