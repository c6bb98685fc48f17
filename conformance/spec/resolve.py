"""Spec files (YAML) -> resolved cases.

A spec file:

    # yaml-language-server: $schema=../conformance/schema/spec.schema.json
    version: 1
    family: masks                  # defaults to the file name
    defaults: {mode: kernel}       # merged into every case
    cases:
      - name: causal-${align}
        shape: {batch: 2, query_len: $T, kv_len: $S, num_heads: 4, key_dim: 8}
        mask: {causal: $align}
        matrix:
          align: [top-left, bottom-right]
          T: [5]
          S: [7]
          dtype: [float32, float64]    # names a case key: applied directly

expands into `masks/causal-top-left[T=5,S=7,float32]` and three siblings. A matrix parameter
is used by `$name` (a whole value) or `${name}` (inside a string); a parameter named like a
case or shape key (dtype, mode, scale, batch, num_heads, ...) applies directly.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import re
from pathlib import Path
from typing import Any

from .case import (
    CAUSAL_ALIGNMENTS,
    COMPARABLE,
    DTYPES,
    FILL_WORDS,
    MASKED_ROW_POLICIES,
    MODES,
    PADDING_SIDES,
    TIERS,
    Case,
    Decode,
    Dropout,
    Mask,
    Shape,
)
from .errors import SpecError, did_you_mean
from .kv_cache import MAX_PAGE_SIZE, PAGE_ORDERS, Cache, pages_needed, seeded_block_table
from .limits import (
    CASE_ID_HINT,
    MAX_BIAS_SCALE,
    MAX_DROPOUT_DRAWS,
    MAX_LIST_INT,
    MAX_SPEC_INT,
    MAX_TOTAL_CASES,
    TOTAL_CASES_HINT,
    case_id_problem,
    yaml_number_hint,
)
from .paths import display_path, shipped_specs_dir  # noqa: F401 - re-exported
from .rotary import DEFAULT_THETA, ROPE_STYLES, Rope
from .score_terms import ScoreTerms, standard_alibi_slopes
from .yamlload import LocatedDict, LocatedList, load_yaml_file

SPEC_VERSION = 1
MAX_MATRIX_CASES = 10_000
# Memory a case's arrays may need, per tier (spec.estimate_bytes): the reference works a
# block of rows at a time, so this bounds inputs, outputs and dense masks, not T x S logits.
MAX_CASE_BYTES = {"small": 64 * 2**20, "default": 512 * 2**20, "large": 3 * 2**30}
MAX_INNER_AXES = 5  # multi-axis: axes between batch and features (frameworks' einsums run out)

FILE_KEYS = {
    "version": "spec format version (1)",
    "family": "case family: the first part of every case id",
    "description": "what this file tests",
    "defaults": "keys merged into every case",
    "cases": "list of cases or case templates",
}
CASE_KEYS = {
    "name": "case name, may use ${param}",
    "description": "what the case checks and why",
    "mode": "layer (with projections) or kernel (scaled dot-product on per-head Q, K, V)",
    "shape": "sizes: batch, query_len, kv_len, num_heads, num_kv_heads, key_dim, ...",
    "mask": "neutral mask components",
    "dtype": "float64, float32, float16 or bfloat16",
    "scale": "logit scale; default 1/sqrt(key_dim)",
    "cross": "layer mode: key/value come from their own inputs",
    "bias": "projection biases on (default) or off",
    "add_bias_kv": "torch add_bias_kv: learned key/value position appended",
    "add_zero_attn": "torch add_zero_attn: zero key/value position appended",
    "decode": "incremental decoding: {prefix, steps, chunk}",
    "compare": "what to compare: output, weights, weights_mean",
    "gradients": "also compare gradients for a seeded upstream gradient (default false)",
    "seed": "seed for inputs and weights (default 0)",
    "inputs": "file.npz#group: the case's own input and mask arrays (path relative to the spec)",
    "expected": "{output: file.npz#member, ...}: stored expected outputs of a peer test suite",
    "dropout": "{rate, training, draws}: attention dropout, inference (default) or training mode",
    "tier": "size tier: small (default), default (kernel scale, in the default run) or large",
    "scores": "{softcap, alibi, sink}: score terms of modern attention (conformance.score_terms)",
    "rope": "{style, theta, rotary_dim, offset}: rotary position embeddings on q and k",
    "cache": "{lengths, page_size, pages, num_pages}: the keys as a decoder's cache: per-sequence "
    "lengths, a paged layout (conformance.kv_cache)",
    "matrix": "parameters expanded into one case per combination",
}
SCORE_KEYS = {  # issue 14
    "softcap": "cap > 0: logits -> cap * tanh(logits / cap), before bias and mask (Gemma 2)",
    "alibi": "standard (the paper's slopes) or a list of H slopes: bias -slope * |t + S - T - s|",
    "sink": "zero (off-by-one softmax) or a list of H sink logits added to the denominator",
}
ROPE_KEYS = {  # issue 14: rotary position embeddings (conformance.rotary)
    "style": "half (rotate-half pairs (i, i + d/2): GPT-NeoX, Llama) or interleaved (pairs "
    "(2i, 2i + 1): GPT-J, RoFormer); default half",
    "theta": "frequency base > 0: pair i turns at theta^(-2i/d) per position (default 10000)",
    "rotary_dim": "d, even, <= key_dim: rotate the first d dims of each head (default all)",
    "offset": "position of key 0 (default 0); query t sits at offset + S - T + t",
}
DROPOUT_KEYS = {
    "rate": "dropout probability p, 0 < p < 1",
    "training": "false (default): inference, must equal no dropout; true: statistical check",
    "draws": "training mode: seeded runs the statistical check makes (default 100)",
}
SHAPE_KEYS = {
    "batch": "B (default 2)",
    "query_len": "T, query length",
    "kv_len": "S, key/value length (default T)",
    "num_heads": "H, query heads",
    "num_kv_heads": "G, key/value heads (default H; 1 = multi-query)",
    "key_dim": "K, per-head query/key dim",
    "value_dim": "V, per-head value dim (default K)",
    "query_dim": "Dq, query input model dim (layer mode; default H*K)",
    "key_input_dim": "Dk, key input model dim (default Dq)",
    "value_input_dim": "Dv, value input model dim (default Dk)",
    "output_dim": "Do, output dim (default Dq)",
    "query_shape": "multi-axis: the axes between batch and features, e.g. [5, 3, 4]",
    "kv_shape": "multi-axis: same for key/value (default query_shape)",
    "attention_axes": "multi-axis: axes attended over, counted in the full [B, ..., D] tensor",
}
MASK_KEYS = {
    "causal": "top-left or bottom-right (true = top-left)",
    "key_padding": "valid key count per batch element",
    "query_padding": "valid query count per batch element",
    "random": "{density}: seeded boolean mask, that fraction masked out (stored with inputs)",
    "additive": "{density}: seeded 0/-inf additive mask (stored with inputs)",
    "bias": "{scale}: seeded finite additive bias (stored with inputs)",
    "per_head": "random/additive/bias masks differ per head",
    "window": "[left, right]: visible keys around the diagonal",
    "masked_rows": "[[b, t], ...]: query rows with every key masked",
    "fully_masked_rows": "what a row with every key masked must yield: nan, zeros, uniform or "
    "fill (the row as the finite fill writes it)",
    "fill": "masked keys reach the implementation as this finite additive value: a number < 0 "
    "(-1.0e9, -10000) or finfo-min (the dtype's most negative number)",
    "segments": "packed sequences: segment lengths per batch element, each summing to the row "
    "length, e.g. [[3, 5, 2], [10]]; attention stays within a segment",
    "padding_side": "right (default: valid tokens first) or left (valid tokens last, as "
    "generation batches pad) for key_padding and query_padding",
}
LAYER_DIMS = ("query_dim", "key_input_dim", "value_input_dim", "output_dim")
DECODE_KEYS = {
    "prefix": "tokens processed at once first",
    "steps": "steps after the prefix",
    "chunk": "new tokens per step (default 1; more is chunked prefill)",
    "memory": "true: the keys are an encoder memory of kv_len positions, cached once; every "
    "step attends to all of it (cross-attention), not causally (kernel mode)",
}
CACHE_KEYS = {  # issue 14: conformance.kv_cache
    "lengths": "cache length per sequence (query_len <= length <= kv_len); each sequence's "
    "queries are its last query_len tokens",
    "page_size": "positions per page (16, 64, 256 ...): the cache is stored in pages",
    "pages": "shuffled (default: a seeded permutation of the pool), in-order, or an explicit "
    "block table: one list of page numbers per sequence",
    "num_pages": "pages in the pool (default: the pages the sequences need)",
}
DIRECT_PARAMS = set(CASE_KEYS) - {"matrix", "name", "description", "shape", "mask", "decode"}
DIRECT_PARAMS -= {"scores", "rope", "cache"}
DIRECT_PARAMS |= set(SHAPE_KEYS)

_REF = re.compile(r"\$\{(\w+)\}|^\$(\w+)$")


class _Ctx:
    """Where we are, for error messages."""

    def __init__(self, file: str) -> None:
        self.file = file

    def error(self, message: str, node: Any = None, key: str | None = None, hint=None) -> SpecError:
        line = None
        if isinstance(node, LocatedDict):
            line = node.line_of(key) if key else node.line
        elif isinstance(node, LocatedList):
            line = node.line
        return SpecError(message, file=self.file, line=line, key=key, hint=hint)


def _check_keys(ctx: _Ctx, node: LocatedDict, allowed: dict[str, str], what: str) -> None:
    for key in node:
        if key not in allowed:
            hint = did_you_mean(key, allowed) or f"{what} keys are: {', '.join(allowed)}"
            raise ctx.error(f"unknown {what} key", node, key, hint)


def _mapping(ctx: _Ctx, value: Any, parent: Any, key: str) -> LocatedDict:
    if not isinstance(value, dict):
        raise ctx.error(f"must be a mapping (key: value pairs), got {_kind(value)}", parent, key)
    return value


def _int(ctx: _Ctx, value: Any, parent: Any, key: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        hint = yaml_number_hint(value)
        raise ctx.error(f"must be an integer, got {_show(value)}", parent, key, hint)
    if value < minimum:
        raise ctx.error(f"must be >= {minimum}, got {value}", parent, key)
    if value > MAX_SPEC_INT:  # issue 18: no OverflowError deep inside NumPy later
        raise ctx.error(f"must be <= {MAX_SPEC_INT}, got {_show(value, 30)}", parent, key)
    return value


def _number(ctx: _Ctx, value: Any, parent: Any, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        hint = yaml_number_hint(value)
        raise ctx.error(f"must be a number, got {_show(value)}", parent, key, hint)
    if not math.isfinite(value):
        raise ctx.error(f"must be finite, got {_show(value)}", parent, key)
    return float(value)


def _bool(ctx: _Ctx, value: Any, parent: Any, key: str) -> bool:
    if not isinstance(value, bool):
        raise ctx.error(f"must be true or false, got {_show(value)}", parent, key)
    return value


def _choice(ctx: _Ctx, value: Any, parent: Any, key: str, choices) -> str:  # noqa: ANN001
    if value not in choices:
        hint = did_you_mean(str(value), choices) or f"choose one of: {', '.join(choices)}"
        raise ctx.error(f"{_show(value)} is not one of {', '.join(choices)}", parent, key, hint)
    return value


def _int_list(ctx: _Ctx, value: Any, parent: Any, key: str, minimum: int = 0) -> tuple[int, ...]:
    if not isinstance(value, list):
        raise ctx.error(f"must be a list of integers, got {_show(value)}", parent, key)
    for item in value:
        if isinstance(item, bool) or not isinstance(item, int) or item < minimum:
            raise ctx.error(f"must hold integers >= {minimum}, got {_show(item)}", parent, key)
        if item > MAX_LIST_INT:  # windows, paddings, axes: sizes, never this large
            raise ctx.error(f"must hold integers <= {MAX_LIST_INT}, got {_show(item, 30)}",
                            parent, key)  # fmt: skip
    return tuple(value)


def _density(ctx: _Ctx, value: Any, parent: Any, key: str) -> float:
    node = _mapping(ctx, value, parent, key)
    _check_keys(ctx, node, {"density": "fraction masked"}, f"mask.{key}")
    if "density" not in node:
        raise ctx.error("needs a density", parent, key, "e.g. {density: 0.3}")
    density = _number(ctx, node["density"], node, "density")
    if not 0 <= density <= 1:
        raise ctx.error(f"density must be within [0, 1], got {density}", node, "density")
    return density


# --- substitution of matrix parameters ------------------------------------------------------


def _substitute(value: Any, params: dict[str, Any], whole: set[str], inline: set[str]) -> Any:
    """Replace $name / ${name} references; keep the located containers and their lines.

    `whole` collects parameters used as a whole value (`$T`), `inline` those used inside text
    (`causal-${align}`): only a whole-value use stops a parameter named like a case key from
    also setting that key.
    """
    if isinstance(value, LocatedDict):
        out = LocatedDict({k: _substitute(v, params, whole, inline) for k, v in value.items()})
        out.line, out.key_lines = value.line, value.key_lines
        return out
    if isinstance(value, LocatedList):
        out = LocatedList(_substitute(v, params, whole, inline) for v in value)
        out.line = value.line
        return out
    if isinstance(value, str):
        match = re.fullmatch(r"\$(\w+)|\$\{(\w+)\}", value)
        if match:
            name = match.group(1) or match.group(2)
            if name in params:
                whole.add(name)
                return params[name]
            return value

        def repl(m: re.Match) -> str:
            name = m.group(1)
            if name in params:
                inline.add(name)
                return str(params[name])
            return m.group(0)

        return re.sub(r"\$\{(\w+)\}", repl, value)
    return value


def _unresolved(
    value: Any, parent: Any = None, key: str | None = None
) -> tuple[str, Any, str | None] | None:
    """The first `$name` left after substitution: (name, the container holding it, its key)."""
    if isinstance(value, dict):
        for k, v in value.items():
            if k in ("description", "__raw_name__") and parent is None:
                continue  # free text may mention $ signs
            found = _unresolved(v, value, k)
            if found:
                return found
    elif isinstance(value, list):
        for v in value:
            found = _unresolved(v, value, key if isinstance(parent, dict) else None)
            if found:
                return found[0], parent if isinstance(parent, dict) else value, found[2]
    elif isinstance(value, str):
        m = re.search(r"\$\{?(\w+)\}?", value)
        if m and (value.startswith("$") or "${" in value):
            return m.group(1), parent, key
    return None


def _show(value: Any, limit: int = 60) -> str:
    """repr() cut short: messages stay one readable line whatever the spec holds."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _id_value(value: Any) -> str:
    """A matrix value as it appears in a case id: compact, no spaces (`axes=[2,3]`)."""
    if isinstance(value, (list, dict)):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def _kind(value: Any) -> str:
    """A YAML user's name for a value's type."""
    if isinstance(value, bool):
        return "true/false"
    if value is None:
        return "nothing (null)"
    for kind, name in (
        (dict, "a mapping"),
        (list, "a list"),
        (str, "text"),
        ((int, float), "a number"),
    ):
        if isinstance(value, kind):
            return f"{name} ({_show(value)})" if name in ("text", "a number") else name
    return type(value).__name__


