"""One case node (matrix parameters already substituted) -> a `Case`: every section
resolved, the checks that span sections, the memory estimate per tier and the case id.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from typing import Any

from ..cases.case import COMPARABLE, DTYPES, MODES, TIERS, Case, Decode, Mask, Shape
from ..paths import display_path
from .cache import _check_cache, _resolve_cache
from .dropout import _resolve_dropout
from .keys import DECODE_KEYS, LAYER_DIMS, MAX_CASE_BYTES
from .limits import CASE_ID_HINT, case_id_problem
from .mask import _resolve_mask
from .rope import _resolve_rope
from .scores import _resolve_scores
from .shape import _resolve_shape
from .stored import _attach_stored
from .values import _bool, _check_keys, _choice, _Ctx, _int, _mapping, _number, _show
from .yamlload import LocatedDict


def _id_value(value: Any) -> str:
    """A matrix value as it appears in a case id: compact, no spaces (`axes=[2,3]`)."""
    if isinstance(value, (list, dict)):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


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
        rope = _resolve_rope(ctx, node, shape, flags, decode)

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
