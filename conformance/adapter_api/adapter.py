"""The adapter API: one declaration record per implementation, one `run` method.

In the spirit of PyTorch's OpInfo, everything the runner needs to know about an
implementation is declared in one record: the case features it can express, its dtypes, its
known divergences (each with a reason and, where one exists, an upstream link) and any
tolerance overrides with their justification. The runner stays generic.

Built-in adapters use exactly this API; user adapters do too (see docs/plugins.md).

An adapter module must not import its framework at module level: `conformance list adapters`
imports every adapter module to read the declarations. Import it in `setup()`.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from ..cases.case import DTYPES, FEATURES, Case
from ..cases.inputs import CaseInputs
from ..cases.written import AsWritten, parse


class Unsupported(Exception):
    """Raised by `run` when the implementation cannot express a case (verdict `unsupported`)."""


@dataclass(frozen=True)
class Divergence:
    """A known, documented difference from the reference.

    It applies to a case when the case has every feature in `when` (and matches `dtypes`,
    `devices` when given). It is *verified*, not trusted: the result must match what the
    divergence says happens instead, or it is a `fail`.

    - masked_rows: fully masked rows yield this policy ("zeros", "uniform", "unmasked", "nan")
      instead of the case's expectation; or an `AsWritten` record (conformance.cases.written)
      when the answer depends on which mask sources emptied the row: per source, the fill the
      implementation writes. Stored as its canonical text ("as-written(...)").
    - compute_dtype: the implementation computes in this (lower) precision; the result is held
      to that dtype's tolerance instead of the case dtype's.
    - outputs: which compared outputs the divergence concerns (default: all).
    - unverifiable: nothing specific can be predicted (use sparingly; the reason must say why);
      the result is reported as `diverges` with its measured errors.
    """

    id: str
    reason: str
    link: str | None = None
    when: frozenset[str] = frozenset()
    dtypes: frozenset[str] | None = None
    devices: tuple[str, ...] | None = None  # device prefixes, e.g. ("cuda",)
    masked_rows: str | AsWritten | None = None
    compute_dtype: str | None = None
    outputs: tuple[str, ...] | None = None
    unverifiable: bool = False

    def __post_init__(self) -> None:
        # An AsWritten travels as its text, like every policy (results files, caches, reports);
        # a text is checked here, so a malformed one fails where it is declared.
        if isinstance(self.masked_rows, AsWritten):
            object.__setattr__(self, "masked_rows", str(self.masked_rows))
        elif isinstance(self.masked_rows, str) and self.masked_rows.startswith("as-written"):
            parse(self.masked_rows)

    def applies(self, case: Case, device: str) -> bool:
        if not self.when <= case.features:
            return False
        if self.dtypes is not None and case.dtype not in self.dtypes:
            return False
        if self.devices is not None and not device.startswith(self.devices):
            return False
        return True


# Issue 14: a row whose every key carries a finite fill (mask.fill) is not empty to the
# implementation: softmax(logits + fill) over all its keys, which is the uniform average once
# the fill swamps the logits (-1e9 in float32, finfo.min) and nearly the unmasked softmax when
# it does not (-10000 added to float32 logits). Every implementation handed such a mask computes
# this, so each adapter taking finite fills declares it; verified like any divergence.
FILL_AS_WRITTEN = Divergence(
    id="finite-fill-rows-as-written",
    reason=(
        "a query row whose every key carries a finite fill is computed as written, "
        "softmax(logits + fill) over all its keys (the fill in the case dtype, added in float32 "
        "or float64): the uniform average when the fill swamps the logits, close to the "
        "unmasked softmax when it does not (-10000), NaN or the -inf convention when the fill "
        "overflowed to -inf (-1e9 in float16)"
    ),
    link="https://github.com/huggingface/transformers/blob/main/src/transformers/modeling_attn_mask_utils.py",
    when=frozenset({"finite-fill", "fully-masked-rows"}),
    masked_rows="fill",
)


@dataclass(frozen=True)
class ToleranceOverride:
    """A per-dtype tolerance different from the policy, with the reason it is justified."""

    dtype: str
    rtol: float
    atol: float
    reason: str


DROPOUT_TARGETS = ("weights", "output")
DROPOUT_SHARED_AXES = ("batch", "heads")


@dataclass(frozen=True)
class DropoutBehavior:
    """How an implementation applies attention dropout in training mode. Checked, not trusted
    (conformance.oracle.dropout): a result that contradicts it is a `fail`.

    - target: the tensor dropout zeroes and rescales: "weights" (the attention probabilities
      after softmax) or "output" (the attention output).
    - shared: axes along which one dropout mask is reused ("batch", "heads"); () = independent.
    - returned_weights: the weights an implementation returns in training mode: "dropped"
      (after dropout, as used) or "undropped" (the softmax before dropout).
    """

    target: str = "weights"
    shared: tuple[str, ...] = ()
    returned_weights: str = "dropped"

    def __post_init__(self) -> None:
        if self.target not in DROPOUT_TARGETS:
            raise ValueError(f"dropout target must be one of {DROPOUT_TARGETS}")
        if set(self.shared) - set(DROPOUT_SHARED_AXES):
            raise ValueError(f"dropout shared axes must be among {DROPOUT_SHARED_AXES}")
        if self.returned_weights not in ("dropped", "undropped"):
            raise ValueError("returned_weights must be 'dropped' or 'undropped'")


@dataclass(frozen=True)
class Declaration:
    name: str  # what users type after --adapter, e.g. "torch.mha.fast"
    summary: str  # one line: what this calls and how
    framework: str  # distribution whose version is reported, e.g. "torch"
    features: frozenset[str]  # supported feature tags (modes included: "layer"/"kernel")
    dtypes: frozenset[str] = frozenset(DTYPES)
    requires: tuple[str, ...] = ()  # importable modules; missing ones mean "not installed"
    worker: str = ""  # adapters with the same worker key share one worker process
    env: Mapping[str, str] = field(default_factory=dict)  # set before the worker imports
    divergences: tuple[Divergence, ...] = ()
    tolerances: tuple[ToleranceOverride, ...] = ()
    unsupported_reasons: Mapping[str, str] = field(default_factory=dict)
    notes: str = ""
    # How training-mode dropout ("dropout-training") is applied; None: DropoutBehavior().
    dropout: DropoutBehavior | None = None
    # Builds one program per signature on first use (an XLA compilation, an ONNX export): on a
    # fresh machine such workers take the longest, so the runner starts them first.
    compiles: bool = False
    # Why a plain `conformance run` (and a prefix like `--adapter torch`) leaves this adapter
    # out: it runs only when named exactly (`--adapter NAME`). For adapters whose cost alone
    # would exceed the default run's budget (docs/performance.md); "" means it always runs.
    opt_in: str = ""

    def __post_init__(self) -> None:
        # Frozen whatever was passed (a set built with `|` from a plain set, a list): the
        # declaration is shared by every worker and must not change after it is made.
        object.__setattr__(self, "features", frozenset(self.features))
        object.__setattr__(self, "dtypes", frozenset(self.dtypes))
        unknown = sorted((self.features | self.dtypes) - set(FEATURES))
        if unknown:
            raise ValueError(f"{self.name}: unknown feature tags {unknown}")

    def missing(self, case: Case) -> list[str]:
        """Case features this implementation cannot express (dtype included)."""
        return sorted(case.features - self.features - set(DTYPES)) + (
            [case.dtype] if case.dtype not in self.dtypes else []
        )

    def unsupported_reason(self, case: Case) -> str | None:
        missing = self.missing(case)
        if not missing:
            return None
        parts = []
        for tag in missing:
            why = self.unsupported_reasons.get(tag) or FEATURES.get(tag, tag)
            parts.append(f"{tag} ({why})")
        return f"{self.name} cannot express: " + "; ".join(parts)

    def divergence_for(self, case: Case, device: str) -> Divergence | None:
        """The first applicable divergence (see divergences_for for all of them)."""
        for divergence in self.divergences:
            if divergence.applies(case, device):
                return divergence
        return None

    def divergences_for(self, case: Case, device: str) -> list[Divergence]:
        """Every applicable divergence, in declaration order; evaluate verifies them composed
        (conformance.verdicts.divergences)."""
        return [d for d in self.divergences if d.applies(case, device)]

    def tolerance_override(self, dtype: str) -> ToleranceOverride | None:
        return next((t for t in self.tolerances if t.dtype == dtype), None)

    def installed(self) -> tuple[bool, str]:
        """(installed, detail): whether every required module can be found."""
        for module in self.requires:
            try:
                found = importlib.util.find_spec(module) is not None
            except (ImportError, ValueError):
                found = False
            if not found:
                return False, f"needs the '{module}' module"
        return True, ""


class Adapter:
    """Base class. Subclasses set `declaration` and implement `run`.

    Lifecycle in a worker process: `setup()` once (import the framework here), `devices()`,
    `versions()`, then `run()` per (case, device). Cache whatever is expensive to build
    (modules, graphs, sessions) keyed by shape: the runner sends cases sorted by shape.
    """

    declaration: ClassVar[Declaration]

    def setup(self) -> None:
        """Import the framework and apply process-wide settings (called once per worker)."""

    def devices(self) -> list[str]:
        """Devices this implementation can run on here, e.g. ["cpu", "cuda:0"]."""
        return ["cpu"]

    def versions(self) -> dict[str, str]:
        """Versions of the packages involved, for the report's environment block."""
        return {}

    def run(self, case: Case, inputs: CaseInputs, device: str) -> dict[str, np.ndarray]:
        """Compute the case. Return canonical-layout NumPy arrays by name:

        - "output": layer mode [B, T, Do] (multi-axis: [B, *inner, Do]); kernel [B, H, T, V]
        - "weights": per-head attention weights [B, H, T, S] (when the case compares them)
        - "weights_mean": head-averaged weights [B, T, S] (when the case compares them)

        Raise `Unsupported(reason)` for a case the implementation cannot run after all.
        """
        raise NotImplementedError
