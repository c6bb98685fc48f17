"""The `rope:` section: rotary position embeddings on q and k (conformance.cases.rotary)."""

from __future__ import annotations

from ..cases.rotary import DEFAULT_THETA, ROPE_STYLES, Rope
from .keys import ROPE_KEYS
from .values import _check_keys, _choice, _Ctx, _int, _mapping, _number, _show
from .yamlload import LocatedDict


def _resolve_rope(
    ctx: _Ctx,
    node: LocatedDict,
    shape: dict,
    flags: dict,
    decode,  # noqa: ANN001
) -> Rope:
    """The `rope` key: rotary position embeddings on q and k (issue 14, conformance.cases.rotary)."""
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
    elif decode is not None and decode.memory:
        # Decoding: each step's queries sit after the cache (offset + cache length + i), keys
        # keep their absolute positions; an encoder memory has no place in that sequence.
        problem = "rotary positions over an encoder memory (decode.memory) are not defined here"
    elif "dropout" in node:
        problem = "dropout with rotary embeddings is not supported"
    if problem:
        hint = None
        if decode is not None:
            hint = "rotate the decoder's self-attention steps (drop memory: true)"
        raise ctx.error(problem, node, "rope", hint)
    return Rope(style=style, theta=theta, rotary_dim=rotary_dim, offset=offset)
