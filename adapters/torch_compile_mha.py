"""`torch.compile.mha`, `torch.compile.mha.weights`: torch.compile (inductor, CPU) of
nn.MultiheadAttention, layer mode, one adapter per execution path.

What runs: the module torch.mha.* builds (adapters/torch_mha.py: canonical weights mapped to
in_proj_weight or q/k/v_proj_weight, out_proj; masks as mha_masks builds them), called through

    torch.compile(lambda module, q, k, v, **masks: module(q, k, v, need_weights=..., **masks),
                  backend=inductor, dynamic=True, fullgraph=True)

- `torch.compile.mha`          need_weights=False: F.multi_head_attention_forward ends in
                               F.scaled_dot_product_attention, lowered by inductor
- `torch.compile.mha.weights`  need_weights=True: the explicit baddbmm + softmax + bmm,
                               which inductor turns into generated C++ loops

Under torch.compile, MultiheadAttention never takes its native fast path: forward() checks
`_is_make_fx_tracing()`, which is true while dynamo traces the module (its comment: "this can be
triggered when dynamo inlining the module too"), so the same call that runs
torch._native_multi_head_attention eagerly runs F.multi_head_attention_forward compiled. The
module is built with batch_first=True (the layout the fast path needs) to show exactly that.

Compile cost: the module is an argument of one compiled function, and dynamo inlines built-in
nn.Modules with their parameters as graph inputs, so modules of the same structure share one
graph; dynamic=True keeps new batch and sequence lengths from recompiling. One compilation per
structure: (embed_dim, num_heads, kdim, vdim, bias, add_bias_kv, add_zero_attn, dtype, mask
kinds, is_causal, average_attn_weights): dynamo specialises a module's int attributes. The
first trace of a structure is restarted once (the module's float dropout first reaches the
graph as a tensor; inductor aborts after ~1 s and dynamo specialises it), so compilations are
counted from dynamo's unique_graphs, not from the graphs the backend sees. Inductor's caches
live under conformance's cache folder (torch_compile.compile_setup).

Path proof: the backend is inductor's own (torch._dynamo's registered "inductor"), wrapped to
record the op targets of each graph dynamo hands it; the graph must contain
F.multi_head_attention_forward and no torch._native_multi_head_attention, dynamo's counters must
show no graph break, and a hit recompile limit is an error (never a silent eager run).

Forward only, eval mode: gradients and training-mode dropout are not covered here. torch is
imported lazily in setup().
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import numpy as np

from conformance.adapter_api.adapter import Declaration, Divergence, Unsupported
from conformance.cases.case import Case
from conformance.cases.inputs import CaseInputs
from conformance.running import profile

from .torch_compile import check_compiled, compile_counters, compile_setup, compile_versions
from .torch_mha import (
    COMMON_FEATURES,
    SLOW_ONLY,
    UNSUPPORTED,
    WEIGHTS,
    TorchMhaAdapter,
    _Config,
    _set_weights,
    mha_masks,
)
from .torch_sdpa import to_numpy, to_torch

MHA_SOURCE = "https://github.com/pytorch/pytorch/blob/main/torch/nn/modules/activation.py"
FORWARD = "multi_head_attention_forward"
FAST_OP = "_native_multi_head_attention"

FEATURES = (COMMON_FEATURES | SLOW_ONLY) - {"gradients", "dropout-training"}

COMPILE_MHA_UNSUPPORTED = {
    **UNSUPPORTED,
    "gradients": "this adapter runs the compiled forward only",
    "dropout-training": "inductor draws dropout with its own RNG; forward at inference only",
}

_recorded: list[frozenset[str]] = []  # op targets of each graph handed to inductor
_compiled: dict[bool, Any] = {}


def _recording_inductor() -> Any:
    """torch._dynamo's registered inductor backend, recording each graph's op targets."""
    from torch._dynamo.backends.registry import lookup_backend

    inductor = lookup_backend("inductor")

    def backend(gm: Any, example_inputs: Any) -> Any:  # noqa: ANN401
        _recorded.append(
            frozenset(
                getattr(n.target, "__name__", str(n.target))
                for n in gm.graph.nodes
                if n.op in ("call_function", "call_method")
            )
        )
        return inductor(gm, example_inputs)

    return backend


def compiled_mha(need_weights: bool) -> Any:
    """The compiled call for one need_weights value (built once per process)."""
    fn = _compiled.get(need_weights)
    if fn is None:
        import torch

        if need_weights:

            def call(module, query, key, value, **masks):  # noqa: ANN001, ANN003, ANN202
                return module(query, key, value, need_weights=True, **masks)

        else:

            def call(module, query, key, value, **masks):  # noqa: ANN001, ANN003, ANN202
                return module(query, key, value, need_weights=False, **masks)

        fn = torch.compile(call, backend=_recording_inductor(), dynamic=True, fullgraph=True)
        _compiled[need_weights] = fn
    return fn


def check_graph(ops: frozenset[str]) -> None:
    """The compiled graph must be the slow path: F.multi_head_attention_forward, no native op."""
    if FAST_OP in ops:
        raise RuntimeError(f"the compiled graph calls torch.{FAST_OP} (the eager fast path)")
    if FORWARD not in ops:
        raise RuntimeError(f"the compiled graph has no F.{FORWARD}: {sorted(ops)}")


# Measured on the shipped specs (torch 2.13 CPU): see docs/adapters/torch_compile.md.
COMPILED_MASKED_ROWS = Divergence(
    id="compile-mha-sdpa-masked-rows-zero",
    reason=(
        "under torch.compile MultiheadAttention runs F.multi_head_attention_forward (the fast "
        "path is off while dynamo traces), whose SDPA gives zero attention for a query row "
        "whose every key is masked: the output row is out_proj.bias (eager torch.mha.fast "
        "gives NaN for the same call)"
    ),
    link=MHA_SOURCE,
    when=frozenset({"fully-masked-rows"}),
    masked_rows="zeros",
)
COMPILED_WEIGHTS_MASKED_ROWS = Divergence(
    id="compile-mha-need-weights-masked-rows-nan",
    reason=(
        "need_weights=True computes a plain softmax over all -inf logits: NaN weights and "
        "outputs for a query row whose every key is masked, compiled as in eager"
    ),
    link="https://github.com/pytorch/pytorch/issues/160064",
    when=frozenset({"fully-masked-rows"}),
    masked_rows="nan",
)


class TorchCompileMhaAdapter(TorchMhaAdapter):
    """torch.compile of nn.MultiheadAttention, need_weights=False."""

    fast = False
    need_weights = False

    declaration = Declaration(
        name="torch.compile.mha",
        summary="torch.compile(nn.MultiheadAttention call, backend='inductor', dynamic=True, "
        "fullgraph=True), need_weights=False: F.multi_head_attention_forward -> SDPA, forward",
        framework="torch",
        features=FEATURES,
        requires=("torch",),
        worker="torch-compile",
        divergences=(COMPILED_MASKED_ROWS,),
        unsupported_reasons=COMPILE_MHA_UNSUPPORTED,
        compiles=True,
        # Measured (docs/performance.md): 242 compilations on the shipped specs, 13 min with an
        # empty inductor cache and 2 min warm on 2 cores; dynamo keys each graph on the module's
        # embed_dim and num_heads. Alone it would exceed the whole default run's budget.
        opt_in="one inductor compilation per layer configuration: minutes; name it to run it",
        notes="The module torch.mha.* builds (batch_first=True, eval, no grad), called through "
        "one compiled function per need_weights value; the fast path is off under dynamo "
        "(_is_make_fx_tracing), so every case runs F.multi_head_attention_forward. Path proven "
        "from the graph inductor receives and dynamo's counters (no graph break; a hit "
        "recompile limit is an error).",
    )

    def setup(self) -> None:
        compile_setup()

    def devices(self) -> list[str]:
        return ["cpu"]  # inductor's CPU path (C++); the CUDA path (Triton) is not exercised

    def versions(self) -> dict[str, str]:
        return compile_versions()

    def _config(self, case: Case, device: str) -> _Config:
        # batch_first=True: the layout whose eager call takes the fast path when it can.
        return dataclasses.replace(super()._config(case, device), batch_first=True)

    def run(self, case: Case, inputs: CaseInputs, device: str) -> dict[str, np.ndarray]:
        import torch
        from torch._dynamo.utils import counters

        if case.gradients or (case.dropout is not None and case.dropout.training):
            raise Unsupported("forward at inference only")
        config = self._config(case, device)
        module = self._module(config)
        _set_weights(module, config, inputs)
        module.dropout = case.dropout.rate if case.dropout is not None else 0.0
        module.eval()
        query = to_torch(inputs.native("query"), case.dtype, device)
        if case.self_attention:
            key = value = query
        else:
            key = to_torch(inputs.native("key"), case.dtype, device)
            value = to_torch(inputs.native("value"), case.dtype, device)
        masks = mha_masks(case, device)
        averages = [False] if "weights" in case.compare else []
        if "weights_mean" in case.compare:
            averages.append(True)
        fn = compiled_mha(self.need_weights)
        results: dict[str, np.ndarray] = {}
        for average in averages or [True]:
            extra = {"average_attn_weights": average} if self.need_weights else {}
            before = compile_counters()
            hits = counters["inductor"]["fxgraph_cache_hit"]
            attempts = len(_recorded)
            started = time.perf_counter()
            with torch.no_grad():
                out, weights = fn(module, query, key, value, **masks, **extra)
            # Compilations are dynamo's unique graphs: the backend may see more graphs than
            # that (dynamo restarts a trace once to specialise a data-dependent value).
            compiled = compile_counters()["unique_graphs"] - before["unique_graphs"]
            if compiled:  # this call traced and compiled (or loaded from inductor's cache)
                profile.add("compile", time.perf_counter() - started, compiled)
                for _ in range(counters["inductor"]["fxgraph_cache_hit"] - hits):
                    profile.add("cache_hits", 0.0)
            check_compiled(before)
            if not _recorded or (compiled and len(_recorded) == attempts):
                raise RuntimeError("inductor received no graph: the call ran eagerly")
            check_graph(_recorded[-1])
            results.setdefault("output", to_numpy(out))
            if self.need_weights:
                results["weights_mean" if average else "weights"] = to_numpy(weights)
            elif weights is not None:
                raise RuntimeError("need_weights=False returned weights")
        return results


class TorchCompileMhaWeightsAdapter(TorchCompileMhaAdapter):
    """torch.compile of nn.MultiheadAttention, need_weights=True."""

    need_weights = True

    declaration = dataclasses.replace(
        TorchCompileMhaAdapter.declaration,
        name="torch.compile.mha.weights",
        summary="torch.compile(nn.MultiheadAttention call, backend='inductor', dynamic=True, "
        "fullgraph=True), need_weights=True: baddbmm + softmax + bmm in generated code",
        features=FEATURES | WEIGHTS,
        divergences=(COMPILED_WEIGHTS_MASKED_ROWS,),
        unsupported_reasons={k: v for k, v in COMPILE_MHA_UNSUPPORTED.items() if k not in WEIGHTS},
    )


ADAPTERS = [TorchCompileMhaAdapter, TorchCompileMhaWeightsAdapter]
