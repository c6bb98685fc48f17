"""The ONNX Attention operator's backend tests as cases (`conformance import onnx`).

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
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .spec_writing import _relative, render_spec

# op_attention.py: "a fully-masked row ... by convention softmaxes to all-zero probabilities"
ONNX_MASKED_ROWS = "zeros"


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
