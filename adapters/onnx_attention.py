"""`onnx.attention.*`: the standard ONNX `Attention` operator (opset 23+) run in ONNX Runtime.

Each case becomes a one-node graph built with onnx.helper. The variants are the execution paths
that can disagree:

- `onnx.attention.4d`: 4-D inputs (B, H, S, hd), opset 23, ORT's fused Attention kernel.
- `onnx.attention.3d`: 3-D inputs (B, S, H*hd) with q_num_heads/kv_num_heads, opset 23, the
  same kernel's strided (transposed) path.
- `onnx.attention.opset24`: 4-D, opset 24; key padding goes through opset 24's
  `nonpad_kv_seqlen` input (the external-KV-cache path) instead of attn_mask.
- `onnx.attention.expanded`: the operator's ONNX function body (the decomposition into MatMul,
  Softmax, ... that the installed onnx package defines, as in onnx's `_expanded` backend
  tests), inlined into the graph and run op by op in ORT. This is also what ORT does by itself
  for a dtype it has no kernel for (float64 on CPU), with the function body it was built with.
- `onnx.attention.opset25`: opset 25 adds left_window_size/right_window_size (sliding window).

ORT picks a kernel by (opset, dtype, provider) and silently inlines the function body when it
has none, so every session checks, on its first run, which nodes actually ran (ORT's profiler)
and refuses (`Unsupported`) to report a result from a path other than the variant's.

ONNX Runtime plumbing (sessions cached by configuration, the path check, dtype maps, saving a
model next to a failing result) is in `ort_runtime`, shared with `ort_contrib` and `torch_onnx`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from conformance.adapter_api.adapter import FILL_AS_WRITTEN, Declaration, Divergence, Unsupported
from conformance.adapter_api.feature_sets import (
    ADDITIVE_MASKS,
    ALIBI,
    EVERY_BOOLEAN_MASK,
    GROUPED_HEADS,
    KERNEL_SHAPES,
    MASKS_AS_WRITTEN,
    ROPE,
)
from conformance.cases.case import Case
from conformance.cases.inputs import CaseInputs
from conformance.cases.layouts import merge_heads, split_heads
from conformance.cases.masks import build_mask, causal_offset, combined_additive, fill_value

from .ort_runtime import (
    NUMPY_DTYPES,
    ORT_DTYPES,
    OrtAdapter,
    OrtSession,
    PathCheck,
    make_model,
    onnx_elem_type,
    open_session,
    provider_for,
    require_dtype,
    require_fused,
    require_kernel,
    write_model,
)

FULLY_MASKED_LINK = "https://github.com/onnx/onnx/pull/8068"

# --- the ONNX Attention graph ---------------------------------------------------------------


@dataclass(frozen=True)
class AttentionConfig:
    """Everything that shapes the graph; batch and sequence lengths stay symbolic."""

    opset: int
    layout: str  # "4d" | "3d"
    dtype: str
    heads: int
    kv_heads: int
    key_dim: int
    value_dim: int
    mask: str = "none"  # "none" | "bool" | "float"
    mask_heads: int = 1
    causal: bool = False
    scale: float | None = None
    weights: bool = False  # qk_matmul_output in mode 3 (post-softmax)
    past: bool = False
    nonpad: bool = False
    window: tuple[int, int] | None = None  # opset 25 (left_window_size, right_window_size)
    expanded: bool = False
    softcap: float | None = None  # issue 14: the operator's softcap attribute
    # issue 14: RotaryEmbedding (opset 23) on Q, K (and past_key) first: (interleaved, dim)
    rope: tuple[int, int] | None = None
    rope_contrib: bool = False  # com.microsoft RotaryEmbedding instead of the standard op
    # False when decoding: past_key is the present_key fed back, rotated at its own step
    rotate_past: bool = True


def attention_node_parts(cfg: AttentionConfig) -> tuple[list[str], list[str], dict]:
    inputs = ["Q", "K", "V", "attn_mask" if cfg.mask != "none" else ""]
    inputs += ["past_key", "past_value"] if cfg.past else ["", ""]
    inputs += ["nonpad_kv_seqlen"] if cfg.nonpad else []
    while inputs[-1] == "":
        inputs.pop()
    outputs = ["Y"]
    outputs += ["present_key", "present_value"] if cfg.past else ["", ""]
    outputs += ["weights"] if cfg.weights else []
    while outputs[-1] == "":
        outputs.pop()
    attrs: dict[str, Any] = {}
    if cfg.causal:
        attrs["is_causal"] = 1
    if cfg.scale is not None:
        attrs["scale"] = float(cfg.scale)
    if cfg.weights:
        attrs["qk_matmul_output_mode"] = 3  # the softmax output: the attention weights
    if cfg.layout == "3d":
        attrs["q_num_heads"] = cfg.heads
        attrs["kv_num_heads"] = cfg.kv_heads
    if cfg.window is not None:
        attrs["left_window_size"], attrs["right_window_size"] = cfg.window
    if cfg.softcap is not None:
        attrs["softcap"] = float(cfg.softcap)
    return inputs, outputs, attrs


def attention_model(cfg: AttentionConfig):  # noqa: ANN201 - onnx.ModelProto
    from onnx import helper

    et = onnx_elem_type(cfg.dtype)
    h, g, k, v = cfg.heads, cfg.kv_heads, cfg.key_dim, cfg.value_dim
    if cfg.layout == "4d":
        shapes = {
            "Q": ["B", h, "T", k],
            "K": ["B", g, "S", k],
            "V": ["B", g, "S", v],
            "Y": ["B", h, "T", v],
        }
    else:
        shapes = {"Q": ["B", "T", h * k], "K": ["B", "S", g * k], "V": ["B", "S", g * v]}
        shapes["Y"] = ["B", "T", h * v]
    shapes.update(
        attn_mask=["B", cfg.mask_heads, "T", "L"],
        past_key=["B", g, "P", k],
        past_value=["B", g, "P", v],
        present_key=["B", g, "L", k],
        present_value=["B", g, "L", v],
        weights=["B", h, "T", "L"],
        nonpad_kv_seqlen=["B"],
    )
    types = {"attn_mask": onnx_elem_type("bool") if cfg.mask == "bool" else et}
    types["nonpad_kv_seqlen"] = onnx_elem_type("int64")
    node_in, node_out, attrs = attention_node_parts(cfg)

    def info(name: str):  # noqa: ANN202
        return helper.make_tensor_value_info(name, types.get(name, et), shapes[name])

    graph_in = [info(n) for n in node_in if n]
    graph_out = [info(n) for n in node_out if n]
    node = helper.make_node("Attention", node_in, node_out, **attrs)
    if cfg.rope is not None:  # issue 14
        nodes, graph_in = _rotary_nodes(cfg, graph_in, shapes)
        if not cfg.expanded:
            opsets = {"": cfg.opset} | ({"com.microsoft": 1} if cfg.rope_contrib else {})
            return make_model([*nodes, node], graph_in, graph_out, opsets)
        rotated = {vi.name[: -len("_raw")]: vi.type for vi in graph_in if vi.name.endswith("_raw")}
        return _expanded_model(cfg, [*nodes, node], graph_in, graph_out, rotated)
    if not cfg.expanded:
        return make_model([node], graph_in, graph_out, {"": cfg.opset})
    return _expanded_model(cfg, [node], graph_in, graph_out)


ROTATED = {"Q": "T", "K": "S", "past_key": "P"}  # rotated inputs and their length axis


def _rotary_nodes(cfg: AttentionConfig, graph_in: list, shapes: dict) -> tuple[list, list]:
    """RotaryEmbedding nodes (opset 23) turning the graph inputs Q, K (and past_key) into the
    rotated tensors the Attention node reads: each takes `<name>_raw`, the shared cos_cache /
    sin_cache [max position + 1, rotary_dim / 2] and its own position_ids [B, length]."""
    from onnx import helper

    interleaved, dim = cfg.rope
    et = onnx_elem_type(cfg.dtype)
    new_in = []
    nodes = []
    for vi in graph_in:
        if vi.name not in ROTATED or (vi.name == "past_key" and not cfg.rotate_past):
            new_in.append(vi)
            continue
        raw, ids = f"{vi.name}_raw", f"{vi.name}_position_ids"
        new_in.append(helper.make_tensor_value_info(raw, et, shapes[vi.name]))
        new_in.append(helper.make_tensor_value_info(
            ids, onnx_elem_type("int64"), ["B", ROTATED[vi.name]]))  # fmt: skip
        attrs: dict[str, Any] = {"interleaved": interleaved}
        if dim:
            attrs["rotary_embedding_dim"] = dim
        if cfg.layout == "3d" or (cfg.rope_contrib and dim):  # contrib: num_heads with the dim
            attrs["num_heads"] = cfg.heads if vi.name == "Q" else cfg.kv_heads
        if cfg.rope_contrib:  # com.microsoft's input order: input, position_ids, cos, sin
            nodes.append(helper.make_node(
                "RotaryEmbedding", [raw, ids, "cos_cache", "sin_cache"], [vi.name],
                domain="com.microsoft", **attrs))  # fmt: skip
            continue
        nodes.append(helper.make_node(
            "RotaryEmbedding", [raw, "cos_cache", "sin_cache", ids], [vi.name], **attrs))  # fmt: skip
    half = (dim or cfg.key_dim) // 2
    for name in ("cos_cache", "sin_cache"):
        new_in.append(helper.make_tensor_value_info(name, et, ["M", half]))
    return nodes, new_in


def rotary_feeds(case: Case, feeds: dict[str, np.ndarray], past: int, dtype) -> None:  # noqa: ANN001
    """Rename Q, K, past_key to their `_raw` inputs and add the caches and position ids
    (conformance.rotary: queries at offset + S - T + t, keys at offset + s). The caches are
    computed in float64 and rounded to the dtype, as a model exporter stores them."""
    from conformance.cases.rotary import key_positions, query_positions, tables

    rope, s = case.rope, case.shape
    keys = key_positions(case)
    ids = {"Q": query_positions(case), "K": keys[past:], "past_key": keys[:past]}
    for name in ROTATED:
        if name in feeds:
            feeds[f"{name}_raw"] = feeds.pop(name)
            feeds[f"{name}_position_ids"] = np.ascontiguousarray(
                np.broadcast_to(ids[name].astype(np.int64), (s.batch, len(ids[name])))
            )
    cos, sin = tables(rope, s.key_dim, np.arange(int(keys[-1]) + 1))
    feeds["cos_cache"], feeds["sin_cache"] = cos.astype(dtype), sin.astype(dtype)


def decode_rotary_feeds(case: Case, feeds: dict, start: int, stop: int, dtype) -> None:  # noqa: ANN001
    """A decoding step's rotary inputs: Q and K renamed to their `_raw` inputs, both at
    positions offset + start + i (start = the cache length before the step), and the tables
    up to the last position (float64, rounded to the dtype, as for full calls)."""
    from conformance.cases.rotary import tables

    rope, s = case.rope, case.shape
    ids = np.arange(rope.offset + start, rope.offset + stop, dtype=np.int64)
    for name in ("Q", "K"):
        feeds[f"{name}_raw"] = feeds.pop(name)
        feeds[f"{name}_position_ids"] = np.ascontiguousarray(
            np.broadcast_to(ids, (s.batch, len(ids)))
        )
    cos, sin = tables(rope, s.key_dim, np.arange(rope.offset + s.query_len))
    feeds["cos_cache"], feeds["sin_cache"] = cos.astype(dtype), sin.astype(dtype)


def rope_config(case: Case) -> tuple[int, int] | None:
    """AttentionConfig.rope for a case: (interleaved 0/1, rotary_embedding_dim or 0 = all)."""
    if case.rope is None:
        return None
    dim = case.rope.dims(case.shape.key_dim) if case.rope.partial(case.shape.key_dim) else 0
    return int(case.rope.style == "interleaved"), dim


def _expanded_model(cfg: AttentionConfig, nodes: list, graph_in: list, graph_out: list,  # noqa: ANN202
                    inner_types: dict | None = None):  # fmt: skip
    """The graph with each node (Attention, and RotaryEmbedding for rope cases) replaced by its
    function body from the installed onnx package.

    The schema builds each body for the node's attributes and input types (a context-dependent
    function); it goes in as a model-local function and onnx.inliner inlines it. `inner_types`:
    the types of tensors made inside the graph (the rotated Q and K).
    """
    import onnx
    from onnx import defs, helper, inliner

    by_name = {vi.name: vi.type for vi in graph_in} | (inner_types or {})
    calls, bodies = [], []
    for node in nodes:
        schema = defs.get_schema(node.op_type, cfg.opset)
        types = [by_name[n] if n else onnx.TypeProto() for n in node.input]
        body = onnx.FunctionProto()
        body.ParseFromString(
            schema.get_context_dependent_function(
                node.SerializeToString(), [t.SerializeToString() for t in types]
            )
        )
        # One function per node: the body depends on the node's attributes and input types.
        name = node.op_type if len(nodes) == 1 else f"{node.op_type}_{len(bodies)}"
        body.name, body.domain = name, "conformance.expanded"
        bodies.append(body)
        calls.append(helper.make_node(
            name, list(node.input), list(node.output), domain="conformance.expanded"))  # fmt: skip
    opsets = {"": cfg.opset, "conformance.expanded": 1}
    model = make_model(calls, graph_in, graph_out, opsets)
    model.functions.extend(bodies)
    return inliner.inline_local_functions(model)


@dataclass
class _Plan:
    """How one case maps onto the operator's inputs and attributes."""

    cfg: AttentionConfig
    feeds: dict[str, np.ndarray]


