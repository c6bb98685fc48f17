"""`conformance import onnx|keras`: peer test suites turned into ordinary spec files.

ONNX: `onnx.backend.test.case.node.collect_testcases("Attention")` builds the Attention
operator's own backend tests in memory (inputs, attributes, and expected outputs computed by
onnx/reference/ops/op_attention.py). Every case our case model can express becomes a
kernel-mode case that carries its own arrays (`inputs: data/onnx_attention.npz#<test>`) and
ONNX's expected outputs (`expected:`); the rest are listed with the reason. The `_expanded`
twins (the same test run through the operator's function body) share their inputs and
outputs and are not imported twice.

How ONNX semantics map onto the case model (from op_attention.py of the installed onnx):
- 3-D inputs [B, L, heads * d] are split into heads exactly as the op does (reshape, then
  transpose to [B, heads, L, d]); outputs are converted back the same way.
- past_key/past_value are concatenated in front of K/V (the op's present_key/value): the
  case sees the full S; the present outputs (that concatenation) are not compared.
- is_causal is aligned at offset = past length (or nonpad_kv_seqlen[b] - T, or 0): offset 0
  is `causal: top-left`, offset S - T is `bottom-right`; any other (or per-batch) offset is
  folded into a stored boolean mask. The sliding window (left/right_window_size, -1 =
  unbounded) maps onto `window` the same way.
- attn_mask: boolean -> stored `mask.attend` (`random`), float -> stored `mask.bias`
  (`additive` for its -inf share, `bias` for finite values); masks shorter than S are padded
  with False / -inf, as the op does; every stored mask is broadcast to [B, 1|H, T, S].
- nonpad_kv_seqlen -> `key_padding`.
- A query row with no visible key yields zeros in ONNX (ONNX_MASKED_ROWS). The cases keep
  the library-wide expectation for such rows (NaN, see fully_masked.yaml), so the divergences
  adapters declare apply here as everywhere; the reference is checked against ONNX's
  expected outputs under ONNX's own policy.
- qk_matmul_output_mode 3 (the softmax) is compared as `weights`; modes 0-2 expose
  pre-softmax scores, which the case model does not compare: those cases compare the output
  only and say so. softmax_precision changes precision, not semantics: ignored.
- softcap: the case model's `scores.softcap` (conformance/cases/score_terms.py, issue 14).

Keras: the cases of keras/src/layers/attention/multi_head_attention_test.py are ported by
hand in PORTED_KERAS below (each names its Keras test); `conformance import keras` checks the
installed test file still holds those tests, writes specs/keras_ported.yaml and lists the
tests that are not ported, with the reason.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UsageError
from ..spec import shipped_specs_dir

SCHEMA_LINE = "# yaml-language-server: $schema=../conformance/schema/spec.schema.json"
ONNX_SPEC = "onnx_imported.yaml"
ONNX_DATA = "data/onnx_attention.npz"
KERAS_SPEC = "keras_ported.yaml"
KERAS_DATA = "data/keras_attention.npz"
# op_attention.py: "a fully-masked row ... by convention softmaxes to all-zero probabilities"
ONNX_MASKED_ROWS = "zeros"


# --- ONNX ------------------------------------------------------------------------------------


@dataclass
class Imported:
    """One imported peer-suite case: its spec entry, its arrays, and what was left out."""

    test: str  # the peer suite's test name
    entry: dict[str, Any]  # the spec case (keys as in a spec file)
    arrays: dict[str, np.ndarray]  # npz members relative to the case's group
    left_out: list[str] = field(default_factory=list)  # parts of the test not compared


@dataclass
class Skipped:
    test: str
    reason: str


def _f64(x: Any) -> np.ndarray:
    return np.asarray(x).astype(np.float64)


def _dtype_name(x: np.ndarray) -> str:
    name = str(np.asarray(x).dtype)
    if name not in ("float32", "float16", "bfloat16", "float64"):
        raise ValueError(f"unsupported dtype {name}")
    return name


def _heads(x: np.ndarray, heads: int) -> np.ndarray:
    """ONNX 3-D [B, L, heads * d] -> [B, heads, L, d] (reshape then transpose, as the op)."""
    b, n, hidden = x.shape
    return x.reshape(b, n, heads, hidden // heads).transpose(0, 2, 1, 3)


def _attributes(node: Any) -> dict[str, Any]:
    import onnx

    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _band(t: int, s: int, offset: np.ndarray, left: int, right: int) -> np.ndarray:
    """ONNX's causal/window band [B|1, T, S] for per-batch (or scalar) offsets."""
    i = np.arange(t)[None, :, None]
    j = np.arange(s)[None, None, :]
    diff = i + np.reshape(offset, (-1, 1, 1)) - j
    allowed = np.ones(diff.shape, dtype=bool)
    if left >= 0:
        allowed &= diff <= left
    if right >= 0:
        allowed &= -diff <= right
    return allowed


