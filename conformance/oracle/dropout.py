"""Attention dropout: the checks, and a NumPy dropout to hold them against.

Inference (`dropout: {rate: p}`): an ordinary case. The adapter gives the layer its dropout
rate and runs it in inference mode; the result must equal the no-dropout reference, so an
implementation that applies dropout at inference fails like any wrong result.

Training (`dropout: {rate: p, training: true}`): no framework's random stream is reproduced.
The case runs `draws` times, draw i with `case.dropout.seed = i` (the adapter seeds its
framework's generator with it), and draw 0 runs once more: a draw must be a function of its
seed (else every statistic below passes or fails by luck), so a repeat that differs is a
`fail`. Then the draws are checked against what dropout *means*:

1. Structure, per draw. Dropout on the weights turns P (the softmax) into P * M / (1 - p),
   M a 0/1 keep mask. The dropped weights are read back from the output: kernel mode
   O = W V, so W = O V^+ when S <= V (V has full row rank); layer mode first undoes the
   output projection (H * V <= Do). Every weight with P >= MIN_WEIGHT must be either 0 or
   P / (1 - p): this checks the 1 / (1 - p) scaling exactly, draw by draw. Dropout on the
   output (the other declared target) is checked the same way on the output itself.
2. Kept fraction: the kept share of those weights is 1 - p within z * sqrt(p (1 - p) / n),
   n the independent mask entries seen, z for a two-sided false-alarm probability ALPHA.
3. Mean: the mean output over the draws converges to the no-dropout output: every element
   within t * s / sqrt(N) (s the sample standard deviation over the N draws) plus the case
   dtype's tolerance, t Student's quantile with N - 1 degrees of freedom (s is estimated from
   the same draws; conformance.oracle.stats), Bonferroni-corrected over the elements for family-wise
   ALPHA.
4. Sharing: the keep masks of different heads (batch elements) are identical exactly when the
   adapter declares the mask shared along that axis (Declaration.dropout.shared), and differ
   in at least half the expected 2 p (1 - p) share of positions when it declares them
   independent.
5. Returned weights (when the case compares weights): they must equal the dropped weights
   ("dropped") or the softmax ("undropped"), as declared.

The draws use seeds 0 .. N-1, so a verdict is reproducible wherever the framework's
generator is (the checks themselves never depend on what that generator produces).
"""

from __future__ import annotations

import dataclasses
import time
import traceback
from statistics import NormalDist
from typing import TYPE_CHECKING

import numpy as np

from ..adapter_api.adapter import DropoutBehavior, Unsupported
from ..cases.case import Case
from ..cases.inputs import CaseInputs
from .reference import attention, project_heads
from .stats import t_quantile_upper

if TYPE_CHECKING:
    from ..adapter_api.adapter import Adapter
    from ..verdicts.tolerance import Tolerance
    from .reference_cache import ReferenceCache

ALPHA = 1e-4  # false-alarm probability of each statistical test (family-wise for the mean)
MIN_WEIGHT = 1e-3  # weights below this are too small to tell kept from dropped reliably
# Relative precision of the weights read back from the output, per dtype: far tighter than
# the gaps being told apart (0 vs P / (1 - p) vs P).
STRUCTURE_RTOL = {"float64": 1e-7, "float32": 2e-3, "float16": 3e-2, "bfloat16": 1.5e-1}


def behavior_of(adapter: Adapter) -> DropoutBehavior:
    return adapter.declaration.dropout or DropoutBehavior()


def draw_case(case: Case, seed: int) -> Case:
    """The case for one draw: only the dropout seed changes (inputs are keyed without it)."""
    return dataclasses.replace(case, dropout=dataclasses.replace(case.dropout, seed=seed))


# --- a NumPy dropout (the reference adapter's, and the tests' known-good implementation) --


def keep_mask(shape: tuple[int, ...], rate: float, seed: int, shared: tuple[int, ...] = ()):  # noqa: ANN201
    """A 0/1 keep mask, one Bernoulli(1 - rate) per entry, broadcast along `shared` axes."""
    draw_shape = tuple(1 if i in shared else n for i, n in enumerate(shape))
    keep = np.random.default_rng(seed).random(draw_shape) >= rate
    return np.broadcast_to(keep, shape)


