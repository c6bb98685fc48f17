"""The resolved attention case: every number an implementation needs, nothing framework-specific.

Shape letters used throughout (as in the multi-query paper and JAX's docstrings):
    B batch, T query length, S key/value length, H query heads, G key/value heads (H = G * r),
    K key/query head dim, V value head dim, Dq/Dk/Dv model dims of the query/key/value inputs,
    Do output dim.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass, field
from typing import Any, Literal

from .kv_cache import Cache
from .masks import any_fully_masked_row
from .rotary import Rope
from .score_terms import ScoreTerms

DTYPES = ("float64", "float32", "float16", "bfloat16")
MODES = ("layer", "kernel")
COMPARABLE = ("output", "weights", "weights_mean")
MASKED_ROW_POLICIES = ("nan", "zeros", "uniform", "fill")
# issue 14: finite masking values as users write them (mask.fill)
FILL_WORDS = ("finfo-min",)
PADDING_SIDES = ("right", "left")
CAUSAL_ALIGNMENTS = ("top-left", "bottom-right")
# Size tiers, smallest first: a run at one tier includes the tiers before it.
#   small    toy sizes (rows <= ~32): every semantic question, in seconds
#   default  kernel scale (rows ~30-2k): tile and block boundaries, in the default run
#   large    long contexts (8k-32k): GPU runners and nightly jobs
TIERS = ("small", "default", "large")

Mode = Literal["layer", "kernel"]


@dataclass(frozen=True)
class Shape:
    """Sizes of one case. `inner` holds extra axes for multi-axis attention (Keras attention_axes)."""

    batch: int  # B
    query_len: int  # T (product of the attention axes' sizes when attention_axes is set)
    kv_len: int  # S
    num_heads: int  # H
    num_kv_heads: int  # G
    key_dim: int  # K
    value_dim: int  # V
    query_dim: int  # Dq
    key_input_dim: int  # Dk
    value_input_dim: int  # Dv
    output_dim: int  # Do
    query_shape: tuple[int, ...] = ()  # axes between batch and features, multi-axis only
    kv_shape: tuple[int, ...] = ()
    attention_axes: tuple[int, ...] = ()  # axes of the full [B, *inner, D] tensor

    @property
    def group_size(self) -> int:
        """r: query heads per key/value head."""
        return self.num_heads // self.num_kv_heads

    @property
    def outer(self) -> tuple[int, ...]:
        """Sizes of the inner axes that are not attended over (they act like batch axes)."""
        axes = set(self.attention_axes)
        return tuple(n for i, n in enumerate(self.query_shape, start=1) if i not in axes)


@dataclass(frozen=True)
class Mask:
    """Neutral mask description; components combine with logical AND (additive terms add)."""

    causal: str | None = None  # "top-left" | "bottom-right"
    key_padding: tuple[int, ...] | None = None  # valid key count per batch element
    query_padding: tuple[int, ...] | None = None  # valid query count per batch element
    random_density: float | None = None  # fraction of (t, s) pairs masked out, seeded
    per_head: bool = False  # random/additive masks differ per head: [B, H, T, S]
    additive_density: float | None = None  # 0/-inf additive mask, fraction -inf
    bias_scale: float | None = None  # finite additive bias ~ N(0, scale^2)
    window: tuple[int, int] | None = None  # (left, right) visible keys around the diagonal
    masked_rows: tuple[tuple[int, int], ...] = ()  # (b, t) rows with every key masked
    fully_masked_rows: str = "nan"  # what the case expects such a row to yield
    # issue 14: masked keys reach the implementation as this finite additive value (a number
    # < 0 or "finfo-min") instead of -inf or a boolean; the reference still excludes them
    fill: float | str | None = None
    # issue 14: packed sequences, segment lengths per batch element (each sums to T = S)
    segments: tuple[tuple[int, ...], ...] | None = None
    padding_side: str = "right"  # issue 14: key/query padding at the end or the start

    def is_empty(self) -> bool:
        return (
            self.causal is None
            and self.key_padding is None
            and self.query_padding is None
            and self.random_density is None
            and self.additive_density is None
            and self.bias_scale is None
            and self.window is None
            and not self.masked_rows
            and self.segments is None
        )


@dataclass(frozen=True)
class Decode:
    """Incremental decoding: run `prefix` tokens at once, then `steps` steps of `chunk` tokens
    each (chunk > 1: chunked prefill, issue 14). `memory` (issue 14): the keys are an encoder
    memory cached once (cross-attention): every step attends to all of it, not causally."""

    prefix: int
    steps: int
    chunk: int = 1
    memory: bool = False


@dataclass(frozen=True)
class Dropout:
    """Attention dropout at `rate`. training False: inference, where the result must equal the
    no-dropout one; True: training mode, checked statistically over many seeded draws
    (conformance.oracle.dropout). `seed` is set by that check for each draw; adapters seed their
    framework's generator with it."""

    rate: float
    training: bool = False
    draws: int = 100  # training mode: how many seeded runs the statistical check makes
    seed: int = 0