def _merge(defaults: LocatedDict, case: LocatedDict) -> LocatedDict:
    merged = LocatedDict()
    merged.line = case.line
    merged.key_lines = {}
    for source in (defaults, case):
        for key, value in source.items():
            if (
                key in ("shape", "mask")
                and isinstance(value, dict)
                and isinstance(merged.get(key), dict)
            ):
                inner = LocatedDict({**merged[key], **value})
                inner.line = value.line if isinstance(value, LocatedDict) else case.line
                inner.key_lines = {
                    **getattr(merged[key], "key_lines", {}),
                    **getattr(value, "key_lines", {}),
                }
                merged[key] = inner
            else:
                merged[key] = value
            merged.key_lines[key] = source.line_of(key) if isinstance(source, LocatedDict) else None
    return merged


# --- one case ------------------------------------------------------------------------------


def _resolve_shape(ctx: _Ctx, node: LocatedDict, mode: str, parent: LocatedDict) -> dict:
    _check_keys(ctx, node, SHAPE_KEYS, "shape")
    multi = "attention_axes" in node or "query_shape" in node or "kv_shape" in node
    required = ("num_heads", "key_dim") if multi else ("query_len", "num_heads", "key_dim")
    for key in required:
        if key not in node:
            raise ctx.error(f"shape needs '{key}'", parent, "shape", f"{key}: {SHAPE_KEYS[key]}")
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in ("query_shape", "kv_shape", "attention_axes"):
            out[key] = _int_list(ctx, value, node, key, minimum=1)
            if not 1 <= len(out[key]) <= MAX_INNER_AXES:
                raise ctx.error(f"needs 1 to {MAX_INNER_AXES} axes, got {len(out[key])}", node, key)
        else:
            out[key] = _int(ctx, value, node, key, minimum=1)
    if mode == "kernel":
        for key in ("query_dim", "key_input_dim", "value_input_dim", "output_dim"):
            if key in out:
                raise ctx.error(
                    "has no meaning in kernel mode (there are no projections)",
                    node, key, "remove it, or use mode: layer",
                )  # fmt: skip
    h = out["num_heads"]
    g = out.setdefault("num_kv_heads", h)
    if h % g:
        raise ctx.error(
            f"num_heads={h} is not a multiple of num_kv_heads={g}",
            node, "num_kv_heads", "grouped-query attention needs H = G * r",
        )  # fmt: skip
    out.setdefault("batch", 2)
    out.setdefault("value_dim", out["key_dim"])
    if multi:
        if "query_shape" not in out or "attention_axes" not in out:
            raise ctx.error(
                "multi-axis attention needs both query_shape and attention_axes "
                "(kv_shape is optional)",
                node, None, "e.g. query_shape: [5, 3, 4], attention_axes: [2, 3]",
            )  # fmt: skip
        qs = out["query_shape"]
        kvs = out.setdefault("kv_shape", qs)
        axes = out["attention_axes"]
        if len(kvs) != len(qs):
            raise ctx.error("kv_shape must have as many axes as query_shape", node, "kv_shape")
        if len(set(axes)) != len(axes) or any(a > len(qs) for a in axes):
            raise ctx.error(
                f"attention_axes {list(axes)} must be distinct axes among 1..{len(qs)} "
                f"(axis 0 is the batch, axis {len(qs) + 1} the features)",
                node, "attention_axes",
            )  # fmt: skip
        if list(axes) != sorted(axes):
            raise ctx.error("attention_axes must be in increasing order", node, "attention_axes")
        for i in range(1, len(qs) + 1):
            if i not in axes and qs[i - 1] != kvs[i - 1]:
                raise ctx.error(
                    f"axis {i} is not attended over, so query and kv sizes must match",
                    node, "kv_shape",
                )  # fmt: skip
        for key in ("query_len", "kv_len"):
            if key in out:
                raise ctx.error(
                    "is derived from query_shape/kv_shape in multi-axis cases", node, key
                )
        out["query_len"] = math.prod(qs[a - 1] for a in axes)
        out["kv_len"] = math.prod(kvs[a - 1] for a in axes)
    out.setdefault("kv_len", out["query_len"])
    if mode == "layer":
        out.setdefault("query_dim", h * out["key_dim"])
        out.setdefault("key_input_dim", out["query_dim"])
        out.setdefault("value_input_dim", out["key_input_dim"])
        out.setdefault("output_dim", out["query_dim"])
    else:
        out["query_dim"] = h * out["key_dim"]
        out["key_input_dim"] = out["value_input_dim"] = out["output_dim"] = out["query_dim"]
    return out