def numpy_dropout(
    case: Case, inputs: CaseInputs, behavior: DropoutBehavior | None = None
) -> dict[str, np.ndarray]:
    """Attention with dropout in float64, seeded by case.dropout.seed.

    "weights": W = P * M / (1 - p), then the rest of the layer; "output": the no-dropout
    output times M / (1 - p). `behavior.shared` reuses one mask along batch and/or heads.
    """
    behavior = behavior or DropoutBehavior()
    rate, seed = case.dropout.rate, case.dropout.seed
    ref = attention(case, inputs)
    if behavior.target == "output":
        out = ref["output"]
        axes = (0,) if "batch" in behavior.shared else ()
        if case.mode == "kernel" and "heads" in behavior.shared:
            axes += (1,)
        dropped = out * keep_mask(out.shape, rate, seed, axes) / (1 - rate)
        return {"output": dropped, "weights": ref["weights"]}
    axes = tuple(i for i, name in ((0, "batch"), (1, "heads")) if name in behavior.shared)
    probs = ref["weights"]
    weights = probs * keep_mask(probs.shape, rate, seed, axes) / (1 - rate)
    return {"output": output_from_weights(case, inputs, weights), "weights": weights}


def _value_heads(case: Case, inputs: CaseInputs) -> np.ndarray:
    """Per-head values [B, G, S, V] in float64 (projected in layer mode)."""
    if case.mode == "kernel":
        return inputs.arrays["v"]
    w = inputs.weights
    return project_heads(inputs.arrays["value"], w["wv"], w["bv"], lambda x: x)


