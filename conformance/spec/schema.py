"""The JSON Schema for spec files, generated from the key tables in conformance.spec.

The shipped file conformance/schema/spec.schema.json is this module's output; a test checks
that they agree. Regenerate it after changing spec keys:

    python -m conformance.spec.schema

Editors use it through the first line of every shipped spec:

    # yaml-language-server: $schema=../conformance/schema/spec.schema.json

The schema describes what conformance.spec accepts (keys, enums, types, ranges). Any value may
instead be a matrix parameter reference (`$name` or `${name}`). Rules that relate several
values (H a multiple of G, decode lengths matching T, contradictory options) are checked by
the loader only, with a message naming file, line and key.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from ..cases.case import (
    CAUSAL_ALIGNMENTS,
    COMPARABLE,
    DTYPES,
    FILL_WORDS,
    MASKED_ROW_POLICIES,
    MODES,
    PADDING_SIDES,
    TIERS,
)
from ..cases.kv_cache import PAGE_ORDERS
from ..cases.rotary import ROPE_STYLES
from .keys import (
    CACHE_KEYS,
    CASE_KEYS,
    DECODE_KEYS,
    DROPOUT_KEYS,
    FILE_KEYS,
    MASK_KEYS,
    MAX_INNER_AXES,
    ROPE_KEYS,
    SCORE_KEYS,
    SHAPE_KEYS,
    SPEC_VERSION,
)

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "schema" / "spec.schema.json"
SCHEMA_ID = f"urn:attention-conformance:schema:spec:v{SPEC_VERSION}"
PARAM_PATTERN = r"^\$(\w+|\{\w+\})$"
STORED_REF = r"^[^#]+#[^#]+$"  # file.npz#name


def _param(schema: dict[str, Any]) -> dict[str, Any]:
    """`schema`, or a matrix parameter reference standing in for the whole value."""
    return {"anyOf": [schema, {"$ref": "#/$defs/param"}]}


def _described(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, **schema}


def _object(
    properties: dict[str, dict[str, Any]], keys: dict[str, str], **extra: Any
) -> dict[str, Any]:
    return {
        "type": "object",
        "additionalProperties": False,
        "properties": {k: _described(v, keys[k]) for k, v in properties.items()},
        **extra,
    }


def _int(minimum: int) -> dict[str, Any]:
    return _param({"type": "integer", "minimum": minimum})


def _int_list(minimum: int, **extra: Any) -> dict[str, Any]:
    return _param({"type": "array", "items": _int(minimum), **extra})


def _shape() -> dict[str, Any]:
    axes = {"minItems": 1, "maxItems": MAX_INNER_AXES}
    props = {key: _int(1) for key in SHAPE_KEYS}
    for key in ("query_shape", "kv_shape", "attention_axes"):
        props[key] = _int_list(1, **axes)
    return _object(props, SHAPE_KEYS)


def _density() -> dict[str, Any]:
    density = _param({"type": "number", "minimum": 0, "maximum": 1})
    return _param(
        _object({"density": density}, {"density": "fraction of pairs masked"}, required=["density"])
    )


def _mask() -> dict[str, Any]:
    pair = _param(
        {"type": "array", "items": _int(0), "minItems": 2, "maxItems": 2},
    )
    props = {
        "causal": _param({"anyOf": [{"enum": list(CAUSAL_ALIGNMENTS)}, {"type": "boolean"}]}),
        "key_padding": _int_list(0, minItems=1),
        "query_padding": _int_list(0, minItems=1),
        "random": _density(),
        "additive": _density(),
        "bias": _param(
            _object(
                {"scale": _param({"type": "number"})},
                {"scale": "standard deviation of the bias (default 1)"},
            )
        ),
        "per_head": _param({"type": "boolean"}),
        "window": _int_list(0, minItems=2, maxItems=2),
        "masked_rows": _param({"type": "array", "items": pair}),
        "fully_masked_rows": _param({"enum": list(MASKED_ROW_POLICIES)}),
        "fill": _param(
            {"anyOf": [{"type": "number", "exclusiveMaximum": 0}, {"enum": list(FILL_WORDS)}]}
        ),  # fmt: skip
        "segments": _param({"type": "array", "minItems": 1, "items": _int_list(1, minItems=1)}),
        "padding_side": _param({"enum": list(PADDING_SIDES)}),
    }
    return _object(props, MASK_KEYS)


def _case_properties() -> dict[str, dict[str, Any]]:
    boolean = _param({"type": "boolean"})
    return {
        "name": {"type": "string", "pattern": r"^([A-Za-z0-9_.+=\-]|\$\{\w+\})+$"},
        "description": {"type": "string"},
        "mode": _param({"enum": list(MODES)}),
        "shape": _param({"$ref": "#/$defs/shape"}),
        "mask": _param({"anyOf": [{"$ref": "#/$defs/mask"}, {"type": "null"}]}),
        "dtype": _param({"enum": list(DTYPES)}),
        "tier": _param({"enum": list(TIERS)}),
        "scale": _param({"type": ["number", "null"]}),
        "cross": boolean,
        "bias": boolean,
        "add_bias_kv": boolean,
        "add_zero_attn": boolean,
        "decode": _param(
            _object(
                {"prefix": _int(0), "steps": _int(1), "chunk": _int(1), "memory": boolean},
                DECODE_KEYS,
            ),
        ),
        "compare": _param(
            {
                "type": "array",
                "items": _param({"enum": list(COMPARABLE)}),
                "minItems": 1,
                "uniqueItems": True,
            }
        ),
        "gradients": boolean,
        "seed": _int(0),
        "inputs": _param({"type": "string", "pattern": STORED_REF}),
        "expected": _param(
            {
                "type": "object",
                "minProperties": 1,
                "propertyNames": {"enum": list(COMPARABLE)},
                "additionalProperties": {"type": "string", "pattern": STORED_REF},
            }
        ),
        "dropout": _param(
            _object(
                {
                    "rate": _param(
                        {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1}
                    ),
                    "training": boolean,
                    "draws": _int(10),
                },
                DROPOUT_KEYS,
                required=["rate"],
            )
        ),
        "scores": _param(  # issue 14
            _object(
                {
                    "softcap": _param({"type": "number", "exclusiveMinimum": 0}),
                    "alibi": _param(
                        {
                            "anyOf": [
                                {"const": "standard"},
                                {
                                    "type": "array",
                                    "minItems": 1,
                                    "items": _param({"type": "number", "minimum": 0}),
                                },
                            ]
                        }
                    ),  # fmt: skip
                    "sink": _param(
                        {
                            "anyOf": [
                                {"const": "zero"},
                                {
                                    "type": "array",
                                    "minItems": 1,
                                    "items": _param({"type": "number"}),
                                },
                            ]
                        }
                    ),  # fmt: skip
                },
                SCORE_KEYS,
            )
        ),
        "rope": _param(  # issue 14: rotary position embeddings
            _object(
                {
                    "style": _param({"enum": list(ROPE_STYLES)}),
                    "theta": _param({"type": "number", "exclusiveMinimum": 0}),
                    "rotary_dim": _param({"type": "integer", "minimum": 2, "multipleOf": 2}),
                    "offset": _int(0),
                },
                ROPE_KEYS,
            )
        ),
        "cache": _param(  # issue 14: conformance.cases.kv_cache
            _object(
                {
                    "lengths": _int_list(1, minItems=1),
                    "page_size": _int(1),
                    "pages": _param(
                        {
                            "anyOf": [
                                {"enum": list(PAGE_ORDERS)},
                                {"type": "array", "items": _int_list(0, minItems=1)},
                            ]
                        }
                    ),  # fmt: skip
                    "num_pages": _int(1),
                },
                CACHE_KEYS,
            )
        ),
        "matrix": {
            "type": "object",
            "minProperties": 1,
            "propertyNames": {"pattern": r"^\w+$"},
            "additionalProperties": {"type": "array", "minItems": 1},
        },
    }


def build_schema() -> dict[str, Any]:
    """The spec-file schema (JSON Schema draft 2020-12)."""
    case_props = _case_properties()
    defaults_keys = {k: v for k, v in CASE_KEYS.items() if k not in ("name", "matrix")}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        "title": f"attention-conformance spec file, version {SPEC_VERSION}",
        "description": (
            "Cases for checking multi-head attention implementations against a float64 "
            "reference. Any value may be a matrix parameter reference ($name or ${name})."
        ),
        "type": "object",
        "additionalProperties": False,
        "required": ["cases"],
        "properties": {
            "version": _described({"const": SPEC_VERSION}, FILE_KEYS["version"]),
            "family": _described(
                {"type": "string", "pattern": r"^[A-Za-z0-9_.\-/]+$"}, FILE_KEYS["family"]
            ),
            "description": _described({"type": "string"}, FILE_KEYS["description"]),
            "defaults": _described({"$ref": "#/$defs/defaults"}, FILE_KEYS["defaults"]),
            "cases": _described(
                {"type": "array", "minItems": 1, "items": {"$ref": "#/$defs/case"}},
                FILE_KEYS["cases"],
            ),
        },
        "$defs": {
            "param": {
                "description": "a matrix parameter reference, replaced by each of its values",
                "type": "string",
                "pattern": PARAM_PATTERN,
            },
            "case": _object(case_props, CASE_KEYS, required=["name"]),
            "defaults": _object({k: case_props[k] for k in defaults_keys}, defaults_keys),
            "shape": _shape(),
            "mask": _mask(),
        },
    }


def render() -> str:
    return json.dumps(build_schema(), indent=2) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Write the schema file (or, with --check, exit 1 when the shipped one is stale)."""
    argv = sys.argv[1:] if argv is None else argv
    text = render()
    if "--check" in argv:
        current = SCHEMA_PATH.read_text() if SCHEMA_PATH.exists() else ""
        if current != text:
            print(f"{SCHEMA_PATH} is stale: run python -m conformance.spec.schema", file=sys.stderr)
            return 1
        return 0
    SCHEMA_PATH.parent.mkdir(parents=True, exist_ok=True)
    SCHEMA_PATH.write_text(text)
    print(f"wrote {SCHEMA_PATH}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
