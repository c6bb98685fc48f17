"""Deliberately broken implementations, for testing the harness's isolation (never shipped).

Each misbehaves in one way real implementations do. They run in real worker processes.
"""

from __future__ import annotations

import os
import signal
import time

import numpy as np

from conformance.adapter_api.adapter import Adapter, Declaration
from conformance.cases.case import FEATURES
from conformance.cases.masks import build_mask
from conformance.oracle.reference import attention, dot_product_attention

ALL = frozenset(FEATURES)


def _decl(name: str) -> Declaration:
    return Declaration(name=name, summary=f"broken on purpose: {name}", framework="numpy",
                       features=ALL, worker=name)  # fmt: skip


class Correct(Adapter):
    declaration = _decl("test.correct")

    def run(self, case, inputs, device):  # noqa: ANN001
        return attention(case, inputs)


class Raises(Adapter):
    declaration = _decl("test.raises")

    def run(self, case, inputs, device):  # noqa: ANN001
        raise RuntimeError("kernel exploded")


class WrongShape(Adapter):
    declaration = _decl("test.wrong-shape")

    def run(self, case, inputs, device):  # noqa: ANN001
        out = attention(case, inputs)
        return {k: v[..., :-1] for k, v in out.items()}


class WrongDtype(Adapter):
    declaration = _decl("test.wrong-dtype")

    def run(self, case, inputs, device):  # noqa: ANN001
        return {k: v.astype(np.int32) for k, v in attention(case, inputs).items()}


class AllNan(Adapter):
    declaration = _decl("test.all-nan")

    def run(self, case, inputs, device):  # noqa: ANN001
        return {k: np.full_like(v, np.nan) for k, v in attention(case, inputs).items()}


class InvertedMask(Adapter):
    """The classic porting bug: the boolean mask read with the opposite polarity."""

    declaration = Declaration(
        name="test.inverted-mask",
        summary="mask polarity inverted",
        framework="numpy",
        features=ALL - {"layer"},
        worker="test.inverted",
    )

    def run(self, case, inputs, device):  # noqa: ANN001
        attend, bias = build_mask(case)
        out, probs = dot_product_attention(
            inputs.arrays["q"], inputs.arrays["k"], inputs.arrays["v"],
            scale=case.effective_scale, attend=None if attend is None else ~attend, bias=bias,
        )  # fmt: skip
        return {"output": out, "weights": probs, "weights_mean": probs.mean(axis=1)}


class Segfaults(Adapter):
    """Dies like a native extension with a bad pointer, on the case named 'kernel'."""

    declaration = _decl("test.segfault")

    def run(self, case, inputs, device):  # noqa: ANN001
        if case.name == "kernel":
            os.kill(os.getpid(), signal.SIGSEGV)
        return attention(case, inputs)


class Hangs(Adapter):
    """Hangs on the case named 'hang'."""

    declaration = _decl("test.hang")

    def run(self, case, inputs, device):  # noqa: ANN001
        if case.name == "hang":
            time.sleep(3600)
        return attention(case, inputs)


class Slow(Adapter):
    declaration = _decl("test.slow")

    def run(self, case, inputs, device):  # noqa: ANN001
        time.sleep(0.3)
        return attention(case, inputs)


class Gated(Adapter):
    """Passes its first 3 cases; at the 4th it says so and waits to be released.

    Lets a test interrupt a run at a known point instead of racing it: the run cannot end
    while the gate is closed. The gate is the directory in $CONFORMANCE_TEST_GATE: this adapter
    counts its calls in `calls` there, creates `reached` at the 4th and waits (bounded) for the
    test to create `open`. Without the variable it is a plain correct adapter.
    """

    declaration = _decl("test.gated")

    def run(self, case, inputs, device):  # noqa: ANN001
        gate = os.environ.get("CONFORMANCE_TEST_GATE")
        if gate:
            calls = os.path.join(gate, "calls")
            count = os.path.getsize(calls) if os.path.exists(calls) else 0
            if count >= 3:
                open(os.path.join(gate, "reached"), "a").close()  # noqa: PTH123
                deadline = time.monotonic() + 600
                while not os.path.exists(os.path.join(gate, "open")):
                    if time.monotonic() > deadline:
                        break
                    time.sleep(0.05)
            with open(calls, "a") as f:  # noqa: PTH123
                f.write("x")
        return attention(case, inputs)


class HangsInReproducer(InvertedMask):
    """Fails in the run (an inverted mask); hangs when a reproducer writer runs it again.

    Stands for user code that misbehaves outside the run's workers: the CLI must not run it
    in its own process or without a timeout.
    """

    declaration = _decl("test.hangs-in-reproducer")

    def run(self, case, inputs, device):  # noqa: ANN001
        import sys

        if "reproducer" in sys.argv[0]:
            time.sleep(3600)
        return super().run(case, inputs, device)


class ForksChildren(Adapter):
    """Uses multiprocessing inside run() and leaves a grandchild running (pid in a file).

    The pid file is $CONFORMANCE_TEST_GATE/child.pid: the test checks that the run killed it.
    """

    declaration = _decl("test.forks")

    def run(self, case, inputs, device):  # noqa: ANN001
        import multiprocessing
        import subprocess

        process = multiprocessing.get_context("fork").Process(target=time.sleep, args=(0,))
        process.start()  # refused in a daemonic worker
        process.join()
        gate = os.environ.get("CONFORMANCE_TEST_GATE")
        if gate and not os.path.exists(os.path.join(gate, "child.pid")):
            child = subprocess.Popen(["sleep", "600"])  # noqa: S607 - a lingering grandchild
            with open(os.path.join(gate, "child.pid"), "w") as f:  # noqa: PTH123
                f.write(str(child.pid))
        return attention(case, inputs)


class ExhaustsMemory(Adapter):
    declaration = _decl("test.oom")

    def run(self, case, inputs, device):  # noqa: ANN001
        np.ones((2**40,), dtype=np.float64)  # 8 TiB: refused by the allocator -> MemoryError
        return attention(case, inputs)


class FailsSetup(Adapter):
    declaration = _decl("test.setup-fails")

    def setup(self) -> None:
        raise ImportError("no module named 'imaginary_framework'")

    def run(self, case, inputs, device):  # noqa: ANN001
        return attention(case, inputs)


ADAPTERS = [Correct, Raises, WrongShape, WrongDtype, AllNan, InvertedMask, Segfaults, Hangs,
            Slow, ExhaustsMemory, FailsSetup]  # fmt: skip