def output_from_weights(case: Case, inputs: CaseInputs, weights: np.ndarray) -> np.ndarray:
    """The output the (possibly dropped) weights [B, H, T, S] give."""
    v = _value_heads(case, inputs)
    b, h, t, s = weights.shape
    g = v.shape[1]
    heads = np.einsum("bgrts,bgsv->bgrtv", weights.reshape(b, g, h // g, t, s), v)
    heads = heads.reshape(b, h, t, v.shape[-1])
    if case.mode == "kernel":
        return heads
    w = inputs.weights
    return np.einsum("bhtv,hvd->btd", heads, w["wo"]) + w["bo"]


# --- reading the dropped weights back from an output ------------------------------------


def recoverable(case: Case) -> str | None:
    """None when the weights can be read back from the output, else why not."""
    s = case.shape
    if s.kv_len > s.value_dim:
        return f"S = {s.kv_len} > V = {s.value_dim}: the values do not determine the weights"
    if case.mode == "layer" and s.num_heads * s.value_dim > s.output_dim:
        return "H * V > Do: the output projection cannot be undone"
    return None


def weights_from_output(case: Case, inputs: CaseInputs, output: np.ndarray) -> np.ndarray:
    """The weights [B, H, T, S] an output implies (least squares; exact when recoverable)."""
    s = case.shape
    out = np.asarray(output, dtype=np.float64)
    if case.mode == "layer":
        w = inputs.weights
        wo = w["wo"].reshape(s.num_heads * s.value_dim, s.output_dim)
        flat = (out - w["bo"]) @ np.linalg.pinv(wo)  # [B, T, H * V]
        out = flat.reshape(s.batch, s.query_len, s.num_heads, s.value_dim).transpose(0, 2, 1, 3)
    v = _value_heads(case, inputs)  # [B, G, S, V]
    r = s.num_heads // s.num_kv_heads
    pinv = np.linalg.pinv(v)  # [B, G, V, S]
    grouped = out.reshape(s.batch, s.num_kv_heads, r, s.query_len, s.value_dim)
    weights = np.einsum("bgrtv,bgvs->bgrts", grouped, pinv)
    return weights.reshape(s.batch, s.num_heads, s.query_len, s.kv_len)


# --- the statistical check ----------------------------------------------------------------


@dataclasses.dataclass
class Finding:
    ok: bool
    text: str


def _classify(
    values: np.ndarray, full: np.ndarray, select: np.ndarray, rtol: float
) -> tuple[np.ndarray, np.ndarray]:
    """(kept, unexplained) over the selected positions: kept when value ~ full, dropped when
    value ~ 0, unexplained when neither. `full` is what a kept entry must equal."""
    # Absolute part: reading weights back through pinv(V) leaves noise of a few float32 ulps
    # of the largest weight (measured 3e-6 for torch float32) on entries that are exactly 0.
    slack = rtol * np.abs(full) + rtol * 1e-2 * float(np.abs(full[select]).max(initial=1.0))
    kept = np.abs(values - full) <= slack
    dropped = np.abs(values) <= slack
    return kept & select, select & ~kept & ~dropped


def _z_two_sided(alpha: float) -> float:
    return NormalDist().inv_cdf(1 - alpha / 2)


def _sharing(
    keep: np.ndarray, select: np.ndarray, axis: int, name: str, shared: bool, rate: float
) -> Finding | None:
    """Whether keep masks agree along `axis` (draw axis first) as the declaration says."""
    if keep.shape[axis] < 2:
        return None
    first = np.take(keep, [0], axis=axis)
    both = select & np.take(select, [0], axis=axis)
    others = np.ones(keep.shape[axis], dtype=bool)
    others[0] = False
    both = np.compress(others, both, axis=axis)
    differ = np.compress(others, keep != first, axis=axis) & both
    n = int(both.sum())
    if n == 0:
        return None
    share = differ.sum() / n
    expected = 2 * rate * (1 - rate)
    if shared:
        ok = share == 0
        text = f"one mask shared across {name} (declared): {share:.3f} of positions differ"
    else:
        ok = share >= 0.5 * expected
        text = (
            f"independent masks across {name} (declared): {share:.3f} of positions differ "
            f"(independent masks: {expected:.3f}; shared: 0)"
        )
    return Finding(ok, text)


def check_draws(
    case: Case,
    inputs: CaseInputs,
    outputs: list[dict[str, np.ndarray]],
    reference: dict[str, np.ndarray],
    behavior: DropoutBehavior,
    atol: float,
    rtol: float,
    precision: str | None = None,
) -> tuple[list[Finding], dict]:
    """Every check on N draws. Returns the findings and the measured statistics.

    precision: the dtype whose structure precision applies (default the case dtype; a
    declared divergence's compute_dtype when verifying it).
    """
    rate = case.dropout.rate
    n_draws = len(outputs)
    ys = np.stack([np.asarray(o["output"], dtype=np.float64) for o in outputs])
    ref_out, probs = reference["output"], reference["weights"]
    findings: list[Finding] = []
    stats: dict = {"draws": n_draws, "rate": rate, "alpha": ALPHA, "target": behavior.target}
    struct_rtol = STRUCTURE_RTOL[precision or case.dtype]

    # 1. structure of each draw, on the declared target
    if behavior.target == "weights":
        why = recoverable(case)
        returned = [o.get("weights") for o in outputs]
        have_returned = all(w is not None for w in returned)
        if why and not (have_returned and behavior.returned_weights == "dropped"):
            findings.append(Finding(False, f"cannot read the dropped weights back: {why}"))
            return findings, stats
        if have_returned and behavior.returned_weights == "dropped":
            values = np.stack([np.asarray(w, dtype=np.float64) for w in returned])
            stats["weights_from"] = "returned weights"
        else:
            values = np.stack([weights_from_output(case, inputs, y) for y in ys])
            stats["weights_from"] = "read back from the output"
        full = np.broadcast_to(probs / (1 - rate), values.shape)
        select = np.broadcast_to(probs >= MIN_WEIGHT, values.shape)
        shared_axes = (("batch", 1), ("heads", 2))
    else:
        values = ys
        full = np.broadcast_to(ref_out / (1 - rate), values.shape)
        mag = float(np.abs(ref_out).max(initial=0.0))
        select = np.broadcast_to(np.abs(ref_out) >= MIN_WEIGHT * max(mag, 1.0), values.shape)
        shared_axes = (("batch", 1),) + ((("heads", 2),) if case.mode == "kernel" else ())
    keep, unexplained = _classify(values, full, select, struct_rtol)
    n_sel = int(select.sum())
    n_bad = int(unexplained.sum())
    what = "weights" if behavior.target == "weights" else "output elements"
    findings.append(
        Finding(
            n_bad == 0,
            f"every {what[:-1] if what.endswith('s') else what} of every draw is 0 or "
            f"1/(1-p) = {1 / (1 - rate):.4g} times its no-dropout value: "
            + ("yes" if n_bad == 0 else f"no, {n_bad} of {n_sel} are neither")
            + f" (relative precision {struct_rtol:g}, {n_sel} {what} with value >= "
            f"{MIN_WEIGHT:g} checked)",
        )
    )
    if n_bad and behavior.target == "weights":
        other, other_bad = _classify(
            ys,
            np.broadcast_to(ref_out / (1 - rate), ys.shape),
            np.broadcast_to(np.abs(ref_out) > 0, ys.shape),
            struct_rtol,
        )
        if other_bad.sum() == 0:
            findings[-1].text += "; the draws look like dropout on the output instead"
    stats["unexplained"] = n_bad

    # 2. kept fraction over independent entries (index 0 along shared axes)
    unique = tuple(
        slice(0, 1) if name in behavior.shared else slice(None) for name, _ in shared_axes
    )
    sl = (slice(None), *unique)
    n_indep = int(select[sl].sum())
    kept_frac = float(keep[sl].sum() / max(n_indep, 1))
    bound = _z_two_sided(ALPHA) * np.sqrt(rate * (1 - rate) / max(n_indep, 1))
    stats.update(kept_fraction=kept_frac, kept_bound=float(bound), kept_samples=n_indep)
    findings.append(
        Finding(
            abs(kept_frac - (1 - rate)) <= bound,
            f"kept fraction {kept_frac:.4f}, expected {1 - rate:.4f} +- {bound:.4f} "
            f"({n_indep} independent mask entries, two-sided alpha {ALPHA:g})",
        )
    )

    # 3. the mean over the draws converges to the no-dropout output
    mean = ys.mean(axis=0)
    sem = ys.std(axis=0, ddof=1) / np.sqrt(n_draws)
    m = int(np.isfinite(ref_out).sum())
    t = t_quantile_upper(ALPHA / (2 * max(m, 1)), n_draws - 1)
    allowed = t * sem + atol + rtol * np.abs(ref_out)
    dev = np.abs(mean - ref_out)
    worst = float(np.max(dev / allowed)) if dev.size else 0.0
    stats.update(
        mean_max_abs_error=float(dev.max(initial=0.0)),
        mean_t=float(t),
        mean_worst_ratio=worst,
    )
    findings.append(
        Finding(
            bool(np.all(dev <= allowed)),
            f"mean of {n_draws} draws vs the no-dropout output: max |error| "
            f"{dev.max(initial=0.0):.3g}, worst at {worst:.2f} of its bound t*s/sqrt(N) + tol "
            f"(t = {t:.2f}, {n_draws - 1} degrees of freedom: family-wise alpha {ALPHA:g} "
            f"over {m} elements)",
        )
    )

    # 4. sharing across batch / heads, as declared
    for name, axis in shared_axes:
        found = _sharing(keep, select, axis, name, name in behavior.shared, rate)
        if found:
            findings.append(found)

    # 5. weights returned in training mode
    returned = [o.get("weights") for o in outputs]
    if "weights" in case.compare and all(w is not None for w in returned):
        got = np.stack([np.asarray(w, dtype=np.float64) for w in returned])
        if behavior.returned_weights == "undropped":
            want = np.broadcast_to(probs, got.shape)
        elif behavior.target == "weights" and stats.get("weights_from") == "returned weights":
            if recoverable(case) is None:
                want = np.stack([weights_from_output(case, inputs, y) for y in ys])
            else:
                want = None
        else:
            want = None
        if want is not None:
            slack = struct_rtol * (np.abs(want) + 1e-2 * float(np.abs(want).max(initial=1.0)))
            bad = int((np.abs(got - want) > slack).sum())
            findings.append(
                Finding(
                    bad == 0,
                    f"returned weights are the {behavior.returned_weights} weights (declared)"
                    + ("" if bad == 0 else f": {bad} of {got.size} differ"),
                )
            )
    return findings, stats


def _raised(what: str, error: Exception) -> str:
    """'draw 3: ValueError: ... (at file:line)': an implementation's exception as a result."""
    last = traceback.extract_tb(error.__traceback__)[-1:]
    where = f" (at {last[0].filename}:{last[0].lineno})" if last else ""
    return f"{what}: {type(error).__name__}: {error}{where}"


def evaluate_training(
    adapter: Adapter, case: Case, device: str, cache: ReferenceCache, record: dict
) -> dict:
    """Run a training-mode dropout case `draws` times and fill `record` with the verdict."""
    from ..verdicts.tolerance import tolerance_for

    decl = adapter.declaration
    behavior = behavior_of(adapter)
    inputs = cache.inputs(case)
    outputs = []
    start = time.perf_counter()
    for seed in range(case.dropout.draws):
        try:
            result = adapter.run(draw_case(case, seed), inputs, device)
        except Unsupported as error:
            record.update(verdict="unsupported", message=f"{decl.name}: {error}")
            return record
        except Exception as error:  # noqa: BLE001 - an implementation's exception is a result
            record.update(verdict="error", message=_raised(f"draw {seed}", error))
            record["duration_s"] = time.perf_counter() - start
            return record
        if "output" not in result or not isinstance(result["output"], np.ndarray):
            record.update(verdict="error", message=f"draw {seed}: no 'output' array returned")
            return record
        outputs.append(result)
    record["duration_s"] = time.perf_counter() - start
    reference = cache.reference(case, case.mask.fully_masked_rows)
    if outputs[0]["output"].shape != reference["output"].shape:
        record.update(
            verdict="error",
            message=f"'output' has shape {outputs[0]['output'].shape}; the case needs "
            f"{reference['output'].shape}",
        )
        return record
    if len({o["output"].tobytes() for o in outputs[:2]}) == 1 and len(outputs) > 1:
        record.update(
            verdict="fail",
            message="draws 0 and 1 gave identical outputs: the dropout seed is not honoured "
            "or dropout is not applied in training mode",
        )
        return record
    tol = tolerance_for(case.dtype, decl.tolerance_override(case.dtype))
    # Every statistic below assumes draw i is a function of seed i. An implementation that
    # draws from a generator the seed does not reset would pass or fail by luck, run to run.
    try:
        again = adapter.run(draw_case(case, 0), inputs, device)["output"]
    except Exception as error:  # noqa: BLE001 - an implementation's exception is a result
        record.update(verdict="error", message=_raised("draw 0, again", error))
        return record
    first = np.asarray(outputs[0]["output"], dtype=np.float64)
    again = np.asarray(again, dtype=np.float64)
    if again.shape != first.shape or not np.allclose(
        again, first, tol.rtol, tol.atol, equal_nan=True
    ):
        record.update(
            verdict="fail",
            message="draw 0 run twice gave different outputs: the dropout seed does not "
            "determine the draw (a generator the seed does not reset?), so no statistic over "
            "the draws is reproducible",
        )
        return record
    findings, stats = check_draws(case, inputs, outputs, reference, behavior, tol.atol, tol.rtol)
    failed = [f.text for f in findings if not f.ok]
    divergences = decl.divergences_for(case, device) if failed else []
    if not divergences:
        _fill(record, stats, tol, case.dtype)
        record["verdict"] = "fail" if failed else "pass"
        record["message"] = "; ".join(failed or [f.text for f in findings])
        return record
    # As evaluate does (conformance.verdicts.divergences): check the draws again against what the
    # applicable divergences, composed, say happens instead (masked-row policy; the lowest
    # compute dtype's tolerance and structure precision); only a match "diverges".
    from ..verdicts.divergences import compose, record_entries

    record["divergence"] = record_entries(divergences)[0]
    if len(divergences) > 1:
        record["divergences"] = record_entries(divergences)
    composed = compose(divergences, case, ("output",))
    policy = composed.policy
    precision = composed.compute.get("output", case.dtype)
    alt_tol = tolerance_for(precision) if precision != case.dtype else tol
    alt, alt_stats = check_draws(
        case, inputs, outputs, cache.reference(case, policy), behavior, alt_tol.atol,
        alt_tol.rtol, precision,
    )  # fmt: skip
    alt_failed = [f.text for f in alt if not f.ok]
    unverifiable = any(d.unverifiable for d in divergences)
    if unverifiable or not alt_failed:
        masked = any(d.masked_rows for d in divergences)
        how = [f"fully masked rows match policy '{policy}'"] if masked else []
        how += [f"checked at {precision} precision"] if precision != case.dtype else []
        how = ["unverifiable by declaration"] if unverifiable else how
        _fill(record, alt_stats, alt_tol, precision)
        record["verdict"] = "diverges"
        reasons = "; ".join(f"{d.id}: {d.reason}" for d in divergences)
        record["message"] = f"{reasons} [{', '.join(how or ['verified'])}]; "
        record["message"] += "; ".join(alt_failed or [f.text for f in alt])
        return record
    _fill(record, stats, tol, case.dtype)
    record["verdict"] = "fail"
    ids = " + ".join(d.id for d in divergences)
    what = "divergence '{}' does" if len(divergences) == 1 else "divergences '{}' do"
    record["message"] = "; ".join(failed) + (
        f"; the declared {what.format(ids)} not explain it either: " + "; ".join(alt_failed)
    )
    return record


def _fill(record: dict, stats: dict, tol: Tolerance, precision: str) -> None:
    """The record's statistics and tolerance fields."""
    record["dropout"] = stats
    record["max_abs_error"] = stats.get("mean_max_abs_error")
    record["atol"], record["rtol"] = tol.atol, tol.rtol
    record["tolerance"] = (
        f"statistical: alpha {ALPHA:g} per test; structure at relative precision "
        f"{STRUCTURE_RTOL[precision]:g}; mean also within {tol.describe()}"
    )