def convert_onnx(test: Any) -> Imported | Skipped:
    """One ONNX backend test case -> an Imported kernel-mode case, or why it cannot be."""
    name = test.name
    graph = test.model.graph
    nodes = [n for n in graph.node if n.op_type == "Attention"]
    if len(nodes) != 1:
        return Skipped(name, "not a single Attention node")
    node = nodes[0]
    attrs = _attributes(node)
    opset = max(o.version for o in test.model.opset_import if o.domain in ("", "ai.onnx"))
    if len(test.data_sets) != 1:
        return Skipped(name, f"{len(test.data_sets)} data sets (one expected)")
    raw_inputs, raw_outputs = test.data_sets[0]
    # data sets follow the graph's inputs; the node names them by slot ("" = absent)
    feeds = {i.name: x for i, x in zip(graph.input, raw_inputs, strict=True)}
    slots = ["Q", "K", "V", "attn_mask", "past_key", "past_value", "nonpad_kv_seqlen"]
    by_slot = {slot: feeds[n] for slot, n in zip(slots, node.input, strict=False) if n}
    results = {o.name: x for o, x in zip(graph.output, raw_outputs, strict=True)}
    out_slots = ["Y", "present_key", "present_value", "qk_matmul_output"]
    outs = {slot: results[n] for slot, n in zip(out_slots, node.output, strict=False) if n}

    softcap = float(attrs.get("softcap", 0.0))
    try:
        dtype = _dtype_name(by_slot["Q"])
    except ValueError as error:
        return Skipped(name, str(error))
    q, k, v = (_f64(by_slot[s]) for s in ("Q", "K", "V"))
    three_d = q.ndim == 3
    if three_d:
        h, g = int(attrs["q_num_heads"]), int(attrs["kv_num_heads"])
        q, k, v = _heads(q, h), _heads(k, g), _heads(v, g)
    b, h, t, kd = q.shape
    g = k.shape[1]
    past = by_slot.get("past_key")
    past_len = 0
    if past is not None:
        past_len = past.shape[2]
        k = np.concatenate([_f64(past), k], axis=2)
        v = np.concatenate([_f64(by_slot["past_value"]), v], axis=2)
    s, vd = k.shape[2], v.shape[3]
    notes: list[str] = []
    left_out: list[str] = []
    if past is not None:
        notes.append(f"past_key/past_value ({past_len} positions) concatenated before K/V")
        left_out.append("present_key/present_value (the concatenated cache) not compared")
    if "softmax_precision" in attrs:
        notes.append(f"softmax_precision={attrs['softmax_precision']} (precision only)")

    # --- masks -----------------------------------------------------------------------------
    nonpad = by_slot.get("nonpad_kv_seqlen")
    causal = bool(attrs.get("is_causal", 0))
    left = int(attrs.get("left_window_size", -1))
    right = int(attrs.get("right_window_size", -1))
    windowed = left >= 0 or right >= 0
    if nonpad is not None and past is None:
        offset = np.asarray(nonpad, dtype=np.int64).reshape(-1) - t
    else:
        offset = np.asarray([past_len])
    mask: dict[str, Any] = {}
    attend = np.ones((b, 1, t, s), dtype=bool)
    folded = False
    uniform = bool((offset == offset[0]).all())
    alignment = None
    if uniform and offset[0] == 0:
        alignment = "top-left"
    elif uniform and offset[0] == s - t:
        alignment = "bottom-right"
    if causal:
        if alignment:
            mask["causal"] = alignment
        else:
            attend &= _band(t, s, offset, -1, 0)[:, None]
            folded = True
            notes.append(f"causal at offset {offset.tolist()} (neither alignment): stored mask")
    if windowed:
        big = s + t  # -1 (unbounded) as a bound no position exceeds
        # Our window is centred at masks.causal_offset(case): S - T under a bottom-right
        # causal mask, else 0. ONNX's is centred at `offset`.
        centre = s - t if mask.get("causal") == "bottom-right" else 0
        if uniform and not (causal and "causal" not in mask) and offset[0] == centre:
            mask["window"] = [left if left >= 0 else big, right if right >= 0 else big]
        else:
            attend &= _band(t, s, offset, left, right)[:, None]
            folded = True
            notes.append(f"window at offset {offset.tolist()}: stored mask")
    if nonpad is not None:
        mask["key_padding"] = [int(x) for x in np.asarray(nonpad).reshape(-1)]
    bias = None
    raw_mask = by_slot.get("attn_mask")
    if raw_mask is not None:
        am = np.asarray(raw_mask)
        pad = s - am.shape[-1]
        if pad > 0:  # the op pads a short mask with False / -inf
            widths = [(0, 0)] * (am.ndim - 1) + [(0, pad)]
            am = np.pad(am, widths, constant_values=False if am.dtype == bool else -np.inf)
            notes.append(f"attn_mask padded from {s - pad} to {s} keys (False / -inf)")
        full = np.broadcast_to(am, (b, h, t, s))
        if am.dtype == bool:
            attend = attend & full
            folded = True
        else:
            bias = _f64(full)
    stored: dict[str, np.ndarray] = {}
    per_head = bool(
        (folded and not (attend == attend[:, :1]).all())
        or (bias is not None and not (bias == bias[:, :1]).all())
    )
    heads_axis = h if per_head else 1
    if folded:
        stored["mask.attend"] = np.broadcast_to(attend, (b, h, t, s))[:, :heads_axis].copy()
        mask["random"] = {"density": round(float(1 - stored["mask.attend"].mean()), 4)}
    if bias is not None:
        stored["mask.bias"] = bias[:, :heads_axis].copy()
        neg = np.isneginf(bias)
        if neg.any():
            mask["additive"] = {"density": round(float(neg.mean()), 4)}
        finite = bias[np.isfinite(bias)]
        if (finite != 0).any() or not neg.any():  # an all-zero float mask is still a bias
            mask["bias"] = {"scale": round(float(finite.std()), 4)}
    if per_head:
        mask["per_head"] = True

    # --- outputs ---------------------------------------------------------------------------
    y = _f64(outs["Y"])
    if three_d:
        y = _heads(y, h)
    arrays = {"q": q, "k": k, "v": v, **stored, "expected.output": y}
    compare = ["output"]
    mode = int(attrs.get("qk_matmul_output_mode", 0))
    if "qk_matmul_output" in outs:
        if mode == 3:
            arrays["expected.weights"] = _f64(outs["qk_matmul_output"])
            compare.append("weights")
        else:
            what = {0: "raw Q K^T", 1: "after softcap", 2: "Q K^T + softcap + mask"}[mode]
            left_out.append(
                f"qk_matmul_output (mode {mode}: {what}, before softmax) not compared: the case "
                "model compares softmax weights only"
            )
    entry: dict[str, Any] = {
        "name": name.removeprefix("test_").replace("_", "-"),
        "description": "",
        "mode": "kernel",
        "dtype": dtype,
        "shape": {"batch": b, "query_len": t, "kv_len": s, "num_heads": h, "key_dim": kd},
    }
    if g != h:
        entry["shape"]["num_kv_heads"] = g
    if vd != kd:
        entry["shape"]["value_dim"] = vd
    if "scale" in attrs:
        entry["scale"] = float(np.float32(attrs["scale"]))  # the op reads a float32 attribute
    if softcap > 0:  # issue 14: the case model's scores.softcap (conformance/cases/score_terms.py)
        entry["scores"] = {"softcap": softcap}
    imported = Imported(name, entry, arrays, left_out)
    if _has_empty_rows(attend, bias, mask, b, t, s):
        # The case keeps the library's expectation (NaN) so every adapter's declared
        # divergences apply as everywhere else; ONNX's zeros are its stored expected output.
        notes.append("fully masked rows (ONNX yields zeros there)")
    if mask:
        entry["mask"] = mask
    if compare != ["output"]:
        entry["compare"] = compare
    layout = "3-D [B, L, heads*d]" if three_d else "4-D"
    extra = "; ".join(notes + left_out)
    entry["description"] = f"ONNX backend test {name} (opset {opset}, {layout} inputs)" + (
        f": {extra}" if extra else ""
    )
    return imported


