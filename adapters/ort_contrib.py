"""`ort.contrib.*`: ONNX Runtime's com.microsoft attention contrib operators.

These are what ORT's transformer optimizer and production exporters fuse decoder and encoder
models into, each with its own input layout and mask conventions (checked in ORT's own schema:
onnxruntime.capi.onnxruntime_pybind11_state.get_all_operator_schema()):

- `ort.contrib.mha`: com.microsoft MultiHeadAttention. Q/K/V as 3-D (B, S, H*hd) tensors,
  num_heads; no grouped query. Masks: key_padding_mask (int32; 1 = keep, 0 = pad: masked keys
  get `mask_filter_value`, -10000 by default, not -inf) and attention_bias (float, added to
  the logits, broadcast over batch/heads). `unidirectional` is the causal flag.
- `ort.contrib.gqa`: com.microsoft GroupQueryAttention. Q (B, S, H*hd), K/V (B, S, G*hd);
  seqlens_k (int32, per-batch total length - 1) carries key padding, total_sequence_length the
  longest; `causal` (default 1) and local_window_size (left window, causal only);
  attention_bias as for MHA. Decoding feeds past_key/past_value back from present_*.
  Rotary embeddings (issue 14) are GQA's own do_rotary=1 with cos_cache/sin_cache (float64
  tables stored in the dtype) and rotary_interleaved 0/1; partial rotary from the caches' width.
  Decoding with rope: each step's new q and k are rotated by the kernel at past length + i.

Each session checks on its first run that the contrib kernel itself ran (see onnx_attention).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from conformance.adapter_api.adapter import Declaration, Divergence, Unsupported
from conformance.adapter_api.feature_sets import (
    ADDITIVE_MASKS,
    ALIBI,
    BOOLEAN_MASKS,
    GROUPED_HEADS,
    KERNEL_SHAPES,
    PADDING,
    ROPE,
    SEGMENTS_AND_LEFT_PADDING,
)
from conformance.cases.case import Case, Mask
from conformance.cases.inputs import CaseInputs, make_inputs
from conformance.cases.kv_cache import sequence_lengths
from conformance.cases.layouts import merge_heads, split_heads
from conformance.cases.masks import build_mask, causal_offset, combined_additive
from conformance.cases.written import BOOLEAN_SOURCES, AsWritten, Fill

from .ort_runtime import (
    OrtAdapter,
    OrtSession,
    make_model,
    onnx_elem_type,
    provider_for,
    require_dtype,
    require_fused,
    require_kernel,
    write_model,
)

MS_DOMAIN = "com.microsoft"


@dataclass(frozen=True)
class ContribConfig:
    op: str  # "MultiHeadAttention" | "GroupQueryAttention"
    dtype: str
    heads: int
    kv_heads: int
    key_dim: int
    value_dim: int
    causal: bool = False
    scale: float | None = None
    padding: bool = False  # MHA key_padding_mask (B, S)
    bias_heads: int = 0  # attention_bias head dim (0: no attention_bias)
    weights: bool = False
    past: bool = False
    window: int = -1  # GQA local_window_size
    softcap: float | None = None  # issue 14: GQA softcap attribute
    smooth_softmax: bool = False  # GQA smooth_softmax=1: a zero sink logit per head
    head_sink: bool = False  # GQA head_sink input [H]: a learned sink logit per head
    rotary: tuple[int, int] | None = None  # issue 14: GQA do_rotary (interleaved, rotary dim)
    memory: bool = False  # issue 14: MHA key/value as cached cross-attention K/V (B, N, S, H)


def contrib_model(cfg: ContribConfig):  # noqa: ANN201 - onnx.ModelProto
    from onnx import helper

    et = onnx_elem_type(cfg.dtype)
    i32 = onnx_elem_type("int32")
    h, g, k, v = cfg.heads, cfg.kv_heads, cfg.key_dim, cfg.value_dim
    infos: dict[str, tuple[int, list]] = {
        "query": (et, ["B", "T", h * k]),
        "key": (et, ["B", "S", g * k]),
        "value": (et, ["B", "S", g * v]),
        "key_padding_mask": (i32, ["B", "S"]),
        "attention_bias": (et, ["BB", cfg.bias_heads, "T", "L"]),
        "past_key": (et, ["B", g, "P", k]),
        "past_value": (et, ["B", g, "P", v]),
        "seqlens_k": (i32, ["B"]),
        "head_sink": (et, [h]),
        "cos_cache": (et, ["M", (cfg.rotary or (0, 0))[1] // 2]),
        "sin_cache": (et, ["M", (cfg.rotary or (0, 0))[1] // 2]),
        "total_sequence_length": (i32, []),
        "output": (et, ["B", "T", h * v]),
        "present_key": (et, ["B", g, "L", k]),
        "present_value": (et, ["B", g, "L", v]),
        "weights": (et, ["B", h, "T", "L"]),
    }
    if cfg.memory:  # the BNSH form ORT takes for a cross-attention cache
        infos["key"], infos["value"] = (et, ["B", g, "S", k]), (et, ["B", g, "S", v])
    bias = "attention_bias" if cfg.bias_heads else ""
    past = ["past_key", "past_value"] if cfg.past else ["", ""]
    attrs: dict[str, Any] = {"num_heads": h}
    if cfg.scale is not None:
        attrs["scale"] = float(cfg.scale)
    if cfg.op == "MultiHeadAttention":
        node_in = ["query", "key", "value", "", "key_padding_mask" if cfg.padding else "", bias]
        node_in += past
        if cfg.causal:
            attrs["unidirectional"] = 1
    else:
        node_in = ["query", "key", "value", *past, "seqlens_k", "total_sequence_length"]
        # inputs 7-11: cos_cache, sin_cache, position_ids, attention_bias, head_sink
        rotary = ["cos_cache", "sin_cache"] if cfg.rotary else ["", ""]
        node_in += [*rotary, "", bias, "head_sink" if cfg.head_sink else ""]
        if cfg.rotary:  # issue 14: the kernel rotates Q and K itself
            attrs["do_rotary"] = 1
            attrs["rotary_interleaved"] = cfg.rotary[0]
        attrs["kv_num_heads"] = g
        if cfg.softcap is not None:
            attrs["softcap"] = float(cfg.softcap)
        if cfg.smooth_softmax:
            attrs["smooth_softmax"] = 1
        attrs["causal"] = int(cfg.causal)
        if cfg.window >= 0:
            attrs["local_window_size"] = cfg.window
        if cfg.weights:
            attrs["qk_output"] = 2  # after softmax: the attention weights
    node_out = ["output"]
    node_out += ["present_key", "present_value"] if cfg.past else ["", ""]
    node_out += ["weights"] if cfg.weights else []
    while node_in[-1] == "":
        node_in.pop()
    while node_out[-1] == "":
        node_out.pop()
    graph_in = [helper.make_tensor_value_info(n, *infos[n]) for n in node_in if n]
    graph_out = [helper.make_tensor_value_info(n, *infos[n]) for n in node_out if n]
    node = helper.make_node(cfg.op, node_in, node_out, domain=MS_DOMAIN, **attrs)
    return make_model([node], graph_in, graph_out, {"": 21, MS_DOMAIN: 1})


@dataclass
class _Plan:
    cfg: ContribConfig
    feeds: dict[str, np.ndarray]


class OrtContribBase(OrtAdapter):
    OP = ""
    DTYPES: tuple[str, ...] = ("float32", "float16")
    DTYPE_REASON = "NumPy has no bfloat16 to feed ONNX Runtime"

    def _config(self, case: Case, **changes: Any) -> ContribConfig:
        s = case.shape
        cfg = ContribConfig(
            op=self.OP,
            dtype=case.dtype,
            heads=s.num_heads,
            kv_heads=s.num_kv_heads,
            key_dim=s.key_dim,
            value_dim=s.value_dim,
            scale=case.scale,
        )
        return dataclasses.replace(cfg, **changes)

    def session(self, cfg: ContribConfig, device: str) -> OrtSession:
        provider, _ = provider_for(device)
        return self._sessions.get(
            (cfg, device),
            lambda: OrtSession(contrib_model(cfg), device, require_fused(self.OP, provider)),
        )

    def _qkv(self, case: Case, inputs: CaseInputs) -> dict[str, np.ndarray]:
        dtype = require_dtype(case, self.DTYPES, self.DTYPE_REASON)
        return {
            name: merge_heads(inputs.native(src)).astype(dtype, copy=False)
            for name, src in (("query", "q"), ("key", "k"), ("value", "v"))
        }

    def plan(self, case: Case, inputs: CaseInputs) -> _Plan:
        raise NotImplementedError

    def check(self, case: Case) -> None:
        """Refuse, before running, what the operator's input validation rejects."""

    def run(self, case: Case, inputs: CaseInputs, device: str) -> dict[str, np.ndarray]:
        require_kernel(case, self.OP, MS_DOMAIN, device, 1, "T")
        self.check(case)
        if case.decode is not None:
            return {"output": self._decode(case, inputs, device)}
        plan = self.plan(case, inputs)
        result = self.session(plan.cfg, device).run(plan.feeds)
        out = {"output": split_heads(result["output"], case.shape.num_heads)}
        if plan.cfg.weights:
            out["weights"] = result["weights"]
        return out

    def _decode(self, case: Case, inputs: CaseInputs, device: str) -> np.ndarray:
        raise NotImplementedError

    def save_model(self, case: Case, directory: str | Path) -> list[Path]:
        """Write the ONNX model this case runs (and its inputs, .npz) into `directory`."""
        stem = f"{self.declaration.name}-{case.id}"
        if case.decode is not None:
            memory = case.decode.memory  # issue 14: steps over an encoder memory
            cfg = self._config(case, memory=True) if memory else self._config(
                case, causal=True, past=True)  # fmt: skip
            return write_model(contrib_model(cfg), directory, stem)
        plan = self.plan(case, make_inputs(case))
        return write_model(contrib_model(plan.cfg), directory, stem, plan.feeds)