class OnnxAttentionBase(OrtAdapter):
    """Shared implementation; subclasses set the declaration and the class constants."""

    OPSET = 23
    LAYOUT = "4d"
    FUSED = True  # the variant is ORT's Attention kernel (else: a decomposition)
    EXPANDED = False  # the graph holds the installed onnx's function body, not the node
    NONPAD = False  # key padding as opset 24's nonpad_kv_seqlen
    WINDOW = False  # sliding window as opset 25's left/right_window_size
    CONTRIB_ROPE = False  # rope as com.microsoft RotaryEmbedding (issue 14)
    DTYPES: tuple[str, ...] = ORT_DTYPES
    DTYPE_REASON = "NumPy has no bfloat16 to feed ONNX Runtime"

    def setup(self) -> None:
        import onnx  # noqa: F401 - fail early if missing

        super().setup()

    # -- planning ----------------------------------------------------------------------------

    def _base_config(self, case: Case, **changes: Any) -> AttentionConfig:
        s = case.shape
        cfg = AttentionConfig(
            opset=self.OPSET,
            layout=self.LAYOUT,
            dtype=case.dtype,
            heads=s.num_heads,
            kv_heads=s.num_kv_heads,
            key_dim=s.key_dim,
            value_dim=s.value_dim,
            scale=case.scale,
            expanded=self.EXPANDED,
            softcap=case.scores.softcap if case.scores else None,  # issue 14
            rope=rope_config(case),  # issue 14
            rope_contrib=self.CONTRIB_ROPE,
        )
        return dataclasses.replace(cfg, **changes)

    def _qkv(self, q: np.ndarray, k: np.ndarray, v: np.ndarray) -> dict[str, np.ndarray]:
        if self.LAYOUT == "3d":
            q, k, v = merge_heads(q), merge_heads(k), merge_heads(v)
        return {"Q": q, "K": k, "V": v}

    def plan(self, case: Case, inputs: CaseInputs) -> _Plan:
        """The operator's inputs for a (non-decode) case."""
        dtype = require_dtype(case, self.DTYPES, self.DTYPE_REASON)
        m = case.mask
        rest = m  # the mask components left for attn_mask
        causal = False
        window = None
        nonpad = None
        offset = causal_offset(case)
        # issue 14: a finite fill, packed segments or left padding is the user's own mask, so
        # all of it goes in attn_mask as written (is_causal, the window and nonpad_kv_seqlen
        # would mask with -inf or from the right).
        as_written = m.fill is not None or m.segments is not None or m.padding_side == "left"
        if as_written:
            pass
        elif offset < 0:
            raise Unsupported(
                "is_causal aligns the diagonal by the past length, which cannot be negative: no "
                "bottom-right causal mask with more queries than keys"
            )
        if as_written:
            pass
        elif self.NONPAD and m.key_padding is not None:
            # With nonpad_kv_seqlen, ONNX aligns is_causal (and the window) at each batch's
            # valid length (offset = nonpad_kv_seqlen - T), not the case's mask, and forbids
            # past_key: a causal mask then goes in attn_mask.
            nonpad = np.asarray(m.key_padding, dtype=np.int64)
            rest = dataclasses.replace(rest, key_padding=None)
        elif m.causal is not None:
            # is_causal aligns the diagonal by the past length: 0 gives top-left (or T == S);
            # a bottom-right mask (S > T) is the op's own chunked-prefill form: the first S - T
            # keys go in as past_key/past_value.
            causal = True
            rest = dataclasses.replace(rest, causal=None)
        if self.WINDOW and m.window is not None and not as_written:
            if nonpad is not None and (m.causal is not None or offset):
                raise Unsupported("with nonpad_kv_seqlen the window aligns at the valid length")
            window = m.window  # aligned by the past length too, like the case's window
            rest = dataclasses.replace(rest, window=None)
        past = offset if causal else 0
        attend, bias = build_mask(dataclasses.replace(case, mask=rest))
        q, k, v = (inputs.native(n).astype(dtype, copy=False) for n in ("q", "k", "v"))
        feeds = self._qkv(q, k[:, :, past:], v[:, :, past:])
        if past:
            feeds["past_key"] = np.ascontiguousarray(k[:, :, :past])
            feeds["past_value"] = np.ascontiguousarray(v[:, :, :past])
        kind, heads = "none", 1
        if m.fill is not None and (attend is not None or bias is not None):
            kind = "float"
            feeds["attn_mask"] = combined_additive(attend, bias, dtype, fill=fill_value(case))
        elif bias is not None:
            kind = "float"
            feeds["attn_mask"] = combined_additive(attend, bias, dtype)
        elif attend is not None:
            kind = "bool"
            feeds["attn_mask"] = np.ascontiguousarray(attend)
        if kind != "none":
            heads = feeds["attn_mask"].shape[1]
        if nonpad is not None:
            feeds["nonpad_kv_seqlen"] = nonpad
        if case.rope is not None:  # issue 14: RotaryEmbedding nodes read these
            rotary_feeds(case, feeds, past, dtype)
        cfg = self._base_config(
            case,
            mask=kind,
            mask_heads=heads,
            causal=causal,
            weights="weights" in case.compare,
            nonpad=nonpad is not None,
            window=window,
            past=past > 0,
        )
        return _Plan(cfg, feeds)

    # -- running ------------------------------------------------------------------------------

    def path_check(self, device: str, rope: bool = False) -> PathCheck:
        provider, _ = provider_for(device)
        if not self.FUSED:
            return _require_all_decomposed if rope and self.EXPANDED else _require_decomposed
        attention = require_fused("Attention", provider)
        if not rope:
            return attention
        rotary = require_fused("RotaryEmbedding", provider)  # issue 14
        return lambda ran: attention(ran) or rotary(ran)

    def _require_kernel(self, case: Case, device: str) -> None:
        if self.FUSED:
            require_kernel(
                case, "Attention", "", device, self.OPSET, "T1",
                "; a graph of this dtype runs the inlined ONNX function body instead "
                "(onnx.attention.expanded covers that path)",
            )  # fmt: skip
        if self.FUSED and case.rope is not None:  # issue 14
            if self.CONTRIB_ROPE:
                require_kernel(case, "RotaryEmbedding", "com.microsoft", device, 1, "T")
            else:
                require_kernel(case, "RotaryEmbedding", "", device, 23, "T")
        if not self.EXPANDED and case.rope is not None and case.dtype == "float64":
            raise Unsupported(
                "RotaryEmbedding's type constraint T is float, float16, bfloat16 (opset 23): a "
                "float64 graph is invalid (onnx.attention.expanded runs its function body)"
            )

    def session(self, cfg: AttentionConfig, device: str) -> OrtSession:
        return self._sessions.get(
            (cfg, device),
            lambda: open_session(
                attention_model(cfg), device, self.path_check(device, cfg.rope is not None)
            ),
        )

    def _output(self, y: np.ndarray, heads: int) -> np.ndarray:
        return split_heads(y, heads) if self.LAYOUT == "3d" else y

    def run(self, case: Case, inputs: CaseInputs, device: str) -> dict[str, np.ndarray]:
        self._require_kernel(case, device)
        if case.decode is not None:
            return {"output": self._decode(case, inputs, device)}
        plan = self.plan(case, inputs)
        result = self.session(plan.cfg, device).run(plan.feeds)
        out = {"output": self._output(result["Y"], case.shape.num_heads)}
        if plan.cfg.weights:
            out["weights"] = result["weights"]
        return out

    def _decode_config(self, case: Case) -> AttentionConfig:
        require_dtype(case, self.DTYPES, self.DTYPE_REASON)  # raises for a dtype it cannot feed
        # One graph for prefill and steps, as decoders ship it: is_causal with past_key/value,
        # the cache fed back from present_key/value. Issue 14: steps over an encoder memory
        # (cross-attention) feed the cached memory K/V each step, no past, not causal.
        if case.decode.memory:
            return self._base_config(case)
        # issue 14: with rope each step rotates its new Q and K only (the cache holds keys
        # already rotated), as decoder graphs exported with RotaryEmbedding do
        return self._base_config(case, causal=True, past=True, rotate_past=False)

    def _decode(self, case: Case, inputs: CaseInputs, device: str) -> np.ndarray:
        cfg = self._decode_config(case)
        dtype = np.dtype(NUMPY_DTYPES[case.dtype])
        q, k, v = (inputs.native(n).astype(dtype, copy=False) for n in ("q", "k", "v"))
        b, g = k.shape[0], k.shape[1]
        past_k = np.zeros((b, g, 0, k.shape[3]), dtype)
        past_v = np.zeros((b, g, 0, v.shape[3]), dtype)
        prefix, total = case.decode.prefix, case.shape.query_len
        step = case.decode.chunk  # issue 14: chunk > 1 is chunked prefill
        steps = [(t, t + step) for t in range(prefix, total, step)]
        chunks = ([(0, prefix)] if prefix else []) + steps
        session = self.session(cfg, device)
        outputs = []
        for start, stop in chunks:
            if case.decode.memory:  # the whole memory every step, nothing appended
                result = session.run(self._qkv(q[:, :, start:stop], k, v))
                outputs.append(self._output(result["Y"], case.shape.num_heads))
                continue
            feeds = self._qkv(q[:, :, start:stop], k[:, :, start:stop], v[:, :, start:stop])
            feeds.update(past_key=past_k, past_value=past_v)
            if case.rope is not None:  # issue 14
                decode_rotary_feeds(case, feeds, start, stop, dtype)
            result = session.run(feeds)
            past_k, past_v = result["present_key"], result["present_value"]
            outputs.append(self._output(result["Y"], case.shape.num_heads))
        return np.concatenate(outputs, axis=2)

    def save_model(self, case: Case, directory: str | Path) -> list[Path]:
        """Write the ONNX model this case runs (and its inputs, .npz) into `directory`."""
        from conformance.cases.inputs import make_inputs

        stem = f"{self.declaration.name}-{case.id}"
        if case.decode is not None:
            return write_model(attention_model(self._decode_config(case)), directory, stem)
        plan = self.plan(case, make_inputs(case))
        return write_model(attention_model(plan.cfg), directory, stem, plan.feeds)


