"""Cases that carry their own arrays (`inputs:`, `expected:`; imported peer suites): the
`file.npz#name` references resolved and checked against the case.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..cases.case import COMPARABLE, Case
from .values import _choice, _Ctx, _mapping, _show
from .yamlload import LocatedDict


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

    from ..cases.inputs import STORED_MASKS, make_inputs, stored_array, stored_group

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
