"""`conformance fuzz`: property-based differential fuzzing of one adapter with Hypothesis.

Hand-written specs find the bugs their authors imagined; generated cases find the rest. Each
property below runs as its own Hypothesis search over cases the adapter's Declaration claims
to support (conformance.strategies):

    differential        the result matches the float64 reference (conformance.evaluate)
    kv-permutation      permuting key/value positions together leaves the output unchanged
    head-permutation    permuting heads together with their weights permutes per-head results
                        and leaves the layer output unchanged
    causal-prefix       with a causal mask, outputs at position i ignore later tokens
    bool-additive       a boolean mask and the same 0/-inf additive mask give the same result
    batch-independence  batch elements do not influence each other (and batch 1 agrees)
    scale-invariance    scaling Q by c and the scale by 1/c changes nothing

The metamorphic properties need no oracle: they run the adapter twice, on a case and on a
transformed copy of its inputs (CaseInputs is a plain mutable record), and compare the two
results at twice the case dtype's tolerance (each run may err by one tolerance).

A counterexample is shrunk by Hypothesis and written out as a minimal spec file (drop it into
specs/ as a regression case; it loads with conformance.spec.load_spec), a failure.json, the
transformed inputs of a metamorphic property (inputs.npz) and, when conformance.reproducer is
installed, a standalone reproducer. Rerunning with the printed seed reproduces it.

The fuzzer runs adapters in-process: one framework configuration (env such as KERAS_BACKEND)
per process, so several adapters with different worker keys are fuzzed in child processes.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import subprocess
import sys
import time
import traceback
import warnings
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml
from hypothesis import HealthCheck, Phase, Verbosity, given, reject, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st
from hypothesis.errors import HypothesisException, Unsatisfiable

from .adapter import Adapter, Declaration, Unsupported
from .case import FEATURES, Case, Mask
from .compare import baseline_error, compare
from .dtypes import round_to
from .errors import UsageError
from .evaluate import ReferenceCache, evaluate
from .inputs import CaseInputs, make_inputs
from .masks import build_mask, causal_offset, visible
from .reference import attention, baseline
from .seeding import stream
from .strategies import DEFAULT_LIMITS, LIMITS_BY_TIER, Limits, cases
from .tolerance import Tolerance, tolerance_for

DEFAULT_MAX_EXAMPLES = 50
DEFAULT_OUT = Path("reports/fuzz")


# --- outcomes ------------------------------------------------------------------------------


@dataclass
class Failure:
    """One counterexample: what failed, on which case(s), with what evidence."""

    prop: str
    kind: str  # "fail" (differential verdict), "mismatch" (metamorphic), "error" (exception)
    message: str
    cases: list[Case]
    record: dict | None = None  # the differential record of cases[0], when there is one
    arrays: dict[str, np.ndarray] = field(default_factory=dict)  # transformed inputs


class PropertyFailed(AssertionError):
    """Raised inside a Hypothesis test: the property does not hold for this example."""

    def __init__(self, failure: Failure) -> None:
        super().__init__(failure.message)
        self.failure = failure


class _ErrorFailed(PropertyFailed):
    """A separate exception type so Hypothesis shrinks exceptions and mismatches apart."""


class HarnessError(RuntimeError):
    """The fuzzer's own assumptions broke (never the adapter's fault)."""


@dataclass
class Context:
    adapter: Adapter
    device: str
    cache: ReferenceCache = field(default_factory=ReferenceCache)

    @property
    def declaration(self) -> Declaration:
        return self.adapter.declaration


def _run(ctx: Context, prop: str, case: Case, inputs: CaseInputs, others: list[Case]) -> dict:
    """adapter.run with its failures turned into counterexamples; float64 copies back."""
    try:
        outputs = ctx.adapter.run(case, inputs, ctx.device)
    except Unsupported:
        raise _Skip("unsupported") from None
    except Exception as error:  # noqa: BLE001 - an implementation's exception is a finding
        last = traceback.extract_tb(error.__traceback__)[-1:]
        where = f" (at {last[0].filename}:{last[0].lineno})" if last else ""
        message = f"{prop}: {type(error).__name__}: {error}{where}"
        raise _ErrorFailed(Failure(prop, "error", message, others)) from None
    result = {}
    for name in case.compare:
        value = outputs.get(name) if isinstance(outputs, dict) else None
        if not isinstance(value, np.ndarray) or not np.issubdtype(value.dtype, np.floating):
            message = f"{prop}: adapter returned no floating NumPy array '{name}'"
            raise _ErrorFailed(Failure(prop, "error", message, others))
        result[name] = np.asarray(value, dtype=np.float64)
    return result


class _Skip(Exception):
    """This example says nothing about the property (counted, not a failure)."""

    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why


# --- tolerances for comparing two runs -----------------------------------------------------


def pair_tolerance(ctx: Context, case: Case, inputs: CaseInputs) -> tuple[Tolerance, float | None]:
    """Tolerance for |run A - run B|: twice the case's own (each run may err by one).

    A declared divergence applies as in evaluate: its compute_dtype sets the tolerance; an
    `unverifiable` one makes the comparison meaningless (skipped and counted). For float16 and
    bfloat16 the baseline rule applies with twice the same-dtype baseline error.
    """
    decl = ctx.declaration
    divergence = decl.divergence_for(case, ctx.device)
    if divergence is not None and divergence.unverifiable:
        raise _Skip("unverifiable divergence")
    dtype = case.dtype
    if divergence is not None and divergence.compute_dtype:
        dtype = divergence.compute_dtype
    tol = tolerance_for(dtype, decl.tolerance_override(dtype))
    doubled = dataclasses.replace(tol, rtol=2 * tol.rtol, atol=2 * tol.atol)
    if getattr(tol, "floor_ulps", None):
        doubled = dataclasses.replace(doubled, floor_ulps=2 * tol.floor_ulps)
    if tol.baseline_factor is None:
        return doubled, None
    policy = (divergence.masked_rows if divergence else None) or case.mask.fully_masked_rows
    exact = attention(case, inputs, masked_rows=policy)
    rounded = baseline(case, inputs, masked_rows=policy)
    err = max(baseline_error(rounded[n], exact[n]) for n in case.compare)
    return doubled, 2 * err


def _agree(
    prop: str,
    what: str,
    got: dict[str, np.ndarray],
    want: dict[str, np.ndarray],
    tol: Tolerance,
    base_err: float | None,
    failure_cases: list[Case],
    arrays: dict[str, np.ndarray],
    select: dict[str, np.ndarray] | None = None,
) -> None:
    """Raise a counterexample unless every compared output agrees (NaN placement exactly)."""
    problems = []
    for name, expected in want.items():
        actual = got[name]
        if actual.shape != expected.shape:
            problems.append(f"{name}: shape {actual.shape} vs {expected.shape}")
            continue
        if select is not None and name in select:
            keep = np.broadcast_to(select[name], expected.shape)
            actual, expected = actual[keep], expected[keep]
        result = compare(name, actual, expected, tol, base_err)
        if not result.ok:
            problems.append(result.summary())
    if problems:
        message = f"{prop}: {what}: " + "; ".join(problems)
        raise PropertyFailed(Failure(prop, "mismatch", message, failure_cases, arrays=arrays))


# --- input transformations -----------------------------------------------------------------


def derive(case: Case, inputs: CaseInputs, arrays: dict | None = None, weights: dict | None = None
           ) -> CaseInputs:  # fmt: skip
    """A copy of `inputs` with some arrays replaced; self-attention keeps key/value IS query
    (implementations pick fast paths on that identity)."""
    out = dataclasses.replace(inputs, arrays=dict(inputs.arrays), weights=dict(inputs.weights))
    out.arrays.update(arrays or {})
    out.weights.update(weights or {})
    if case.mode == "layer" and case.self_attention:
        out.arrays["key"] = out.arrays["value"] = out.arrays["query"]
    return out


def _fresh(rng: np.random.Generator, shape: tuple[int, ...], dtype: str) -> np.ndarray:
    return round_to(rng.standard_normal(shape), dtype)


def _evidence(prefix: str, inputs: CaseInputs) -> dict[str, np.ndarray]:
    named_arrays = {**inputs.arrays, **inputs.weights}
    return {f"{prefix}.{k}": np.asarray(v) for k, v in named_arrays.items()}


def _permutation(data: st.DataObject, n: int, label: str) -> np.ndarray:
    return np.asarray(data.draw(st.permutations(range(n)), label=label), dtype=int)


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
        raise (_ErrorFailed if verdict == "error" else PropertyFailed)(failed)
    if verdict == "unsupported":
        raise _Skip("unsupported")
    return verdict


# Metamorphic properties compare forward outputs of two runs: gradients and (inference)
# dropout would only add cost, so their cases leave them to the differential property.
# Score terms (issue 14) break the invariances the metamorphic properties rely on (ALiBi: key
# order; softcap: logit scaling; sinks: shift invariance), so the differential property covers them.
METAMORPHIC_FORBID = frozenset(
    {"gradients", "dropout", "softcap", "alibi", "alibi-standard", "sink", "sink-zero"}
)


def _meta_cases(decl: Declaration, **kwargs) -> st.SearchStrategy[Case]:  # noqa: ANN003
    kwargs["forbid"] = set(kwargs.get("forbid", ())) | METAMORPHIC_FORBID
    return cases(decl, **kwargs)


def _kv_strategy(decl: Declaration, limits: Limits, prefix: str) -> st.SearchStrategy[Case]:
    # Masks whose key columns repeat (padding, padded/masked query rows) leave room to permute.
    kinds = {"key_padding", "query_padding", "masked_rows"}
    options = []
    if "kernel" in decl.features:
        options.append(_meta_cases(decl, require={"kernel"}, forbid={"decode"},
                                   mask_kinds=kinds, limits=limits, prefix=prefix))  # fmt: skip
    if {"layer", "cross-attention"} <= decl.features:
        options.append(_meta_cases(decl, require={"layer", "cross-attention"},
                                   forbid={"decode"}, mask_kinds=kinds, limits=limits,
                                   prefix=prefix))  # fmt: skip
    return st.one_of(options).filter(lambda c: c.shape.kv_len > 1)  # one key: nothing to swap


def _kv_permutation(ctx: Context, case: Case, data: st.DataObject) -> str:
    s = case.shape
    inputs = make_inputs(case)
    arrays = {}
    if s.attention_axes:  # no masks here: permute along each attended axis of key and value
        key, value = inputs.arrays["key"], inputs.arrays["value"]
        for axis in s.attention_axes:
            perm = _permutation(data, key.shape[axis], f"axis {axis} permutation")
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
                order = _permutation(data, len(members), f"keys {members}")
                column_perm[members] = np.asarray(members)[order]
        if np.array_equal(column_perm, np.arange(s.kv_len)):
            raise _Skip("vacuous")
        if case.mode == "kernel":
            arrays = {n: inputs.arrays[n][:, :, column_perm] for n in ("k", "v")}
        else:
            arrays = {n: inputs.arrays[n][:, column_perm] for n in ("key", "value")}
    moved = derive(case, inputs, arrays)
    tol, base = pair_tolerance(ctx, case, inputs)
    first = _run(ctx, "kv-permutation", case, inputs, [case])
    second = _run(ctx, "kv-permutation", case, moved, [case])
    want = dict(first)
    if column_perm is not None:
        full = np.concatenate([column_perm, np.arange(s.kv_len, s.kv_len + case.extra_keys)])
        for name in ("weights", "weights_mean"):
            if name in want:
                want[name] = want[name][..., full]
    what = "key/value positions permuted" + (
        f" by {column_perm.tolist()}" if column_perm is not None else ""
    )
    _agree("kv-permutation", what, second, want, tol, base, [case], _evidence("permuted", moved))
    return "ok"


def _head_strategy(decl: Declaration, limits: Limits, prefix: str) -> st.SearchStrategy[Case]:
    return _meta_cases(decl, forbid={"per-head-mask"}, limits=limits, prefix=prefix).filter(
        lambda c: c.shape.num_heads > 1
    )


def _head_permutation(ctx: Context, case: Case, data: st.DataObject) -> str:
    s = case.shape
    g, r = s.num_kv_heads, s.group_size
    sigma = _permutation(data, g, "key/value head permutation")
    perm = np.concatenate(
        [sigma[j] * r + _permutation(data, r, f"heads within group {j}") for j in range(g)]
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
    first = _run(ctx, "head-permutation", case, inputs, [case])
    second = _run(ctx, "head-permutation", case, moved, [case])
    want = dict(first)
    if case.mode == "kernel":
        want["output"] = want["output"][:, perm]
    if "weights" in want:
        want["weights"] = want["weights"][:, perm]
    what = f"heads permuted by {perm.tolist()} (key/value heads by {sigma.tolist()})"
    _agree("head-permutation", what, second, want, tol, base, [case], _evidence("permuted", moved))
    return "ok"


def _row_select(case: Case, row_ok: np.ndarray) -> dict[str, np.ndarray]:
    """Broadcastable selections of query rows row_ok [B, T] for each comparable output."""
    per_head = row_ok[:, None, :, None]
    select = {"weights": per_head, "weights_mean": row_ok[:, :, None]}
    select["output"] = per_head if case.mode == "kernel" else row_ok[:, :, None]
    return select


def masked_row_policy(ctx: Context, case: Case) -> str:
    """What fully masked rows yield for this adapter: a declared divergence's policy or the
    case's expectation."""
    divergence = ctx.declaration.divergence_for(case, ctx.device)
    if divergence is not None and divergence.masked_rows:
        return divergence.masked_rows
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
        raise _Skip("vacuous")
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
        x[tuple(index)] = _fresh(rng, x[tuple(index)].shape, dt)
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
        raise _Skip("vacuous")
    select = _row_select(case, row_ok)
    tol, base = pair_tolerance(ctx, case, inputs)
    first = _run(ctx, "causal-prefix", case, inputs, [case])
    second = _run(ctx, "causal-prefix", case, moved, [case])
    what = f"tokens from key position {cut} on changed; rows < {first_free_row} must not move"
    _agree("causal-prefix", what, second, first, tol, base, [case], _evidence("changed", moved),
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

    Masks are drawn from streams keyed on the case (conformance.masks), so the boolean and the
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
            "bool-additive: the twin masks differ; conformance.masks changed how it draws "
            "random/additive masks and this property needs updating"
        )
    return bool_case, add_case