def _require_decomposed(ran: list[tuple[str, str]]) -> str | None:
    if any(op == "Attention" for op, _ in ran):
        return "a fused Attention kernel ran, but this variant is the decomposed function body"
    return None


def _require_all_decomposed(ran: list[tuple[str, str]]) -> str | None:
    """The expanded variant with rope: RotaryEmbedding's body is inlined too (issue 14)."""
    if any(op == "RotaryEmbedding" for op, _ in ran):
        return "a fused RotaryEmbedding kernel ran, but this variant is the function bodies"
    return _require_decomposed(ran)


# --- declarations ---------------------------------------------------------------------------

KERNEL_FEATURES = (
    KERNEL_SHAPES
    | GROUPED_HEADS
    | (EVERY_BOOLEAN_MASK - {"window"})
    | ADDITIVE_MASKS
    | {"scale", "decode", "weights"}
    | {
        "decode-chunked",  # issue 14: past_key/value with is_causal offset by the past length
        "decode-memory",  # issue 14: the cached memory K/V fed to every step
    }
    # issue 14: softcap is the operator's attribute (applied before attn_mask, as the spec
    # says); ALiBi goes in the float attn_mask as a bias, as exporters of BLOOM do
    | {"softcap"}
    | ALIBI
    # issue 14: the whole mask goes in attn_mask as written (plan: as_written)
    | MASKS_AS_WRITTEN
)

