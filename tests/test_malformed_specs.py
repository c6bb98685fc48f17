"""Bad input: every malformed spec gives one clear SpecError naming file, line and key.

The corpus lives in tests/malformed/. Each file starts with a header:

    # expect: <text the message must contain>
    # key: <the key the error must name>            (optional)
    # hint: <text the hint must contain>            (optional)
    # line: <line the error must name>              (optional)

and the offending line carries a trailing `# <-` marker, which the error must point at.
Files that cannot hold a header (empty, UTF-16, binary) are described in NO_HEADER below.

The same files go through `conformance run`, which must exit 2 with one message and no
traceback. A Hypothesis test fuzzes the loader: whatever the text, the only exception is
SpecError, and whatever it accepts, the reference can compute.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from conformance.errors import SpecError
from conformance.spec import load_spec, load_specs
from conformance.spec.yamlload import MAX_SPEC_BYTES

CORPUS = Path(__file__).parent / "malformed"
SPECS = Path(__file__).parent.parent / "specs"
MARKER = "# <-"

NO_HEADER = {
    "empty.yaml": ("file is empty", None),
    "bytes-utf16.yaml": ("not UTF-8 text (byte 0xff at offset 0)", 1),
    "bytes-png.yaml": ("not UTF-8 text (byte 0x89 at offset 0)", 1),
}


@dataclass
class Expectation:
    message: str
    key: str | None = None
    hint: str | None = None
    line: int | None = None


def expectation(path: Path) -> Expectation:
    if path.name in NO_HEADER:
        message, line = NO_HEADER[path.name]
        return Expectation(message, line=line)
    text = path.read_bytes().decode("utf-8", errors="replace")
    header = dict(re.findall(r"^# (expect|key|hint|line): (.*)$", text, re.M))
    assert "expect" in header, f"{path.name} has no '# expect:' header"
    line = int(header["line"]) if "line" in header else None
    for number, content in enumerate(text.splitlines(), 1):
        if content.rstrip().endswith(MARKER):
            line = number
    return Expectation(header["expect"], header.get("key"), header.get("hint"), line)


CORPUS_FILES = sorted(CORPUS.glob("*.yaml"))


def test_corpus_is_large_enough() -> None:
    assert len(CORPUS_FILES) >= 50


@pytest.mark.parametrize("path", CORPUS_FILES, ids=lambda p: p.stem)
def test_malformed_spec_gives_one_located_error(path: Path) -> None:
    want = expectation(path)
    with pytest.raises(SpecError) as info:
        load_spec(path)
    error = info.value
    text = str(error)
    assert error.file == str(path), text
    assert text.startswith(str(path)), text
    assert want.message in error.message, text
    if want.line is not None:
        assert error.line == want.line, f"line {error.line} instead of {want.line}: {text}"
        assert text.startswith(f"{path}:{want.line}: "), text
    if want.key is not None:
        assert error.key == want.key, text
        assert f"'{want.key}'" in text, text
    if want.hint is not None:
        assert error.hint and want.hint in error.hint, text
    assert "Traceback" not in text and len(text) < 600, text


def test_oversized_file_is_refused_before_parsing(tmp_path: Path) -> None:
    path = tmp_path / "big.yaml"
    path.write_text("cases:\n" + "# padding\n" * (MAX_SPEC_BYTES // 10 + 1))
    with pytest.raises(SpecError, match="specs are limited to"):
        load_spec(path)


def test_deep_nesting_that_would_overflow_the_parser(tmp_path: Path) -> None:
    path = tmp_path / "deep.yaml"
    path.write_text("cases: " + "[" * 20_000 + "]" * 20_000)
    with pytest.raises(SpecError, match="nested too deeply"):
        load_spec(path)


def test_missing_path_and_empty_directory(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="no such file or directory"):
        load_specs([tmp_path / "nope.yaml"])
    with pytest.raises(SpecError, match="no spec files"):
        load_specs([tmp_path])
    with pytest.raises(SpecError, match="cannot read file"):
        load_spec(tmp_path)


def test_duplicate_ids_across_files(tmp_path: Path) -> None:
    body = (
        "family: same\ncases:\n  - name: a\n    shape: {query_len: 4, num_heads: 2, key_dim: 4}\n"
    )
    (tmp_path / "one.yaml").write_text(body)
    (tmp_path / "two.yaml").write_text(body)
    with pytest.raises(SpecError) as info:
        load_specs([tmp_path])
    assert "duplicate case id 'same/a'" in str(info.value)
    assert str(info.value).startswith(f"{tmp_path / 'two.yaml'}:3: 'name': ")


def test_error_names_the_matrix_values_it_failed_with(tmp_path: Path) -> None:
    path = tmp_path / "m.yaml"
    path.write_text(
        "cases:\n  - name: a\n    shape: {query_len: 4, num_heads: $H, num_kv_heads: 2,"
        " key_dim: 4}\n    matrix: {H: [4, 6, 3]}\n"
    )
    with pytest.raises(SpecError, match=r"num_heads=3 is not a multiple .* \(with H=3\)"):
        load_spec(path)


def test_yaml_never_executes_code(tmp_path: Path) -> None:
    flag = tmp_path / "pwned"
    path = tmp_path / "evil.yaml"
    path.write_text(
        f'cases:\n  - !!python/object/apply:os.system ["touch {flag}"]\n'
        f'  - !!python/object/new:subprocess.Popen [["touch", "{flag}"]]\n'
    )
    with pytest.raises(SpecError, match="is not allowed"):
        load_spec(path)
    assert not flag.exists()


# --- through the CLI ----------------------------------------------------------------------


def _one_clear_message(path: Path, returncode: int, stderr: str, stdout: str) -> str | None:
    """What is wrong with the CLI's answer to a bad spec, or None."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    first = lines[0] if lines else ""
    if returncode != 2:
        return f"exit code {returncode}, not 2"
    if "Traceback" in stderr:
        return "a traceback"
    if (
        not first.startswith(f"conformance: error: {path}")
        or expectation(path).message not in first
    ):
        return f"first line is not the located message: {first!r}"
    if any(not line.startswith("  hint:") for line in lines[1:]):
        return "more than one message"
    if stdout.strip():
        return f"output on stdout: {stdout!r}"
    return None


