"""The `dropout:` section: rate, inference or training mode, and the draws of the
statistical check.
"""

from __future__ import annotations

from ..cases.case import Dropout
from .keys import DROPOUT_KEYS
from .limits import MAX_DROPOUT_DRAWS
from .values import _bool, _check_keys, _Ctx, _int, _mapping, _number
from .yamlload import LocatedDict


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