def _resolve_mask(ctx: _Ctx, node: LocatedDict, shape: dict) -> Mask:
    _check_keys(ctx, node, MASK_KEYS, "mask")
    kw: dict[str, Any] = {}
    b, t, s = shape["batch"], shape["query_len"], shape["kv_len"]
    if "causal" in node:
        value = node["causal"]
        if value is True:
            value = "top-left"
        if value is not False:
            kw["causal"] = _choice(ctx, value, node, "causal", CAUSAL_ALIGNMENTS)
    for key, limit in (("key_padding", s), ("query_padding", t)):
        if key in node:
            lengths = _int_list(ctx, node[key], node, key)
            if len(lengths) != b:
                raise ctx.error(
                    f"needs one length per batch element ({b}), got {len(lengths)}", node, key
                )
            if max(lengths) > limit:
                raise ctx.error(f"lengths must be <= {limit}, got {max(lengths)}", node, key)
            kw[key] = lengths
    if "random" in node:
        kw["random_density"] = _density(ctx, node["random"], node, "random")
    if "additive" in node:
        kw["additive_density"] = _density(ctx, node["additive"], node, "additive")
    if "bias" in node:
        inner = _mapping(ctx, node["bias"], node, "bias")
        _check_keys(ctx, inner, {"scale": "standard deviation"}, "mask.bias")
        kw["bias_scale"] = _number(ctx, inner.get("scale", 1.0), inner, "scale")
        if not 0 <= kw["bias_scale"] <= MAX_BIAS_SCALE:  # issue 18: no inf biases
            raise ctx.error(
                f"bias scale must be within [0, {MAX_BIAS_SCALE:g}], got {kw['bias_scale']:g}",
                inner, "scale",
            )  # fmt: skip
    if "per_head" in node:
        kw["per_head"] = _bool(ctx, node["per_head"], node, "per_head")
        if kw["per_head"] and not ({"random_density", "additive_density", "bias_scale"} & set(kw)):
            raise ctx.error(
                "per_head needs a random, additive or bias mask to vary", node, "per_head"
            )
    if "window" in node:
        window = _int_list(ctx, node["window"], node, "window")
        if len(window) != 2:
            raise ctx.error("must be [left, right]", node, "window")
        kw["window"] = window
    if "masked_rows" in node:
        rows = node["masked_rows"]
        if not isinstance(rows, list) or not all(
            isinstance(r, list)
            and len(r) == 2
            and all(isinstance(i, int) and not isinstance(i, bool) for i in r)
            for r in rows
        ):
            raise ctx.error("must be a list of [batch, query_row] pairs", node, "masked_rows")
        for bi, ti in rows:
            if not (0 <= bi < b and 0 <= ti < t):
                raise ctx.error(
                    f"row [{bi}, {ti}] is outside batch {b} x query_len {t}", node, "masked_rows"
                )
        kw["masked_rows"] = tuple(tuple(r) for r in rows)
    if "fully_masked_rows" in node:
        kw["fully_masked_rows"] = _choice(
            ctx, node["fully_masked_rows"], node, "fully_masked_rows", MASKED_ROW_POLICIES
        )
    _resolve_packing(ctx, node, shape, kw)  # issue 14
    return Mask(**kw)


# Mask components that remove keys (a fill replaces their -inf).
_MASKING = ("causal", "key_padding", "query_padding", "random_density", "additive_density",
            "window", "masked_rows", "segments")  # fmt: skip