@pytest.mark.parametrize("path", CORPUS_FILES, ids=lambda p: p.stem)
def test_cli_main_exits_2_with_one_message(
    path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from conformance.cli import main

    code = main(["run", str(path), "--adapter", "reference", "--out", str(tmp_path), "--quiet"])
    captured = capsys.readouterr()
    problem = _one_clear_message(path, code, captured.err, captured.out)
    assert problem is None, f"{problem}\n{captured.err}{captured.out}"


# A few of every kind through a real process: exit status, stderr, no traceback.
SUBPROCESS_SAMPLE = (
    "empty", "syntax-tab-indent", "syntax-unclosed-brace", "bytes-latin1", "alias-bomb",
    "tag-python-object", "huge-activations", "unknown-shape-key", "contra-decode-mask",
)  # fmt: skip


def test_cli_subprocess_exits_2_with_one_message(tmp_path: Path) -> None:
    def run(name: str) -> tuple[Path, subprocess.CompletedProcess]:
        path = CORPUS / f"{name}.yaml"
        return path, subprocess.run(
            [
                sys.executable,
                "-m",
                "conformance.cli",
                "run",
                str(path),
                "--adapter",
                "reference",
                "--out",
                str(tmp_path / name),
                "--quiet",
            ],  # fmt: skip
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, "PYTHONWARNINGS": "ignore"},
        )

    with ThreadPoolExecutor(max_workers=3) as pool:
        runs = list(pool.map(run, SUBPROCESS_SAMPLE))
    problems = []
    for path, done in runs:
        problem = _one_clear_message(path, done.returncode, done.stderr, done.stdout)
        if problem:
            problems.append(f"{path.name}: {problem}\n{done.stderr}{done.stdout}")
    assert not problems, "\n".join(problems)


# --- fuzzing the loader ---------------------------------------------------------------------

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from conformance.cases.inputs import make_inputs  # noqa: E402
from conformance.oracle.reference import attention  # noqa: E402
from conformance.spec import CASE_KEYS, MASK_KEYS, SHAPE_KEYS, estimate_bytes  # noqa: E402

KEYS = sorted({*CASE_KEYS, *SHAPE_KEYS, *MASK_KEYS, "cases", "version", "family", "defaults",
               "density", "prefix", "steps", "<<", "T", "S"})  # fmt: skip
SCALARS = st.one_of(
    st.integers(-3, 20),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.none(),
    st.sampled_from(
        [
            "kernel",
            "layer",
            "float32",
            "bfloat16",
            "top-left",
            "bottom-right",
            "output",
            "weights",
            "$T",
            "${S}",
            "nan",
            "",
            "~",
            "&a",
            "*a",
        ]
    ),  # fmt: skip
    st.text(max_size=8),
)
STRUCTURES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=5), inner, max_size=5),
    ),
    max_leaves=30,
)
SHIPPED = [p.read_text() for p in sorted(SPECS.glob("*.yaml"))]


@st.composite
def mutated_spec(draw: st.DrawFn) -> str:
    """A shipped spec with a few characters inserted, deleted or replaced."""
    text = draw(st.sampled_from(SHIPPED))
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(text)))
        junk = draw(st.sampled_from(["", ":", "-", " ", "\n", "\t", "[", "}", "0", "$", "&x",
                                      "*x", "!!", "'", '"', "#", "\x00", "é", "\ufeff"]))  # fmt: skip
        cut = draw(st.integers(0, 3))
        text = text[:at] + junk + text[at + cut :]
    return text


