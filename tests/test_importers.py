"""Imported peer suites: ONNX's Attention backend tests and the Keras MultiHeadAttention port.

The central check: our float64 reference agrees with ONNX's expected outputs on every
imported case (and with Keras's hand-written expectation), and the check can fail: a
mis-imported mask or alignment is caught. Then: cases use exactly their stored arrays, the
shipped spec files are what the importers write, loader errors for stored data, and a few
imported cases on real kernel adapters.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import numpy as np
import pytest

from conformance.cases.case import Mask
from conformance.cases.inputs import make_inputs, stored_array, stored_group
from conformance.errors import SpecError
from conformance.peers.importers import (
    KERAS_NOT_PORTED,
    ONNX_MASKED_ROWS,
    agreement,
    render_spec,
)
from conformance.spec import load_spec, shipped_specs_dir

SPECS = shipped_specs_dir()
ONNX_SPEC = SPECS / "onnx_imported.yaml"
KERAS_SPEC = SPECS / "keras_ported.yaml"


@pytest.fixture(scope="module")
def onnx_cases() -> list:
    return load_spec(ONNX_SPEC)


@pytest.fixture(scope="module")
def keras_cases() -> list:
    return load_spec(KERAS_SPEC)


def _onnx_version_in_header() -> str:
    match = re.search(r"Imported from onnx (\S+)", ONNX_SPEC.read_text())
    assert match, "the spec header names the onnx version it came from"
    return match.group(1)


# --- ONNX: the reference against ONNX's expected outputs ----------------------------------


def test_onnx_import_is_complete(onnx_cases: list) -> None:
    assert len(onnx_cases) >= 80
    header = ONNX_SPEC.read_text().split("version: 1")[0]
    skipped = re.findall(r"#   (test_\w+): (.*)", header)
    assert len(onnx_cases) >= 93 and not skipped, skipped  # softcap too, since issue 14
    for case in onnx_cases:
        assert case.mode == "kernel" and case.inputs and case.expected, case.id
        assert case.description.startswith("ONNX backend test test_attention"), case.id


def test_reference_agrees_with_onnx_on_every_imported_case(onnx_cases: list) -> None:
    disagree = []
    for case in onnx_cases:
        for name, result in agreement(case, masked_rows=ONNX_MASKED_ROWS).items():
            if not result["ok"]:
                disagree.append(f"{case.id} {name}: {result['summary']}")
    assert not disagree, "\n".join(disagree)  # a new one belongs in docs/peer-suites.md


def _by_test(cases: list, test: str):  # noqa: ANN202
    return next(c for c in cases if c.description.split()[3] == test)


def test_the_agreement_check_can_fail(onnx_cases: list) -> None:
    """Importing a mask or an alignment wrongly is caught by ONNX's expected outputs."""
    causal = _by_test(onnx_cases, "test_attention_4d_causal")  # T = 4 < S = 6: top-left
    assert causal.mask.causal == "top-left"
    flipped = dataclasses.replace(causal, mask=Mask(causal="bottom-right"))
    assert not agreement(flipped, masked_rows=ONNX_MASKED_ROWS)["output"]["ok"]
    for test in (
        "test_attention_4d_causal_nonpad_attn_mask_composition",
        "test_attention_4d_attn_mask",
    ):
        masked = _by_test(onnx_cases, test)  # a stored boolean mask, a stored float mask
        unmasked = dataclasses.replace(masked, mask=Mask(key_padding=masked.mask.key_padding))
        assert not agreement(unmasked, masked_rows=ONNX_MASKED_ROWS)["output"]["ok"], test
    # ONNX's zeros for fully masked rows are not the library's NaN expectation
    empty = _by_test(onnx_cases, "test_attention_causal_boolmask_nan_robustness")
    assert "fully-masked-rows" in empty.features and empty.mask.fully_masked_rows == "nan"
    assert agreement(empty, masked_rows="zeros")["output"]["ok"]
    assert not agreement(empty)["output"]["ok"]


def test_onnx_boolean_mask_tests_mask_nothing(onnx_cases: list) -> None:
    """A finding (docs/peer-suites.md): these two ONNX tests pass an all-True boolean mask,
    so they cannot tell an implementation that ignores boolean masks from a correct one."""
    for test in ("test_attention_4d_attn_mask_bool", "test_attention_4d_attn_mask_bool_4d"):
        case = _by_test(onnx_cases, test)
        assert stored_group(case.inputs)["mask.attend"].all(), test
        unmasked = dataclasses.replace(case, mask=Mask(), inputs=case.inputs)
        assert agreement(unmasked)["output"]["ok"], test