# issue 14: RotaryEmbedding (opset 23: interleaved 0/1, rotary_embedding_dim) before Attention
# (4d: 4-D inputs; 3d: 3-D inputs with num_heads; expanded/opset25: its function body too).
ROPE_FEATURES = ROPE
ROPE_NOTES = (
    " Rotary embeddings (issue 14): an ONNX RotaryEmbedding node (opset 23; interleaved=0 for "
    "rotate-half, 1 for interleaved pairs; rotary_embedding_dim for partial rotary) turns Q, K "
    "(and past_key) into the Attention node's inputs, with cos_cache/sin_cache computed in "
    "float64 and stored in the dtype (as an exporter stores them) and position_ids per tensor "
    "(queries at offset + S - T + t, keys at offset + s). The operator allows float, float16 "
    "and bfloat16 only: float64 rope cases are unsupported except on onnx.attention.expanded, "
    "which inlines RotaryEmbedding's function body as well as Attention's (and proves no fused "
    "kernel of either ran); opset25 runs ORT's RotaryEmbedding kernel before the inlined "
    "Attention body."
)

UNSUPPORTED = {
    "sink": "no sink logit in the operator (opsets 23-25)",
    "sink-zero": "no off-by-one softmax in the operator (opsets 23-25)",
    "window": "no sliding window before opset 25 (left_window_size/right_window_size: see "
    "onnx.attention.opset25)",
    "weights-mean": "the operator returns per-head weights only (qk_matmul_output)",
    "bfloat16": "NumPy has no bfloat16 to feed ONNX Runtime (and its CPU provider has no "
    "bfloat16 Attention kernel)",
}