SMALL = st.integers(0, 9)
VALID_VALUES = {
    "mode": st.sampled_from(["kernel", "layer"]),
    "dtype": st.sampled_from(["float64", "float32", "float16", "bfloat16"]),
    "scale": st.floats(-4, 4) | st.none(),
    "cross": st.booleans(),
    "bias": st.booleans(),
    "add_bias_kv": st.booleans(),
    "add_zero_attn": st.booleans(),
    "seed": SMALL,
    "compare": st.lists(st.sampled_from(["output", "weights", "weights_mean"]), min_size=1),
    "decode": st.fixed_dictionaries({"prefix": SMALL, "steps": SMALL}),
}
MASK_VALUES = {
    "causal": st.sampled_from(["top-left", "bottom-right", True, False]),
    "key_padding": st.lists(SMALL, min_size=1, max_size=3),
    "query_padding": st.lists(SMALL, min_size=1, max_size=3),
    "random": st.fixed_dictionaries({"density": st.floats(0, 1)}),
    "additive": st.fixed_dictionaries({"density": st.floats(0, 1)}),
    "bias": st.fixed_dictionaries({"scale": st.floats(0, 4)}),
    "per_head": st.booleans(),
    "window": st.lists(SMALL, min_size=2, max_size=2),
    "masked_rows": st.lists(st.lists(SMALL, min_size=2, max_size=2), max_size=3),
    "fully_masked_rows": st.sampled_from(["nan", "zeros", "uniform"]),
}
SHAPE_VALUES = {k: st.integers(0, 7) for k in SHAPE_KEYS}
SHAPE_VALUES.update(
    {
        k: st.lists(st.integers(0, 5), max_size=4)
        for k in ("query_shape", "kv_shape", "attention_axes")
    }
)


@st.composite
def structured_spec(draw: st.DrawFn) -> str:
    """A small valid case with random options, some replaced by random (often wrong) values."""
    import yaml

    def pick(table: dict, n: int) -> dict:
        keys = draw(st.lists(st.sampled_from(sorted(table)), max_size=n, unique=True))
        return {k: draw(table[k] | STRUCTURES) if draw(st.integers(0, 9)) == 0 else draw(table[k])
                for k in keys}  # fmt: skip

    shape = {"batch": 2, "query_len": 4, "num_heads": 2, "key_dim": 2, **pick(SHAPE_VALUES, 3)}
    case = {"name": "a", "shape": shape, **pick(VALID_VALUES, 4)}
    mask = pick(MASK_VALUES, 3)
    if mask:
        case["mask"] = mask
    if draw(st.booleans()):
        key = draw(st.sampled_from(["T", "dtype", "num_heads", "mode"]))
        values = {"T": SMALL, "dtype": VALID_VALUES["dtype"], "num_heads": SMALL,
                  "mode": VALID_VALUES["mode"]}[key]  # fmt: skip
        case["matrix"] = {key: draw(st.lists(values | STRUCTURES, min_size=1, max_size=3))}
        if key == "T":
            shape["query_len"] = "$T"
    if draw(st.integers(0, 4)) == 0:
        case[draw(st.sampled_from(KEYS) | st.text(max_size=5))] = draw(STRUCTURES)
    doc = {"cases": [case]} if draw(st.integers(0, 9)) else draw(STRUCTURES)
    return yaml.safe_dump(doc, default_flow_style=draw(st.booleans()), allow_unicode=True)


ANY_SPEC_TEXT = st.one_of(st.text(max_size=200), mutated_spec(), structured_spec())


def _check_loader_on(text: str | bytes) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "fuzz.yaml"
        if isinstance(text, str):
            path.write_text(text, encoding="utf-8", errors="surrogatepass")
        else:
            path.write_bytes(text)
        try:
            cases = load_spec(path)
        except SpecError as error:
            assert error.file == str(path)
            assert len(str(error)) < 1000, str(error)  # one readable message, whatever the input
            return
    # Whatever the loader accepts, the rest of the core can compute.
    for case in cases[:3]:
        if estimate_bytes(case.shape.__dict__, case.mode) < 2**22:
            result = attention(case, make_inputs(case))
            assert result["output"].ndim >= 3


@settings(
    max_examples=150,
    deadline=None,
    derandomize=True,  # the same examples in every CI run; deeper random runs are done by hand
    suppress_health_check=[HealthCheck.too_slow],
)
@given(ANY_SPEC_TEXT)
def test_fuzzed_text_only_ever_raises_spec_error(text: str) -> None:
    _check_loader_on(text)


@settings(max_examples=50, deadline=None, derandomize=True)
@given(st.binary(max_size=200))
def test_fuzzed_bytes_only_ever_raise_spec_error(data: bytes) -> None:
    _check_loader_on(data)
