"""`conformance fuzz`: property-based differential fuzzing of one adapter with Hypothesis.

Hand-written specs find the bugs their authors imagined; generated cases find the rest. Each
property below runs as its own Hypothesis search over cases the adapter's Declaration claims
to support (conformance.fuzz.strategies):

    differential        the result matches the float64 reference (conformance.verdicts.evaluate)
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
transformed inputs of a metamorphic property (inputs.npz) and, when conformance.report.reproducer is
installed, a standalone reproducer. Rerunning with the printed seed reproduces it.

The fuzzer runs adapters in-process: one framework configuration (env such as KERAS_BACKEND)
per process, so several adapters with different worker keys are fuzzed in child processes.

The package, one idea per module, in the order a search runs:

    context         a property run's context and outcomes (Context, Failure, run_once)
    transforms      input transformations the metamorphic properties apply
    agreement       comparing two runs of one adapter at the pair tolerance
    properties      each property: a strategy of cases and a check; PROPERTIES
    running         one property as a Hypothesis search (run_property)
    counterexample  a shrunk failure written as a spec file, inputs and a reproducer
    adapter_run     every applicable property on one adapter (fuzz_adapter)
    command         `conformance fuzz` (register, handle)
"""

from __future__ import annotations

from .adapter_run import DEFAULT_MAX_EXAMPLES, DEFAULT_OUT, FuzzReport, fuzz_adapter
from .command import EPILOG, _entries, _group_key, handle, register
from .context import Context, Failure, HarnessError, PropertyFailed
from .counterexample import case_spec, describe, spec_text, write_failure
from .properties import PROPERTIES, Property, additive_twin, first_element, masked_row_policy
from .running import PropertyResult, run_property

__all__ = [
    "DEFAULT_MAX_EXAMPLES",
    "DEFAULT_OUT",
    "EPILOG",
    "PROPERTIES",
    "Context",
    "Failure",
    "FuzzReport",
    "HarnessError",
    "Property",
    "PropertyFailed",
    "PropertyResult",
    "additive_twin",
    "case_spec",
    "describe",
    "first_element",
    "fuzz_adapter",
    "handle",
    "masked_row_policy",
    "register",
    "run_property",
    "spec_text",
    "write_failure",
    "_entries",
    "_group_key",
]
