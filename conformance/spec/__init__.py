"""The spec language: YAML files -> resolved cases, with clear SpecErrors naming file, line,
key and a hint.

    yamlload   safe YAML that remembers the file:line of every value
    loading    files and folders: the file level, unique case ids    (load_spec, load_specs)
    matrix     a case template and its matrix -> one case per combination
    resolve    one case node -> Case: sections, cross-section checks, memory per tier
    shape, mask, scores, rope, cache, dropout, stored    one module per section of a case
    keys       the key tables (feed error hints and the JSON Schema)
    values     typed reads of one value, each failure a SpecError
    limits     load-time limits against hostile or mistaken specs
    schema     the editors' JSON Schema (conformance/schema/spec.schema.json)

The names below are the package's API (they were conformance.spec's before the split).
"""

from ..paths import shipped_specs_dir
from .keys import (
    CACHE_KEYS,
    CASE_KEYS,
    DECODE_KEYS,
    DIRECT_PARAMS,
    DROPOUT_KEYS,
    FILE_KEYS,
    LAYER_DIMS,
    MASK_KEYS,
    MAX_CASE_BYTES,
    MAX_INNER_AXES,
    MAX_MATRIX_CASES,
    ROPE_KEYS,
    SCORE_KEYS,
    SHAPE_KEYS,
    SPEC_VERSION,
)
from .loading import load_spec, load_specs, spec_files
from .resolve import estimate_bytes

__all__ = [
    "CACHE_KEYS",
    "CASE_KEYS",
    "DECODE_KEYS",
    "DIRECT_PARAMS",
    "DROPOUT_KEYS",
    "FILE_KEYS",
    "LAYER_DIMS",
    "MASK_KEYS",
    "MAX_CASE_BYTES",
    "MAX_INNER_AXES",
    "MAX_MATRIX_CASES",
    "ROPE_KEYS",
    "SCORE_KEYS",
    "SHAPE_KEYS",
    "SPEC_VERSION",
    "estimate_bytes",
    "load_spec",
    "load_specs",
    "shipped_specs_dir",
    "spec_files",
]