def test_mapping_of_onnx_features(onnx_cases: list) -> None:
    by = {c.description.split()[3]: c for c in onnx_cases}
    assert by["test_attention_4d_gqa"].shape.num_kv_heads == 3
    assert by["test_attention_4d_gqa"].shape.num_heads == 9
    assert by["test_attention_4d_scaled"].scale == float(np.float32(0.01))
    assert by["test_attention_4d_causal_with_past_and_present"].mask.causal == "bottom-right"
    assert by["test_attention_4d_diff_heads_mask4d_padded_kv"].mask.key_padding == (3, 4)
    assert by["test_attention_local_window"].mask.window is not None
    assert by["test_attention_4d_causal_bf16"].dtype == "bfloat16"
    assert by["test_attention_3d"].shape.num_heads == 3  # split from [B, L, H*d]
    assert set(by["test_attention_4d_with_qk_matmul_softmax"].compare) == {"output", "weights"}
    partial = by["test_attention_4d_with_qk_matmul"]
    assert partial.compare == ("output",) and "not compared" in partial.description
    with_past = by["test_attention_4d_with_past_and_present"]
    assert with_past.shape.kv_len == 18 and "present_key" in with_past.description


def test_cases_use_exactly_their_stored_arrays(onnx_cases: list) -> None:
    case = _by_test(onnx_cases, "test_attention_4d_attn_mask_bool")
    inputs = make_inputs(case)
    group = stored_group(case.inputs)
    for name in ("q", "k", "v"):
        np.testing.assert_array_equal(inputs.arrays[name], group[name])
    generated = make_inputs(dataclasses.replace(case, inputs=None))
    assert not np.array_equal(generated.arrays["q"], inputs.arrays["q"])
    from conformance.cases.masks import build_mask

    attend, bias = build_mask(case)
    np.testing.assert_array_equal(attend, group["mask.attend"].astype(bool))
    assert bias is None


def test_stored_low_precision_inputs_are_exact(onnx_cases: list) -> None:
    from conformance.cases.dtypes import round_to

    for case in onnx_cases:
        if case.dtype in ("float16", "bfloat16"):
            q = make_inputs(case).arrays["q"]
            np.testing.assert_array_equal(round_to(q, case.dtype), q)


# --- the shipped files are what the importers write ----------------------------------------


def test_onnx_spec_is_what_the_importer_writes(tmp_path: Path) -> None:
    onnx = pytest.importorskip("onnx")
    if onnx.__version__ != _onnx_version_in_header():
        pytest.skip(f"the spec came from onnx {_onnx_version_in_header()}, {onnx.__version__} here")
    from conformance.cli import main

    out = tmp_path / "onnx_imported.yaml"
    assert main(["import", "onnx", "--out", str(out)]) == 0
    assert out.read_text() == ONNX_SPEC.read_text()
    fresh = np.load(tmp_path / "data" / "onnx_attention.npz")
    shipped = np.load(SPECS / "data" / "onnx_attention.npz")
    assert sorted(fresh.files) == sorted(shipped.files)
    for name in shipped.files:
        np.testing.assert_array_equal(fresh[name], shipped[name], err_msg=name)


def test_keras_spec_is_what_the_importer_writes(tmp_path: Path) -> None:
    from conformance.peers.importers import write_keras

    out = tmp_path / "keras_ported.yaml"
    write_keras(out, tmp_path / "data" / "keras_attention.npz")
    strip = re.compile(r"^# Ported from keras \S+", re.M)  # the version line may differ
    assert strip.sub("", out.read_text()) == strip.sub("", KERAS_SPEC.read_text())


# --- Keras port ------------------------------------------------------------------------------


def test_keras_port_names_its_tests(keras_cases: list) -> None:
    assert len(keras_cases) >= 25
    for case in keras_cases:
        assert case.description.startswith("Keras test_"), case.id
    features = set().union(*(c.features for c in keras_cases))
    assert {"multi-axis", "causal", "cross-attention", "kv-input-dims", "per-head-mask",
            "bool-mask", "query-padding", "key-padding", "window", "dropout"} <= features  # fmt: skip


def test_keras_tests_exist_in_the_installed_keras(keras_cases: list) -> None:
    pytest.importorskip("keras")
    from conformance.peers.importers import keras_test_file

    source = keras_test_file()
    if source is None:
        pytest.skip("this keras ships no test files")
    text = source.read_text()
    for case in keras_cases:
        test = re.match(r"Keras (test_\w+)", case.description).group(1)
        assert f"def {test}(" in text, test
    for entry in KERAS_NOT_PORTED:
        assert f"def {entry.split()[0].split('[')[0]}(" in text, entry


def test_reference_agrees_with_keras_test_correctness(keras_cases: list) -> None:
    case = next(c for c in keras_cases if c.name == "correctness")
    result = agreement(case, atol=1e-2)  # Keras's own assertAllClose(atol=1e-2)
    assert result["output"]["ok"] and result["weights"]["ok"], result
    assert stored_array(case.expected["output"]).shape == (1, 8, 8)