SCALE_LINK = "https://github.com/onnx/onnx/blob/main/onnx/defs/nn/utils.cc"
SCALE_REASON = (
    "the operator's function body computes the scale in float32 (1/sqrt(head_size) from a "
    "float32 cast of the head size, or the float32 `scale` attribute), takes its square root "
    "in float32 and only then casts it to the input type, so float64 logits carry a float32-"
    "rounded scale (relative error ~1e-7; onnx's reference implementation computes the default "
    "in float64)"
)

FULLY_MASKED_ZEROS = Divergence(
    id="onnx-fully-masked-rows-zero",
    reason="the ONNX Attention spec (errata to opsets 23/24, onnx 1.23) defines a query row "
    "with every key masked as a zero output row, and a zero row in the mode-3 "
    "qk_matmul_output, instead of softmax's NaN",
    link=FULLY_MASKED_LINK,
    when=frozenset({"fully-masked-rows"}),
    masked_rows="zeros",
)

NOTES = (
    "Masks: boolean attn_mask True = attend (the reference's polarity, no inversion); "
    "additive masks and finite biases go in a float attn_mask of the input dtype. A causal "
    "mask that is top-left (or T == S) uses is_causal=1, composed by the operator with the "
    "rest of the mask in attn_mask. Weights are qk_matmul_output with "
    "qk_matmul_output_mode=3 (post-softmax; modes 0-2 are pre-softmax logits). Decode runs one "
    "graph with is_causal=1 and past_key/past_value (empty for the prefill), feeding "
    "present_key/present_value back."
)


