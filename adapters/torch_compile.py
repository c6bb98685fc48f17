"""`torch.compile.sdpa`: torch.compile (inductor, CPU) of F.scaled_dot_product_attention.

The code inductor generates is a different execution path from eager SDPA (it pattern-matches
SDPA into its own fused kernel or template, or lowers it to generated C++ loops), so it is its
own adapter. The call, its arguments and the mask conventions are exactly torch.sdpa's
(adapters/torch_sdpa.py); only the function is wrapped in torch.compile.

Compile cost: one compilation per distinct (dtype, flags, mask kind) signature; dynamic=True
keeps new shapes from recompiling. Inductor's on-disk caches (FX graph cache, generated C++)
live under conformance's cache folder (conformance.cache), so a second run reuses them.

Path proof: after each call the adapter checks dynamo's counters: the function must have been
captured as one graph (no graph break) and compiled by inductor. Dynamo silently falls back to
eager when its recompile limit is hit; fail_on_recompile_limit_hit turns that into an error.

Forward only: gradients and training-mode dropout (inductor's own RNG) are not covered here.
torch is imported lazily in setup().
"""

from __future__ import annotations

import os

import numpy as np

from conformance.adapter_api.adapter import Declaration
from conformance.cases.case import Case
from conformance.cases.inputs import CaseInputs
from conformance.running import profile
from conformance.running.cache import cache_dir

from .torch_sdpa import (
    SDPA_FEATURES,
    SDPA_FILL_AS_WRITTEN,
    SDPA_MASKED_ROWS,
    SDPA_UNSUPPORTED,
    TorchSdpaAdapter,
    sdpa_arguments,
    to_numpy,
    torch_setup,
    torch_versions,
)

COMPILE_UNSUPPORTED = {
    **SDPA_UNSUPPORTED,
    "gradients": "this adapter runs the compiled forward only",
    "dropout-training": "inductor draws dropout with its own RNG; forward at inference only",
}


def compile_setup() -> None:
    """Point inductor's caches at conformance's cache folder, import torch, raise the limits."""
    inductor_cache_setup()
    torch_setup()
    import torch._dynamo.config as dynamo_config

    # Every mask kind and dtype is a new guard set: allow them, and never fall back silently.
    dynamo_config.recompile_limit = 256
    dynamo_config.accumulated_recompile_limit = 4096
    dynamo_config.fail_on_recompile_limit_hit = True


def compile_versions() -> dict[str, str]:

    versions = torch_versions()
    versions["torch.compile"] = "inductor"
    return versions


def check_compiled(before: dict[str, float]) -> None:
    """Raise unless the last call ran compiled code without a graph break.

    `before` is compile_counters() taken before the call: a new compilation shows up as
    unique_graphs growing; a cache hit as no growth in calls_captured (same graph reused).
    """
    after = compile_counters()
    if after["graph_breaks"] != before["graph_breaks"]:
        raise RuntimeError("torch.compile broke the graph: part of the call ran eagerly")
    if after["unique_graphs"] == 0:
        raise RuntimeError("torch.compile compiled no graph: the call ran eagerly")


def compile_counters() -> dict[str, float]:
    """Dynamo's and Inductor's process-wide tallies (torch._dynamo.utils.counters).

    unique_graphs: graphs dynamo captured and handed to a backend (a first compile or a
    recompile); graph_breaks; fxgraph_cache_hit: Inductor graphs loaded from the on-disk FX
    graph cache instead of generated and built with g++; compile_s: seconds dynamo spent in
    its compile entry point (tracing, AOTAutograd, Inductor or the cache load) so far.
    """
    from torch._dynamo.utils import compilation_time_metrics, counters

    return {
        "unique_graphs": int(counters["stats"]["unique_graphs"]),
        "graph_breaks": int(sum(counters["graph_break"].values())),
        "fxgraph_cache_hit": int(counters["inductor"]["fxgraph_cache_hit"]),
        "compile_s": float(sum(compilation_time_metrics.get("_compile.compile_inner", ()))),
    }


def report_compiles(before: dict[str, float]) -> None:
    """Tell conformance.profile what the last call compiled (`conformance run --profile`).

    One graph is one program; a graph whose Inductor code came from the FX graph cache is also
    a cache hit (dynamo still traces it: its tracing is not cached across processes).
    """
    after = compile_counters()
    graphs = after["unique_graphs"] - before["unique_graphs"]
    if graphs:
        profile.add("compile", after["compile_s"] - before["compile_s"], int(graphs))
    hits = after["fxgraph_cache_hit"] - before["fxgraph_cache_hit"]
    if hits:
        profile.add("cache_hits", 0.0, int(hits))


def inductor_cache_setup() -> None:
    """Point Inductor's on-disk caches at conformance's cache folder (honours --no-cache).

    Inductor reads TORCHINDUCTOR_CACHE_DIR when it first needs the folder, so this works after
    torch is imported too. With caching off the variable is left alone (torch's default).
    """
    folder = cache_dir("torch-inductor")
    if folder is not None:
        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(folder))


_compiled_sdpa = None


def compiled_sdpa():  # noqa: ANN201
    """F.scaled_dot_product_attention under torch.compile(backend='inductor', dynamic=True)."""
    global _compiled_sdpa
    if _compiled_sdpa is None:
        import torch
        import torch.nn.functional as F

        def attention(**kwargs):  # noqa: ANN003, ANN202
            return F.scaled_dot_product_attention(**kwargs)

        _compiled_sdpa = torch.compile(attention, backend="inductor", dynamic=True, fullgraph=True)
    return _compiled_sdpa


class TorchCompileSdpaAdapter(TorchSdpaAdapter):
    """torch.compile of F.scaled_dot_product_attention (inductor)."""

    declaration = Declaration(
        name="torch.compile.sdpa",
        summary="torch.compile(F.scaled_dot_product_attention, backend='inductor', dynamic=True, "
        "fullgraph=True), forward",
        framework="torch",
        features=SDPA_FEATURES - {"gradients", "dropout-training"},
        requires=("torch",),
        worker="torch-compile",
        divergences=(SDPA_MASKED_ROWS, SDPA_FILL_AS_WRITTEN),
        unsupported_reasons=COMPILE_UNSUPPORTED,
        notes="Same arguments as torch.sdpa (bool mask True = attend, additive masks in the case "
        "dtype, is_causal / causal_lower_right, enable_gqa). Path proven with dynamo's counters: "
        "one graph, no graph break; a hit recompile limit is an error, not a silent eager run.",
    )

    def setup(self) -> None:
        compile_setup()

    def devices(self) -> list[str]:
        return ["cpu"]  # inductor's CPU path (gcc); the CUDA path (Triton) is not exercised

    def versions(self) -> dict[str, str]:
        return compile_versions()

    def run(self, case: Case, inputs: CaseInputs, device: str) -> dict[str, np.ndarray]:
        import torch

        kwargs = sdpa_arguments(case, inputs, device)
        before = compile_counters()
        with torch.no_grad():
            out = compiled_sdpa()(**kwargs)
        check_compiled(before)
        report_compiles(before)
        return {"output": to_numpy(out)}


ADAPTERS = [TorchCompileSdpaAdapter]
