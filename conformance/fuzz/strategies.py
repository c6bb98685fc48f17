"""Hypothesis strategies for attention cases: small, composable, constrained by a declaration.

Import them into your own Hypothesis tests:

    from hypothesis import given
    from conformance import strategies as cst

    @given(cst.cases(MyAdapter.declaration))
    def test_my_attention(case): ...

Every strategy takes the set of feature tags it may use (`features`, see
conformance.cases.case.FEATURES), so fuzzing an implementation only generates cases its Declaration
claims to support: pass `declaration=` to `cases()` and it does the rest. Sizes are bounded
(`Limits`) so that one example runs in milliseconds.

Generated cases are ordinary `Case` objects with family "fuzz", no matrix parameters and a
name derived from their content, so `conformance.fuzz.spec_text([case])` writes them as a spec
file that loads back into exactly the same case, inputs included (inputs are keyed on the id).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
from collections.abc import Iterable

from hypothesis import HealthCheck, assume, settings
from hypothesis import strategies as st

from ..adapter_api.adapter import Declaration
from ..cases import case as _case_module
from ..cases.case import DTYPES, FEATURES, Case, Decode, Mask, Shape
from ..cases.score_terms import ScoreTerms, standard_alibi_slopes
from .limits import (
    BLOCK_SIZES,
    DEFAULT_LIMITS,
    KERNEL_SCALE_LIMITS,
    LIMITS_BY_TIER,
    Limits,
    row_lengths,
)
from .parts import (
    caches,
    decodes,
    densities,
    dtypes,
    head_counts,
    ropes,
    scales,
    sometimes,
    valid_lengths,
    with_block_table,
)

# The public strategies and bounds, wherever they are defined (users import them from here).
__all__ = [
    "BLOCK_SIZES", "DEFAULT_LIMITS", "KERNEL_SCALE_LIMITS", "LIMITS_BY_TIER", "MASK_KINDS",
    "NOT_GENERATED", "PROFILES", "Limits", "allowed_features", "caches", "case_name", "cases",
    "decodes", "dtypes", "head_counts", "masks", "named", "needed_kinds", "profile", "ropes",
    "row_lengths", "scales", "shapes", "with_block_table",
]  # fmt: skip

# Attention dropout is a newer part of the case model; generate it only where it exists.
Dropout = getattr(_case_module, "Dropout", None)

# Feature tags cases() never generates, and why (everything else in FEATURES it does).
NOT_GENERATED: dict[str, str] = {
    "dropout-training": "checked statistically over many seeded runs (conformance.oracle.dropout): "
    "far too slow per example; specs/dropout.yaml covers it",
    # issue 14: covered by specs/finite_fill.yaml and specs/packed.yaml, and proven against
    # independent formulations in tests/test_packed_fill.py
    "finite-fill": "fully masked rows then follow the fill's arithmetic per dtype, which the "
    "generator's policies do not model; specs/finite_fill.yaml covers it",
    "segments": "segment lengths must sum to T = S per batch element; specs/packed.yaml covers it",
    "left-padding": "a padding side, not a component; specs/packed.yaml covers it",
}

# Mask components the generator knows, and the feature tag each one needs.
MASK_KINDS: dict[str, str] = {
    "causal": "causal",
    "window": "window",
    "key_padding": "key-padding",
    "query_padding": "query-padding",
    "random": "bool-mask",
    "additive": "additive-mask",
    "bias": "attn-bias",
    "masked_rows": "fully-masked-rows",
}
# When a declaration cannot express fully masked rows, components are dropped in this order
# until none is left (random patterns first: they are the likeliest culprits).
_REPAIR_ORDER = ("masked_rows", "random", "additive", "query_padding", "key_padding", "window",
                 "causal")  # fmt: skip


def allowed_features(declaration: Declaration | None = None) -> frozenset[str]:
    """Feature tags (dtypes included) a strategy may use for this declaration."""
    if declaration is None:
        return frozenset(FEATURES)
    return declaration.features | (declaration.dtypes & frozenset(DTYPES))


# --- shapes --------------------------------------------------------------------------------


@st.composite
def shapes(
    draw: st.DrawFn,
    mode: str = "kernel",
    features: Iterable[str] | None = None,
    *,
    limits: Limits = DEFAULT_LIMITS,
    cross: bool | None = None,
    decode: Decode | None = None,
    multi_axis: bool = False,
    same_len: bool = False,
) -> Shape:
    """A Shape for `mode` using only allowed tags.

    cross: layer mode, whether key/value may come from their own inputs (None: if allowed);
    decode: T = S = prefix + steps; multi_axis: Keras-style attention_axes (layer mode);
    same_len: force S = T.
    """
    allowed = set(FEATURES if features is None else features)
    layer = mode == "layer"
    may_cross = layer and ("cross-attention" in allowed if cross is None else cross)
    kv_free = "kv-len" in allowed and (may_cross or not layer) and decode is None
    kv_free = kv_free and not same_len
    batch = draw(st.integers(limits.min_batch, max(limits.min_batch, limits.max_batch)))
    h, g = draw(head_counts(allowed, limits.max_heads))
    k = draw(st.integers(1, limits.max_dim))
    v = draw(st.integers(1, limits.max_dim)) if "value-dim" in allowed else k
    query_shape: tuple[int, ...] = ()
    kv_shape: tuple[int, ...] = ()
    axes: tuple[int, ...] = ()
    if multi_axis:
        n_inner = draw(st.integers(2, 3))
        query_shape = tuple(draw(st.integers(1, limits.max_inner)) for _ in range(n_inner))
        chosen = draw(st.sets(st.integers(1, n_inner), min_size=1))
        axes = tuple(sorted(chosen))
        kv_shape = query_shape
        if kv_free:
            kv_shape = tuple(
                draw(st.integers(1, limits.max_inner)) if i + 1 in axes else n
                for i, n in enumerate(query_shape)
            )
        t = math.prod(query_shape[a - 1] for a in axes)
        s = math.prod(kv_shape[a - 1] for a in axes)
    elif decode is not None:
        t = s = decode.prefix + decode.steps * decode.chunk
        if decode.memory and "kv-len" in allowed:  # an encoder memory of any length
            s = draw(st.integers(1, limits.max_len))
    elif limits.long_len:
        per_row = batch * h  # B*H*T*S <= max_elements (S = T unless S is free)
        cap = (
            limits.max_elements // per_row
            if kv_free
            else math.isqrt(limits.max_elements // per_row)
        )
        t = draw(row_lengths(limits, max(1, cap)))
        s = draw(row_lengths(limits, max(1, cap // t))) if kv_free else t
    else:
        t = draw(st.integers(1, limits.max_len))
        s = draw(st.integers(1, limits.max_len)) if kv_free else t
    if layer:
        # Dq = H*K is what every layer API can express; a free Dq is Keras/Flax territory.
        free = sometimes(draw, 4)
        dq = draw(st.integers(1, limits.max_model_dim)) if free else h * k
        dk = dv = dq
        if may_cross and "kv-input-dims" in allowed and draw(st.booleans()):
            dk = draw(st.integers(1, limits.max_model_dim))
            dv = draw(st.one_of(st.just(dk), st.integers(1, limits.max_model_dim)))
        do = dq
        if "output-dim" in allowed and draw(st.booleans()):
            do = draw(st.integers(1, limits.max_model_dim))
    else:
        dq = dk = dv = do = h * k
    return Shape(
        batch=batch, query_len=t, kv_len=s, num_heads=h, num_kv_heads=g, key_dim=k,
        value_dim=v, query_dim=dq, key_input_dim=dk, value_input_dim=dv, output_dim=do,
        query_shape=query_shape, kv_shape=kv_shape, attention_axes=axes,
    )  # fmt: skip


# --- masks ---------------------------------------------------------------------------------


@st.composite
def masks(
    draw: st.DrawFn,
    shape: Shape,
    features: Iterable[str] | None = None,
    *,
    kinds: Iterable[str] | None = None,
    require: Iterable[str] = (),
    fully_masked_rows: str = "nan",
) -> Mask:
    """A neutral Mask for `shape`: any combination of the allowed components.

    kinds: mask components to choose from (keys of MASK_KINDS; default all allowed ones);
    require: components that must be present. Whether the result has fully masked rows is
    not decided here (it depends on the combination): `cases()` checks and repairs that.
    """
    allowed = set(FEATURES if features is None else features)
    pool = set(MASK_KINDS if kinds is None else kinds)
    require = set(require)
    usable = {k for k in pool | require if MASK_KINDS[k] in allowed}
    if require - usable:
        raise ValueError(f"required mask components not allowed: {sorted(require - usable)}")
    b, t, s = shape.batch, shape.query_len, shape.kv_len
    on = {k for k in sorted(usable) if k in require or sometimes(draw, 4)}
    kw: dict = {"fully_masked_rows": fully_masked_rows}
    if "causal" in on:
        aligns = ["top-left", "bottom-right"]
        if t != s:
            aligns = [a for a in aligns if f"causal-{a}" in allowed]
        if aligns:
            kw["causal"] = draw(st.sampled_from(aligns))
        elif "causal" in require:
            assume(False)  # T != S and no alignment is supported: retry
    if "window" in on:
        kw["window"] = (draw(st.integers(0, s)), draw(st.integers(0, s)))
    # Without fully-masked-rows, a key length of 0 or a padded query row is off limits.
    empty_ok = "fully-masked-rows" in allowed
    if "key_padding" in on:
        kw["key_padding"] = draw(valid_lengths(b, s, minimum=0 if empty_ok else 1))
    if "query_padding" in on:
        kw["query_padding"] = draw(valid_lengths(b, t, minimum=0 if empty_ok else t))
    if "random" in on:
        kw["random_density"] = draw(densities())
    if "additive" in on:
        kw["additive_density"] = draw(densities())
    if "bias" in on:
        kw["bias_scale"] = draw(st.sampled_from([1.0, 0.1, 5.0]) | st.floats(0.01, 10.0))
    if "masked_rows" in on:
        cells = st.tuples(st.integers(0, b - 1), st.integers(0, t - 1))
        rows = draw(st.lists(cells, min_size=1, max_size=2, unique=True))
        kw["masked_rows"] = tuple(sorted(rows))
    varies = {"random_density", "additive_density", "bias_scale"} & set(kw)
    if varies and "per-head-mask" in allowed and shape.num_heads > 1:
        kw["per_head"] = draw(st.booleans())
    return Mask(**kw)


def _without(mask: Mask, kind: str) -> Mask:
    field = {
        "causal": "causal", "window": "window", "key_padding": "key_padding",
        "query_padding": "query_padding", "random": "random_density",
        "additive": "additive_density", "bias": "bias_scale", "masked_rows": "masked_rows",
    }[kind]  # fmt: skip
    out = dataclasses.replace(mask, **{field: () if kind == "masked_rows" else None})
    if (
        out.per_head
        and out.random_density is None
        and out.additive_density is None
        and (out.bias_scale is None)
    ):
        out = dataclasses.replace(out, per_head=False)
    return out


def _present(mask: Mask) -> set[str]:
    fields = {
        "causal": mask.causal, "window": mask.window, "key_padding": mask.key_padding,
        "query_padding": mask.query_padding, "random": mask.random_density,
        "additive": mask.additive_density, "bias": mask.bias_scale,
        "masked_rows": mask.masked_rows or None,
    }  # fmt: skip
    return {k for k, v in fields.items() if v is not None}


# --- whole cases ---------------------------------------------------------------------------


def case_name(case: Case, prefix: str = "case") -> str:
    """A readable, content-derived name: prefix-mode-hash (the hash keeps ids unique)."""
    fields = (
        case.mode, case.shape, case.mask, case.dtype, case.scale, case.self_attention,
        case.use_bias, case.add_bias_kv, case.add_zero_attn, case.decode, case.compare, case.seed,
        getattr(case, "gradients", False), getattr(case, "dropout", None),
    )  # fmt: skip
    # issue 14: only when present, so the names of cases without them stay as they were; a
    # seeded block table is made from the name, so only an explicit one joins the hash
    if case.scores is not None:  # softcap, ALiBi, sinks: without them a softcapped case and
        # its uncapped twin shared one id, and so one cached reference (ReferenceCache)
        fields += (("scores", case.scores),)
    if case.rope is not None:
        fields += (("rope", case.rope),)
    if case.cache is not None:
        c = case.cache
        table = c.block_table if c.page_order == "explicit" else None
        fields += (("cache", dataclasses.replace(c, block_table=table)),)
    digest = hashlib.sha256(repr(fields).encode()).hexdigest()[:8]
    return f"{prefix}-{case.mode}-{digest}"


def named(case: Case, prefix: str = "case", family: str = "fuzz") -> Case:
    """The case with family/name/id set from its content (what a spec file will reproduce)."""
    name = case_name(case, prefix)
    return dataclasses.replace(case, family=family, name=name, id=f"{family}/{name}", params=())


@st.composite
def cases(
    draw: st.DrawFn,
    declaration: Declaration | None = None,
    *,
    features: Iterable[str] | None = None,
    require: Iterable[str] = (),
    forbid: Iterable[str] = (),
    mask_kinds: Iterable[str] | None = None,
    limits: Limits = DEFAULT_LIMITS,
    prefix: str = "case",
    family: str = "fuzz",
    fully_masked_rows: str = "nan",
) -> Case:
    """A complete Case that `declaration` claims to support (or any valid case without one).

    features: allowed tags (default: the declaration's, or all); require: tags the case must
    have (modes, "causal", "cross-attention", "scale", "decode", "bool-mask", "weights", ...);
    forbid: tags it must not have; mask_kinds: mask components to draw from (MASK_KINDS keys).
    """
    allowed = set(allowed_features(declaration) if features is None else features)
    allowed -= set(forbid) | set(NOT_GENERATED)
    require = set(require)
    if require - allowed:
        raise ValueError(f"required tags are not allowed here: {sorted(require - allowed)}")
    modes = [m for m in ("kernel", "layer") if m in allowed and (m in require or not (
        {"kernel", "layer"} & require))]  # fmt: skip
    if not modes:
        raise ValueError("neither 'kernel' nor 'layer' mode is allowed")
    mode = draw(st.sampled_from(modes))
    layer = mode == "layer"
    dtype = draw(dtypes(allowed))

    decode = None
    can_decode = {"decode", "causal"} <= allowed and (mask_kinds is None or "causal" in mask_kinds)
    can_decode = can_decode and "cross-attention" not in require
    # issue 14: decoding over an encoder memory (kernel mode, no mask) and chunked steps
    memory_ok = not layer and {"decode", "decode-memory"} <= allowed and not (
        require & {"causal", *MASK_KINDS.values()})  # fmt: skip
    decoding = (can_decode or memory_ok) and ("decode" in require or sometimes(draw, 6))
    memory = memory_ok and (
        "decode-memory" in require or (decoding and (not can_decode or sometimes(draw, 3)))
    )
    if memory or decoding:
        chunked = "decode-chunked" in allowed and limits.max_len >= 2
        decode = draw(decodes(limits.max_len, chunked=chunked, memory=memory))
        if "decode-chunked" in require and decode.chunk == 1:
            decode = Decode(prefix=0, steps=1, chunk=limits.max_len, memory=memory)
    # issue 14: a kernel-mode step against a cache (no decode, gradients or dropout); cache
    # lengths only where the spec allows them: not with key/query padding or ALiBi (with rope:
    # per-sequence positions, their own tag)
    cache_tags = {"cache-lengths", "paged-kv"}
    use_cache = (
        not layer and decode is None and bool(allowed & cache_tags)
        and (bool(require & cache_tags) or sometimes(draw, 3))
    )  # fmt: skip
    # issue 14: rotary embeddings, decided here (they rule out extra keys, dropout,
    # multi-axis attention and an encoder memory) and drawn once K is known; likelier in a
    # cache step that may take per-sequence positions
    rope_tags = {"rope-half", "rope-interleaved", "rope-partial", "rope-per-sequence"}
    per_sequence_ok = use_cache and "rope-per-sequence" in allowed
    use_rope = (
        bool(allowed & {"rope-half", "rope-interleaved"}) and not memory
        and (bool(require & rope_tags) or sometimes(draw, 2 if per_sequence_ok else 5))
    )  # fmt: skip
    with_lengths = (
        use_cache and "cache-lengths" in allowed
        and (not use_rope or "rope-per-sequence" in allowed)
        and not require & {"key-padding", "query-padding", "alibi", "alibi-standard"}
        and ("cache-lengths" in require or "rope-per-sequence" in require
             or not sometimes(draw, 3))
    )  # fmt: skip
    multi = (
        layer and decode is None and not use_rope and "multi-axis" in allowed and not (
            require & {"causal", *MASK_KINDS.values(), "weights", "weights-mean"})
        and ("multi-axis" in require or sometimes(draw, 6))
    )  # fmt: skip
    cross_ok = layer and "cross-attention" in allowed and decode is None
    # A required causal mask with T != S needs an alignment tag; without one keep S = T.
    same_len = "causal" in require and not {"causal-top-left", "causal-bottom-right"} & allowed
    shape = draw(shapes(mode, allowed, limits=limits, cross=cross_ok, decode=decode,
                        multi_axis=multi, same_len=same_len))  # fmt: skip
    needs_cross = layer and (
        shape.kv_len != shape.query_len or shape.kv_shape != shape.query_shape
        or shape.key_input_dim != shape.query_dim or shape.value_input_dim != shape.query_dim
    )  # fmt: skip
    cross = needs_cross or (cross_ok and ("cross-attention" in require or draw(st.booleans())))

    if decode is not None:
        mask = Mask() if decode.memory else Mask(causal="top-left")
    elif multi:
        mask = Mask(fully_masked_rows=fully_masked_rows)
    else:
        needed = {k for k, tag in MASK_KINDS.items() if tag in require}
        if "causal" in require:
            needed.add("causal")
        kinds = mask_kinds
        if with_lengths:  # the lengths already say which keys each sequence holds
            kinds = set(MASK_KINDS if kinds is None else kinds) - {"key_padding", "query_padding"}
        mask = draw(masks(shape, allowed, kinds=kinds, require=needed,
                          fully_masked_rows=fully_masked_rows))  # fmt: skip

    scale = None
    if "scale" in allowed and ("scale" in require or sometimes(draw, 4)):
        scale = draw(scales())
    use_bias = not (layer and "no-bias" in allowed and ("no-bias" in require or sometimes(draw, 4)))  # fmt: skip
    extra_ok = layer and decode is None and not multi and not use_rope
    bias_kv = extra_ok and "bias-kv" in allowed and (
        "bias-kv" in require or sometimes(draw, 5))  # fmt: skip
    zero_attn = extra_ok and "zero-attn" in allowed and (
        "zero-attn" in require or sometimes(draw, 5))  # fmt: skip
    compare = ["output"]
    if decode is None and not multi:
        for name, tag in (("weights", "weights"), ("weights_mean", "weights-mean")):
            if tag in allowed and (tag in require or sometimes(draw, 3)):
                compare.append(name)
    extra = {}
    single_pass = decode is None and not multi  # gradients and dropout need one full pass
    single_pass = single_pass and not use_cache  # (issue 14) nor a cache step
    if single_pass and "gradients" in allowed and ("gradients" in require or sometimes(draw, 5)):
        extra["gradients"] = True
    if (
        single_pass
        and not use_rope  # the spec language has no dropout with rotary embeddings
        and Dropout is not None
        and "dropout" in allowed
        and ("dropout" in require or sometimes(draw, 6))
    ):
        rate = draw(st.sampled_from([0.5, 0.1]) | st.floats(0.01, 0.99))
        extra["dropout"] = Dropout(rate=rate)  # inference mode: must equal no dropout
    # issue 14: score terms (softcap, ALiBi, sinks); ALiBi as the spec loader allows it
    terms: dict = {}
    if not multi:
        h = shape.num_heads
        if "softcap" in allowed and ("softcap" in require or sometimes(draw, 5)):
            terms["softcap"] = draw(st.sampled_from([50.0, 1.0]) | st.floats(0.1, 100.0))
        alibi_ok = decode is None and not (bias_kv or zero_attn) and not with_lengths
        for tag, standard in (("alibi-standard", True), ("alibi", False)):
            if (
                alibi_ok
                and "alibi" not in terms
                and tag in allowed
                and (tag in require or sometimes(draw, 6))
            ):
                slopes = st.lists(st.floats(0.0, 4.0), min_size=h, max_size=h).map(tuple)
                terms["alibi"] = standard_alibi_slopes(h) if standard else draw(slopes)
                terms["alibi_standard"] = standard
        for tag, zero in (("sink-zero", True), ("sink", False)):
            if "sink" not in terms and tag in allowed and (tag in require or sometimes(draw, 6)):
                logits = st.lists(st.floats(-5.0, 5.0), min_size=h, max_size=h).map(tuple)
                terms["sink"] = (0.0,) * h if zero else draw(logits)
                if not zero and all(x == 0 for x in terms["sink"]):  # that would be sink-zero
                    terms["sink"] = (0.5,) + terms["sink"][1:]
        if terms.get("alibi_standard") is False and terms["alibi"] == standard_alibi_slopes(h):
            terms["alibi"] = (terms["alibi"][0] + 0.5,) + terms["alibi"][1:]
    if terms:
        extra["scores"] = ScoreTerms(**terms)
    if use_rope:  # issue 14
        extra["rope"] = draw(ropes(shape.key_dim, allowed,
                                   min_offset=max(0, shape.query_len - shape.kv_len)))  # fmt: skip
    # issue 14: a kernel-mode step against a cache, lengths only where the spec allows them
    # (not with key/query padding, ALiBi, rope, or top-left causal with T != S)
    if use_cache:
        # a top-left causal mask with T != S contradicts lengths (queries end each cache)
        top_left = mask.causal == "top-left" and shape.query_len != shape.kv_len
        cache = draw(caches(shape, allowed, lengths=with_lengths and not top_left))
        if cache is not None:
            extra["cache"] = cache
    seed = draw(st.integers(0, 2**16))

    case = Case(
        id="", family=family, name="", mode=mode, shape=shape, mask=mask, dtype=dtype,
        scale=scale, self_attention=not cross, use_bias=use_bias, add_bias_kv=bias_kv,
        add_zero_attn=zero_attn, decode=decode, compare=tuple(compare), seed=seed, **extra,
    )  # fmt: skip
    case = named(case, prefix, family)
    if "fully-masked-rows" not in allowed:
        case = _repair_masked_rows(case, prefix, family, keep=needed_kinds(require))
    case = with_block_table(case)  # the name is final now
    missing = case.features - allowed - set(DTYPES)
    assume(not missing)  # a safety net: construction above should already guarantee it
    assume(require <= case.features)
    if declaration is not None:
        assume(not declaration.missing(case))
    return case


def needed_kinds(require: Iterable[str]) -> set[str]:
    """Mask components implied by required tags."""
    return {k for k, tag in MASK_KINDS.items() if tag in set(require)}


def _repair_masked_rows(case: Case, prefix: str, family: str, keep: set[str]) -> Case:
    """Drop mask components until no query row is fully masked (the adapter cannot say)."""
    for kind in _REPAIR_ORDER:
        if "fully-masked-rows" not in case.features:
            return case
        if kind in keep or kind not in _present(case.mask):
            continue
        case = named(dataclasses.replace(case, mask=_without(case.mask, kind)), prefix, family)
    return case


# --- settings profiles ---------------------------------------------------------------------

PROFILES = {
    # CI: bounded and deterministic (derandomize: the same examples on every run).
    "ci": settings(
        max_examples=10,
        derandomize=True,
        deadline=None,
        database=None,
        print_blob=True,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.filter_too_much,
        ],
    ),  # fmt: skip
    # Scheduled runs: many more examples, random (and remembered by the example database).
    "long": settings(
        max_examples=300,
        deadline=None,
        print_blob=True,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.filter_too_much,
        ],
    ),  # fmt: skip
}
for _name, _profile in PROFILES.items():
    settings.register_profile(f"conformance-{_name}", _profile)


def profile(name: str | None = None) -> settings:
    """The settings profile to use: `name`, else env HYPOTHESIS_PROFILE ("ci" or "long")."""
    name = name or os.environ.get("HYPOTHESIS_PROFILE", "ci")
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; choose one of {', '.join(PROFILES)}")
    return PROFILES[name]
