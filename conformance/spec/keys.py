"""The spec format's keys: one table per section (key -> what it means), the version and
the size bounds they carry. `conformance.spec.schema` builds the editors' JSON Schema from
these tables, and error hints quote them.
"""

from __future__ import annotations

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
    "scores": "{softcap, alibi, sink}: score terms of modern attention (conformance.cases.score_terms)",
    "rope": "{style, theta, rotary_dim, offset}: rotary position embeddings on q and k",
    "cache": "{lengths, page_size, pages, num_pages}: the keys as a decoder's cache: per-sequence "
    "lengths, a paged layout (conformance.cases.kv_cache)",
    "matrix": "parameters expanded into one case per combination",
}
SCORE_KEYS = {  # issue 14
    "softcap": "cap > 0: logits -> cap * tanh(logits / cap), before bias and mask (Gemma 2)",
    "alibi": "standard (the paper's slopes) or a list of H slopes: bias -slope * |t + S - T - s|",
    "sink": "zero (off-by-one softmax) or a list of H sink logits added to the denominator",
}
ROPE_KEYS = {  # issue 14: rotary position embeddings (conformance.cases.rotary)
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
CACHE_KEYS = {  # issue 14: conformance.cases.kv_cache
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