def _bool_additive(ctx: Context, case: Case, data: st.DataObject) -> str:
    pair = additive_twin(case)
    if pair is None:
        raise _Skip("vacuous")
    bool_case, add_case = pair
    if ctx.declaration.missing(add_case) or ctx.declaration.missing(bool_case):
        raise _Skip("unsupported")  # e.g. the twin pattern has fully masked rows
    inputs = make_inputs(bool_case)  # the additive twin runs on the very same numbers
    tol_a, base_a = pair_tolerance(ctx, bool_case, inputs)
    tol_b, _ = pair_tolerance(ctx, add_case, inputs)
    tol = tol_a if tol_a.atol >= tol_b.atol else tol_b  # a divergence may apply to one only
    both = [bool_case, add_case]
    first = _run(ctx, "bool-additive", bool_case, inputs, both)
    second = _run(ctx, "bool-additive", add_case, inputs, both)
    masked = int((~visible(bool_case)).sum())
    what = f"same pattern ({masked} masked cell(s)) as a boolean and as a 0/-inf additive mask"
    select, note = _policy_select(ctx, bool_case, add_case)
    _agree("bool-additive", what + note, second, first, tol, base_a, both,
           _evidence("shared", inputs), select=select)  # fmt: skip
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
        x[1:] = _fresh(rng, x[1:].shape, case.dtype)
        arrays[name] = x
    moved = derive(case, inputs, arrays)
    tol, base = pair_tolerance(ctx, case, inputs)
    first = _run(ctx, "batch-independence", case, inputs, [case])
    second = _run(ctx, "batch-independence", case, moved, [case])
    head = {k: v[:1] for k, v in first.items()}
    _agree("batch-independence", "batch elements 1.. changed; element 0 must not move",
           {k: v[:1] for k, v in second.items()}, head, tol, base, [case],
           _evidence("changed", moved))  # fmt: skip

    one = first_element(case)
    sliced = {n: inputs.arrays[n][:1] for n in inputs.arrays}
    single = derive(one, inputs, sliced)
    tol1, base1 = pair_tolerance(ctx, one, single)
    alone = _run(ctx, "batch-independence", one, single, [one, case])
    select, note = _policy_select(ctx, one, case)
    _agree("batch-independence", "element 0 run alone (batch 1) differs from its batched run"
           + note, alone, head, tol1 if tol1.atol >= tol.atol else tol, base1 or base,
           [one, case], _evidence("alone", single), select=select)  # fmt: skip
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
            raise _Skip("vacuous")  # not exactly representable: the inputs would change
    tol, base = pair_tolerance(ctx, case, inputs)
    tol2, _ = pair_tolerance(ctx, scaled_case, moved)
    tol = tol if tol.atol >= tol2.atol else tol2
    first = _run(ctx, "scale-invariance", case, inputs, [case])
    second = _run(ctx, "scale-invariance", scaled_case, moved, [case, scaled_case])
    what = f"Q scaled by {c:g} and the scale by 1/{c:g} (scale {scaled_case.scale!r})"
    select, note = _policy_select(ctx, case, scaled_case)
    _agree("scale-invariance", what + note, second, first, tol, base, [case, scaled_case],
           _evidence("scaled", moved), select=select)  # fmt: skip
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


