"""The shipped spec library and the spec language: loading, matrices, ids, schema, oracle.

Everything here runs on the shipped specs/ and small inline specs; the malformed corpus is
tests/test_malformed_specs.py.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest
from conftest import shipped_cases

from conformance.cases.case import FEATURES, Mask
from conformance.errors import SpecError
from conformance.spec import load_spec, shipped_specs_dir
from conformance.spec.yamlload import load_yaml_file

SPECS = shipped_specs_dir()
SPEC_FILES = sorted(SPECS.glob("*.yaml"))
FAMILIES = {
    "basic", "cross", "masks", "fully_masked", "multi_axis", "gqa", "decode", "dtypes",
    "weights", "torch_extras", "scale",
}  # fmt: skip
SCHEMA_LINE = "# yaml-language-server: $schema=../conformance/schema/spec.schema.json"
CORPUS = Path(__file__).parent / "malformed"


@pytest.fixture(scope="module")
def cases() -> list:
    return list(shipped_cases())


def write(tmp_path: Path, text: str, name: str = "t.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# --- the shipped library --------------------------------------------------------------------


def test_every_family_has_its_file() -> None:
    assert FAMILIES <= {p.stem for p in SPEC_FILES}


@pytest.mark.parametrize("path", SPEC_FILES, ids=lambda p: p.stem)
def test_spec_file_conventions(path: Path) -> None:
    text = path.read_text()
    assert text.splitlines()[0] == SCHEMA_LINE
    data = load_yaml_file(path)
    assert data["family"] == path.stem
    assert data["version"] == 1
    assert data.get("description"), "each file says what it tests"
    for case in data["cases"]:
        assert case.get("description"), f"{case['name']} needs a one-line description"
        assert "\n" not in case["description"].strip()


def test_library_size_and_ids(cases: list) -> None:
    assert len(cases) >= 500
    ids = [c.id for c in cases]
    assert len(set(ids)) == len(ids)
    for case in cases:
        assert re.fullmatch(r"[a-z_]+/[a-z0-9.+=\-]+(\[[A-Za-z0-9=.,\-\[\]]+\])?", case.id), case.id
        assert case.id.startswith(f"{case.family}/{case.name}")
        assert case.description


def test_ids_are_stable(cases: list) -> None:
    """Ids are what users type (-k, --case) and what results files key on: pinned."""
    ids = {c.id for c in cases}
    for pinned in (
        "basic/kernel[T=6,H=4,float32]",
        "basic/layer[T=16,H=1,float64]",
        "masks/causal-top-left-kernel[T=5,S=7,float32]",
        "masks/causal-bottom-right-layer[T=6,S=7,float64]",
        "masks/window-kernel[window=[1,1],float32]",
        "fully_masked/key-padding-zero-layer[float32]",
        "multi_axis/5d[axes=[2,3],float64]",
        "gqa/grouped-query-kernel[H=8,G=2,float32]",
        "decode/prefix3-steps3-layer[float64]",
        "dtypes/kernel[bfloat16]",
        "torch_extras/bias-kv[T=6,S=7,float32]",
        "scale/scale-kernel[scale=0.125,float64]",
        "weights/both-layer[float32]",
        "cross/all-dims-differ[float64]",
    ):
        assert pinned in ids


def test_shapes_stay_small(cases: list) -> None:
    """The whole matrix must run in about a minute on two cores across every adapter."""
    cases = [c for c in cases if c.family in FAMILIES]  # ported peer suites keep their shapes
    for case in cases:
        s = case.shape
        assert s.query_len <= 16 and s.kv_len <= 16, case.id
        assert s.key_dim <= 16 and s.value_dim <= 16 and s.num_heads <= 8, case.id
        assert s.batch <= 3, case.id
    shapes = {(c.mode, c.shape) for c in cases}
    assert len(shapes) <= 100, "adapters cache modules per shape: reuse shapes"


# Feature tags the library does not exercise yet, each with the reason.
NOT_IN_LIBRARY = {
    "dropout": "dropout cases come with the dropout check (conformance.dropout)",
    "dropout-training": "dropout cases come with the dropout check (conformance.dropout)",
}


def test_every_feature_tag_is_covered(cases: list) -> None:
    # The large tier's long masks cost about a minute to tag (each scans its full mask for
    # fully masked rows): look there only for a tag the smaller tiers lack (the same verdict).
    seen = set().union(*(c.features for c in cases if c.tier != "large"))
    if set(FEATURES) - set(NOT_IN_LIBRARY) - seen:
        seen |= set().union(*(c.features for c in cases if c.tier == "large"))
    assert set(FEATURES) - set(NOT_IN_LIBRARY) <= seen, sorted(set(FEATURES) - seen)


def test_families_cover_what_they_promise(cases: list) -> None:
    by_family: dict[str, list] = {}
    for case in cases:
        by_family.setdefault(case.family, []).append(case)
    assert Counter(c.dtype for c in cases)["bfloat16"] >= 10
    assert {c.dtype for c in by_family["dtypes"]} == {"float64", "float32", "float16", "bfloat16"}
    # causal: both alignments with T < S, T == S and T > S
    causal = {
        (c.mask.causal, (c.shape.query_len > c.shape.kv_len) - (c.shape.query_len < c.shape.kv_len))
        for c in by_family["masks"]
        if c.mask.causal
    }
    assert causal == {(a, d) for a in ("top-left", "bottom-right") for d in (-1, 0, 1)}
    # every case of fully_masked really has such rows, and expects the default "nan"
    for case in by_family["fully_masked"]:
        assert "fully-masked-rows" in case.features, case.id
        assert case.mask.fully_masked_rows == "nan"
    # other families only where the description says so
    for case in cases:
        if case.family in FAMILIES - {"fully_masked"} and "fully-masked-rows" in case.features:
            said = re.search(r"fully masked|no visible key|every key masked", case.description)
            assert said, f"{case.id}: say in the description that some rows are fully masked"
    assert {c.shape.num_kv_heads for c in by_family["gqa"]} >= {1, 2, 4}
    assert all(c.decode for c in by_family["decode"])
    assert {c.mode for c in by_family["decode"]} == {"kernel", "layer"}
    assert all(c.shape.attention_axes for c in by_family["multi_axis"])
    assert all(c.scale is not None for c in by_family["scale"])
    assert all(set(c.compare) - {"output"} for c in by_family["weights"])
    assert any(c.add_bias_kv for c in cases) and any(c.add_zero_attn for c in cases)


def test_dtype_variants_share_their_data(cases: list) -> None:
    """float32 and float64 variants of a case see the same underlying numbers."""
    by_key: dict[str, set] = {}
    for case in cases:
        by_key.setdefault(case.data_key, set()).add(case.dtype)
    assert sum(len(v) > 1 for v in by_key.values()) >= 200


def test_reference_adapter_passes_every_shipped_case(cases: list) -> None:
    from conformance.adapters.reference import ReferenceAdapter

    from conformance.verdicts.evaluate import ReferenceCache, evaluate

    adapter = ReferenceAdapter()
    adapter.setup()
    cache = ReferenceCache()
    verdicts = Counter()
    failures = []
    # Every small-tier case, and the first case of each kernel-scale family (the default and
    # large tiers whole would take minutes and gigabytes: they are benchmarks, not tests).
    firsts = {c.family: c for c in reversed(cases) if c.tier == "default"}
    cases = [c for c in cases if c.tier == "small"] + list(firsts.values())
    for case in cases:
        record = evaluate(adapter, case, "cpu", cache)
        verdicts[record["verdict"]] += 1
        if record["verdict"] != "pass":
            failures.append(f"{case.id}: {record['verdict']} {record['message']}")
    assert not failures, "\n".join(failures[:20])
    assert verdicts["pass"] == len(cases)


# --- the JSON Schema ------------------------------------------------------------------------

jsonschema = pytest.importorskip("jsonschema")


@pytest.fixture(scope="module")
def validator():  # noqa: ANN201 - jsonschema's validator class
    from conformance.spec.schema import SCHEMA_PATH

    schema = json.loads(SCHEMA_PATH.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def test_schema_is_versioned_and_current() -> None:
    from conformance.spec.schema import SCHEMA_PATH, build_schema, render

    schema = json.loads(SCHEMA_PATH.read_text())
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"].endswith(":v1")
    assert SCHEMA_PATH.read_text() == render(), "run: python -m conformance.spec.schema"
    assert schema == build_schema()


@pytest.mark.parametrize("path", SPEC_FILES, ids=lambda p: p.stem)
def test_every_shipped_spec_validates(path: Path, validator) -> None:  # noqa: ANN001
    errors = [e.message for e in validator.iter_errors(load_yaml_file(path))]
    assert not errors


# Malformed specs that are valid YAML and wrong in a way a schema can see.
SCHEMA_REJECTS = (
    "unknown-case-key", "unknown-shape-key", "unknown-mask-key", "unknown-file-key",
    "unknown-defaults-key", "unknown-decode-key", "type-num-heads-text", "type-key-dim-float",
    "type-batch-bool", "type-dtype-number", "type-mode-misspelt", "type-shape-list",
    "type-mask-text", "type-causal-unknown", "type-key-padding-scalar", "type-density-range",
    "type-density-missing", "type-scale-text", "type-compare-text", "type-compare-misspelt",
    "type-seed-negative", "type-description-list", "type-version-2", "type-version-bool",
    "type-family-spaces", "type-matrix-scalar", "type-matrix-empty", "type-window-three",
    "type-masked-rows-flat", "type-decode-steps-zero", "type-name-spaces", "type-name-missing",
    "type-defaults-list", "type-policy-unknown", "cases-empty-list", "cases-null",
    "case-not-mapping", "no-cases-key", "shape-query-len-zero", "shape-axes-empty",
    "contra-compare-twice", "top-level-list", "top-level-scalar",
)  # fmt: skip


@pytest.mark.parametrize("name", SCHEMA_REJECTS)
def test_schema_rejects_malformed_specs(name: str, validator) -> None:  # noqa: ANN001
    data = load_yaml_file(CORPUS / f"{name}.yaml")
    assert list(validator.iter_errors(data)), f"the schema accepts {name}"
    with pytest.raises(SpecError):  # and so does the loader, with a located message
        load_spec(CORPUS / f"{name}.yaml")


def test_schema_accepts_parameter_references(validator) -> None:  # noqa: ANN001
    doc = {
        "cases": [
            {
                "name": "c-${align}",
                "mode": "$mode",
                "shape": {"query_len": "$T", "num_heads": 2, "key_dim": "${K}"},
                "mask": {"causal": "$align", "random": {"density": "$d"}},
                "dtype": "$dtype",
                "matrix": {
                    "align": ["top-left"],
                    "mode": ["kernel"],
                    "T": [4],
                    "K": [2],
                    "d": [0.1],
                    "dtype": ["float32"],
                },  # fmt: skip
            }
        ]
    }
    assert not list(validator.iter_errors(doc))
    doc["cases"][0]["shape"]["query_len"] = "T"
    assert list(validator.iter_errors(doc))


# --- the spec language ----------------------------------------------------------------------


def test_matrix_expands_into_readable_ids(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "family: masks\ncases:\n  - name: causal-${align}\n    mode: kernel\n"
        "    shape: {batch: 2, query_len: $T, kv_len: $S, num_heads: 4, key_dim: 8}\n"
        "    mask: {causal: $align}\n"
        "    matrix:\n      align: [top-left, bottom-right]\n      T: [5]\n      S: [7]\n"
        "      dtype: [float32, float64]\n",
    )
    got = [c.id for c in load_spec(path)]
    assert got == [
        "masks/causal-top-left[T=5,S=7,float32]",
        "masks/causal-top-left[T=5,S=7,float64]",
        "masks/causal-bottom-right[T=5,S=7,float32]",
        "masks/causal-bottom-right[T=5,S=7,float64]",
    ]
    case = load_spec(path)[2]
    assert case.mask == Mask(causal="bottom-right")
    assert (case.shape.query_len, case.shape.kv_len, case.dtype) == (5, 7, "float32")


def test_case_key_parameter_applies_even_when_named_in_the_name(tmp_path: Path) -> None:
    """`mode` in a matrix sets the mode, also when the name says ${mode} (a fixed bug)."""
    path = write(
        tmp_path,
        "cases:\n  - name: x-${mode}\n    shape: {query_len: 4, key_dim: 2}\n"
        "    matrix: {mode: [kernel, layer], num_heads: [1, 2]}\n",
    )
    got = {c.id: (c.mode, c.shape.num_heads) for c in load_spec(path)}
    assert got == {
        "t/x-kernel[num_heads=1]": ("kernel", 1),
        "t/x-kernel[num_heads=2]": ("kernel", 2),
        "t/x-layer[num_heads=1]": ("layer", 1),
        "t/x-layer[num_heads=2]": ("layer", 2),
    }


def test_matrix_overrides_defaults_but_not_the_case(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "defaults: {mode: kernel, dtype: float64, shape: {num_heads: 2, key_dim: 2}}\n"
        "cases:\n  - name: a\n    shape: {query_len: 3}\n    matrix: {dtype: [float16]}\n",
    )
    (case,) = load_spec(path)
    assert (case.mode, case.dtype, case.shape.num_heads, case.shape.query_len) == (
        "kernel", "float16", 2, 3,
    )  # fmt: skip


def test_defaults_merge_shape_and_mask(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "defaults:\n  mode: kernel\n  shape: {batch: 1, num_heads: 2, key_dim: 2}\n"
        "  mask: {causal: top-left}\n"
        "cases:\n  - name: a\n    shape: {query_len: 3}\n    mask: {key_padding: [2]}\n",
    )
    (case,) = load_spec(path)
    assert case.mask == Mask(causal="top-left", key_padding=(2,))
    assert case.shape.batch == 1 and case.shape.query_len == 3


def test_layer_defaults_and_cross_inference(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "cases:\n  - name: self\n    shape: {query_len: 3, num_heads: 2, key_dim: 4}\n"
        "  - name: cross\n    shape: {query_len: 3, kv_len: 5, num_heads: 2, key_dim: 4}\n",
    )
    self_case, cross_case = load_spec(path)
    s = self_case.shape
    assert (s.batch, s.kv_len, s.num_kv_heads, s.value_dim) == (2, 3, 2, 4)
    assert (s.query_dim, s.key_input_dim, s.value_input_dim, s.output_dim) == (8, 8, 8, 8)
    assert self_case.self_attention and not cross_case.self_attention
    assert self_case.mode == "layer" and self_case.dtype == "float32"


def test_multi_axis_lengths_are_derived(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "cases:\n  - name: m\n    shape: {query_shape: [5, 3, 4], kv_shape: [5, 2, 4],"
        " attention_axes: [2, 3], num_heads: 2, key_dim: 4}\n",
    )
    (case,) = load_spec(path)
    assert (case.shape.query_len, case.shape.kv_len, case.shape.outer) == (12, 8, (5,))


def test_decode_implies_causal(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "cases:\n  - name: d\n    shape: {query_len: 5, num_heads: 2, key_dim: 2}\n"
        "    decode: {prefix: 2, steps: 3}\n",
    )
    (case,) = load_spec(path)
    assert case.mask == Mask(causal="top-left") and case.decode.prefix == 2


def test_dates_and_yes_no_stay_plain_data(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "description: written 2024-05-01\ncases:\n  - name: a\n"
        "    description: 2001-02-30\n    shape: {query_len: 2, num_heads: 1, key_dim: 2}\n",
    )
    (case,) = load_spec(path)
    assert case.description == "2001-02-30"


def test_utf8_bom_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "bom.yaml"
    path.write_bytes(
        b"\xef\xbb\xbfcases:\n  - name: a\n    shape: {query_len: 2, num_heads: 1, key_dim: 2}\n"
    )
    assert [c.id for c in load_spec(path)] == ["bom/a"]


def test_anchors_within_limits_are_fine(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "cases:\n  - name: a\n    shape: &s {query_len: 2, num_heads: 1, key_dim: 2}\n"
        "  - name: b\n    shape: *s\n",
    )
    assert [c.shape for c in load_spec(path)][0] == load_spec(path)[1].shape


def test_error_names_file_line_and_key(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "cases:\n  - name: a\n    shape:\n      query_len: 4\n      num_heads: 2\n"
        "      key_dimm: 4\n",
    )
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert str(info.value) == (
        f"{path}:6: 'key_dimm': unknown shape key\n  hint: did you mean 'key_dim'?"
    )