def _attention_bias(
    case: Case,
    mask,
    dtype: np.dtype,  # noqa: ANN001 - conformance.case.Mask
) -> np.ndarray | None:
    """The case's remaining mask components as one additive attention_bias (0/-inf + bias)."""
    attend, bias = build_mask(dataclasses.replace(case, mask=mask))
    return combined_additive(attend, bias, dtype)


class OrtContribMHA(OrtContribBase):
    OP = "MultiHeadAttention"

    def _unidirectional(self, case: Case) -> bool:
        """Whether the case's causal mask goes to `unidirectional` (a hook for
        adapters.traps_onnx, which uses it for every causal case)."""
        return case.mask.causal is not None and case.shape.query_len >= case.shape.kv_len

    def plan(self, case: Case, inputs: CaseInputs) -> _Plan:
        feeds = self._qkv(case, inputs)
        dtype = feeds["query"].dtype
        m = case.mask
        rest = m
        causal = False
        if self._unidirectional(case):
            # unidirectional without past is top-left only for T >= S (checked on ORT 1.32:
            # with T < S it masks rows 0..T-2 top-left and leaves the last row seeing every
            # key, neither alignment). For T < S the top-left causal pattern goes into
            # attention_bias (0/-inf) with the other mask components instead.
            causal = True
            rest = dataclasses.replace(rest, causal=None)
        padding = False
        if m.key_padding is not None:
            # key_padding_mask (B, S): 1 keeps the key, 0 pads it (filled with mask_filter_value),
            # the real keys at the start of the row or, left-padded (issue 14), at its end
            n = case.shape.kv_len
            keys, lengths = np.arange(n)[None, :], np.asarray(m.key_padding)[:, None]
            keep = keys >= n - lengths if m.padding_side == "left" else keys < lengths
            feeds["key_padding_mask"] = keep.astype(np.int32)
            padding = True
            rest = dataclasses.replace(rest, key_padding=None)
        bias = _attention_bias(case, rest, dtype)
        if bias is not None:
            feeds["attention_bias"] = bias
        cfg = self._config(
            case,
            causal=causal,
            padding=padding,
            bias_heads=0 if bias is None else bias.shape[1],
        )
        return _Plan(cfg, feeds)

    def check(self, case: Case) -> None:
        s = case.shape
        if case.decode is not None and not case.decode.memory and s.value_dim != s.key_dim:
            raise Unsupported(
                "with past_key/past_value MultiHeadAttention needs value head size == key head "
                "size (ORT: 'past_value dimension 3 should be same as head_size')"
            )
        if case.decode is not None and case.decode.memory and s.value_dim != s.key_dim:
            # found by the fuzzer (tests/test_fuzz.py, seed 0)
            raise Unsupported(
                "a cached cross-attention memory (key/value in BNSH) needs value head size == "
                "key head size (ORT: \"Input 'key' and 'value' shall have same shape (batch_size, "
                'num_heads, kv_sequence_length, head_size)")'
            )

    def _decode(self, case: Case, inputs: CaseInputs, device: str) -> np.ndarray:
        if case.decode.memory:
            return self._memory_steps(case, inputs, device)
        # One graph for prefill and steps: unidirectional, past_key/value (empty at first).
        cfg = self._config(case, causal=True, past=True)
        qkv = self._qkv(case, inputs)
        dtype = qkv["query"].dtype
        s = case.shape
        session = self.session(cfg, device)
        past_k = np.zeros((s.batch, s.num_kv_heads, 0, s.key_dim), dtype)
        past_v = np.zeros((s.batch, s.num_kv_heads, 0, s.value_dim), dtype)
        outputs = []
        for start, stop in _chunks(case):
            feeds = {n: a[:, start:stop] for n, a in qkv.items()}
            feeds.update(past_key=past_k, past_value=past_v)
            result = session.run(feeds)
            past_k, past_v = result["present_key"], result["present_value"]
            outputs.append(result["output"])
        return split_heads(np.concatenate(outputs, axis=1), s.num_heads)

    def _memory_steps(self, case: Case, inputs: CaseInputs, device: str) -> np.ndarray:
        """Issue 14: decoder steps over an encoder memory, as ORT's encoder-decoder exports run
        cross-attention with a cache: query (B, T, H*hd) per step, key/value the memory's
        projected K/V in the 4-D (B, N, S, hd) form, the same arrays every step."""
        session = self.session(self._config(case, memory=True), device)
        qkv = self._qkv(case, inputs)
        dtype = qkv["query"].dtype
        k, v = (np.ascontiguousarray(inputs.native(n).astype(dtype)) for n in ("k", "v"))
        outputs = [
            session.run({"query": qkv["query"][:, start:stop], "key": k, "value": v})["output"]
            for start, stop in _chunks(case)
        ]
        return split_heads(np.concatenate(outputs, axis=1), case.shape.num_heads)