@dataclass(frozen=True)
class Case:
    """One resolved case. `id` is stable and readable, e.g. `masks/causal[T=5,S=7,float32]`."""

    id: str
    family: str
    name: str
    mode: Mode
    shape: Shape
    mask: Mask = field(default_factory=Mask)
    dtype: str = "float32"
    scale: float | None = None
    self_attention: bool = True  # layer mode: key/value inputs are the query input itself
    use_bias: bool = True
    add_bias_kv: bool = False
    add_zero_attn: bool = False
    decode: Decode | None = None
    compare: tuple[str, ...] = ("output",)
    # also compare the gradients (conformance.oracle.backward.gradient_names)
    gradients: bool = False
    seed: int = 0
    description: str = ""
    source: str = ""  # "file:line" the case came from
    params: tuple[tuple[str, Any], ...] = ()  # matrix parameters, for reports and ids
    expected: dict | None = None  # stored expected outputs (imported peer suites), by name
    # "file.npz#group": the case's own input arrays (and mask arrays), loaded instead of drawn
    inputs: str | None = None
    dropout: Dropout | None = None
    tier: str = "small"
    scores: ScoreTerms | None = (
        None  # issue 14: softcap, ALiBi, sinks (conformance.cases.score_terms)
    )
    rope: Rope | None = None  # issue 14: rotary position embeddings (conformance.cases.rotary)
    cache: Cache | None = None  # issue 14: cache lengths, paged layout (conformance.cases.kv_cache)

    @property
    def data_key(self) -> str:
        """What input generation is keyed on: the id without the dtype.

        float32 and float64 variants of one case then see the same underlying numbers.
        """
        params = ",".join(f"{k}={v}" for k, v in self.params if k != "dtype")
        return f"{self.family}/{self.name}[{params}]#{self.seed}"

    @property
    def effective_scale(self) -> float:
        return self.scale if self.scale is not None else 1.0 / math.sqrt(self.shape.key_dim)

    @property
    def extra_keys(self) -> int:
        """Key positions appended after projection (torch add_bias_kv / add_zero_attn)."""
        return int(self.add_bias_kv) + int(self.add_zero_attn)

    @functools.cached_property
    def features(self) -> frozenset[str]:
        """Feature tags an implementation must support to express this case."""
        return case_features(self)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @staticmethod
    def from_dict(data: dict) -> Case:
        data = dict(data)
        shape = dict(data["shape"])
        for key in ("query_shape", "kv_shape", "attention_axes"):
            shape[key] = tuple(shape.get(key, ()))
        mask = dict(data.get("mask") or {})
        for key in ("key_padding", "query_padding", "window"):
            if mask.get(key) is not None:
                mask[key] = tuple(mask[key])
        mask["masked_rows"] = tuple(tuple(r) for r in mask.get("masked_rows", ()))
        if mask.get("segments") is not None:  # issue 14
            mask["segments"] = tuple(tuple(r) for r in mask["segments"])
        decode = data.get("decode")
        data["shape"] = Shape(**shape)
        data["mask"] = Mask(**mask)
        data["decode"] = Decode(**decode) if decode else None
        dropout = data.get("dropout")
        data["dropout"] = Dropout(**dropout) if dropout else None
        scores = data.get("scores")  # issue 14
        if scores:
            for key in ("alibi", "sink"):
                if scores.get(key) is not None:
                    scores[key] = tuple(scores[key])
        data["scores"] = ScoreTerms(**scores) if scores else None
        rope = data.get("rope")  # issue 14: rotary position embeddings
        data["rope"] = Rope(**rope) if rope else None
        cache = data.get("cache")  # issue 14: key/value cache lengths and pages
        if cache:
            cache = dict(cache)
            if cache.get("lengths") is not None:
                cache["lengths"] = tuple(cache["lengths"])
            if cache.get("block_table") is not None:
                cache["block_table"] = tuple(tuple(r) for r in cache["block_table"])
        data["cache"] = Cache(**cache) if cache else None
        data["compare"] = tuple(data.get("compare", ("output",)))
        data["params"] = tuple(tuple(p) for p in data.get("params", ()))
        return Case(**data)