def _resolve_packing(ctx: _Ctx, node: LocatedDict, shape: dict, kw: dict[str, Any]) -> None:
    """Issue 14: `segments` (packed sequences), `padding_side` and `fill` (finite masking
    values as users write them)."""
    b, t, s = shape["batch"], shape["query_len"], shape["kv_len"]
    if "segments" in node:
        rows = node["segments"]
        example = "e.g. segments: [[3, 5, 2], [10]] for batch 2, query_len 10"
        if not isinstance(rows, list) or not all(isinstance(r, list) and r for r in rows):
            raise ctx.error(
                "must be a list with one list of segment lengths per batch element", node,
                "segments", example,
            )  # fmt: skip
        if t != s:
            raise ctx.error(
                f"packed segments cover the query and key rows alike: query_len ({t}) must "
                f"equal kv_len ({s})", node, "segments",
            )  # fmt: skip
        if len(rows) != b:
            raise ctx.error(
                f"needs one list of segment lengths per batch element ({b}), got {len(rows)}",
                node, "segments", example,
            )  # fmt: skip
        out = []
        for i, row in enumerate(rows):
            lengths = _int_list(ctx, row, node, "segments", minimum=1)
            if sum(lengths) != t:
                raise ctx.error(
                    f"segment lengths of batch element {i} sum to {sum(lengths)}, not to the row "
                    f"length {t} (query_len = kv_len)", node, "segments",
                    "pad the row with a last segment, or use key_padding for padding",
                )  # fmt: skip
            out.append(lengths)
        kw["segments"] = tuple(out)
    if "padding_side" in node:
        kw["padding_side"] = _choice(ctx, node["padding_side"], node, "padding_side", PADDING_SIDES)
        if "key_padding" not in kw and "query_padding" not in kw:
            raise ctx.error(
                "padding_side says where key_padding/query_padding lengths sit; this mask has "
                "neither", node, "padding_side", "add key_padding: [...] or drop padding_side",
            )  # fmt: skip
    if "fill" in node:
        value = node["fill"]
        if value in FILL_WORDS:
            kw["fill"] = value
        elif isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ctx.error(
                f"must be a negative number or finfo-min, got {_show(value)}", node, "fill",
                yaml_number_hint(value) or "e.g. fill: -1.0e9, fill: -10000 or fill: finfo-min",
            )  # fmt: skip
        else:
            fill = _number(ctx, value, node, "fill")
            if fill >= 0:
                raise ctx.error(
                    f"a fill must be < 0 (it is added to the masked logits), got {_show(value)}",
                    node, "fill", "e.g. -1.0e9 (tf_keras), -10000 (BERT) or finfo-min (HF)",
                )  # fmt: skip
            kw["fill"] = fill
        if not any(kw.get(k) not in (None, ()) for k in _MASKING):
            raise ctx.error(
                "a fill replaces the -inf of masked keys, and this mask masks no key", node,
                "fill", "add a mask component (causal, key_padding, random, ...)",
            )  # fmt: skip
    if kw.get("fully_masked_rows") == "fill" and "fill" not in kw:
        raise ctx.error(
            "fully_masked_rows: fill means the row as a finite fill writes it; this mask has "
            "no fill", node, "fully_masked_rows", "add fill: -1.0e9 (or -10000, finfo-min)",
        )  # fmt: skip


def estimate_bytes(
    shape: dict[str, Any], mode: str, dense_mask_heads: int = 0, weights: int = 0
) -> int:
    """Float64 bytes a case's arrays need (exact ints), counted before anything is allocated
    so that a huge shape is refused up front.

    Inputs, outputs and weights count whole; [B, H, T, S] arrays only where they exist whole:
    `dense_mask_heads` [B, T, S] planes of seeded masks (random/additive/bias, times H when
    they differ per head) and `weights` compared [B, H, T, S] weight arrays. The reference's logits go a block of rows at a time
    (reference.ROW_BLOCK_ELEMENTS), a fixed few blocks.
    """
    h, g = shape["num_heads"], shape["num_kv_heads"]
    t, s = shape["query_len"], shape["kv_len"]
    k, v = shape["key_dim"], shape["value_dim"]
    axes = set(shape.get("attention_axes") or ())
    outer = math.prod(n for i, n in enumerate(shape.get("query_shape") or (), 1) if i not in axes)
    rows = shape["batch"] * outer  # multi-axis: non-attended axes act like batch axes
    values = 3 * rows * h * t * (k + v)  # q, per-head outputs (reference, baseline, adapter)
    values += 3 * rows * g * (s + 2) * (k + v)  # k and v (+ torch's extra positions)
    values += (dense_mask_heads + weights * h) * rows * t * (s + 2)
    values += 6 * min(rows * h * t * (s + 2), 2**22)  # blocks of logits, exps, probabilities
    if mode == "layer":
        dq, dk, dv, do = (shape[key] for key in LAYER_DIMS)
        values += 3 * rows * (t * (dq + do) + s * (dk + dv))  # inputs and output
        values += h * dq * k + g * dk * k + g * dv * v + h * v * do  # weights
    return 8 * values


def _human_bytes(n: int) -> str:
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20)):
        if n >= size:
            whole = n // size
            if whole >= 10**6:  # absurd sizes: the order of magnitude says enough
                return f"10^{len(str(whole)) - 1} {unit}"
            return f"{whole:,} {unit}" if whole >= 1000 else f"{n / size:.1f} {unit}"
    return f"{n} bytes"


