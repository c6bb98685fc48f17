"""The hand port of Keras's MultiHeadAttention tests (`conformance import keras`).

Keras: the cases of keras/src/layers/attention/multi_head_attention_test.py are ported by
hand in _keras_cases below (each names its Keras test); `conformance import keras` checks the
installed test file still holds those tests, writes specs/keras_ported.yaml and lists the
tests that are not ported, with the reason.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from pathlib import Path
from typing import Any

import numpy as np

from .spec_writing import _relative, render_spec

KERAS_TEST_FILE = "keras/src/layers/attention/multi_head_attention_test.py"


# Ported cases whose Keras test passes a key input of its own (all other cross cases: key=value)
KERAS_OWN_KEY = {
    "output-shape-with-key",
    "output-shape-high-dim",
    "output-shape-different-qv-dims",
    "correctness",
}


def _keras_cases() -> list[dict]:
    """The hand port: (Keras test, parameters) -> spec entries. Shapes as in the Keras test."""
    C: list[dict] = []

    def add(test: str, name: str, what: str, **entry: Any) -> None:
        layer_cross = entry.get("mode") != "kernel" and (
            entry.get("cross") or "kv_len" in entry["shape"] or "kv_shape" in entry["shape"]
        )
        if layer_cross and name not in KERAS_OWN_KEY:
            what += " (Keras passes no key, so key = value; here the key is an input of its own)"
        C.append({"name": name, "description": f"Keras {test}: {what}", **entry})

    add("test_basics (1st layer test)", "basics", "query [2, 8, 16], value [2, 4, 16], 2 heads of key_dim 2 (cross-attention, S < T)",
        shape={"batch": 2, "query_len": 8, "kv_len": 4, "num_heads": 2, "key_dim": 2, "query_dim": 16})  # fmt: skip
    add("test_basics (2nd layer test)", "basics-value-dim-no-bias-dropout", "value_dim 4, use_bias=False, dropout 0.5 (run in inference mode: no dropout may show)",
        shape={"batch": 2, "query_len": 8, "kv_len": 4, "num_heads": 2, "key_dim": 2, "value_dim": 4, "query_dim": 16},
        bias=False, dropout={"rate": 0.5})  # fmt: skip
    add("test_basics_with_flash_attention", "basics-float16", "the flash-attention layer test's shapes in float16 (key_dim 8); whether a fused path runs is the adapter variant's business",
        dtype="float16", shape={"batch": 2, "query_len": 8, "kv_len": 4, "num_heads": 2, "key_dim": 8, "query_dim": 16})  # fmt: skip
    high_dim = [
        ("4d_inputs_1freebatch_mask2", [3, 4], [3, 2], [2]),
        ("4d_inputs_1freebatch_mask3", [3, 4], [3, 2], [2]),
        ("4d_inputs_1freebatch_mask4", [3, 4], [3, 2], [2]),
        ("4d_inputs_2d_attention", [3, 4], [3, 2], [1, 2]),
        ("5d_inputs_2d_attention", [5, 3, 4], [5, 3, 2], [2, 3]),
        ("5d_inputs_2d_attention_fullmask", [5, 3, 4], [5, 3, 2], [2, 3]),
    ]
    for label, qd, vd, axes in high_dim:
        add(f"test_high_dim_attention[{label}]", "high-dim-" + label.replace("_", "-"),
            f"query [3, {', '.join(map(str, qd))}, 8], value [3, {', '.join(map(str, vd))}, 8], attention_axes {axes} (the test's mask_dims argument is unused by its body)",
            shape={"batch": 3, "query_shape": qd, "kv_shape": vd, "attention_axes": axes, "num_heads": 2, "key_dim": 2, "query_dim": 8},
            cross=True)  # fmt: skip
    add("test_attention_axes_negative_indexing", "attention-axes-2", "x [2, 3, 8, 4], attention_axes=2 (= -2), self-attention",
        shape={"batch": 2, "query_shape": [3, 8], "attention_axes": [2], "num_heads": 2, "key_dim": 4, "query_dim": 4})  # fmt: skip
    add("test_compute_output_shape[without_key_same_proj]", "output-shape-without-key", "query [7, 4, 8], value [7, 2, 8], key = value (batch 7 shrunk to 2: shapes only)",
        shape={"batch": 2, "query_len": 4, "kv_len": 2, "num_heads": 2, "key_dim": 2, "query_dim": 8})  # fmt: skip
    add("test_compute_output_shape[with_key_same_proj]", "output-shape-with-key", "query [7, 4, 8], value [7, 2, 8], key [7, 2, 3]: a key input dim of its own (batch 7 shrunk to 2)",
        shape={"batch": 2, "query_len": 4, "kv_len": 2, "num_heads": 2, "key_dim": 2, "query_dim": 8, "key_input_dim": 3, "value_input_dim": 8})  # fmt: skip
    add("test_compute_output_shape[high_dim_same_proj]", "output-shape-high-dim", "query [7, 4, 2, 3, 8], value [7, 1, 1, 5, 8], key [7, 1, 1, 5, 2]: attention over all three inner axes (batch 7 shrunk to 2)",
        shape={"batch": 2, "query_shape": [4, 2, 3], "kv_shape": [1, 1, 5], "attention_axes": [1, 2, 3], "num_heads": 2, "key_dim": 2, "query_dim": 8, "key_input_dim": 2, "value_input_dim": 8})  # fmt: skip
    add("test_compute_output_shape[different_qv_last_dims]", "output-shape-different-qv-dims", "query [7, 4, 2, 3, 8], value [7, 4, 2, 3, 7], key [7, 4, 2, 3, 8] (batch 7 shrunk to 2)",
        shape={"batch": 2, "query_shape": [4, 2, 3], "attention_axes": [1, 2, 3], "num_heads": 2, "key_dim": 2, "query_dim": 8, "key_input_dim": 8, "value_input_dim": 7},
        cross=True)  # fmt: skip
    add("test_query_mask_propagation", "query-mask", "an Embedding(mask_zero) query mask [3, 5] (lengths 3, 5, 1) over an unmasked value [3, 3, 8]: padded query rows are fully masked",
        shape={"batch": 3, "query_len": 5, "kv_len": 3, "num_heads": 2, "key_dim": 2, "query_dim": 8},
        mask={"query_padding": [3, 5, 1]})  # fmt: skip
    for label, causal in (("causal", True), ("not_causal", False)):
        m = {"query_padding": [3, 5, 1], "key_padding": [2, 1, 3]}
        if causal:
            m["causal"] = "top-left"
        add(f"test_masking[{label}]", "masking-" + label.replace("_", "-"),
            "query mask lengths 3, 5, 1 and value mask lengths 2, 1, 3 (T = 5, S = 3)" + (", with use_causal_mask" if causal else "") + ": padded query rows are fully masked",
            shape={"batch": 3, "query_len": 5, "kv_len": 3, "num_heads": 2, "key_dim": 2, "query_dim": 8}, mask=m)  # fmt: skip
    add("test_masking_with_different_shapes", "mask-shape-t-s", "the (T, S) tril mask: x [2, 5, 8], 2 heads of key_dim 4, causal",
        shape={"batch": 2, "query_len": 5, "num_heads": 2, "key_dim": 4, "query_dim": 8}, mask={"causal": "top-left"})  # fmt: skip
    add("test_masking_with_different_shapes", "mask-shape-b-t-s", "a (B, T, S) mask: x [2, 5, 8], a boolean mask that differs per batch element",
        shape={"batch": 2, "query_len": 5, "num_heads": 2, "key_dim": 4, "query_dim": 8}, mask={"random": {"density": 0.3}})  # fmt: skip
    add("test_masking_with_different_shapes", "mask-shape-b-h-t-s", "a (B, H, T, S) mask: x [2, 5, 8], a boolean mask that differs per batch element and head",
        shape={"batch": 2, "query_len": 5, "num_heads": 2, "key_dim": 4, "query_dim": 8}, mask={"random": {"density": 0.3}, "per_head": True})  # fmt: skip
    add("test_sliding_window (causal)", "sliding-window-causal", "sliding_window=3 with use_causal_mask: each query sees itself and the 2 keys before (x [1, 6, 8]); weights compared",
        shape={"batch": 1, "query_len": 6, "num_heads": 2, "key_dim": 4, "query_dim": 8}, mask={"causal": "top-left", "window": [2, 0]}, compare=["output", "weights"])  # fmt: skip
    add("test_sliding_window (bidirectional)", "sliding-window-bidirectional", "sliding_window=3 without a causal mask: keys with |i - j| < 3 (x [1, 6, 8]); weights compared",
        shape={"batch": 1, "query_len": 6, "num_heads": 2, "key_dim": 4, "query_dim": 8}, mask={"window": [2, 2]}, compare=["output", "weights"])  # fmt: skip
    add("test_causal_only_fast_path", "causal-only", "use_causal_mask as the only mask (the layer's is_causal shortcut): x [2, 5, 8]",
        shape={"batch": 2, "query_len": 5, "num_heads": 2, "key_dim": 4, "query_dim": 8}, mask={"causal": "top-left"})  # fmt: skip
    add("test_causal_only_with_other_mask_falls_back", "causal-with-extra-mask", "use_causal_mask plus an explicit boolean mask [2, 5, 5]: both must apply (a seeded mask stands in for the test's single masked pair)",
        shape={"batch": 2, "query_len": 5, "num_heads": 2, "key_dim": 4, "query_dim": 8}, mask={"causal": "top-left", "random": {"density": 0.2}})  # fmt: skip
    for label, dropout, scores in (
        ("scores_only", 0.0, True),
        ("dropout_only", 0.1, False),
        ("dropout_and_scores", 0.1, True),
    ):
        entry: dict[str, Any] = {
            "shape": {"batch": 1, "query_len": 6, "num_heads": 2, "key_dim": 4, "query_dim": 8},
            "mask": {"causal": "top-left"},
        }
        if dropout:
            entry["dropout"] = {"rate": dropout}
        if scores:
            entry["compare"] = ["output", "weights"]
        add(f"test_causal_only_masks_when_fused_path_disabled[{label}]", "causal-fused-disabled-" + label.replace("_", "-"),
            "use_causal_mask, training=False, x [1, 6, 8]" + (", dropout 0.1 (inference: no dropout may show)" if dropout else "") + (", attention scores compared" if scores else ""),
            **entry)  # fmt: skip
    add("test_compute_attention_combines_causal_and_explicit_mask", "compute-attention-causal-and-mask", "_compute_attention on projected [1, 5, 2, 4] query/key/value with use_causal_mask and an explicit boolean mask (a seeded mask stands in for the test's single masked pair)",
        mode="kernel", shape={"batch": 1, "query_len": 5, "num_heads": 2, "key_dim": 4}, mask={"causal": "top-left", "random": {"density": 0.2}}, compare=["output", "weights"])  # fmt: skip
    add("test_correctness", "correctness", "float16, 8 heads of key_dim 8, identity query/key and kernels, value arange(64)/100 (rounded to float16, as the layer sees it); the Keras expectation (atol 1e-2) is stored",
        dtype="float16", shape={"batch": 1, "query_len": 8, "num_heads": 8, "key_dim": 8, "query_dim": 8}, cross=True,
        inputs="correctness", expected=["output", "weights"])  # fmt: skip
    for shape in ((1, 2, 3), (2, 3, 5)):
        add(f"test_symbolic_return_attention_scores[{shape}]", f"return-scores-{'x'.join(map(str, shape))}", f"x and y of shape {list(shape)}, 4 heads of key_dim 2, attention scores returned",
            shape={"batch": shape[0], "query_len": shape[1], "num_heads": 4, "key_dim": 2, "query_dim": shape[2]}, cross=True, compare=["output", "weights"])  # fmt: skip
    add("test_multi_head_attention_output_shape_as_int", "output-shape-int", "output_shape=8 from query/value [2, 4, 16], 2 heads of key_dim 16",
        shape={"batch": 2, "query_len": 4, "num_heads": 2, "key_dim": 16, "query_dim": 16, "output_dim": 8}, cross=True)  # fmt: skip
    return C


# Tests of the Keras file that are not ported, with the reason.
KERAS_NOT_PORTED = {
    "test_basics (use_gate layer tests)": "use_gate (a sigmoid gate on the output) is not in the case model",
    "test_high_dim_attention (use_gate)": "use_gate is not in the case model",
    "test_compute_output_shape[without_key_different_proj, with_key_different_proj, high_dim_different_proj]": "a multi-axis output_shape ((3, 4), (1, 5), (3, 2)) is not in the case model (output_dim is one size)",
    "test_shape_mismatch_error": "checks error messages for invalid shapes, not attention results",
    "test_invalid_scalar_args_rejected": "argument validation only",
    "test_initializer": "checks initializers, not attention results",
    "test_no_warning_with_keras_mask": "checks that no warning is emitted",
    "test_sliding_window_validation": "argument validation only",
    "test_sliding_window_serialization": "config round trip only",
    "test_causal_only_skipped_for_subclass": "a subclassing API contract",
    "test_causal_only_masks_non_4d_inputs": "a causal mask with attention_axes: the case model has no masks on multi-axis cases",
    "test_mha_constraints": "weight constraints only",
    "test_lora": "LoRA training and saving",
    "test_dtype_policy_map": "quantized dtype policies",
    "test_flash_attention_with_errors": "error messages for flash attention with dropout or scores",
    "test_multi_head_attention_output_shape_as_tuple": "a multi-axis output_shape is not in the case model",
    "test_multi_head_attention_output_shape_error": "argument validation only",
    "test_quantize_int8": "int8 quantization",
}


def _keras_correctness_arrays() -> dict[str, np.ndarray]:
    """test_correctness's inputs and expectations, in the canonical layout (see the test)."""
    from ..cases.dtypes import round_to

    key_dim = heads = 8
    eye = np.identity(key_dim)
    value = round_to(np.arange(key_dim * key_dim).reshape(1, key_dim, key_dim) / 100.0, "float16")
    kernel = np.repeat(eye[:, np.newaxis, :], heads, axis=1)  # Keras [d_in, H, K]
    w_in = kernel.transpose(1, 0, 2)  # canonical [H, D, K]
    expected_output = np.array([2.406, 2.440, 2.473, 2.504, 2.535, 2.568, 2.602, 2.633])
    expected_score = np.array([[0.1187] * i + [0.1691] + [0.1187] * (7 - i) for i in range(8)])
    return {
        "query": eye[None],
        "key": eye[None],
        "value": value,
        "wq": w_in,
        "wk": w_in,
        "wv": w_in,
        "wo": kernel,  # the output dense kernel is [H, V, Do]: set to the same array
        "bq": np.zeros((heads, key_dim)),
        "bk": np.zeros((heads, key_dim)),
        "bv": np.zeros((heads, key_dim)),
        "bo": np.zeros(key_dim),
        "expected.output": np.tile(expected_output[None, :, None], (1, 1, key_dim)),
        "expected.weights": np.tile(expected_score[None, None], (1, heads, 1, 1)),
    }