# Feature tags. An adapter declares which it supports; a case needing one it lacks is
# `unsupported`. Every tag is documented here because users read them in reports.
FEATURES: dict[str, str] = {
    "layer": "full layer: query/key/value/output projections with canonical weights",
    "kernel": "scaled dot-product core on already-projected per-head Q, K, V",
    "cross-attention": "layer mode: key/value come from a different input than the query",
    "kv-input-dims": "key/value inputs have model dims different from the query's",
    "value-dim": "value head dim differs from key head dim",
    "output-dim": "output dim differs from the query model dim",
    "kv-len": "key/value length differs from query length",
    "grouped-query": "fewer key/value heads than query heads (1 < G < H)",
    "multi-query": "a single key/value head shared by all query heads (G = 1 < H)",
    "causal": "causal mask (T == S, both alignments agree)",
    "causal-top-left": "causal mask aligned at the top-left when T != S",
    "causal-bottom-right": "causal mask aligned at the bottom-right when T != S",
    "key-padding": "per-batch key lengths (padding at the end)",
    "query-padding": "per-batch query lengths (padded query rows fully masked)",
    "bool-mask": "explicit boolean mask [B, T, S]",
    "per-head-mask": "explicit mask that differs per head [B, H, T, S]",
    "additive-mask": "additive float mask with values 0 and -inf",
    "attn-bias": "additive finite bias added to the logits",
    "window": "sliding-window (local) attention",
    "fully-masked-rows": "some query rows have every key masked",
    "scale": "a scale other than 1/sqrt(K)",
    "no-bias": "projections without biases",
    "bias-kv": "torch add_bias_kv: a learned key/value position appended",
    "zero-attn": "torch add_zero_attn: a zero key/value position appended",
    "decode": "incremental decoding with a key/value cache",
    "multi-axis": "attention over several axes (Keras attention_axes)",
    "weights": "per-head attention weights [B, H, T, S] are compared",
    "weights-mean": "head-averaged attention weights [B, T, S] are compared",
    "dropout": "a dropout rate is given, run in inference mode: must equal the no-dropout result",
    "dropout-training": "dropout in training mode, checked statistically over seeded runs",
    "gradients": "gradients for a seeded upstream gradient are compared (inputs and weights)",
    # issue 14: score terms of modern attention (conformance.cases.score_terms)
    "softcap": "logit soft-capping cap * tanh(logits / cap) before masking (Gemma 2)",
    "alibi": "ALiBi: per-head linear position bias -slope * distance (any slopes)",
    "alibi-standard": "ALiBi with the paper's standard slopes (2^(-8 h / H))",
    "sink": "a sink logit per head added to the softmax denominator (GPT-OSS sinks)",
    "sink-zero": "every sink logit is 0: off-by-one softmax (ORT smooth_softmax)",
    # issue 14: rotary position embeddings on q and k (conformance.cases.rotary)
    "rope-half": "rotary position embeddings, rotate-half pairs (i, i + d/2): GPT-NeoX, Llama",
    "rope-interleaved": "rotary position embeddings, interleaved pairs (2i, 2i + 1): GPT-J",
    "rope-partial": "rotary embeddings on the first rotary_dim dims of each head only",
    # issue 14: masks as users write them, packed sequences
    "finite-fill": "masked keys arrive as a finite additive value (-1e9, -10000, finfo.min) in "
    "a float mask, not -inf or a boolean",
    "segments": "packed sequences: several segments per row, attention only within a segment "
    "(segment ids, cu_seqlens, document masks)",
    "left-padding": "key/query padding at the start of the row (generation batches), not the end",
    # issue 14: decoding beyond a prefix and single steps (conformance.cases.kv_cache)
    "decode-chunked": "incremental decoding with several new tokens per step (chunked prefill): "
    "each chunk attends to the cache and causally within itself",
    "decode-memory": "decoding steps whose keys are a cached encoder memory (cross-attention): "
    "every step attends to all of it, not causally",
    "cache-lengths": "sequences of different cache lengths in one batch; each sequence's queries "
    "end its own cache (ORT GQA seqlens_k, JAX key_value_seq_lengths)",
    "rope-per-sequence": "rotary positions that differ per sequence: rope with cache lengths "
    "puts each sequence's queries at the end of its own cache",
    "paged-kv": "keys/values in pages of a pool addressed through a block table, pages "
    "non-contiguous (vLLM, FlashAttention block_table)",
}
FEATURES.update({dtype: f"{dtype} inputs, weights and outputs" for dtype in DTYPES})