def _resolve_case(
    ctx: _Ctx, node: LocatedDict, family: str, params: dict[str, Any], source_line: int | None
) -> Case:
    name = node.get("name")
    if not isinstance(name, str) or not name:
        raise ctx.error("every case needs a name (a short word)", node, "name")
    if not re.fullmatch(r"[A-Za-z0-9_.+\-=]+", name):
        raise ctx.error(
            f"name {_show(name)} may only hold letters, digits and _ . + - =", node, "name",
            "it becomes part of the case id",
        )  # fmt: skip
    mode = _choice(ctx, node.get("mode", "layer"), node, "mode", MODES)
    if "shape" not in node:
        raise ctx.error(
            "case needs a shape", node, None, "e.g. shape: {query_len: 5, num_heads: 2, key_dim: 4}"
        )
    shape = _resolve_shape(ctx, _mapping(ctx, node["shape"], node, "shape"), mode, node)
    mask = _resolve_mask(ctx, _mapping(ctx, node.get("mask") or LocatedDict(), node, "mask"), shape)
    dtype = _choice(ctx, node.get("dtype", "float32"), node, "dtype", DTYPES)
    scale = None
    if node.get("scale") is not None:
        scale = _number(ctx, node["scale"], node, "scale")
    decode = None
    if "decode" in node:
        dnode = _mapping(ctx, node["decode"], node, "decode")
        _check_keys(ctx, dnode, DECODE_KEYS, "decode")
        prefix = _int(ctx, dnode.get("prefix", 1), dnode, "prefix", minimum=0)
        steps = _int(ctx, dnode.get("steps", 1), dnode, "steps", minimum=1)
        chunk = _int(ctx, dnode.get("chunk", 1), dnode, "chunk", minimum=1)  # issue 14
        memory = _bool(ctx, dnode.get("memory", False), dnode, "memory")  # issue 14
        decode = Decode(prefix=prefix, steps=steps, chunk=chunk, memory=memory)
        total = prefix + steps * chunk
        told = f"{prefix} + {steps}" + (f" x {chunk}" if chunk > 1 else "")
        if memory:  # cross-attention over a cached encoder memory of kv_len keys
            if mode != "kernel":
                raise ctx.error(
                    "decoding over an encoder memory is a kernel-mode case here (the memory's "
                    "keys and values are the cache)", dnode, "memory", "use mode: kernel",
                )  # fmt: skip
            if shape["query_len"] != total:
                raise ctx.error(f"decoding {told} tokens needs query_len = {total}", node,
                                "decode")  # fmt: skip
            if not mask.is_empty():
                raise ctx.error(
                    "steps over an encoder memory attend to every memory key; a mask "
                    "contradicts it", node, "mask", "drop the mask",
                )  # fmt: skip
        else:
            if shape["query_len"] != total or shape["kv_len"] != total:
                raise ctx.error(
                    f"decoding {told} tokens needs query_len = kv_len = {total}",
                    node, "decode",
                )  # fmt: skip
            causal_only = mask == Mask(causal="top-left")
            if not mask.is_empty() and not causal_only:
                raise ctx.error(
                    "incremental decoding is causal self-attention; other masks contradict it",
                    node, "mask", "drop the mask: decode implies causal",
                )  # fmt: skip
            mask = Mask(causal="top-left")
    layer_dims_differ = (
        shape["key_input_dim"] != shape["query_dim"]
        or shape["value_input_dim"] != shape["query_dim"]
    )
    needs_cross = mode == "layer" and (
        shape["kv_len"] != shape["query_len"]
        or layer_dims_differ
        or shape.get("kv_shape", ()) != shape.get("query_shape", ())
    )
    cross = needs_cross
    if "cross" in node:
        cross = _bool(ctx, node["cross"], node, "cross")
        if mode == "kernel":
            raise ctx.error("has no meaning in kernel mode", node, "cross")
        if needs_cross and not cross:
            raise ctx.error(
                "cross: false contradicts the shape (kv_len or key/value input dims differ "
                "from the query's)", node, "cross",
            )  # fmt: skip
    if decode and shape.get("attention_axes"):
        raise ctx.error(
            "incremental decoding runs over one sequence axis; attention_axes contradicts it",
            node, "decode",
        )  # fmt: skip
    if decode and cross:
        raise ctx.error(
            "incremental decoding is self-attention; cross contradicts it", node, "decode"
        )
    flags = {}
    for key in ("bias", "add_bias_kv", "add_zero_attn"):
        if key in node:
            flags[key] = _bool(ctx, node[key], node, key)
            if mode == "kernel":
                raise ctx.error(
                    "is a layer-mode option (kernel mode has no projections)", node, key
                )
    compare = ("output",)
    if "compare" in node:
        value = node["compare"]
        if not isinstance(value, list) or not value:
            raise ctx.error(
                "must be a non-empty list", node, "compare", f"of: {', '.join(COMPARABLE)}"
            )
        compare = tuple(_choice(ctx, v, node, "compare", COMPARABLE) for v in value)
        if len(set(compare)) != len(compare):
            raise ctx.error("lists an output twice", node, "compare")
        if decode and compare != ("output",):
            raise ctx.error("decoding cases compare the output only", node, "compare")
    if shape.get("attention_axes"):
        if not mask.is_empty():
            raise ctx.error("masks are not supported with attention_axes", node, "mask")
        if mode != "layer":
            raise ctx.error("multi-axis attention is a layer-mode case", node, "mode")
        if "weights" in compare or "weights_mean" in compare:
            raise ctx.error("multi-axis cases compare the output only", node, "compare")
    gradients = _bool(ctx, node.get("gradients", False), node, "gradients")
    if gradients and mask.fill is not None:  # issue 14
        raise ctx.error(
            "gradients are not modelled for finite fills (mask.fill)", node, "gradients",
            "compare the forward pass only, or drop the fill",
        )  # fmt: skip
    if gradients and (decode or shape.get("attention_axes")):
        raise ctx.error(
            "gradients are defined for one full forward pass over one sequence axis, "
            "not for incremental decoding or multi-axis attention",
            node, "gradients", "drop gradients: true, or the decode/attention_axes keys",
        )  # fmt: skip
    seed = _int(ctx, node.get("seed", 0), node, "seed", minimum=0)
    description = node.get("description", "")
    if not isinstance(description, str):
        raise ctx.error("must be text", node, "description")

    dropout = None
    if "dropout" in node:
        dropout = _resolve_dropout(ctx, node, decode is not None)

    scores = None  # issue 14
    if "scores" in node:
        scores = _resolve_scores(ctx, node, shape)
        if scores.alibi is not None and (flags.get("add_bias_kv") or flags.get("add_zero_attn")):
            raise ctx.error(
                "ALiBi distances are undefined for torch's appended key positions", node,
                "scores", "drop add_bias_kv/add_zero_attn or the alibi key",
            )  # fmt: skip
        if shape.get("attention_axes"):
            raise ctx.error("score terms are not supported with attention_axes", node, "scores")
        if scores.alibi is not None and decode is not None:
            raise ctx.error(
                "ALiBi with incremental decoding is not expressible here yet", node, "scores",
                "state the step as a kernel case: T new queries ending S keys (offset S - T)",
            )  # fmt: skip

    rope = None  # issue 14: rotary position embeddings
    if "rope" in node:
        rope = _resolve_rope(ctx, node, shape, flags, decode, gradients)

    if "cache" in node:  # issue 14: checked here, resolved once the case's seed key exists
        _check_cache(ctx, node, shape, mode, mask, decode, scores, rope)

    tier = _choice(ctx, node.get("tier", "small"), node, "tier", TIERS)
    dense = sum(
        x is not None for x in (mask.random_density, mask.additive_density, mask.bias_scale)
    )
    planes = dense * (shape["num_heads"] if mask.per_head else 1)
    weights = sum(name in compare for name in ("weights", "weights_mean"))
    estimate = estimate_bytes(shape, mode, dense_mask_heads=planes, weights=weights)
    if gradients:  # the analytic backward keeps [B, H, T, S] probabilities and their grads
        estimate += (
            8 * 4 * shape["batch"] * shape["num_heads"] * shape["query_len"] * (shape["kv_len"] + 2)
        )
    limit = MAX_CASE_BYTES[tier]
    if estimate > limit:
        bigger = [n for n in TIERS[TIERS.index(tier) + 1 :] if estimate <= MAX_CASE_BYTES[n]]
        raise ctx.error(
            f"this case would need about {_human_bytes(estimate)} of memory; the {tier} tier's "
            f"limit is {_human_bytes(limit)}",
            node, "shape",
            f"mark it tier: {bigger[0]}" if bigger else "shrink the shape",
        )  # fmt: skip

    shown = [(k, v) for k, v in params.items()]
    in_name = set(re.findall(r"\$\{(\w+)\}", node.get("__raw_name__", "")))
    id_params = [
        str(v) if k == "dtype" else f"{k}={_id_value(v)}" for k, v in shown if k not in in_name
    ]
    case_id = f"{family}/{name}" + (f"[{','.join(id_params)}]" if id_params else "")
    # issue 18: ids reach scripts, markup and terminals; refuse unsafe ones here, once.
    if (problem := case_id_problem(case_id)) is not None:
        raise ctx.error(problem, node, "matrix" if id_params else "name", CASE_ID_HINT)
    case = Case(
        id=case_id,
        family=family,
        name=name,
        mode=mode,
        shape=Shape(**shape),
        mask=mask,
        dtype=dtype,
        scale=scale,
        self_attention=not cross,
        use_bias=flags.get("bias", True),
        add_bias_kv=flags.get("add_bias_kv", False),
        add_zero_attn=flags.get("add_zero_attn", False),
        decode=decode,
        compare=compare,
        gradients=gradients,
        seed=seed,
        description=description,
        # Stored relative (paths.py) so results from two machines diff without path noise.
        source=f"{display_path(ctx.file)}:{source_line}" if source_line else display_path(ctx.file),
        params=tuple(shown),
        dropout=dropout,
        tier=tier,
        scores=scores,
        rope=rope,
    )
    if dropout is not None and dropout.training:
        problem = None
        if case.extra_keys or shape.get("attention_axes"):
            problem = "training-mode dropout is checked on one sequence axis without extra keys"
        elif set(compare) - {"output", "weights"}:
            problem = "training-mode dropout cases compare output (and weights) only"
        elif gradients:
            problem = "training-mode dropout cases have no gradients"
        if problem:
            raise ctx.error(problem, node, "dropout")
    if "inputs" in node or "expected" in node:
        case = _attach_stored(ctx, node, case)
    if "cache" in node:
        case = dataclasses.replace(case, cache=_resolve_cache(ctx, node, case))
    return case


