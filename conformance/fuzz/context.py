"""A property run's context and outcomes: what one fuzzing step may end in, and how
running the adapter once is wrapped (errors become failures with the case attached)."""

from __future__ import annotations

import traceback
from dataclasses import dataclass, field

import numpy as np

from ..adapter_api.adapter import Adapter, Declaration, Unsupported
from ..cases.case import Case
from ..cases.inputs import CaseInputs
from ..verdicts.evaluate import ReferenceCache

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


class ErrorFailed(PropertyFailed):
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


def run_once(ctx: Context, prop: str, case: Case, inputs: CaseInputs, others: list[Case]) -> dict:
    """adapter.run with its failures turned into counterexamples; float64 copies back."""
    try:
        outputs = ctx.adapter.run(case, inputs, ctx.device)
    except Unsupported:
        raise Skip("unsupported") from None
    except Exception as error:  # noqa: BLE001 - an implementation's exception is a finding
        last = traceback.extract_tb(error.__traceback__)[-1:]
        where = f" (at {last[0].filename}:{last[0].lineno})" if last else ""
        message = f"{prop}: {type(error).__name__}: {error}{where}"
        raise ErrorFailed(Failure(prop, "error", message, others)) from None
    result = {}
    for name in case.compare:
        value = outputs.get(name) if isinstance(outputs, dict) else None
        if not isinstance(value, np.ndarray) or not np.issubdtype(value.dtype, np.floating):
            message = f"{prop}: adapter returned no floating NumPy array '{name}'"
            raise ErrorFailed(Failure(prop, "error", message, others))
        result[name] = np.asarray(value, dtype=np.float64)
    return result


class Skip(Exception):
    """This example says nothing about the property (counted, not a failure)."""

    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why