def _has_empty_rows(attend, bias, mask, b: int, t: int, s: int) -> bool:  # noqa: ANN001
    """Whether some query row sees no key once every mask part is applied."""
    seen = np.broadcast_to(attend, (b, attend.shape[1], t, s)).copy()
    if bias is not None:
        seen = seen & np.isfinite(bias)
    i = np.arange(t)[:, None]
    j = np.arange(s)[None, :]
    off = s - t if mask.get("causal") == "bottom-right" else 0
    if mask.get("causal"):
        seen = seen & (j <= i + off)
    if "window" in mask:
        lo, hi = mask["window"]
        seen = seen & (j >= i + off - lo) & (j <= i + off + hi)
    if "key_padding" in mask:
        seen = seen & (
            np.arange(s)[None, None, None, :] < np.asarray(mask["key_padding"])[:, None, None, None]
        )
    return bool((~seen.any(axis=-1)).any())


def onnx_testcases() -> list[Any]:
    """ONNX's Attention backend tests (the `_expanded` twins left out)."""
    from onnx.backend.test.case.node import collect_testcases

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # other ops' generators warn about casts
        cases = collect_testcases("Attention")
    return [c for c in cases if not c.name.endswith("_expanded")]


def import_onnx() -> tuple[list[Imported], list[Skipped], str]:
    import onnx

    imported: list[Imported] = []
    skipped: list[Skipped] = []
    for test in onnx_testcases():
        result = convert_onnx(test)
        (imported if isinstance(result, Imported) else skipped).append(result)
    return imported, skipped, onnx.__version__