# --- running one property ------------------------------------------------------------------


@dataclass
class PropertyResult:
    prop: str
    status: str  # "ok", "no examples", "counterexample", "not applicable", "error"
    examples: int = 0  # examples checked before the first counterexample (or in all)
    shrink_runs: int = 0  # further runs Hypothesis spent shrinking it
    outcomes: Counter = field(default_factory=Counter)  # checked examples by outcome
    skipped: Counter = field(default_factory=Counter)  # rejected examples by reason
    reason: str = ""
    failure: Failure | None = None
    files: list[Path] = field(default_factory=list)
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)  # distinct warnings the adapter raised

    def line(self) -> str:
        if self.status == "not applicable":
            return f"not applicable: {self.reason}"
        counts = ", ".join(f"{n} {k}" for k, n in sorted(self.outcomes.items()))
        text = f"{self.examples} examples" + (f" ({counts})" if counts else "")
        if self.skipped:
            text += "; skipped " + ", ".join(f"{n} {k}" for k, n in sorted(self.skipped.items()))
        if self.status == "no examples":
            text += "; NO EXAMPLE COULD BE CHECKED"
        if self.status == "counterexample":
            text += f"; COUNTEREXAMPLE, shrunk in {self.shrink_runs} more runs"
        elif self.status == "error":
            text += f"; ERROR: {self.reason}"
        return text + f" [{self.seconds:.1f}s]"


