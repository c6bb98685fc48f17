"""Running one property as a Hypothesis search, shrinking included."""

from __future__ import annotations

import dataclasses
import time
import traceback
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from hypothesis import HealthCheck, Phase, Verbosity, given, reject, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st
from hypothesis.errors import HypothesisException, Unsatisfiable

from ..cases.case import Case
from .context import Context, Failure, HarnessError, PropertyFailed, Skip
from .limits import DEFAULT_LIMITS, Limits
from .properties import Property

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
        except Skip as skip:
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
