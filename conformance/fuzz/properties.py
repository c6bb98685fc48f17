"""The properties: each a small strategy of cases plus a check (differential and
metamorphic), collected in PROPERTIES."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from hypothesis import strategies as st

from ..adapter_api.adapter import Declaration
from ..cases.case import Case
from ..cases.dtypes import round_to
from ..cases.inputs import make_inputs
from ..cases.masks import build_mask, causal_offset, visible
from ..cases.seeding import stream
from ..cases.written import for_case
from ..verdicts.evaluate import evaluate
from .agreement import agree, pair_tolerance
from .context import Context, ErrorFailed, Failure, HarnessError, PropertyFailed, Skip, run_once
from .limits import Limits
from .strategies import cases
from .transforms import derive, evidence, fresh, permutation

# --- properties ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Property:
    name: str
    summary: str
    needs: frozenset[str]  # declaration features without which the property cannot run
    strategy: Callable[[Declaration, Limits, str], st.SearchStrategy[Case]]
    check: Callable[[Context, Case, st.DataObject], str]  # returns an outcome label
    # Alternatives: at least one of these feature sets must be supported (default: any).
    needs_one_of: tuple[frozenset[str], ...] = ()

    def not_applicable(self, decl: Declaration) -> str | None:
        if not {"kernel", "layer"} & decl.features or not decl.dtypes:
            return f"{decl.name} has no mode or no dtype left to generate"
        missing = sorted(self.needs - decl.features - decl.dtypes)
        if missing:
            return f"{decl.name} lacks {', '.join(missing)}"
        if self.needs_one_of and not any(need <= decl.features for need in self.needs_one_of):
            options = " or ".join("+".join(sorted(n)) for n in self.needs_one_of)
            return f"{decl.name} supports none of: {options}"
        return None


def _differential(ctx: Context, case: Case, data: st.DataObject) -> str:
    record = evaluate(ctx.adapter, case, ctx.device, ctx.cache)
    verdict = record["verdict"]
    if verdict in ("fail", "error"):
        message = f"differential: {verdict}: {record['message']}"
        failed = Failure("differential", verdict, message, [case], record=record)
        raise (ErrorFailed if verdict == "error" else PropertyFailed)(failed)
    if verdict == "unsupported":
        raise Skip("unsupported")
    return verdict


# Metamorphic properties compare forward outputs of two runs: gradients and (inference)
# dropout would only add cost, so their cases leave them to the differential property.
# Score terms (issue 14) break the invariances the metamorphic properties rely on (ALiBi: key
# order; softcap: logit scaling; sinks: shift invariance), so the differential property covers them.
# Caches (issue 14) tie key positions to per-sequence lengths and a block table that the
# transformed twins (a batch slice, permuted keys) would have to rewrite: differential only.
METAMORPHIC_FORBID = frozenset(
    {"gradients", "dropout", "softcap", "alibi", "alibi-standard", "sink", "sink-zero",
     "cache-lengths", "paged-kv"}
)  # fmt: skip
# Rotary embeddings (issue 14) rotate each key by its position: permuting keys is not a
# symmetry. The other properties hold with them (heads, batch, Q scale, causal prefixes).
ROPE_TAGS = frozenset({"rope-half", "rope-interleaved", "rope-partial"})


def _meta_cases(decl: Declaration, **kwargs) -> st.SearchStrategy[Case]:  # noqa: ANN003
    kwargs["forbid"] = set(kwargs.get("forbid", ())) | METAMORPHIC_FORBID
    return cases(decl, **kwargs)


def _kv_strategy(decl: Declaration, limits: Limits, prefix: str) -> st.SearchStrategy[Case]:
    # Masks whose key columns repeat (padding, padded/masked query rows) leave room to permute.
    kinds = {"key_padding", "query_padding", "masked_rows"}
    options = []
    if "kernel" in decl.features:
        options.append(_meta_cases(decl, require={"kernel"}, forbid={"decode", *ROPE_TAGS},
                                   mask_kinds=kinds, limits=limits, prefix=prefix))  # fmt: skip
    if {"layer", "cross-attention"} <= decl.features:
        options.append(_meta_cases(decl, require={"layer", "cross-attention"},
                                   forbid={"decode", *ROPE_TAGS}, mask_kinds=kinds, limits=limits,
                                   prefix=prefix))  # fmt: skip
    return st.one_of(options).filter(lambda c: c.shape.kv_len > 1)  # one key: nothing to swap


def _kv_permutation(ctx: Context, case: Case, data: st.DataObject) -> str:
    s = case.shape
    inputs = make_inputs(case)
    arrays = {}
    if s.attention_axes:  # no masks here: permute along each attended axis of key and value
        key, value = inputs.arrays["key"], inputs.arrays["value"]
        for axis in s.attention_axes:
            perm = permutation(data, key.shape[axis], f"axis {axis} permutation")
            key, value = np.take(key, perm, axis=axis), np.take(value, perm, axis=axis)
        arrays = {"key": key, "value": value}
        column_perm = None
    else:
        attend, bias = build_mask(case)
        groups: dict[bytes, list[int]] = {}
        for col in range(s.kv_len):  # key columns that look identical to every query
            sig = b""
            if attend is not None:
                sig += np.ascontiguousarray(attend[..., col]).tobytes()
            if bias is not None:
                sig += np.ascontiguousarray(bias[..., col]).tobytes()
            groups.setdefault(sig, []).append(col)
        column_perm = np.arange(s.kv_len)
        for members in groups.values():
            if len(members) > 1:
                order = permutation(data, len(members), f"keys {members}")
                column_perm[members] = np.asarray(members)[order]
        if np.array_equal(column_perm, np.arange(s.kv_len)):
            raise Skip("vacuous")
        if case.mode == "kernel":
            arrays = {n: inputs.arrays[n][:, :, column_perm] for n in ("k", "v")}
        else:
            arrays = {n: inputs.arrays[n][:, column_perm] for n in ("key", "value")}
    moved = derive(case, inputs, arrays)
    tol, base = pair_tolerance(ctx, case, inputs)
    first = run_once(ctx, "kv-permutation", case, inputs, [case])
    second = run_once(ctx, "kv-permutation", case, moved, [case])
    want = dict(first)
    if column_perm is not None:
        full = np.concatenate([column_perm, np.arange(s.kv_len, s.kv_len + case.extra_keys)])
        for name in ("weights", "weights_mean"):
            if name in want:
                want[name] = want[name][..., full]
    what = "key/value positions permuted" + (
        f" by {column_perm.tolist()}" if column_perm is not None else ""
    )
    agree("kv-permutation", what, second, want, tol, base, [case], evidence("permuted", moved))
    return "ok"


def _head_strategy(decl: Declaration, limits: Limits, prefix: str) -> st.SearchStrategy[Case]:
    return _meta_cases(decl, forbid={"per-head-mask"}, limits=limits, prefix=prefix).filter(
        lambda c: c.shape.num_heads > 1
    )


def _head_permutation(ctx: Context, case: Case, data: st.DataObject) -> str:
    s = case.shape
    g, r = s.num_kv_heads, s.group_size
    sigma = permutation(data, g, "key/value head permutation")
    perm = np.concatenate(
        [sigma[j] * r + permutation(data, r, f"heads within group {j}") for j in range(g)]
    )  # new query head h reads old head perm[h]; its group moves with it (h // r)
    inputs = make_inputs(case)
    if case.mode == "kernel":
        arrays = {"q": inputs.arrays["q"][:, perm]}
        arrays.update({n: inputs.arrays[n][:, sigma] for n in ("k", "v")})
        moved = derive(case, inputs, arrays)
    else:
        w = inputs.weights
        weights = {n: w[n][perm] for n in ("wq", "bq", "wo")}
        weights.update({n: w[n][sigma] for n in ("wk", "bk", "wv", "bv", "bias_k", "bias_v")
                        if n in w})  # fmt: skip
        moved = derive(case, inputs, weights=weights)
    tol, base = pair_tolerance(ctx, case, inputs)
    first = run_once(ctx, "head-permutation", case, inputs, [case])
    second = run_once(ctx, "head-permutation", case, moved, [case])
    want = dict(first)
    if case.mode == "kernel":
        want["output"] = want["output"][:, perm]
    if "weights" in want:
        want["weights"] = want["weights"][:, perm]
    what = f"heads permuted by {perm.tolist()} (key/value heads by {sigma.tolist()})"
    agree("head-permutation", what, second, want, tol, base, [case], evidence("permuted", moved))
    return "ok"


def _row_select(case: Case, row_ok: np.ndarray) -> dict[str, np.ndarray]:
    """Broadcastable selections of query rows row_ok [B, T] for each comparable output."""
    per_head = row_ok[:, None, :, None]
    select = {"weights": per_head, "weights_mean": row_ok[:, :, None]}
    select["output"] = per_head if case.mode == "kernel" else row_ok[:, :, None]
    return select


def masked_row_policy(ctx: Context, case: Case) -> str:
    """What fully masked rows yield for this adapter: a declared divergence's policy or the
    case's expectation. An "as-written" policy is narrowed to the case's mask sources, so two
    cases whose rows the implementation writes differently (a boolean and an additive twin)
    get different policies (conformance.cases.written.for_case)."""
    divergence = ctx.declaration.divergence_for(case, ctx.device)
    if divergence is not None and divergence.masked_rows:
        return for_case(divergence.masked_rows, case)
    return case.mask.fully_masked_rows


def _policy_select(ctx: Context, a: Case, b: Case) -> tuple[dict | None, str]:
    """(selection, note) for comparing runs of cases a and b (same mask pattern).

    When the adapter declares different fully-masked-row policies for the two (divergences
    keyed on their features; each is verified by the differential property), rows with no
    visible key are left out of the comparison.
    """
    policies = (masked_row_policy(ctx, a), masked_row_policy(ctx, b))
    seen = visible(a)
    if policies[0] == policies[1] or seen is None or a.extra_keys:
        return None, ""
    note = f" (fully masked rows left out: declared policies {policies[0]} / {policies[1]})"
    return _row_select(a, seen.any(axis=-1).all(axis=1)), note


def _causal_strategy(decl: Declaration, limits: Limits, prefix: str) -> st.SearchStrategy[Case]:
    # Keep cases with a key that some compared row cannot see (else nothing can be changed).
    return _meta_cases(decl, require={"causal"}, limits=limits, prefix=prefix).filter(
        lambda c: max(1, (0 if c.decode else causal_offset(c)) + 1) <= c.shape.kv_len - 1
    )


def _causal_prefix(ctx: Context, case: Case, data: st.DataObject) -> str:
    s = case.shape
    t_len, s_len = s.query_len, s.kv_len
    offset = 0 if case.decode else causal_offset(case)
    low = max(1, offset + 1)  # row 0 sees keys <= offset: keep at least those
    if low > s_len - 1:
        raise Skip("vacuous")
    cut = data.draw(st.integers(low, s_len - 1), label="first changed key position")
    first_free_row = max(0, cut - offset)  # rows >= this may see a changed key
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="noise seed"))
    inputs = make_inputs(case)
    a, dt = inputs.arrays, case.dtype
    arrays = {}

    def replaced(x: np.ndarray, axis: int, start: int) -> np.ndarray:
        x = x.copy()
        index = [slice(None)] * x.ndim
        index[axis] = slice(start, None)
        x[tuple(index)] = fresh(rng, x[tuple(index)].shape, dt)
        return x

    if case.mode == "kernel":
        arrays = {"k": replaced(a["k"], 2, cut), "v": replaced(a["v"], 2, cut),
                  "q": replaced(a["q"], 2, first_free_row)}  # fmt: skip
    elif case.self_attention:  # query = key = value: T == S and offset 0
        arrays = {"query": replaced(a["query"], 1, cut)}
    else:
        arrays = {"key": replaced(a["key"], 1, cut), "value": replaced(a["value"], 1, cut),
                  "query": replaced(a["query"], 1, first_free_row)}  # fmt: skip
    moved = derive(case, inputs, arrays)

    # Compare rows that see no changed key and have a visible key at all: a fully masked row
    # follows the implementation's (possibly declared) policy, which may average every key.
    seen = visible(case)
    row_ok = np.ones((s.batch, t_len), dtype=bool)
    if seen is not None and not case.extra_keys:
        row_ok = seen.any(axis=-1).all(axis=1)  # [B, T]
    row_ok = row_ok & (np.arange(t_len) < first_free_row)[None, :]
    if not row_ok.any():
        raise Skip("vacuous")
    select = _row_select(case, row_ok)
    tol, base = pair_tolerance(ctx, case, inputs)
    first = run_once(ctx, "causal-prefix", case, inputs, [case])
    second = run_once(ctx, "causal-prefix", case, moved, [case])
    what = f"tokens from key position {cut} on changed; rows < {first_free_row} must not move"
    agree("causal-prefix", what, second, first, tol, base, [case], evidence("changed", moved),
           select=select)  # fmt: skip
    return "ok"


def _bool_strategy(decl: Declaration, limits: Limits, prefix: str) -> st.SearchStrategy[Case]:
    # Fewer mask cells: twin patterns with k masked cells turn up about once in C(n, k) seeds.
    limits = dataclasses.replace(limits, max_len=min(limits.max_len, 4),
                                 max_batch=min(limits.max_batch, 2))  # fmt: skip
    return _meta_cases(decl, require={"bool-mask"}, forbid={"additive-mask", "attn-bias"},
                       limits=limits, prefix=prefix)  # fmt: skip


BOOL_ADDITIVE_SEARCH = 3000  # most candidate seeds tried for an additive twin
BOOL_ADDITIVE_ENOUGH = 300  # after this many, settle for the best twin found so far


def additive_twin(case: Case, target: float | None = None) -> tuple[Case, Case] | None:
    """(bool case, additive case) whose masks are the same pattern, or None.

    Masks are drawn from streams keyed on the case (conformance.cases.masks), so the boolean and the
    additive component of a case never share a pattern. We search seeds of a twin case for an
    additive stream whose lowest-k draws are the same cells as the boolean stream's lowest k,
    then set both densities between the k-th and (k+1)-th draws. k is as close as we can find
    to the original density. Both masks are then checked with build_mask itself.
    """
    s, m = case.shape, case.mask
    heads = s.num_heads if m.per_head else 1
    size = (s.batch, heads, s.query_len, s.kv_len)
    n = int(np.prod(size))
    if n < 2:
        return None
    draws_a = stream(case.data_key, "mask.random").random(size).ravel()
    order_a = np.argsort(draws_a, kind="stable")
    goal = round((m.random_density if target is None else target) * n)
    best: tuple[int, int] | None = None  # (distance to goal, seed)
    for seed in range(BOOL_ADDITIVE_SEARCH):
        twin_key = dataclasses.replace(case, name=case.name + "-additive", seed=seed).data_key
        draws_b = stream(twin_key, "mask.additive").random(size).ravel()
        rank_b = np.empty(n, dtype=int)
        rank_b[np.argsort(draws_b, kind="stable")] = np.arange(n)
        reach = np.maximum.accumulate(rank_b[order_a])  # k cells match iff reach[k-1] == k-1
        ks = np.flatnonzero(reach[:-1] == np.arange(n - 1)) + 1
        if not len(ks):
            continue
        k = int(ks[np.argmin(np.abs(ks - goal))])
        if best is None or abs(k - goal) < best[0]:
            best = (abs(k - goal), seed, k)
        if best[0] == 0 or seed >= BOOL_ADDITIVE_ENOUGH:
            break
    if best is None:
        return None
    _, seed, k = best
    sorted_a = np.sort(draws_a)
    twin_key = dataclasses.replace(case, name=case.name + "-additive", seed=seed).data_key
    sorted_b = np.sort(stream(twin_key, "mask.additive").random(size).ravel())
    density_a = float((sorted_a[k - 1] + sorted_a[k]) / 2)
    density_b = float((sorted_b[k - 1] + sorted_b[k]) / 2)
    # The names stay: they key the mask streams (a content-derived rename would redraw them).
    bool_case = dataclasses.replace(case, mask=dataclasses.replace(m, random_density=density_a))
    add_mask = dataclasses.replace(m, random_density=None, additive_density=density_b)
    add_case = dataclasses.replace(
        case, name=case.name + "-additive", id=case.id + "-additive", seed=seed, mask=add_mask
    )
    seen_a, seen_b = visible(bool_case), visible(add_case)
    if not np.array_equal(seen_a, seen_b):
        raise HarnessError(
            "bool-additive: the twin masks differ; conformance.cases.masks changed how it draws "
            "random/additive masks and this property needs updating"
        )
    return bool_case, add_case


def _bool_additive(ctx: Context, case: Case, data: st.DataObject) -> str:
    pair = additive_twin(case)
    if pair is None:
        raise Skip("vacuous")
    bool_case, add_case = pair
    if ctx.declaration.missing(add_case) or ctx.declaration.missing(bool_case):
        raise Skip("unsupported")  # e.g. the twin pattern has fully masked rows
    inputs = make_inputs(bool_case)  # the additive twin runs on the very same numbers
    tol_a, base_a = pair_tolerance(ctx, bool_case, inputs)
    tol_b, _ = pair_tolerance(ctx, add_case, inputs)
    tol = tol_a if tol_a.atol >= tol_b.atol else tol_b  # a divergence may apply to one only
    both = [bool_case, add_case]
    first = run_once(ctx, "bool-additive", bool_case, inputs, both)
    second = run_once(ctx, "bool-additive", add_case, inputs, both)
    masked = int((~visible(bool_case)).sum())
    what = f"same pattern ({masked} masked cell(s)) as a boolean and as a 0/-inf additive mask"
    select, note = _policy_select(ctx, bool_case, add_case)
    agree("bool-additive", what + note, second, first, tol, base_a, both,
           evidence("shared", inputs), select=select)  # fmt: skip
    return "ok"


def _batch_strategy(decl: Declaration, limits: Limits, prefix: str) -> st.SearchStrategy[Case]:
    limits = dataclasses.replace(limits, min_batch=2, max_batch=max(2, limits.max_batch))
    return _meta_cases(decl, limits=limits, prefix=prefix)


def first_element(case: Case) -> Case:
    """The case restricted to batch element 0, with the same mask for that element.

    Seeded masks are drawn in C order, so batch 1 reads the first slice of the same stream;
    this is checked against build_mask rather than trusted.
    """
    m = case.mask
    mask = dataclasses.replace(
        m,
        key_padding=None if m.key_padding is None else m.key_padding[:1],
        query_padding=None if m.query_padding is None else m.query_padding[:1],
        masked_rows=tuple(r for r in m.masked_rows if r[0] == 0),
    )
    one = dataclasses.replace(
        case, id=case.id + "#batch0", shape=dataclasses.replace(case.shape, batch=1), mask=mask
    )
    full_attend, full_bias = _dense_mask(case)
    part_attend, part_bias = _dense_mask(one)
    if not (
        np.array_equal(full_attend[:1], part_attend) and np.array_equal(full_bias[:1], part_bias)
    ):
        raise HarnessError("batch-independence: batch 1 draws a different mask")
    return one


def _dense_mask(case: Case) -> tuple[np.ndarray, np.ndarray]:
    """build_mask with None spelt out: attend everything, add nothing; [B, H, T, S]."""
    s = case.shape
    size = (s.batch, s.num_heads, s.query_len, s.kv_len)
    attend, bias = build_mask(case)
    attend = np.ones(size, dtype=bool) if attend is None else np.broadcast_to(attend, size)
    bias = np.zeros(size) if bias is None else np.broadcast_to(bias, size)
    return attend, bias


def _batch_independence(ctx: Context, case: Case, data: st.DataObject) -> str:
    inputs = make_inputs(case)
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="noise seed"))
    names = ("q", "k", "v") if case.mode == "kernel" else ("query", "key", "value")
    if case.mode == "layer" and case.self_attention:
        names = ("query",)
    arrays = {}
    for name in names:
        x = inputs.arrays[name].copy()
        x[1:] = fresh(rng, x[1:].shape, case.dtype)
        arrays[name] = x
    moved = derive(case, inputs, arrays)
    tol, base = pair_tolerance(ctx, case, inputs)
    first = run_once(ctx, "batch-independence", case, inputs, [case])
    second = run_once(ctx, "batch-independence", case, moved, [case])
    head = {k: v[:1] for k, v in first.items()}
    agree("batch-independence", "batch elements 1.. changed; element 0 must not move",
           {k: v[:1] for k, v in second.items()}, head, tol, base, [case],
           evidence("changed", moved))  # fmt: skip

    one = first_element(case)
    sliced = {n: inputs.arrays[n][:1] for n in inputs.arrays}
    single = derive(one, inputs, sliced)
    tol1, base1 = pair_tolerance(ctx, one, single)
    alone = run_once(ctx, "batch-independence", one, single, [one, case])
    select, note = _policy_select(ctx, one, case)
    agree("batch-independence", "element 0 run alone (batch 1) differs from its batched run"
           + note, alone, head, tol1 if tol1.atol >= tol.atol else tol, base1 or base,
           [one, case], evidence("alone", single), select=select)  # fmt: skip
    return "ok"


def _scale_strategy(decl: Declaration, limits: Limits, prefix: str) -> st.SearchStrategy[Case]:
    return _meta_cases(decl, limits=limits, prefix=prefix)


def _scale_invariance(ctx: Context, case: Case, data: st.DataObject) -> str:
    # Powers of two scale exactly; half precision only upwards (no subnormal underflow).
    factors = [2.0, 4.0] if case.dtype in ("float16", "bfloat16") else [2.0, 4.0, 0.5, 0.25]
    c = data.draw(st.sampled_from(factors), label="c")
    inputs = make_inputs(case)
    scaled_case = dataclasses.replace(case, id=case.id + f"#scale/{c:g}",
                                      scale=case.effective_scale / c)  # fmt: skip
    if case.mode == "kernel":
        changed = {"q": inputs.arrays["q"] * c}
        moved = derive(case, inputs, changed)
    else:
        changed = {n: inputs.weights[n] * c for n in ("wq", "bq")}
        moved = derive(case, inputs, weights=changed)
    for value in changed.values():
        if not np.array_equal(round_to(value, case.dtype), value):
            raise Skip("vacuous")  # not exactly representable: the inputs would change
    tol, base = pair_tolerance(ctx, case, inputs)
    tol2, _ = pair_tolerance(ctx, scaled_case, moved)
    tol = tol if tol.atol >= tol2.atol else tol2
    first = run_once(ctx, "scale-invariance", case, inputs, [case])
    second = run_once(ctx, "scale-invariance", scaled_case, moved, [case, scaled_case])
    what = f"Q scaled by {c:g} and the scale by 1/{c:g} (scale {scaled_case.scale!r})"
    select, note = _policy_select(ctx, case, scaled_case)
    agree("scale-invariance", what + note, second, first, tol, base, [case, scaled_case],
           evidence("scaled", moved), select=select)  # fmt: skip
    return "ok"


def _differential_strategy(
    decl: Declaration, limits: Limits, prefix: str
) -> st.SearchStrategy[Case]:
    return cases(decl, limits=limits, prefix=prefix)


PROPERTIES: dict[str, Property] = {
    p.name: p
    for p in (
        Property("differential", "matches the float64 reference", frozenset(),
                 _differential_strategy, _differential),
        Property("kv-permutation", "permuting key/value positions together changes nothing",
                 frozenset(), _kv_strategy, _kv_permutation,
                 (frozenset({"kernel"}), frozenset({"layer", "cross-attention"}))),
        Property("head-permutation", "permuting heads with their weights permutes per-head "
                 "results only", frozenset(), _head_strategy, _head_permutation),
        Property("causal-prefix", "causal outputs at position i ignore later tokens",
                 frozenset({"causal"}), _causal_strategy, _causal_prefix),
        Property("bool-additive", "a boolean mask equals the same 0/-inf additive mask",
                 frozenset({"bool-mask", "additive-mask"}), _bool_strategy, _bool_additive),
        Property("batch-independence", "batch elements do not influence each other",
                 frozenset(), _batch_strategy, _batch_independence),
        Property("scale-invariance", "scaling Q by c and the scale by 1/c changes nothing",
                 frozenset({"scale"}), _scale_strategy, _scale_invariance),
    )
}  # fmt: skip