def run_property(
    prop: Property,
    ctx: Context,
    *,
    max_examples: int,
    seed: int,
    limits: Limits = DEFAULT_LIMITS,
    prefix: str | None = None,
    forbid: frozenset[str] = frozenset(),
) -> PropertyResult:
    """Search for a counterexample to `prop`; return counts and the shrunk failure if any.

    forbid: feature tags never to generate (cases are drawn from the declaration without them).
    """
    result = PropertyResult(prop.name, "ok")
    decl = ctx.declaration
    if forbid:
        decl = dataclasses.replace(decl, features=decl.features - forbid,
                                   dtypes=decl.dtypes - forbid)  # fmt: skip
    why = prop.not_applicable(decl)
    if why:
        result.status, result.reason = "not applicable", why
        return result
    state: dict = {"runs": 0, "first": None, "last": None}
    strategy = prop.strategy(decl, limits, prefix or prop.name)

    @settings(
        max_examples=max_examples, database=None, deadline=None, derandomize=False,
        phases=[Phase.generate, Phase.shrink], report_multiple_bugs=False,
        verbosity=Verbosity.quiet, suppress_health_check=list(_HEALTH_CHECKS),
    )  # fmt: skip
    @hypothesis_seed(seed)
    @given(case=strategy, data=st.data())
    def search(case: Case, data: st.DataObject) -> None:
        state["runs"] += 1
        try:
            outcome = prop.check(ctx, case, data)
        except _Skip as skip:
            # Rejected: Hypothesis draws another example in its place, so max_examples
            # counts examples that were really checked.
            if state["first"] is None:
                result.skipped[skip.why] += 1
            reject()
        except PropertyFailed as failed:
            if state["first"] is None:
                state["first"] = state["runs"]
            state["last"] = failed.failure
            raise
        if state["first"] is None:
            result.outcomes[outcome] += 1

    start = time.perf_counter()
    try:
        # Frameworks warn (often once per call); collect them and report each message once.
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                search()
            finally:
                result.warnings = sorted({f"{w.category.__name__}: {w.message}" for w in caught})
    except PropertyFailed:
        result.status = "counterexample"
        result.failure = state["last"]  # Hypothesis replays the shrunk example last
    except Unsatisfiable:
        result.status = "no examples"  # every generated case was unsupported or vacuous
    except (HarnessError, HypothesisException) as error:
        result.status, result.reason = "error", f"{type(error).__name__}: {error}"
    except Exception as error:  # noqa: BLE001 - reported, never hidden
        result.status = "error"
        result.reason = f"{type(error).__name__}: {error}\n{traceback.format_exc()}"
    result.seconds = time.perf_counter() - start
    first = state["first"]
    # Examples that ran to an outcome (Hypothesis also runs invalid/overrun ones we ignore).
    result.examples = sum(result.outcomes.values()) + (first is not None)
    result.shrink_runs = state["runs"] - first if first is not None else 0
    return result


