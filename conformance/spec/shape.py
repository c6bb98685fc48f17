"""The `shape:` section: sizes, their defaults, grouped-query and multi-axis checks."""

from __future__ import annotations

import math
from typing import Any

from .keys import MAX_INNER_AXES, SHAPE_KEYS
from .values import _check_keys, _Ctx, _int, _int_list
from .yamlload import LocatedDict


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