def keras_test_file() -> Path | None:
    """The installed Keras test file, found without importing Keras (the core imports no
    framework, and importing Keras costs seconds)."""
    spec = importlib.util.find_spec("keras")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / KERAS_TEST_FILE.removeprefix("keras/")
    return path if path.exists() else None


def write_keras(out: Path, data: Path) -> tuple[list[dict], list[str]]:
    """Write the Keras port; return its entries and the Keras tests no longer found."""
    entries = _keras_cases()
    rel = _relative(data, out.parent)
    arrays = {f"correctness/{k}": v for k, v in _keras_correctness_arrays().items()}
    for entry in entries:
        if entry.get("inputs") == "correctness":
            entry["inputs"] = f"{rel}#correctness"
            entry["expected"] = {n: f"{rel}#correctness/expected.{n}" for n in entry["expected"]}
    data.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(data, **arrays)
    missing = []
    version = "not installed"
    source = keras_test_file()
    if source is not None:
        version = importlib.metadata.version("keras")
        text = source.read_text()
        for entry in entries:
            test = entry["description"].removeprefix("Keras ").split(" ")[0].split("[")[0]
            test = test.rstrip(":")
            if f"def {test}(" not in text:
                missing.append(test)
    header = [
        f"Ported from keras {version}: {KERAS_TEST_FILE} by `conformance import keras`.",
        "Each case's description names the Keras test (and parameters) it came from. Not ported:",
        *(f"  {test}: {why}" for test, why in KERAS_NOT_PORTED.items()),
    ]
    description = (
        "Keras's own MultiHeadAttention tests as cases for every adapter that can express them: "
        "attention axes, mask shapes (T,S)/(B,T,S)/(B,H,T,S), causal and not, cross-attention "
        "with different key projections, high-dimensional inputs. Keras tests mostly check "
        "shapes or compare two Keras paths; here every case is checked against the reference."
    )
    out.write_text(render_spec(header, "keras_ported", description, entries))
    return entries, sorted(set(missing))