# Slow adapters and filtered strategies are expected here; they are not test smells.
_HEALTH_CHECKS = tuple(
    getattr(HealthCheck, n)
    for n in ("too_slow", "data_too_large", "filter_too_much", "large_base_example")
    if hasattr(HealthCheck, n)
)


# --- writing a counterexample --------------------------------------------------------------


def case_spec(case: Case) -> dict:
    """The spec-file entry that loads back into exactly this case (same id, same inputs)."""
    s, m = case.shape, case.mask
    entry: dict = {"name": case.name}
    if case.description:
        entry["description"] = case.description
    entry["mode"] = case.mode
    entry["dtype"] = case.dtype
    shape: dict = {"batch": s.batch}
    if s.attention_axes:
        shape.update(query_shape=list(s.query_shape), kv_shape=list(s.kv_shape),
                     attention_axes=list(s.attention_axes))  # fmt: skip
    else:
        shape.update(query_len=s.query_len, kv_len=s.kv_len)
    shape.update(num_heads=s.num_heads, num_kv_heads=s.num_kv_heads, key_dim=s.key_dim,
                 value_dim=s.value_dim)  # fmt: skip
    if case.mode == "layer":
        shape.update(query_dim=s.query_dim, key_input_dim=s.key_input_dim,
                     value_input_dim=s.value_input_dim, output_dim=s.output_dim)  # fmt: skip
    entry["shape"] = shape
    if case.decode is not None:
        entry["decode"] = {"prefix": case.decode.prefix, "steps": case.decode.steps}
    elif not m.is_empty() or m.fully_masked_rows != Mask().fully_masked_rows:
        mask: dict = {}
        if m.causal:
            mask["causal"] = m.causal
        if m.key_padding is not None:
            mask["key_padding"] = list(m.key_padding)
        if m.query_padding is not None:
            mask["query_padding"] = list(m.query_padding)
        if m.random_density is not None:
            mask["random"] = {"density": m.random_density}
        if m.additive_density is not None:
            mask["additive"] = {"density": m.additive_density}
        if m.bias_scale is not None:
            mask["bias"] = {"scale": m.bias_scale}
        if m.per_head:
            mask["per_head"] = True
        if m.window is not None:
            mask["window"] = list(m.window)
        if m.masked_rows:
            mask["masked_rows"] = [list(r) for r in m.masked_rows]
        if m.fully_masked_rows != "nan":
            mask["fully_masked_rows"] = m.fully_masked_rows
        entry["mask"] = mask
    if case.scale is not None:
        entry["scale"] = case.scale
    if case.mode == "layer":
        entry["cross"] = not case.self_attention
        if not case.use_bias:
            entry["bias"] = False
        if case.add_bias_kv:
            entry["add_bias_kv"] = True
        if case.add_zero_attn:
            entry["add_zero_attn"] = True
    if tuple(case.compare) != ("output",):
        entry["compare"] = list(case.compare)
    if getattr(case, "gradients", False):
        entry["gradients"] = True
    dropout = getattr(case, "dropout", None)
    if dropout is not None:
        entry["dropout"] = {"rate": dropout.rate}
        if dropout.training:
            entry["dropout"].update(training=True, draws=dropout.draws)
    terms = getattr(case, "scores", None)  # issue 14
    if terms is not None:
        entry["scores"] = {}
        if terms.softcap is not None:
            entry["scores"]["softcap"] = terms.softcap
        if terms.alibi is not None:
            entry["scores"]["alibi"] = "standard" if terms.alibi_standard else list(terms.alibi)
        if terms.sink is not None:
            entry["scores"]["sink"] = "zero" if terms.off_by_one else list(terms.sink)
    rope = getattr(case, "rope", None)  # issue 14: rotary position embeddings
    if rope is not None:
        entry["rope"] = {"style": rope.style, "theta": rope.theta, "offset": rope.offset}
        if rope.rotary_dim is not None:
            entry["rope"]["rotary_dim"] = rope.rotary_dim
    entry["seed"] = case.seed
    return entry