def _per_head(ctx: _Ctx, value: Any, parent: Any, key: str, heads: int) -> tuple[float, ...]:
    """A list of H finite numbers, one per query head."""
    if not isinstance(value, list) or len(value) != heads:
        got = f"{len(value)} values" if isinstance(value, list) else _show(value)
        raise ctx.error(
            f"needs one value per query head (H = {heads}), got {got}", parent, key,
            f"a list of {heads} numbers",
        )  # fmt: skip
    out = tuple(_number(ctx, v, parent, key) for v in value)
    if not all(math.isfinite(v) for v in out):
        raise ctx.error("values must be finite numbers", parent, key)
    return out


def _resolve_scores(ctx: _Ctx, node: LocatedDict, shape: dict) -> ScoreTerms:
    """The `scores` key: softcap, ALiBi slopes and sink logits (issue 14)."""
    snode = _mapping(ctx, node["scores"], node, "scores")
    _check_keys(ctx, snode, SCORE_KEYS, "scores")
    heads = shape["num_heads"]
    kw: dict[str, Any] = {}
    if snode.get("softcap") is not None:
        cap = _number(ctx, snode["softcap"], snode, "softcap")
        if not (math.isfinite(cap) and cap > 0):
            raise ctx.error(
                f"softcap must be a finite number > 0, got {_show(cap)}", snode, "softcap",
                "Gemma 2 uses 50.0 for attention logits",
            )  # fmt: skip
        kw["softcap"] = cap
    if snode.get("alibi") is not None:
        value = snode["alibi"]
        if value == "standard":
            kw["alibi"], kw["alibi_standard"] = standard_alibi_slopes(heads), True
        elif isinstance(value, list):
            kw["alibi"] = _per_head(ctx, value, snode, "alibi", heads)
            if any(v < 0 for v in kw["alibi"]):
                raise ctx.error("ALiBi slopes must be >= 0 (the bias is -slope * distance)",
                                snode, "alibi")  # fmt: skip
        else:
            raise ctx.error(
                f"must be 'standard' or a list of {heads} slopes, got {_show(value)}", snode,
                "alibi",
            )  # fmt: skip
    if snode.get("sink") is not None:
        value = snode["sink"]
        if value == "zero":
            kw["sink"] = (0.0,) * heads
        elif isinstance(value, list):
            kw["sink"] = _per_head(ctx, value, snode, "sink", heads)
        else:
            raise ctx.error(
                f"must be 'zero' or a list of {heads} sink logits, got {_show(value)}", snode,
                "sink",
            )  # fmt: skip
    terms = ScoreTerms(**kw)
    if terms.is_empty():
        raise ctx.error("scores sets no term", node, "scores", f"keys: {', '.join(SCORE_KEYS)}")
    return terms


def _resolve_rope(
    ctx: _Ctx,
    node: LocatedDict,
    shape: dict,
    flags: dict,
    decode,
    gradients: bool,  # noqa: ANN001
) -> Rope:
    """The `rope` key: rotary position embeddings on q and k (issue 14, conformance.rotary)."""
    rnode = _mapping(ctx, node["rope"], node, "rope")
    _check_keys(ctx, rnode, ROPE_KEYS, "rope")
    style = _choice(ctx, rnode.get("style", "half"), rnode, "style", ROPE_STYLES)
    theta = _number(ctx, rnode.get("theta", DEFAULT_THETA), rnode, "theta")
    if theta <= 0:
        raise ctx.error(f"theta must be > 0, got {_show(theta)}", rnode, "theta",
                        "the paper and most models use 10000.0")  # fmt: skip
    key_dim = shape["key_dim"]
    rotary_dim = None
    if "rotary_dim" in rnode:
        rotary_dim = _int(ctx, rnode["rotary_dim"], rnode, "rotary_dim", minimum=2)
        if rotary_dim > key_dim:
            raise ctx.error(
                f"rotary_dim {rotary_dim} is larger than the head dim (key_dim = {key_dim})",
                rnode, "rotary_dim", f"at most {key_dim}; omit it to rotate every dim",
            )  # fmt: skip
        if rotary_dim % 2:
            raise ctx.error(f"rotary_dim must be even (dims rotate in pairs), got {rotary_dim}",
                            rnode, "rotary_dim")  # fmt: skip
        if rotary_dim == key_dim:
            rotary_dim = None  # the whole head: not partial
    elif key_dim % 2:
        raise ctx.error(
            f"rotary embeddings rotate pairs of dims; key_dim {key_dim} is odd", node, "rope",
            "set an even rotary_dim (partial rotary) or an even key_dim",
        )  # fmt: skip
    offset = _int(ctx, rnode.get("offset", 0), rnode, "offset", minimum=0)
    if offset + shape["kv_len"] - shape["query_len"] < 0:
        raise ctx.error(
            f"query 0 would sit at position {offset + shape['kv_len'] - shape['query_len']}: "
            "queries end the key sequence (query t at offset + S - T + t)", rnode if "offset" in
            rnode else node, "offset" if "offset" in rnode else "rope",
            f"offset >= {shape['query_len'] - shape['kv_len']}",
        )  # fmt: skip
    problem = None
    if shape.get("attention_axes"):
        problem = "rotary embeddings are not supported with attention_axes"
    elif flags.get("add_bias_kv") or flags.get("add_zero_attn"):
        problem = "rotary positions are undefined for torch's appended key positions"
    elif decode is not None:
        problem = "rotary embeddings with incremental decoding are not expressible here yet"
    elif gradients:
        problem = "gradients of rotary cases are not computed yet"
    elif "dropout" in node:
        problem = "dropout with rotary embeddings is not supported"
    if problem:
        hint = None
        if decode is not None:
            hint = "state the step as a kernel case: T new queries ending S keys"
        raise ctx.error(problem, node, "rope", hint)
    return Rope(style=style, theta=theta, rotary_dim=rotary_dim, offset=offset)


def _check_cache(
    ctx: _Ctx,
    node: LocatedDict,
    shape: dict,
    mode: str,
    mask: Mask,
    decode: Decode | None,
    scores: ScoreTerms | None,
    rope: Rope | None,
) -> None:
    """The `cache` key (issue 14, conformance.kv_cache): everything but the block table."""
    cnode = _mapping(ctx, node["cache"], node, "cache")
    _check_keys(ctx, cnode, CACHE_KEYS, "cache")
    if not cnode:
        raise ctx.error("cache sets nothing", node, "cache", f"keys: {', '.join(CACHE_KEYS)}")
    problem = None
    if mode != "kernel":
        problem = "a cache is a kernel-mode case (the keys and values are the cache)"
    elif decode is not None:
        problem = "cache: is one step against a cache; decode: runs the steps itself"
    elif shape.get("attention_axes"):
        problem = "a cache has one sequence axis; attention_axes contradicts it"
    elif node.get("gradients") is True or "dropout" in node:
        problem = "a cache step is inference: no gradients or dropout"
    if problem:
        raise ctx.error(problem, node, "cache", "use mode: kernel, without decode/attention_axes")
    b, t, s = shape["batch"], shape["query_len"], shape["kv_len"]
    if "lengths" in cnode:
        lengths = _int_list(ctx, cnode["lengths"], cnode, "lengths", minimum=1)
        if len(lengths) != b:
            raise ctx.error(f"needs one length per sequence (batch {b}), got {len(lengths)}",
                            cnode, "lengths")  # fmt: skip
        if not all(t <= n <= s for n in lengths):
            raise ctx.error(
                f"each length must be within [query_len, kv_len] = [{t}, {s}], got "
                f"{list(lengths)}", cnode, "lengths",
                "the queries are each sequence's last query_len tokens, in a cache of kv_len",
            )  # fmt: skip
        clash = None
        if mask.causal == "top-left" and t != s:
            clash = "causal: top-left (each sequence's queries end its cache: bottom-right)"
        elif mask.key_padding is not None or mask.query_padding is not None:
            clash = "key_padding/query_padding (the lengths already say which keys are held)"
        elif mask.segments is not None:
            clash = "segments"
        elif (scores is not None and scores.alibi is not None) or rope is not None:
            clash = "ALiBi or rope (their positions assume one alignment for the batch)"
        if clash:
            raise ctx.error(f"cache lengths cannot be combined with {clash}", cnode, "lengths")
    if "page_size" in cnode:
        page = _int(ctx, cnode["page_size"], cnode, "page_size", minimum=1)
        if page > min(s, MAX_PAGE_SIZE):
            raise ctx.error(
                f"page_size {page} is larger than the cache (kv_len {s}): one page would hold "
                "it all and nothing would be paged", cnode, "page_size",
                f"at most {min(s, MAX_PAGE_SIZE)}",
            )  # fmt: skip
    else:
        for key in ("pages", "num_pages"):
            if key in cnode:
                raise ctx.error(f"{key} describes pages; this cache has no page_size", cnode, key,
                                "add page_size: 16 (or 64, 256)")  # fmt: skip