def _declaration(name: str, summary: str, **kw: Any) -> Declaration:
    features = kw.pop("features", KERNEL_FEATURES | ROPE_FEATURES)
    return Declaration(
        name=name,
        summary=summary,
        framework="onnxruntime",
        features=features,
        dtypes=kw.pop("dtypes", frozenset(ORT_DTYPES)),
        requires=("onnx", "onnxruntime"),
        worker="onnx",
        divergences=kw.pop("divergences", (FULLY_MASKED_ZEROS, FILL_AS_WRITTEN)),
        unsupported_reasons=kw.pop("unsupported_reasons", UNSUPPORTED),
        notes=kw.pop("notes", NOTES + ROPE_NOTES),
        **kw,
    )


class OnnxAttention4D(OnnxAttentionBase):
    declaration = _declaration(
        "onnx.attention.4d",
        "ONNX Attention (opset 23), 4-D (B, H, S, hd) inputs, ORT's fused kernel",
    )


class OnnxAttention3D(OnnxAttentionBase):
    declaration = _declaration(
        "onnx.attention.3d",
        "ONNX Attention (opset 23), 3-D (B, S, H*hd) inputs with q_num_heads/kv_num_heads, "
        "ORT's fused kernel",
    )
    LAYOUT = "3d"


class OnnxAttentionOpset24(OnnxAttentionBase):
    declaration = _declaration(
        "onnx.attention.opset24",
        "ONNX Attention (opset 24), 4-D inputs, key padding as nonpad_kv_seqlen, ORT's "
        "fused kernel",
        notes=NOTES
        + ROPE_NOTES
        + " Key padding goes in nonpad_kv_seqlen (with it, ONNX aligns is_causal "
        "at each batch's valid length, so a causal mask then goes in attn_mask).",
    )
    OPSET = 24
    NONPAD = True