def spec_text(spec_cases: Iterable[Case], description: str = "", family: str = "fuzz") -> str:
    """A complete spec file holding `spec_cases` (all of one family)."""
    spec_cases = list(spec_cases)
    families = {c.family for c in spec_cases}
    if families != {family}:
        raise ValueError(f"cases must all be of family {family!r}, got {sorted(families)}")
    doc: dict = {"version": 1, "family": family}
    if description:
        doc["description"] = description
    doc["cases"] = [case_spec(c) for c in spec_cases]
    header = "# yaml-language-server: $schema=../conformance/schema/spec.schema.json\n"
    return header + yaml.safe_dump(doc, sort_keys=False, default_flow_style=None, width=100)


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in text)


def write_failure(
    failure: Failure,
    *,
    adapter: Adapter,
    target: str,
    device: str,
    out_dir: Path,
    seed: int,
    rerun: str,
) -> list[Path]:
    """Write the spec, failure.json, inputs.npz and (if available) the reproducer."""
    name = adapter.declaration.name
    folder = Path(out_dir) / _slug(name) / failure.prop
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    failing = [dataclasses.replace(c, description=_describe_for_spec(failure, c, name, seed))
               for c in _unique(failure.cases)]  # fmt: skip
    spec_path = folder / f"fuzz-{_slug(name)}-{failure.prop}.yaml"
    spec_path.write_text(spec_text(failing, f"{failure.prop} counterexample for {name}"))
    files.append(spec_path)

    record = failure.record
    if record is None:  # metamorphic: is the spec alone a differential regression too?
        record = evaluate(adapter, failing[0], device)
    summary = {
        "property": failure.prop,
        "adapter": name,
        "target": target,
        "device": device,
        "kind": failure.kind,
        "message": failure.message,
        "seed": seed,
        "rerun": rerun,
        "cases": [c.id for c in failing],
        "spec": str(spec_path),
        "differential_verdict": record["verdict"],
        "differential_message": record["message"],
    }
    if failure.arrays:
        npz = folder / "inputs.npz"
        np.savez(npz, **failure.arrays)
        files.append(npz)
        summary["inputs"] = str(npz)
    try:
        from .reproducer import write_reproducer  # written by another part of the project
    except ImportError:
        summary["reproducer"] = None
    else:
        try:
            path = write_reproducer(failing[0], record, target, folder)
            files.append(Path(path))
            summary["reproducer"] = str(path)
        except Exception as error:  # noqa: BLE001 - the spec file still stands
            summary["reproducer"] = f"failed: {type(error).__name__}: {error}"
    report = folder / "failure.json"
    report.write_text(json.dumps(summary, indent=2, default=str) + "\n")
    files.append(report)
    return files


def _unique(items: list[Case]) -> list[Case]:
    seen, out = set(), []
    for case in items:
        if case.id.split("#")[0] in seen:
            continue
        seen.add(case.id.split("#")[0])
        out.append(case)
    return out


def _describe_for_spec(failure: Failure, case: Case, adapter: str, seed: int) -> str:
    message = failure.message if len(failure.message) < 400 else failure.message[:400] + "..."
    return f"Found by `conformance fuzz` (seed {seed}) on {adapter}: {message}"


def describe(case: Case) -> str:
    """One line: the case's shape and mask, for terminal output."""
    s, m = case.shape, case.mask
    parts = [case.mode, case.dtype, f"B={s.batch} T={s.query_len} S={s.kv_len} "
             f"H={s.num_heads} G={s.num_kv_heads} K={s.key_dim} V={s.value_dim}"]  # fmt: skip
    if case.mode == "layer":
        parts.append(
            f"Dq={s.query_dim} Dk={s.key_input_dim} Dv={s.value_input_dim} "
            f"Do={s.output_dim}" + (" cross" if not case.self_attention else "")
        )
    mask = {k: v for k, v in dataclasses.asdict(m).items()
            if v not in (None, False, ()) and k != "fully_masked_rows"}  # fmt: skip
    if mask:
        parts.append("mask " + ", ".join(f"{k}={v}" for k, v in mask.items()))
    if case.scale is not None:
        parts.append(f"scale={case.scale:g}")
    if case.decode:
        parts.append(f"decode {case.decode.prefix}+{case.decode.steps}")
    if case.extra_keys:
        parts.append("bias_kv" * case.add_bias_kv + " zero_attn" * case.add_zero_attn)
    if not case.use_bias:
        parts.append("no bias")
    return "; ".join(parts)


# --- one adapter ---------------------------------------------------------------------------