# --- writing specs ---------------------------------------------------------------------------


def _yaml_value(value: Any) -> str:
    """A flow-style YAML value (JSON is valid YAML; plain words stay unquoted)."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_yaml_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_yaml_value(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str) and re.fullmatch(r"[A-Za-z][A-Za-z0-9_.\-]*", value) and value not in (
        "true", "false", "null", "yes", "no", "on", "off",
    ):  # fmt: skip
        return value
    return json.dumps(value)


def render_spec(header: list[str], family: str, description: str, entries: list[dict]) -> str:
    lines = [SCHEMA_LINE, *(f"# {h}" if h else "#" for h in header), "version: 1"]
    lines += [f"family: {family}", f"description: {json.dumps(description)}", "", "cases:"]
    for entry in entries:
        first = True
        for key, value in entry.items():
            lines.append(("  - " if first else "    ") + f"{key}: {_yaml_value(value)}")
            first = False
        lines.append("")
    return "\n".join(lines).rstrip("\n") + "\n"


def write_onnx(out: Path, data: Path) -> tuple[list[Imported], list[Skipped], str]:
    imported, skipped, version = import_onnx()
    rel = Path(_relative(data, out.parent))
    arrays: dict[str, np.ndarray] = {}
    for item in imported:
        for key, value in item.arrays.items():
            arrays[f"{item.test}/{key}"] = value
        item.entry["inputs"] = f"{rel.as_posix()}#{item.test}"
        item.entry["expected"] = {
            n: f"{rel.as_posix()}#{item.test}/expected.{n}"
            for n in ("output", "weights")
            if f"expected.{n}" in item.arrays
        }
    data.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(data, **arrays)
    header = [
        f"Imported from onnx {version} by `conformance import onnx`: do not edit by hand.",
        f"Source: onnx.backend.test.case.node.collect_testcases('Attention'), {len(imported)} "
        f"of {len(imported) + len(skipped)} tests (the _expanded twins share their data).",
        f"Arrays and ONNX's expected outputs: {rel.as_posix()}. Not imported:",
        *(f"  {s.test}: {s.reason}" for s in skipped),
    ]
    description = (
        f"The ONNX Attention operator's own backend tests (onnx {version}), run as kernel-mode "
        "cases on ONNX's exact inputs; ONNX's expected outputs (from onnx/reference/ops/"
        "op_attention.py) are stored beside them, and the reference must agree with them "
        "(see docs/peer-suites.md)."
    )
    entries = [i.entry for i in imported]
    out.write_text(render_spec(header, "onnx_imported", description, entries))
    return imported, skipped, version


def _relative(path: Path, start: Path) -> str:
    import os

    return os.path.relpath(path.resolve(), start.resolve())


# --- agreement of the reference with a peer suite's expected outputs -----------------------


def agreement(
    case: Any, atol: float | None = None, masked_rows: str | None = None
) -> dict[str, dict]:
    """Our float64 reference vs the case's stored expected outputs, per output name.

    The peer's numbers are held to the case dtype's tolerance (low precision: the same-dtype
    baseline rule), exactly as an implementation's would be; `atol` replaces that with a
    fixed absolute tolerance (Keras's hand-written expectations carry 2-4 digits).
    `masked_rows` is the peer's policy for fully masked rows (ONNX: zeros).
    """
    from ..cases.inputs import make_inputs, stored_array
    from ..oracle.reference import attention, baseline
    from ..verdicts.compare import baseline_error, compare
    from ..verdicts.tolerance import Tolerance, tolerance_for

    inputs = make_inputs(case)
    policy = masked_rows or case.mask.fully_masked_rows
    ref = attention(case, inputs, masked_rows=policy)
    tol = tolerance_for(case.dtype) if atol is None else Tolerance(rtol=0.0, atol=atol)
    base = baseline(case, inputs, masked_rows=policy) if tol.baseline_factor else None
    result = {}
    for name, where in (case.expected or {}).items():
        theirs = stored_array(where).astype(np.float64)
        b_err = baseline_error(base[name], ref[name]) if base is not None else None
        c = compare(name, theirs, ref[name], tol, b_err)
        result[name] = {"ok": c.ok, "max_abs_error": c.max_abs_error, "summary": c.summary()}
    return result


# --- Keras -----------------------------------------------------------------------------------

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