def _resolve_cache(ctx: _Ctx, node: LocatedDict, case: Case) -> Cache:
    """The block table of a paged cache: seeded (pages: shuffled / in-order) or the spec's own,
    every entry a page of the pool, no page used twice."""
    cnode = node["cache"]
    b, s = case.shape.batch, case.shape.kv_len
    lengths = tuple(cnode["lengths"]) if "lengths" in cnode else None
    if "page_size" not in cnode:
        return Cache(lengths=lengths)
    page = cnode["page_size"]
    held = lengths or (s,) * b
    needed = [pages_needed(n, page) for n in held]
    order = cnode.get("pages", "shuffled")
    explicit = isinstance(order, list)
    if not explicit:
        order = _choice(ctx, order, cnode, "pages", PAGE_ORDERS)
    default_pages = sum(needed)
    if explicit:
        flat = [p for row in order if isinstance(row, list) for p in row]
        ints = all(isinstance(p, int) and not isinstance(p, bool) for p in flat)
        default_pages = max(max(flat) + 1 if flat and ints else 0, sum(needed))
    num_pages = _int(ctx, cnode.get("num_pages", default_pages), cnode, "num_pages")
    if num_pages < sum(needed):
        raise ctx.error(
            f"the sequences need {sum(needed)} pages of {page} ({list(needed)}), the pool has "
            f"{num_pages}", cnode, "num_pages", f"num_pages >= {sum(needed)}",
        )  # fmt: skip
    if num_pages * page > 4 * b * s + 4 * page:  # the pool is part of the case's memory
        raise ctx.error(
            f"a pool of {num_pages} pages of {page} is over 4x the cache it holds",
            cnode, "num_pages", f"at most {(4 * b * s) // page + 4}",
        )  # fmt: skip
    if not explicit:
        table = seeded_block_table(case.data_key, held, page, num_pages, order)
        return Cache(lengths, page, num_pages, table, order)
    example = (
        f"e.g. pages: {[list(range(sum(needed[:i]), sum(needed[: i + 1]))) for i in range(b)]}"
    )
    if len(order) != b or not all(isinstance(row, list) for row in order):
        raise ctx.error(
            f"an explicit block table has one list of page numbers per sequence (batch {b})",
            cnode, "pages", example,
        )  # fmt: skip
    seen: dict[int, int] = {}
    for i, row in enumerate(order):
        pages = _int_list(ctx, row, cnode, "pages")
        if len(pages) != needed[i]:
            raise ctx.error(
                f"sequence {i} holds {held[i]} positions: {needed[i]} pages of {page}, the "
                f"table gives it {len(pages)}", cnode, "pages", example,
            )  # fmt: skip
        for p in pages:
            if p >= num_pages:
                raise ctx.error(
                    f"page {p} of sequence {i} points outside the cache (pages 0..{num_pages - 1})",
                    cnode, "pages", "raise num_pages, or use a page of the pool",
                )  # fmt: skip
            if p in seen:
                raise ctx.error(
                    f"page {p} is used twice (sequences {seen[p]} and {i}): each page holds one "
                    "sequence's positions", cnode, "pages",
                )  # fmt: skip
            seen[p] = i
    table = tuple(tuple(row) for row in order)
    return Cache(lengths, page, num_pages, table, "explicit")


def _resolve_dropout(ctx: _Ctx, node: LocatedDict, decode: bool) -> Dropout:
    dnode = _mapping(ctx, node["dropout"], node, "dropout")
    _check_keys(ctx, dnode, DROPOUT_KEYS, "dropout")
    if "rate" not in dnode:
        raise ctx.error("dropout needs a rate", node, "dropout", "e.g. {rate: 0.3}")
    rate = _number(ctx, dnode["rate"], dnode, "rate")
    if not 0 < rate < 1:
        raise ctx.error(f"rate must be within (0, 1), got {rate}", dnode, "rate")
    training = _bool(ctx, dnode.get("training", False), dnode, "training")
    draws = _int(ctx, dnode.get("draws", 100), dnode, "draws", minimum=10)
    if draws > MAX_DROPOUT_DRAWS:  # issue 18: each draw is a full run of the case
        raise ctx.error(f"draws must be <= {MAX_DROPOUT_DRAWS}, got {draws}", dnode, "draws")
    if decode:
        raise ctx.error("dropout is not defined for incremental decoding here", node, "dropout")
    return Dropout(rate=rate, training=training, draws=draws)


def _stored_ref(ctx: _Ctx, value: Any, parent: Any, key: str) -> str:
    """Resolve "file.npz#name" (relative to the spec file) to an absolute file path."""
    if not isinstance(value, str) or value.count("#") != 1 or value.endswith("#"):
        raise ctx.error(
            f"must be 'file.npz#name', got {_show(value)}", parent, key,
            "e.g. data/onnx_attention.npz#test_attention_4d",
        )  # fmt: skip
    file, _, member = value.partition("#")
    path = (Path(ctx.file).parent / file).resolve()
    if not path.is_file():
        raise ctx.error(f"no such data file: {path}", parent, key)
    return f"{path}#{member}"


def _attach_stored(ctx: _Ctx, node: LocatedDict, case: Case) -> Case:
    """Cases carrying their own arrays (imported peer suites): check them against the case."""
    import dataclasses

    from .inputs import STORED_MASKS, make_inputs, stored_array, stored_group

    changes: dict[str, Any] = {}
    if "inputs" in node:
        ref = _stored_ref(ctx, node["inputs"], node, "inputs")
        changes["inputs"] = ref
        try:
            stored = stored_group(ref)
        except ValueError as error:  # not an npz, or too large (refused before inflating)
            raise ctx.error(str(error), node, "inputs") from None
        if not stored:
            raise ctx.error(f"the data file has no arrays under '{ref.partition('#')[2]}/'",
                            node, "inputs")  # fmt: skip
        m, s = case.mask, case.shape
        wanted = {
            "mask.attend": m.random_density is not None,
            "mask.bias": m.additive_density is not None or m.bias_scale is not None,
        }
        for name in STORED_MASKS:
            if wanted[name] != (name in stored):
                raise ctx.error(
                    f"stored '{name}' and the mask keys disagree: a stored boolean mask goes "
                    "with mask.random, a stored additive one with mask.additive and/or mask.bias",
                    node, "mask" if "mask" in node else "inputs",
                )  # fmt: skip
            shape = (s.batch, s.num_heads if m.per_head else 1, s.query_len, s.kv_len)
            if name in stored and stored[name].shape != shape:
                raise ctx.error(
                    f"stored '{name}' has shape {stored[name].shape}, the case needs {shape} "
                    "([B, 1|H, T, S], per_head deciding H)", node, "inputs",
                )  # fmt: skip
        try:
            make_inputs(dataclasses.replace(case, inputs=ref))
        except (ValueError, KeyError) as error:
            raise ctx.error(str(error), node, "inputs") from None
    if "expected" in node:
        enode = _mapping(ctx, node["expected"], node, "expected")
        expected = {}
        for name, value in enode.items():
            _choice(ctx, name, enode, name, COMPARABLE)
            ref = _stored_ref(ctx, value, enode, name)
            try:
                stored_array(ref)
            except (KeyError, ValueError) as error:
                raise ctx.error(str(error.args[0]), enode, name) from None
            expected[name] = ref
        changes["expected"] = expected
    return dataclasses.replace(case, **changes)


