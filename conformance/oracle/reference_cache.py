"""The oracle's memo: inputs and reference results per case, shared by the adapters (and
adapter variants) one worker runs, so each case's reference is computed once.

Used by conformance.verdicts.evaluate (one case on one adapter) and conformance.oracle.dropout (training-mode
draws); kept apart from both so neither imports the other's module for it.

The worker processes of one run share references through a folder (`ReferenceStore`, made
and removed by the runner): several workers, one per framework, need the same case's
reference, and a kernel-scale case's costs far more than reading it back. An entry is keyed by
the case's full definition, the masked-row policy and the computing dtype.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from ..cases.case import Case
from ..cases.dtypes import round_to
from ..cases.inputs import CaseInputs, make_inputs
from ..verdicts.divergences import rounded_inputs
from .backward import baseline_gradients, gradients
from .reference import attention, baseline

STORE_ENV = "CONFORMANCE_REFERENCE_STORE"  # the runner names the run's folder to its workers


class ReferenceStore:
    """References in a folder, one .npz per (case definition, policy, dtype). Writes are
    atomic (a temporary file renamed), so workers computing the same entry cannot tear it."""

    MAX_ENTRY_BYTES = 256 * 2**20  # larger references are recomputed rather than stored

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)

    @staticmethod
    def key(case: Case, policy: str, dtype: str | None) -> str | None:
        if case.inputs:  # stored arrays: their file's content is not in the case definition
            return None
        text = json.dumps([case.to_dict(), policy, dtype], sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:32]

    def get(self, key: str) -> dict | None:
        try:
            with np.load(self.folder / f"{key}.npz", allow_pickle=False) as data:
                return {name: data[name] for name in data.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile):  # absent or torn: recompute
            return None

    def put(self, key: str, ref: dict) -> None:
        arrays = {k: np.asarray(v) for k, v in ref.items()}
        if sum(a.nbytes for a in arrays.values()) > self.MAX_ENTRY_BYTES:
            return
        tmp = None
        try:
            handle, tmp = tempfile.mkstemp(dir=self.folder, suffix=".tmp")
            with os.fdopen(handle, "wb") as out:
                np.savez(out, **arrays)
            os.replace(tmp, self.folder / f"{key}.npz")
        except OSError:  # a full disk costs only the sharing
            if tmp:
                Path(tmp).unlink(missing_ok=True)


def run_store() -> ReferenceStore | None:
    """The store the runner made for this run (named in the environment), if any."""
    folder = os.environ.get(STORE_ENV)
    if not folder:
        return None
    try:
        return ReferenceStore(Path(folder))
    except OSError:
        return None


class ReferenceCache:
    """Reference results per (case, policy), so variants of one adapter share them.

    Bounded by entries and by bytes, so kernel-scale cases do not pile up in a worker.
    With a `store`, a reference another worker or an earlier run computed is read instead."""

    def __init__(
        self, size: int = 64, max_bytes: int = 1 << 30, store: ReferenceStore | None = None
    ) -> None:
        self._inputs: dict[str, CaseInputs] = {}
        self._refs: dict[tuple, dict] = {}  # (case id, policy, same_dtype | compute dtype)
        self._size = size
        self._max_bytes = max_bytes
        self._bytes = 0
        self._store = store

    def _computed(self, case: Case, policy: str, dtype: str | None, compute) -> dict:  # noqa: ANN001
        """compute() unless the store has this entry; a computed entry is stored."""
        key = self._store.key(case, policy, dtype) if self._store else None
        ref = self._store.get(key) if key else None
        if ref is None:
            ref = compute()
            if key:
                self._store.put(key, ref)
        return ref

    def _account(self, arrays) -> None:  # noqa: ANN001 - iterable of arrays
        self._bytes += sum(int(getattr(x, "nbytes", 0)) for x in arrays)

    def inputs(self, case: Case) -> CaseInputs:
        if case.id not in self._inputs:
            if len(self._inputs) >= self._size or self._bytes > self._max_bytes:
                self._inputs.clear()
                self._refs.clear()
                self._bytes = 0
            made = make_inputs(case)
            self._account([*made.arrays.values(), *made.weights.values()])
            self._inputs[case.id] = made
        return self._inputs[case.id]

    def reference(self, case: Case, policy: str, same_dtype: bool = False) -> dict:
        """Outputs (and, for gradient cases, gradients) under a fully-masked-row policy."""
        key = (case.id, policy, same_dtype)
        if key not in self._refs:

            def compute() -> dict:
                fn = baseline if same_dtype else attention
                ref = fn(case, self.inputs(case), masked_rows=policy)
                if case.gradients:
                    grad_fn = baseline_gradients if same_dtype else gradients
                    ref.update(grad_fn(case, self.inputs(case), masked_rows=policy))
                return ref

            ref = self._computed(case, policy, case.dtype if same_dtype else None, compute)
            self._account(ref.values())
            self._refs[key] = ref
        return self._refs[key]

    def at(self, case: Case, policy: str, dtype: str | None) -> dict:
        """The float64 reference (dtype None), or a straightforward implementation computing
        in `dtype` from inputs rounded to it: the same-dtype baseline when dtype is the case
        dtype, else the baseline of a declared compute dtype (conformance.verdicts.divergences)."""
        if dtype is None:
            return self.reference(case, policy)
        if dtype == case.dtype:
            return self.reference(case, policy, same_dtype=True)
        key = (case.id, policy, dtype)
        if key not in self._refs:

            def rounding(x: np.ndarray) -> np.ndarray:
                return round_to(x, dtype)

            def compute() -> dict:
                inputs = rounded_inputs(self.inputs(case), dtype)
                ref = attention(case, inputs, masked_rows=policy, rounding=rounding)
                if case.gradients:
                    ref.update(gradients(case, inputs, masked_rows=policy, rounding=rounding))
                return ref

            # "compute:" keeps a declared compute dtype apart from the same-dtype baseline
            ref = self._computed(case, policy, f"compute:{dtype}", compute)
            self._account(ref.values())
            self._refs[key] = ref
        return self._refs[key]
