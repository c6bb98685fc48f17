"""The "as-written" masked-row policy: a fully masked row as an implementation writes its mask.

A row with no visible key has no agreed answer. The reference's named policies ("nan", "zeros",
"uniform", "unmasked", "fill") give every such row of a case one answer, but an implementation
writes each mask *source* into the logits with its own value: ONNX Runtime's MultiHeadAttention
adds -10000 for key_padding_mask, finfo.min for its causal flag and -inf from attention_bias;
transformers writes a boolean pattern as finfo(dtype).min and passes a 0/-inf mask as given. A
row's answer then depends on which sources emptied it. `AsWritten` says, per source:

- `fills`: what a key hidden by those sources carries, in priority order (the first fill whose
  sources hide the key gives its value: a number, "-inf", "finfo-min" of the case dtype, or
  "case", the case's own mask.fill); a key hidden only by sources no fill names carries -inf;
- `precision`: where `logits + fill` is rounded ("case", "float32", "float64", or "logits":
  float64 for float64 cases, float32 otherwise, where torch and JAX kernels keep logits);
- `empty`: what a row whose every written logit is -inf yields ("nan": IEEE; "zeros": a safe
  softmax such as torch SDPA's);
- `zeroed`: sources whose hidden rows the implementation sets to zero after the softmax (JAX
  zeroes padded query rows).

The reference then computes softmax(logits + fills) for each fully masked row (rows with a
visible key are unchanged: there the masked keys are excluded, as before). The policy travels as
its canonical text (`str(AsWritten(...))`, "as-written(...)"): a Divergence's `masked_rows`,
results files, reference caches and reports all carry policies as strings, and the reference
parses it back (`parse`). The named "fill" policy is the special case "every source carries the
case's fill" (`FILL_POLICY`).
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .dtypes import round_to
from .masks import dtype_min, fill_value

if TYPE_CHECKING:  # annotations only (case imports masks, which this imports)
    from .case import Case

# Mask sources, named as the feature tags that introduce them (conformance.cases.case.FEATURES);
# "masked-rows" is the spec's explicit masked_rows list. conformance.cases.masks.build_mask
# reports each one's attend array under these names (its `parts` argument); "additive-mask" is
# the -inf part of the additive mask.
SOURCES = (
    "causal",
    "window",
    "key-padding",
    "query-padding",
    "segments",
    "bool-mask",
    "masked-rows",
    "cache-lengths",
    "additive-mask",
)
EVERY = "*"  # every source
# Everything a boolean mask (or a flag) can carry: all but the additive mask's -inf entries.
BOOLEAN_SOURCES = frozenset(SOURCES) - {"additive-mask"}
PRECISIONS = ("case", "logits", "float32", "float64")
EMPTY = ("nan", "zeros")
WORDS = ("-inf", "finfo-min", "case")
PREFIX = "as-written("


@dataclass(frozen=True)
class Fill:
    """Keys hidden by any of `sources` carry `value` (added to their logits)."""

    sources: frozenset[str]
    value: float | str

    def __post_init__(self) -> None:
        sources = frozenset(SOURCES) if self.sources == EVERY else frozenset(self.sources)
        unknown = sorted(sources - set(SOURCES))
        if unknown or not sources:
            raise ValueError(f"fill sources must be some of {SOURCES} or '*', got {unknown}")
        object.__setattr__(self, "sources", sources)
        value = self.value
        if isinstance(value, str) and value not in WORDS:
            raise ValueError(f"a fill is a number or one of {WORDS}, got {value!r}")
        if not isinstance(value, str):
            value = float(value)
            if value >= 0 or np.isnan(value):
                raise ValueError(f"a fill must be negative, got {value}")
            if np.isneginf(value):
                value = "-inf"
        object.__setattr__(self, "value", value)

    def text(self) -> str:
        names = EVERY if self.sources == frozenset(SOURCES) else ",".join(sorted(self.sources))
        return f"{names}={self.value if isinstance(self.value, str) else repr(self.value)}"

    def number(self, case: Case) -> float:
        """The fill as a float64 for this case."""
        if self.value == "-inf":
            return -np.inf
        if self.value == "finfo-min":
            return dtype_min(case.dtype)
        if self.value == "case":
            return fill_value(case)
        return float(self.value)


@dataclass(frozen=True)
class AsWritten:
    """How an implementation writes its mask sources into the logits (module docstring)."""

    fills: tuple[Fill, ...]
    precision: str = "logits"
    empty: str = "nan"
    zeroed: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        object.__setattr__(self, "fills", tuple(self.fills))
        object.__setattr__(self, "zeroed", frozenset(self.zeroed))
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.empty not in EMPTY:
            raise ValueError(f"empty must be one of {EMPTY}, got {self.empty!r}")
        unknown = sorted(self.zeroed - set(SOURCES))
        if unknown:
            raise ValueError(f"zeroed sources must be some of {SOURCES}, got {unknown}")

    def __str__(self) -> str:
        """The canonical text: equal texts mean equal policies (parse(str(p)) == p)."""
        parts = ["; ".join(f.text() for f in self.fills) or "-", self.precision]
        if self.empty != "nan":
            parts.append(f"empty {self.empty}")
        if self.zeroed:
            parts.append("zeroed " + ",".join(sorted(self.zeroed)))
        return PREFIX + " | ".join(parts) + ")"

    def for_case(self, case: Case) -> AsWritten:
        """The policy restricted to the sources this case has (same reference, and two cases
        whose rows are written differently get different texts: the fuzzer compares them)."""
        present = case_sources(case)
        fills = tuple(Fill(f.sources & present, f.value) for f in self.fills if f.sources & present)
        return dataclasses.replace(self, fills=fills, zeroed=self.zeroed & present)

    def dtype(self, case: Case) -> str:
        """The dtype `logits + fill` is rounded to."""
        if self.precision == "case":
            return case.dtype
        if self.precision == "logits":
            return "float64" if case.dtype == "float64" else "float32"
        return self.precision

    def fill_array(
        self, case: Case, parts: dict[str, np.ndarray], bias: np.ndarray | None
    ) -> np.ndarray:
        """Per key, the fill it carries: 0 where no source hides it, the first named fill of
        the sources that do, -inf where only unnamed ones do. parts: build_mask's `parts`;
        bias: its bias (the additive mask's -inf entries)."""
        hidden = {name: ~attend for name, attend in parts.items()}
        if bias is not None and np.isneginf(bias).any():
            hidden["additive-mask"] = np.isneginf(bias)
        if not hidden:
            return np.zeros((1, 1, 1, 1))
        shape = np.broadcast_shapes(*(h.shape for h in hidden.values()))
        out = np.where(functools.reduce(np.logical_or, hidden.values()), -np.inf, 0.0)
        out = np.broadcast_to(out, shape)
        for fill in reversed(self.fills):  # the first fill wins: apply it last
            names = [n for n in fill.sources if n in hidden]
            if names:
                by = functools.reduce(np.logical_or, (hidden[n] for n in names))
                out = np.where(by, fill.number(case), out)
        return out

    def zeroed_rows(self, parts: dict[str, np.ndarray]) -> np.ndarray | None:
        """[..., 1] bool: rows a `zeroed` source hides entirely (their weights become 0)."""
        rows = [~parts[n].any(axis=-1, keepdims=True) for n in sorted(self.zeroed) if n in parts]
        return functools.reduce(np.logical_or, rows) if rows else None

    def write(self, logits: np.ndarray, fill: np.ndarray, case: Case) -> np.ndarray:
        """logits + fill as the implementation's precision rounds it (-inf stays -inf)."""
        with np.errstate(over="ignore", invalid="ignore"):
            return round_to(logits + fill, self.dtype(case))


# The named "fill" policy: every source carries the case's finite fill (mask.fill), added
# where the logits live (float32, float64 for float64 cases).
FILL_POLICY = AsWritten((Fill(EVERY, "case"),), precision="logits")


def is_as_written(policy: str) -> bool:
    return isinstance(policy, str) and policy.startswith(PREFIX)


@functools.lru_cache(maxsize=256)
def parse(text: str) -> AsWritten:
    """The AsWritten a canonical text names ("fill" gives FILL_POLICY); ValueError if none."""
    if text == "fill":
        return FILL_POLICY
    if not is_as_written(text) or not text.endswith(")"):
        raise ValueError(f"not an as-written policy: {text!r}")
    fields = [f.strip() for f in text[len(PREFIX) : -1].split("|")]
    if len(fields) < 2:
        raise ValueError(f"{text!r}: needs 'fills | precision'")
    fills = []
    for item in fields[0].split(";"):
        item = item.strip()
        if item == "-":
            continue
        names, _, value = item.partition("=")
        sources = EVERY if names == EVERY else frozenset(names.split(","))
        fills.append(Fill(sources, value if value in WORDS else float(value)))
    kw: dict = {"precision": fields[1]}
    for extra in fields[2:]:
        key, _, value = extra.partition(" ")
        if key == "empty":
            kw["empty"] = value
        elif key == "zeroed":
            kw["zeroed"] = frozenset(value.split(","))
        else:
            raise ValueError(f"{text!r}: unknown field {extra!r}")
    return AsWritten(tuple(fills), **kw)


def for_case(policy: str, case: Case) -> str:
    """A masked-row policy as it applies to `case`: as-written texts keep only the sources the
    case has; named policies are returned unchanged."""
    return str(parse(policy).for_case(case)) if is_as_written(policy) else policy


def case_sources(case: Case) -> frozenset[str]:
    """The mask sources a case has (without building any array)."""
    m = case.mask
    present = {
        "causal": m.causal is not None,
        "window": m.window is not None,
        "key-padding": m.key_padding is not None,
        "query-padding": m.query_padding is not None,
        "segments": m.segments is not None,
        "bool-mask": m.random_density is not None,
        "masked-rows": bool(m.masked_rows),
        "cache-lengths": case.cache is not None and case.cache.lengths is not None,
        "additive-mask": m.additive_density is not None,
    }
    return frozenset(name for name, on in present.items() if on)


_VALUE_WORDS = {"-inf": "-inf", "finfo-min": "the dtype's lowest", "case": "the case's fill"}


def describe(policy: str) -> str:
    """An as-written policy in words, for reports: 'as written: key-padding -10000, causal the
    dtype's lowest, the rest -inf (in float32)'. Named policies are returned unchanged."""
    if not is_as_written(policy):
        return policy
    try:
        written = parse(policy)
    except ValueError:  # a results file may come from anywhere: show its text as it is
        return policy
    widest = max(written.fills, key=lambda f: len(f.sources), default=None)
    named, rest = [], []
    for fill in written.fills:
        value = fill.value
        word = _VALUE_WORDS[value] if isinstance(value, str) else f"{value:.6g}"
        if fill.sources == BOOLEAN_SOURCES:
            named.append(f"boolean mask parts {word}")
        elif fill is widest and len(fill.sources) > 3:
            rest.append(f"{'the rest' if len(written.fills) > 1 else 'every mask'} {word}")
        else:
            named.append(f"{', '.join(sorted(fill.sources))} {word}")
    precision = {"case": "the case dtype", "logits": None}.get(written.precision,
                                                                written.precision)  # fmt: skip
    notes = [f"in {precision}"] if precision else []
    if written.empty == "zeros":
        notes.append("an all -inf row gives 0")
    if written.zeroed:
        notes.append(", ".join(sorted(written.zeroed)) + " rows zeroed")
    text = "as written: " + ", ".join(named + rest)
    return text + (f" ({'; '.join(notes)})" if notes else "")