@dataclass
class FuzzReport:
    adapter: str
    device: str
    seed: int
    max_examples: int
    results: list[PropertyResult]

    @property
    def ok(self) -> bool:
        return all(r.status in ("ok", "no examples", "not applicable") for r in self.results)

    def to_dict(self) -> dict:
        return {
            "adapter": self.adapter,
            "device": self.device,
            "seed": self.seed,
            "max_examples": self.max_examples,
            "ok": self.ok,
            "properties": {
                r.prop: {
                    "status": r.status,
                    "examples": r.examples,
                    "outcomes": dict(r.outcomes),
                    "skipped": dict(r.skipped),
                    "shrink_runs": r.shrink_runs,
                    "reason": r.reason,
                    "message": r.failure.message if r.failure else None,
                    "cases": [c.id for c in r.failure.cases] if r.failure else [],
                    "files": [str(f) for f in r.files],
                    "seconds": round(r.seconds, 3),
                    "warnings": r.warnings,
                }
                for r in self.results
            },
        }

    def write(self, path: Path) -> Path:
        """summary.json: per property its status and counts (CI artifacts, tests)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path


def fuzz_adapter(
    adapter: Adapter,
    *,
    target: str,
    max_examples: int = DEFAULT_MAX_EXAMPLES,
    seed: int = 0,
    out_dir: Path | str = DEFAULT_OUT,
    properties: Iterable[str] | None = None,
    device: str | None = None,
    limits: Limits = DEFAULT_LIMITS,
    log: Callable[[str], None] = print,
    selector: str | None = None,
    forbid: Iterable[str] = (),
) -> FuzzReport:
    """Fuzz an adapter instance whose setup() already ran. Writes counterexamples to out_dir.

    target: "module:Class" (for reproducers); selector: what --adapter needs to find it again
    (its registered name, or the target for an unregistered adapter); forbid: feature tags
    never to generate (to fuzz around a known bug; the adapter's declaration is unchanged).
    """
    names = list(properties or PROPERTIES)
    unknown = [n for n in names if n not in PROPERTIES]
    if unknown:
        raise UsageError(f"unknown property {unknown[0]!r}; choose from {', '.join(PROPERTIES)}")
    decl = adapter.declaration
    if device is None:
        available = list(adapter.devices())
        if not available:
            raise UsageError(f"{decl.name} has no device on this machine")
        device = available[0]
    ctx = Context(adapter, device)
    forbid = frozenset(forbid)
    unknown = sorted(forbid - set(FEATURES))
    if unknown:
        raise UsageError(f"--forbid: unknown feature tag {unknown[0]!r}")
    log(f"fuzz {decl.name} on {device} (seed {seed}, up to {max_examples} examples per property)")
    if forbid:
        log(f"  not generating: {', '.join(sorted(forbid))}")
    results = []
    for name in names:
        result = run_property(PROPERTIES[name], ctx, max_examples=max_examples, seed=seed,
                              limits=limits, prefix=f"{_slug(decl.name)}-{name}",
                              forbid=forbid)  # fmt: skip
        log(f"  {name:<19} {result.line()}")
        if result.failure is not None:
            rerun = (f"conformance fuzz --adapter {_quote(selector or target)}"
                     f" --property {name} --seed {seed} --max-examples {max_examples}")  # fmt: skip
            tier = next((t for t, lim in LIMITS_BY_TIER.items() if lim == limits), "small")
            rerun += "" if tier == "small" else f" --tier {tier}"  # the sizes the seed drew
            result.files = write_failure(result.failure, adapter=adapter, target=target,
                                         device=device, out_dir=Path(out_dir), seed=seed,
                                         rerun=rerun)  # fmt: skip
            message = result.failure.message
            if len(message) > 600:  # gradient cases list every input; failure.json has it all
                message = message[:600] + " ... (full message in failure.json)"
            log(f"      {message}")
            for case in result.failure.cases:
                log(f"      case {case.id}: {describe(case)}")
            for path in result.files:
                log(f"      wrote {path}")
            log(f"      rerun: {rerun}")
        results.append(result)
    seen_warnings = sorted({w for r in results for w in r.warnings})
    for text in seen_warnings:
        log(f"  warning from the implementation: {text[:300]}")
    report = FuzzReport(decl.name, device, seed, max_examples, results)
    report.write(Path(out_dir) / _slug(decl.name) / "summary.json")
    total = sum(r.examples for r in results)
    failed = [r.prop for r in results if r.status in ("counterexample", "error")]
    if failed:
        log(f"{decl.name}: counterexample or error in {', '.join(failed)} ({total} examples)")
    else:
        log(f"{decl.name}: no counterexample ({total} examples)")
    return report


def _quote(text: str) -> str:
    return text if all(ch.isalnum() or ch in "._-:/" for ch in text) else repr(text)


# --- the command ---------------------------------------------------------------------------


def _entries(selectors: list[str] | None):  # noqa: ANN202 - list[AdapterEntry]
    from .registry import resolve

    entries = resolve(selectors)
    usable, missing = [], []
    for entry in entries:
        installed, detail = entry.declaration.installed()
        (usable if installed else missing).append((entry, detail))
    return [e for e, _ in usable], missing


def _group_key(entry) -> tuple:  # noqa: ANN001 - AdapterEntry
    decl = entry.declaration
    return (decl.worker or decl.name, tuple(sorted(decl.env.items())))


def _forbidden_for(name: str, values: Iterable[str]) -> frozenset[str]:
    """--forbid TAG (every adapter) and --forbid ADAPTER=TAG (that adapter only)."""
    tags = set()
    for value in values:
        adapter, _, tag = value.rpartition("=")
        if not adapter or adapter == name:
            tags.add(tag)
    return frozenset(tags)


def handle(args: argparse.Namespace) -> int:
    if args.max_examples < 1:
        raise UsageError("--max-examples must be at least 1")
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**31)
    entries, missing = _entries(args.adapter)
    for entry, detail in missing:
        where = "skipped" if not args.adapter else "cannot run"
        print(f"{entry.name}: not installed ({detail}); {where}")
    if args.adapter and missing:
        return 2
    if not entries:
        raise UsageError("no installed adapter to fuzz")
    groups: dict[tuple, list] = {}
    for entry in entries:
        groups.setdefault(_group_key(entry), []).append(entry)
    if len(groups) > 1:  # one framework configuration per process: fuzz each in a child
        code = 0
        for group in groups.values():
            argv = [sys.executable, "-m", "conformance.cli", "fuzz", "--seed", str(seed),
                    "--max-examples", str(args.max_examples), "--out", str(args.out)]  # fmt: skip
            for entry in group:
                argv += [
                    "--adapter",
                    entry.target if entry.source == "command line" else entry.name,
                ]
            for prop in args.property or ():
                argv += ["--property", prop]
            for tag in args.forbid or ():
                argv += ["--forbid", tag]
            if args.device:
                argv += ["--device", args.device]
            argv += ["--tier", args.tier]
            sys.stdout.flush()
            code = max(code, subprocess.call(argv))
        return code

    (group,) = groups.values()
    os.environ.update(dict(group[0].declaration.env))
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from .registry import load_target

    code = 0
    for entry in group:
        try:
            adapter = load_target(entry.target)()
            adapter.setup()
            devices = list(adapter.devices())
        except Exception as error:  # noqa: BLE001 - the adapter's own failure, reported
            print(f"{entry.name}: setup failed: {type(error).__name__}: {error}")
            code = 1
            continue
        if args.device is None and not devices:
            print(f"{entry.name}: no device on this machine; skipped")
            continue
        report = fuzz_adapter(
            adapter, target=entry.target, max_examples=args.max_examples, seed=seed,
            out_dir=Path(args.out), properties=args.property, device=args.device,
            selector=entry.target if entry.source == "command line" else entry.name,
            forbid=_forbidden_for(entry.name, args.forbid or ()), limits=LIMITS_BY_TIER[args.tier],
        )  # fmt: skip
        code = max(code, 0 if report.ok else 1)
        sys.stdout.flush()
    return code


EPILOG = (
    """\
properties:
"""
    + "\n".join(f"  {p.name:<19} {p.summary}" for p in PROPERTIES.values())
    + """

examples:
  conformance fuzz --adapter reference --max-examples 200
  conformance fuzz --adapter torch.sdpa --seed 1234       rerun a reported seed
  conformance fuzz --adapter mypkg.attn:MyAttention --property differential
  conformance fuzz                                        every installed adapter

exit codes: 0 no counterexample, 1 a counterexample or an error, 2 bad usage
"""
)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "fuzz",
        help="property-based differential fuzzing of an adapter (Hypothesis)",
        description="Generate cases an adapter claims to support, compare it with the "
        "reference and check metamorphic properties; shrink and save any counterexample.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--adapter", "-a", action="append", metavar="NAME",
                        help="adapter name, prefix or module:Class (repeatable; default: every "
                        "installed adapter)")  # fmt: skip
    parser.add_argument(
        "--max-examples",
        "-n",
        type=int,
        default=DEFAULT_MAX_EXAMPLES,
        metavar="N",
        help=f"examples per property (default {DEFAULT_MAX_EXAMPLES})",
    )
    parser.add_argument("--seed", type=int, help="Hypothesis seed (default: random, printed)")
    parser.add_argument(
        "--out",
        "-o",
        default=str(DEFAULT_OUT),
        metavar="DIR",
        help=f"where counterexamples are written (default {DEFAULT_OUT})",
    )
    parser.add_argument("--property", "-p", action="append", choices=list(PROPERTIES),
                        metavar="NAME", help="only this property (repeatable)")  # fmt: skip
    parser.add_argument("--forbid", action="append", metavar="[ADAPTER=]TAG",
                        help="never generate this feature tag (for every adapter, or one): fuzz "
                        "around a known bug to find the others (repeatable)")  # fmt: skip
    parser.add_argument("--device", help="device to run on (default: the adapter's first)")
    parser.add_argument("--tier", choices=list(LIMITS_BY_TIER), default="small",
                        help="example sizes: small (default; rows up to 6), default (rows "
                        "crossing kernel blocks up to 1025, <= 2^20 logits each) or large "
                        "(up to 8193)")  # fmt: skip
    parser.set_defaults(handler=handle)