# First match wins, so the float64 combination comes first.
FUNCTION_DIVERGENCES = (
    Divergence(
        id="onnx-function-float32-scale+fully-masked-rows-zero",
        reason=SCALE_REASON + "; and " + FULLY_MASKED_ZEROS.reason,
        link=SCALE_LINK,
        when=frozenset({"fully-masked-rows"}),
        dtypes=frozenset({"float64"}),
        masked_rows="zeros",
        compute_dtype="float32",
    ),
    Divergence(
        id="onnx-function-float32-scale",
        reason=SCALE_REASON,
        link=SCALE_LINK,
        dtypes=frozenset({"float64"}),
        compute_dtype="float32",
    ),
    FULLY_MASKED_ZEROS,
    FILL_AS_WRITTEN,
)


class OnnxAttentionExpanded(OnnxAttentionBase):
    declaration = _declaration(
        "onnx.attention.expanded",
        "ONNX Attention (opset 23) as its function body from the installed onnx package "
        "(MatMul, Softmax, ...), inlined and run op by op in ORT",
        divergences=FUNCTION_DIVERGENCES,
    )
    FUSED = False
    EXPANDED = True


class OnnxAttentionOpset25(OnnxAttentionBase):
    declaration = _declaration(
        "onnx.attention.opset25",
        "ONNX Attention (opset 25: sliding window as left/right_window_size), 4-D inputs; ORT "
        "has no opset-25 kernel and inlines the function body it was built with",
        features=KERNEL_FEATURES | ROPE_FEATURES | {"window"},
        divergences=FUNCTION_DIVERGENCES,
        notes=NOTES + " A window (left, right) is left_window_size/right_window_size: query i "
        "sees keys i - left .. i + right (aligned by the cache length, 0 here).",
    )
    OPSET = 25
    WINDOW = True
    FUSED = False