def case_features(case: Case) -> frozenset[str]:
    s = case.shape
    m = case.mask
    tags = {case.mode, case.dtype}
    if case.mode == "layer":
        if not case.self_attention:
            tags.add("cross-attention")
        if s.key_input_dim != s.query_dim or s.value_input_dim != s.query_dim:
            tags.add("kv-input-dims")
        if s.output_dim != s.query_dim:
            tags.add("output-dim")
        if not case.use_bias:
            tags.add("no-bias")
    if s.value_dim != s.key_dim:
        tags.add("value-dim")
    if s.kv_len != s.query_len:
        tags.add("kv-len")
    if s.num_kv_heads == 1 and s.num_heads > 1:
        tags.add("multi-query")
    elif s.num_kv_heads < s.num_heads:
        tags.add("grouped-query")
    if m.causal:
        tags.add("causal")
        if s.query_len != s.kv_len:
            tags.add(f"causal-{m.causal}")
    if m.key_padding is not None:
        tags.add("key-padding")
    if m.query_padding is not None:
        tags.add("query-padding")
    if m.random_density is not None:
        tags.add("bool-mask")
    if m.per_head:
        tags.add("per-head-mask")
    if m.additive_density is not None:
        tags.add("additive-mask")
    if m.bias_scale is not None:
        tags.add("attn-bias")
    if m.window is not None:
        tags.add("window")
    if m.fill is not None:  # issue 14
        tags.add("finite-fill")
    if m.segments is not None:
        tags.add("segments")
    if m.padding_side == "left" and (m.key_padding is not None or m.query_padding is not None):
        tags.add("left-padding")
    if has_fully_masked_rows(case):
        tags.add("fully-masked-rows")
    if case.scale is not None:
        tags.add("scale")
    if case.add_bias_kv:
        tags.add("bias-kv")
    if case.add_zero_attn:
        tags.add("zero-attn")
    if case.decode is not None:
        tags.add("decode")
        if case.decode.chunk > 1:  # issue 14
            tags.add("decode-chunked")
        if case.decode.memory:
            tags.add("decode-memory")
    if case.cache is not None:  # issue 14
        if case.cache.lengths is not None:
            tags.add("cache-lengths")
            if case.rope is not None:  # per-sequence rotary positions (conformance.cases.rotary)
                tags.add("rope-per-sequence")
        if case.cache.paged:
            tags.add("paged-kv")
    if s.attention_axes:
        tags.add("multi-axis")
    if "weights" in case.compare:
        tags.add("weights")
    if "weights_mean" in case.compare:
        tags.add("weights-mean")
    if case.dropout is not None:
        tags.add("dropout-training" if case.dropout.training else "dropout")
    if case.gradients:
        tags.add("gradients")
    terms = case.scores  # issue 14
    if terms is not None:
        if terms.softcap is not None:
            tags.add("softcap")
        if terms.alibi is not None:
            tags.add("alibi-standard" if terms.alibi_standard else "alibi")
        if terms.sink is not None:
            tags.add("sink-zero" if terms.off_by_one else "sink")
    if case.rope is not None:  # issue 14: rotary position embeddings
        tags.add(f"rope-{case.rope.style}")
        if case.rope.partial(s.key_dim):
            tags.add("rope-partial")
    return frozenset(tags)


def in_tier(case: Case, tier: str) -> bool:
    """Whether a run at `tier` includes the case (each tier includes the smaller ones)."""
    return TIERS.index(case.tier) <= TIERS.index(tier)


def has_fully_masked_rows(case: Case) -> bool:
    """Whether any query row ends up with every key masked (computed, not guessed)."""
    if case.extra_keys:  # torch's appended key positions are always visible
        return False
    return any_fully_masked_row(case)