class OrtContribGQA(OrtContribBase):
    OP = "GroupQueryAttention"

    def plan(self, case: Case, inputs: CaseInputs) -> _Plan:
        s = case.shape
        if case.cache is not None:  # issue 14: a step against a cache, seqlens_k per sequence
            return self._cache_plan(case, inputs)
        if s.query_len != s.kv_len:
            raise Unsupported("GroupQueryAttention takes new key/value of the query's length")
        feeds = self._qkv(case, inputs)
        dtype = feeds["query"].dtype
        m = case.mask
        rest = m
        causal = False
        window = -1
        if m.causal is not None and causal_offset(case) == 0:
            causal = True
            rest = dataclasses.replace(rest, causal=None)
        if m.window is not None and causal and m.window[1] == 0:
            # Since ORT 1.23 (microsoft/onnxruntime#25927) local_window_size counts the
            # current token: W keys i-W+1 .. i, i.e. W = left + 1.
            window = m.window[0] + 1
            rest = dataclasses.replace(rest, window=None)
        lengths = np.full(s.batch, s.kv_len)
        if m.key_padding is not None:
            lengths = np.asarray(m.key_padding)
            if (lengths < 1).any():
                raise Unsupported(
                    "seqlens_k (total length - 1) must be >= 0: GroupQueryAttention rejects a "
                    "batch entry with no valid key"
                )
            rest = dataclasses.replace(rest, key_padding=None)
        feeds["seqlens_k"] = (lengths - 1).astype(np.int32)
        feeds["total_sequence_length"] = np.array(s.kv_len, dtype=np.int32)
        bias = _attention_bias(case, rest, dtype)  # ALiBi, if any, arrives in here
        if bias is not None:
            feeds["attention_bias"] = bias
        cfg = self._config(
            case,
            causal=causal,
            window=window,
            bias_heads=0 if bias is None else bias.shape[1],
            weights="weights" in case.compare,
            **_score_attrs(case),
        )
        if cfg.head_sink:
            feeds["head_sink"] = np.asarray(case.scores.sink, dtype=dtype)
        if case.rope is not None:  # issue 14: do_rotary with the case's tables
            cfg, tables_in = _prompt_rotary(case, cfg, dtype, s.kv_len)
            feeds.update(tables_in)
        return _Plan(cfg, feeds)

    def _cache_plan(self, case: Case, inputs: CaseInputs) -> _Plan:
        """One step of T new tokens per sequence after a past of lengths[b] - T tokens, as
        onnxruntime-genai drives a batch of different lengths: past_key/value hold each
        sequence's past (the rest of the buffer unused), key/value its T new tokens,
        seqlens_k = lengths - 1, total_sequence_length = S. GQA is causal: its new tokens
        attend bottom-right, at each sequence's own end."""
        s, m = case.shape, case.mask
        t = s.query_len
        if m != Mask(causal=m.causal) or (t > 1 and m.causal != "bottom-right"):
            raise Unsupported("GroupQueryAttention's only mask here is its causal past")
        if case.scores is not None:
            raise Unsupported("score terms are wired for full calls only here")
        if case.rope is not None and case.rope.offset:
            raise Unsupported(
                "do_rotary places the new tokens at seqlens_k + 1 - T + i; a position offset "
                "has no input here"
            )
        if t > 1 and s.batch > 1:
            raise Unsupported(
                "ORT: 'batch_size must be 1 when sequence_length > 1 and past context is given'"
            )
        qkv = self._qkv(case, inputs)
        lengths = sequence_lengths(case)
        feeds = {"query": qkv["query"]}
        for name, src in (("key", "k"), ("value", "v")):
            feeds[name] = np.stack([qkv[name][b, n - t : n] for b, n in enumerate(lengths)])
            past = inputs.native(src)[:, :, : s.kv_len - t]
            feeds[f"past_{name}"] = np.ascontiguousarray(past.astype(qkv[name].dtype))
        feeds["seqlens_k"] = (lengths - 1).astype(np.int32)
        feeds["total_sequence_length"] = np.array(s.kv_len, dtype=np.int32)
        cfg = self._config(case, causal=True, past=True)
        if case.rope is not None:  # issue 14: per-sequence positions, GQA's own do_rotary
            cfg = self._rotary_step(case, feeds, cfg)
        return _Plan(cfg, feeds)

    @staticmethod
    def _rotary_step(case: Case, feeds: dict, cfg: ContribConfig) -> ContribConfig:
        """do_rotary rotates the step's new q and k of sequence b at seqlens_k[b] + 1 - T + i
        = lengths[b] - T + i (its own cache end); the past it attends to is what earlier
        steps left in the cache: keys already rotated at their positions 0.., written here
        with conformance.rotary's float64 tables rounded to the dtype (the harness prepares
        the cache; the kernel's own rotation is what the step checks)."""
        from conformance.cases.rotary import rotate, tables

        rope, s = case.rope, case.shape
        dtype = feeds["past_key"].dtype
        past = feeds["past_key"]
        cos, sin = tables(rope, s.key_dim, np.arange(past.shape[2]))
        feeds["past_key"] = np.ascontiguousarray(
            rotate(past.astype(np.float64), cos, sin, rope.style).astype(dtype)
        )
        cos, sin = tables(rope, s.key_dim, np.arange(s.kv_len))
        feeds["cos_cache"], feeds["sin_cache"] = cos.astype(dtype), sin.astype(dtype)
        return dataclasses.replace(
            cfg, rotary=(int(rope.style == "interleaved"), rope.dims(s.key_dim))
        )

    def check(self, case: Case) -> None:
        if case.shape.key_dim % 8:
            raise Unsupported(
                f"head_size {case.shape.key_dim}: GroupQueryAttention requires a multiple of 8 "
                "(ORT: 'head_size must be a multiple of 8')"
            )
        if case.decode is not None and case.scores is not None:
            raise Unsupported("score terms are wired for full (non-decode) calls only here")
        if case.decode is not None and case.decode.chunk > 1 and case.shape.batch > 1:
            raise Unsupported(  # issue 14: chunked prefill, ORT 1.32's input validation
                "ORT: 'batch_size must be 1 when sequence_length > 1 and past context is given'"
            )
        if case.rope is not None:  # issue 14: do_rotary's input validation (ORT 1.32)
            if case.shape.key_dim % 16:
                raise Unsupported(
                    f"head_size {case.shape.key_dim}: do_rotary requires a multiple of 16 "
                    "(ORT: 'head_size shall be a multiple of 16')"
                )
            if (case.rope.dims(case.shape.key_dim) // 2) % 8:
                raise Unsupported(
                    f"rotary_dim {case.rope.dims(case.shape.key_dim)}: do_rotary needs "
                    "rotary_dim / 2 a multiple of 8 (ORT: 'cos_cache dimension 1 must be <= "
                    "head_size / 2 and a multiple of 8')"
                )

    def _decode(self, case: Case, inputs: CaseInputs, device: str) -> np.ndarray:
        # Prompt then token steps, as onnxruntime-genai drives it: past_key/value (empty for
        # the prompt), seqlens_k = tokens so far - 1, total_sequence_length = tokens so far.
        cfg = self._config(case, causal=True, past=True)
        qkv = self._qkv(case, inputs)
        dtype = qkv["query"].dtype
        s = case.shape
        rotary: dict[str, np.ndarray] = {}
        if case.rope is not None:  # issue 14: do_rotary rotates each step's new q and k
            # at positions past length + i (seqlens_k + 1 - new tokens; 0.. for the prompt)
            # and appends the rotated keys to present_key: the cache keeps their positions.
            cfg, rotary = _prompt_rotary(case, cfg, dtype, s.query_len)
        session = self.session(cfg, device)
        past_k = np.zeros((s.batch, s.num_kv_heads, 0, s.key_dim), dtype)
        past_v = np.zeros((s.batch, s.num_kv_heads, 0, s.value_dim), dtype)
        outputs = []
        for start, stop in _chunks(case):
            feeds = {n: a[:, start:stop] for n, a in qkv.items()} | rotary
            feeds.update(past_key=past_k, past_value=past_v)
            feeds["seqlens_k"] = np.full(s.batch, stop - 1, dtype=np.int32)
            feeds["total_sequence_length"] = np.array(stop, dtype=np.int32)
            result = session.run(feeds)
            past_k, past_v = result["present_key"], result["present_value"]
            outputs.append(result["output"])
        return split_heads(np.concatenate(outputs, axis=1), s.num_heads)


def _prompt_rotary(
    case: Case, cfg: ContribConfig, dtype: np.dtype, positions: int
) -> tuple[ContribConfig, dict[str, np.ndarray]]:
    """GQA's do_rotary for a first prompt (positions 0..positions-1): the configuration with
    (interleaved, rotary dim), and the float64 cos/sin tables stored in the dtype."""
    from conformance.cases.rotary import tables

    rope = case.rope
    if rope.offset:
        raise Unsupported(
            "do_rotary places a first prompt at positions 0..S-1; a position offset "
            "needs a past cache (not wired here)"
        )
    cos, sin = tables(rope, case.shape.key_dim, np.arange(positions))
    interleaved = int(rope.style == "interleaved")
    cfg = dataclasses.replace(cfg, rotary=(interleaved, rope.dims(case.shape.key_dim)))
    return cfg, {"cos_cache": cos.astype(dtype), "sin_cache": sin.astype(dtype)}


def _score_attrs(case: Case) -> dict[str, Any]:
    """GQA's native score terms (issue 14): softcap, smooth_softmax (all sinks 0), head_sink."""
    terms = case.scores
    if terms is None:
        return {}
    return {
        "softcap": terms.softcap,
        "smooth_softmax": terms.off_by_one,
        "head_sink": terms.sink is not None and not terms.off_by_one,
    }


def _chunks(case: Case) -> list[tuple[int, int]]:
    """Token ranges of a decode case: the prefix at once, then `chunk` tokens per step
    (chunked prefill when chunk > 1, issue 14)."""
    prefix, total, chunk = case.decode.prefix, case.shape.query_len, case.decode.chunk
    steps = [(t, t + chunk) for t in range(prefix, total, chunk)]
    return ([(0, prefix)] if prefix else []) + steps


MHA_FEATURES = (
    KERNEL_SHAPES
    | PADDING
    | BOOLEAN_MASKS
    | ADDITIVE_MASKS
    | {"causal", "causal-top-left", "fully-masked-rows", "scale", "decode"}
    | {
        "decode-chunked",  # issue 14
        "decode-memory",  # issue 14: key/value as the cached (B, N, S, hd) cross K/V
    }
    # issue 14: key_padding_mask on either side; packed segments in attention_bias
    | SEGMENTS_AND_LEFT_PADDING
)
GQA_FEATURES = (
    GROUPED_HEADS
    | PADDING
    | BOOLEAN_MASKS
    | ADDITIVE_MASKS
    | {
        "kernel",
        "causal",
        "fully-masked-rows",
        "window",
        "scale",
        "decode",
        "decode-chunked",  # issue 14 (batch 1: ORT refuses chunks after a past otherwise)
        # issue 14: one step against a cache, seqlens_k per sequence (kv-len: only with cache:)
        "cache-lengths",
        "kv-len",
        "causal-bottom-right",
        "weights",
        # issue 14: softcap / smooth_softmax / head_sink natively; ALiBi in attention_bias
        "softcap",
        "sink",
        "sink-zero",
    }
    | ALIBI
    # issue 14: do_rotary with cos_cache/sin_cache, rotary_interleaved 0/1
    | ROPE
    | {"rope-per-sequence"}  # issue 14: do_rotary at each sequence's seqlens_k
)


CONTRIB_DOC = "https://github.com/microsoft/onnxruntime/blob/main/docs/ContribOperators.md"

# How MultiHeadAttention writes each mask source (measured on ORT 1.31 CPU, float32): the
# key_padding_mask as mask_filter_value (-10000) added to the logits in float32, the causal flag
# (unidirectional) as float32 lowest() in its place, and attention_bias (every other source,
# 0/-inf) added on top, so -inf wins. A row emptied only by padding is then the softmax of its
# logits - 10000 (float32 rounds that sum to multiples of 2**-10, which the reference models);
# a left-padded causal batch's padding rows and a packed row's padded last segment are the
# softmax over the padded keys the -inf and causal parts leave (specs/packed.yaml:
# packed/left-padding-causal, packed/segments-padding). With T < S this adapter writes the causal
# mask into attention_bias (unidirectional is neither alignment there), as -inf: the second
# record. The two cannot be told apart by case features, so both are declared and each case
# is verified against them in order (conformance.verdicts.divergences).
MHA_WRITES = (
    "key_padding_mask positions get mask_filter_value (default -10000) added to the logits, "
    "not -inf, while attention_bias carries -inf: a fully masked row is the softmax over its "
    "padded keys that no other source masks, each logit - 10000 in float32 (the softmax of the "
    "unmasked row, to float32's 2**-10 rounding of the shifted logits, when padding alone "
    "emptied it)"
)
BIAS_SOURCES = BOOLEAN_SOURCES - {"causal", "key-padding"} | {"additive-mask"}
MHA_DIVERGENCES = (
    Divergence(
        id="ort-mha-mask-filter-value",
        reason=MHA_WRITES + "; the causal flag (unidirectional, T >= S) writes float32 "
        "lowest() over the padding value, so a row the causal flag and attention_bias empty "
        "is uniform over its causally masked keys",
        link=CONTRIB_DOC + "#com.microsoft.MultiHeadAttention",
        when=frozenset({"key-padding", "fully-masked-rows"}),
        masked_rows=AsWritten(
            (
                Fill(BIAS_SOURCES, "-inf"),
                Fill({"causal"}, "finfo-min"),
                Fill({"key-padding"}, -10000.0),
            ),
            precision="float32",
        ),
    ),
    Divergence(
        id="ort-mha-mask-filter-value-causal-bias",
        reason=MHA_WRITES + "; with T < S the causal mask travels in attention_bias as -inf",
        link=CONTRIB_DOC + "#com.microsoft.MultiHeadAttention",
        when=frozenset({"key-padding", "fully-masked-rows", "causal"}),
        masked_rows=AsWritten(
            (Fill(BIAS_SOURCES | {"causal"}, "-inf"), Fill({"key-padding"}, -10000.0)),
            precision="float32",
        ),
    ),
)

MHA_UNSUPPORTED = {
    "grouped-query": "num_heads only: key/value need as many heads as the query "
    "(GroupQueryAttention is ort.contrib.gqa)",
    "multi-query": "num_heads only: key/value need as many heads as the query",
    "causal-bottom-right": "unidirectional without past is top-left for T >= S and neither "
    "alignment for T < S (the last row sees every key); bottom-right only with a past cache",
    "window": "no sliding-window attribute",
    "weights": "its 4th output (qk) is the scaled logits before softmax, not the weights",
    "weights-mean": "no head-averaged weights",
    "bfloat16": "NumPy has no bfloat16 to feed ONNX Runtime",
    "float64": "the contrib schema allows float, float16 and bfloat16 only",
}

GQA_UNSUPPORTED = {
    "kv-len": "new key/value must have the query's length (a longer context comes from "
    "past_key/past_value)",
    "value-dim": "one head_size for query, key and value",
    "causal-top-left": "T == S only (kv-len)",
    "causal-bottom-right": "T == S only (kv-len)",
    "weights-mean": "per-head weights only (output_qk)",
    "bfloat16": "NumPy has no bfloat16 to feed ONNX Runtime",
    "float64": "the contrib schema allows float, float16 and bfloat16 only",
}

MHA_NOTES = (
    "Q/K/V go in as 3-D (B, S, H*hd); key padding as key_padding_mask (B, S) int32, 1 = keep; "
    "every other mask component (boolean masks as 0/-inf, additive masks, biases, query "
    "padding) as one float attention_bias (B, 1|H, T, S); causal as unidirectional=1. "
    "unidirectional=1 for T >= S, where it is top-left. unidirectional without past masks "
    "rows 0..T-2 only (the CPU kernel's loop stops before the last row, right for T == S): "
    "with T < S the last query row sees every key, neither top-left nor bottom-right, so for "
    "T < S the top-left causal mask goes into attention_bias as 0/-inf instead. Decode: one "
    "graph with unidirectional=1 and past_key/past_value (empty at first), present_* fed "
    "back (bottom-right by the past length, as decoding needs)."
)
GQA_NOTES = (
    "Q (B, S, H*hd), K/V (B, S, G*hd); key padding as seqlens_k = length - 1 (int32) with "
    "total_sequence_length = S; other mask components as a float attention_bias; causal=1 "
    "or 0 (bidirectional); a left window (left, 0) with causal as local_window_size = left + 1 "
    "(since microsoft/onnxruntime#25927 the window counts the current token). Weights: "
    "output_qk with qk_output=2 (after softmax). Decode: prompt then one token per step, "
    "past_key/past_value fed back, seqlens_k = tokens so far - 1."
)


def _decl(name: str, summary: str, features: frozenset, **kw: Any) -> Declaration:
    return Declaration(
        name=name,
        summary=summary,
        framework="onnxruntime",
        features=features,
        dtypes=frozenset({"float32", "float16"}),
        requires=("onnx", "onnxruntime"),
        worker="onnx",
        **kw,
    )


OrtContribMHA.declaration = _decl(
    "ort.contrib.mha",
    "com.microsoft MultiHeadAttention in ONNX Runtime: 3-D Q/K/V, key_padding_mask, "
    "attention_bias, unidirectional",
    MHA_FEATURES,
    divergences=MHA_DIVERGENCES,
    unsupported_reasons=MHA_UNSUPPORTED,
    notes=MHA_NOTES,
)
OrtContribGQA.declaration = _decl(
    "ort.contrib.gqa",
    "com.microsoft GroupQueryAttention in ONNX Runtime: 3-D Q/K/V, seqlens_k, causal, "
    "local_window_size, attention_bias",
    GQA_FEATURES,
    unsupported_reasons=GQA_UNSUPPORTED,
    notes=GQA_NOTES,
)

ADAPTERS = [OrtContribMHA, OrtContribGQA]