class OrtContribRotaryAttention(OnnxAttention4D):
    """Rope cases only: ORT's com.microsoft RotaryEmbedding contrib op (what ORT's transformer
    optimizer and onnxruntime-genai exports use) in front of the standard Attention op."""

    declaration = _declaration(
        "ort.contrib.rotary-embedding",
        "com.microsoft RotaryEmbedding (ORT contrib op) on Q, K and past_key, then ONNX "
        "Attention (opset 23), 4-D inputs, ORT's fused kernels; rotary cases only",
        notes="com.microsoft RotaryEmbedding(input, position_ids, cos_cache, sin_cache) with "
        "interleaved 0/1 and, for partial rotary, rotary_embedding_dim with num_heads; caches "
        "computed in float64 and stored in the dtype; position_ids per tensor (queries at offset "
        "+ S - T + t, keys at offset + s). Cases without rope are onnx.attention.4d's. " + NOTES,
    )
    CONTRIB_ROPE = True

    def run(self, case: Case, inputs: CaseInputs, device: str) -> dict[str, np.ndarray]:
        if case.rope is None:
            raise Unsupported("rotary cases only: the rest is onnx.attention.4d's")
        return super().run(case, inputs, device)


ADAPTERS = [
    OnnxAttention4D,
    OnnxAttention3D,
    OnnxAttentionOpset24,
    OnnxAttentionExpanded,
    OnnxAttentionOpset25,
    OrtContribRotaryAttention,  # issue 14
]