# --- loader errors for stored data ----------------------------------------------------------


def _spec(tmp_path: Path, case: str) -> Path:
    data = tmp_path / "d.npz"
    rng = np.random.default_rng(0)
    np.savez(
        data,
        **{
            "c/q": rng.standard_normal((1, 2, 3, 4)).astype(np.float32).astype(np.float64),
            "c/k": rng.standard_normal((1, 2, 3, 4)).astype(np.float32).astype(np.float64),
            "c/v": rng.standard_normal((1, 2, 3, 4)).astype(np.float32).astype(np.float64),
            "c/mask.attend": np.ones((1, 1, 3, 3), dtype=bool),
            "c/out": np.zeros((1, 2, 3, 4)),
        },
    )
    path = tmp_path / "s.yaml"
    path.write_text(
        "cases:\n  - name: c\n    mode: kernel\n    shape: {batch: 1, query_len: 3, "
        "num_heads: 2, key_dim: 4}\n" + case
    )
    return path


def test_stored_data_is_checked_when_loading(tmp_path: Path) -> None:
    ok = _spec(tmp_path, "    inputs: d.npz#c\n    mask: {random: {density: 0.0}}\n"
                         "    expected: {output: d.npz#c/out}\n")  # fmt: skip
    (case,) = load_spec(ok)
    assert case.inputs.endswith("d.npz#c") and case.expected["output"].endswith("d.npz#c/out")
    for text, message in (
        ("    inputs: d.npz#c\n", "stored 'mask.attend' and the mask keys disagree"),
        ("    inputs: missing.npz#c\n", "no such data file"),
        ("    inputs: d.npz\n", "must be 'file.npz#name'"),
        ("    inputs: d.npz#nothing\n", "no arrays under"),
        ("    inputs: d.npz#c\n    mask: {random: {density: 0.0}}\n    dtype: float16\n",
         "not exact in float16"),
        ("    expected: {output: d.npz#c/none}\n", "has no array"),
        ("    expected: {logits: d.npz#c/out}\n", "is not one of"),
    ):  # fmt: skip
        with pytest.raises(SpecError, match=message):
            load_spec(_spec(tmp_path, text))


def test_render_spec_is_valid_yaml(tmp_path: Path) -> None:
    text = render_spec(["h"], "fam", "d", [{"name": "x", "mode": "kernel", "shape": {
        "query_len": 2, "num_heads": 1, "key_dim": 2}, "description": "a: b # c"}])  # fmt: skip
    (tmp_path / "fam.yaml").write_text(text)
    (case,) = load_spec(tmp_path / "fam.yaml")
    assert case.description == "a: b # c"


# --- imported cases on real kernel adapters ---------------------------------------------------


@pytest.mark.parametrize(
    "adapter_name", ["torch.sdpa.math", "onnx.attention.4d", "onnx.attention.opset24"]
)
def test_imported_cases_run_on_kernel_adapters(onnx_cases: list, adapter_name: str) -> None:
    module = "torch" if adapter_name.startswith("torch") else "onnxruntime"
    pytest.importorskip(module)
    from conformance.adapter_api.registry import load_target, resolve
    from conformance.verdicts.evaluate import ReferenceCache, evaluate

    entry = next(e for e in resolve([adapter_name]) if e.name == adapter_name)
    adapter = load_target(entry.target)()
    adapter.setup()
    cache = ReferenceCache()
    picked = [
        c for c in onnx_cases
        if c.dtype == "float32" and not {"fully-masked-rows", "window"} & c.features
    ][:12]  # fmt: skip
    verdicts = {c.id: evaluate(adapter, c, "cpu", cache)["verdict"] for c in picked}
    assert set(verdicts.values()) <= {"pass", "unsupported"}, verdicts
    assert sum(v == "pass" for v in verdicts.values()) >= 8, verdicts


def test_results_store_stored_arrays_without_machine_paths(
    onnx_cases: list, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Results name the shipped data `specs/data/...`, not this machine's checkout, and
    inputs built from such a record in another folder are the same arrays."""
    from conformance.cases.case import Case
    from conformance.paths import portable_case_dict

    case = next(c for c in onnx_cases if c.expected)
    record = portable_case_dict(case.to_dict())
    assert record["inputs"].startswith("specs/data/onnx_attention.npz#"), record["inputs"]
    assert all(v.startswith("specs/data/") for v in record["expected"].values())
    assert str(SPECS) not in repr(record)
    monkeypatch.chdir(tmp_path)
    again = make_inputs(Case.from_dict(record))
    original = make_inputs(case)
    assert again.arrays.keys() == original.arrays.keys()
    for name, value in original.arrays.items():
        np.testing.assert_array_equal(again.arrays[name], value)
    np.testing.assert_array_equal(
        stored_array(next(iter(record["expected"].values()))),
        stored_array(next(iter(case.expected.values()))),
    )