def _conflict(ctx: _Ctx, matrix: LocatedDict, key: str, where: str) -> SpecError:
    return ctx.error(
        f"matrix parameter '{key}' sets {where}, which the case also sets",
        matrix, key, f"remove {where} from the case, or use ${key} there",
    )  # fmt: skip


def _expand(ctx: _Ctx, node: LocatedDict, defaults: LocatedDict, family: str) -> list[Case]:
    matrix = node.get("matrix")
    template = _merge(defaults, node)
    template.pop("matrix", None)
    raw_name = template.get("name") if isinstance(template.get("name"), str) else ""
    if matrix is None:
        grid: list[dict[str, Any]] = [{}]
    else:
        matrix = _mapping(ctx, matrix, node, "matrix")
        if not matrix:
            raise ctx.error(
                "matrix is empty", node, "matrix", "give each parameter a list of values"
            )
        names, values = [], []
        for key, options in matrix.items():
            if not isinstance(options, list) or not options:
                raise ctx.error(
                    "matrix parameter needs a non-empty list of values", matrix, key,
                    f"e.g. {key}: [a, b]",
                )  # fmt: skip
            names.append(key)
            values.append(options)
        count = math.prod(len(v) for v in values)
        if count > MAX_MATRIX_CASES:
            raise ctx.error(
                f"matrix expands to {count} cases (limit {MAX_MATRIX_CASES})", node, "matrix"
            )
        grid = [dict(zip(names, combo, strict=True)) for combo in itertools.product(*values)]
    cases = []
    for params in grid:
        whole: set[str] = set()
        inline: set[str] = set()
        resolved = _substitute(template, params, whole, inline)
        for key, value in params.items():
            if key in whole:
                continue
            if key in SHAPE_KEYS:
                shape = resolved.setdefault("shape", LocatedDict())
                if not isinstance(shape, LocatedDict):
                    continue  # reported when the shape is resolved
                raw_shape = node.get("shape")
                if isinstance(raw_shape, dict) and key in raw_shape:
                    raise _conflict(ctx, matrix, key, f"shape.{key}")
                shape[key] = value
                shape.key_lines[key] = matrix.line_of(key)
            elif key in DIRECT_PARAMS:
                if key in node:
                    raise _conflict(ctx, matrix, key, key)
                resolved[key] = value
                resolved.key_lines[key] = matrix.line_of(key)
            elif key not in inline:
                hint = did_you_mean(key, DIRECT_PARAMS) or (
                    f"use it as ${key} or ${{{key}}} in the case, or name a case key"
                )
                raise ctx.error(f"matrix parameter '{key}' is not used", matrix, key, hint)
        leftover = _unresolved(resolved)
        if leftover:
            name, where, key = leftover
            raise ctx.error(
                f"'${name}' refers to no matrix parameter", where, key,
                f"add {name}: [...] under matrix:",
            )  # fmt: skip
        resolved["__raw_name__"] = raw_name
        try:
            case = _resolve_case(ctx, resolved, family, params, node.line)
        except SpecError as error:
            if params:
                error = SpecError(
                    error.message
                    + f" (with {', '.join(f'{k}={_show(v, 30)}' for k, v in params.items())})",
                    file=error.file, line=error.line, key=error.key, hint=error.hint,
                )  # fmt: skip
            raise error from None
        cases.append(case)
    return cases


def load_spec(path: str | Path) -> list[Case]:
    """Load one spec file into resolved cases, or raise SpecError naming file, line and key."""
    path = Path(path)
    ctx = _Ctx(str(path))
    data = load_yaml_file(path)
    if data is None:
        raise SpecError(
            "file is empty", file=ctx.file, hint="a spec needs `cases:` (see docs/specs.md)"
        )
    if not isinstance(data, LocatedDict):
        kind = _kind(data)
        raise SpecError(
            f"the top level must be a mapping with `cases:`, got {kind}",
            file=ctx.file, line=getattr(data, "line", None) or _first_content_line(path),
            hint="start the file with `cases:` (see docs/specs.md)",
        )  # fmt: skip
    _check_keys(ctx, data, FILE_KEYS, "file")
    version = data.get("version", SPEC_VERSION)
    if isinstance(version, bool) or version != SPEC_VERSION:
        raise ctx.error(
            f"unknown spec version {_show(version)}; this tool reads version {SPEC_VERSION}",
            data,
            "version",
        )
    family = data.get("family", path.stem)
    if not isinstance(family, str) or not re.fullmatch(r"[A-Za-z0-9_.\-/]+", family):
        raise ctx.error("family must be a word (letters, digits, _ . - /)", data, "family")
    defaults = data.get("defaults") or LocatedDict()
    defaults = _mapping(ctx, defaults, data, "defaults")
    for key in defaults:
        if key not in CASE_KEYS or key in ("name", "matrix"):
            raise ctx.error(
                "not a key defaults can set", defaults, key, did_you_mean(key, CASE_KEYS)
            )
    if "cases" not in data:
        raise ctx.error("no `cases:` list", data, None, "add cases: with at least one case")
    items = data["cases"]
    if not isinstance(items, list):
        raise ctx.error("must be a list of cases", data, "cases")
    if not items:
        raise ctx.error("the cases list is empty", data, "cases", "add at least one case")
    cases: list[Case] = []
    seen: dict[str, str] = {}
    for item in items:
        if not isinstance(item, LocatedDict):
            raise ctx.error(f"each case must be a mapping, got {_show(item)}", data, "cases")
        _check_keys(ctx, item, CASE_KEYS, "case")
        expanded = _expand(ctx, item, defaults, family)
        if len(cases) + len(expanded) > MAX_TOTAL_CASES:  # issue 18: a total, not per matrix
            raise ctx.error(
                f"the file expands to more than {MAX_TOTAL_CASES} cases", item, "matrix",
                TOTAL_CASES_HINT,
            )  # fmt: skip
        for case in expanded:
            if case.id in seen:
                raise ctx.error(
                    f"duplicate case id '{case.id}' (first at {seen[case.id]})", item, "name",
                    "give the cases different names or matrix values",
                )  # fmt: skip
            seen[case.id] = case.source
            cases.append(case)
    return cases


def _first_content_line(path: Path) -> int | None:
    """The first line that is neither blank nor a comment (where a scalar document starts)."""
    text = path.read_bytes().decode("utf-8", errors="replace")
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip() and not line.lstrip().startswith("#"):
            return number
    return None


def spec_files(paths: list[str | Path]) -> list[Path]:
    """Expand directories into their *.yaml / *.yml files (sorted, recursive)."""
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.suffix in (".yaml", ".yml"))
            if not found:
                raise SpecError("no spec files (*.yaml, *.yml) in this directory", file=str(path))
            files.extend(found)
        elif path.exists():
            files.append(path)
        else:
            raise SpecError("no such file or directory", file=str(path))
    return files


def load_specs(paths: list[str | Path]) -> list[Case]:
    """Load every spec; case ids must be unique across files."""
    cases: list[Case] = []
    seen: dict[str, str] = {}
    for file in spec_files(paths):
        loaded = load_spec(file)
        if len(cases) + len(loaded) > MAX_TOTAL_CASES:
            raise SpecError(
                f"the spec files expand to more than {MAX_TOTAL_CASES} cases together",
                file=str(file), hint=TOTAL_CASES_HINT,
            )  # fmt: skip
        for case in loaded:
            if case.id in seen:
                raise SpecError(
                    f"duplicate case id '{case.id}' (also at {seen[case.id]})",
                    file=str(file),
                    line=_source_line(case.source),
                    key="name",
                    hint="give each file its own family",
                )
            seen[case.id] = case.source
            cases.append(case)
    return cases


def _source_line(source: str) -> int | None:
    """The line of a "file:line" source, or None."""
    tail = source.rsplit(":", 1)[-1]
    return int(tail) if tail.isdigit() else None
