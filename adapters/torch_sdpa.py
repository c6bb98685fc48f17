"""`torch.sdpa*`: torch.nn.functional.scaled_dot_product_attention in kernel mode.

Variants (each its own adapter, because SDPA's backends can disagree):

- `torch.sdpa`            SDPA's own backend choice (what users get by default)
- `torch.sdpa.math`       sdpa_kernel(SDPBackend.MATH): the composite reference path
- `torch.sdpa.flash`      sdpa_kernel(SDPBackend.FLASH_ATTENTION): on CPU the
                          `_scaled_dot_product_flash_attention_for_cpu` kernel, on CUDA
                          FlashAttention-2
- `torch.sdpa.efficient`  sdpa_kernel(SDPBackend.EFFICIENT_ATTENTION): CUDA only
- `torch.sdpa.cudnn`      sdpa_kernel(SDPBackend.CUDNN_ATTENTION): CUDA only

Each forced variant proves its backend ran: a TorchDispatchMode records the aten ops that
reach the dispatcher, and the fused backends show up as their own ops
(`_scaled_dot_product_flash_attention_for_cpu`, `_scaled_dot_product_efficient_attention`, ...).
A backend that cannot run a case makes torch raise "No available kernel"; the adapter turns
that into `Unsupported` carrying torch's own warnings (the reasons it gave).

Masks, in torch SDPA's convention (verified in torch 2.13's docstring and kernels):
boolean attn_mask True = attend; a float attn_mask is added to the logits; `is_causal=True`
is top-left aligned; torch.nn.attention.bias.causal_lower_right(T, S) gives bottom-right.
A case whose whole mask is a causal mask uses those flags; any other mask goes in as one
explicit mask (boolean when the case's mask is boolean, additive when it has additive or bias
terms), broadcast over heads unless it is per-head.

Gradient cases: q, k and v require grad and torch.autograd.grad runs the backend's own
backward with the case's grad_output (a forced fused variant must also show its `*_backward`
op); with enable_gqa the K/V gradients already sum over each query group, [B, G, S, *].

This module also holds the small torch helpers torch_mha.py shares (devices, dtypes, the op
recorder). torch is imported lazily: the registry imports this module without torch.
"""

from __future__ import annotations

import dataclasses
import re
import warnings
from typing import Any

import numpy as np

from conformance.adapter_api.adapter import (
    FILL_AS_WRITTEN,
    Adapter,
    Declaration,
    Divergence,
    DropoutBehavior,
    Unsupported,
)
from conformance.adapter_api.feature_sets import (
    ADDITIVE_MASKS,
    ALIBI,
    EVERY_BOOLEAN_MASK,
    GROUPED_HEADS,
    KERNEL_SHAPES,
    MASKS_AS_WRITTEN,
)
from conformance.cases.case import Case, Mask
from conformance.cases.inputs import CaseInputs
from conformance.cases.masks import build_mask, combined_additive, fill_value
from conformance.cases.score_terms import alibi_for_case

# --- helpers shared with torch_mha.py --------------------------------------------------------

REQUIRES = ("torch",)
WORKER = "torch"

SAFE_SOFTMAX_PR = "https://github.com/pytorch/pytorch/pull/133882"

_recorder_class: Any = None


def torch_devices(cuda: bool = True, cpu: bool = True) -> list[str]:
    """'cpu' and every visible CUDA device, as strings torch.device() accepts."""
    import torch

    found = ["cpu"] if cpu else []
    if cuda and torch.cuda.is_available():
        found += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    return found


def torch_setup() -> None:
    """Import torch and make it single-threaded on the CPU.

    The cases are tiny, so intra-op threads buy nothing, and with several workers on a few
    cores their spinning threads contend: measured 3x slower on a loaded 2-core machine.
    One thread also keeps CPU reductions in one order from run to run.
    """
    import torch

    torch.set_num_threads(1)


def torch_versions() -> dict[str, str]:
    import torch

    versions = {"torch": torch.__version__}
    if torch.version.cuda:
        versions["cuda"] = torch.version.cuda
    if torch.cuda.is_available() and torch.backends.cudnn.is_available():
        versions["cudnn"] = str(torch.backends.cudnn.version())
    return versions


def torch_dtype(name: str) -> Any:
    import torch

    return getattr(torch, name)


def to_torch(array: np.ndarray, dtype: str, device: str) -> Any:
    """A case array (storage form; bfloat16 travels as float32) -> tensor in the case dtype."""
    import torch

    # A private copy: case arrays may be read-only views (np.broadcast_to) or shared.
    tensor = torch.from_numpy(np.array(array, order="C", copy=True))
    return tensor.to(device=device, dtype=torch_dtype(dtype))


def to_numpy(tensor: Any) -> np.ndarray:
    """Tensor -> NumPy; float16/bfloat16 widen to float32 exactly (NumPy has no bfloat16)."""
    import torch

    tensor = tensor.detach().to("cpu")
    if tensor.dtype in (torch.float16, torch.bfloat16):
        tensor = tensor.to(torch.float32)
    return tensor.numpy()


def op_recorder() -> Any:
    """A TorchDispatchMode that records the names of aten ops reaching the dispatcher.

    It sees the ops called from Python and those composite ops decompose into, not what a
    native kernel calls internally: enough to see which fused attention kernel ran.
    It does not use __torch_function__, so MultiheadAttention's fast-path gate (which refuses
    any tensor "with torch function") is unaffected.
    """
    global _recorder_class
    if _recorder_class is None:
        from torch.utils._python_dispatch import TorchDispatchMode

        class OpRecorder(TorchDispatchMode):
            def __init__(self) -> None:
                super().__init__()
                self.ops: list[str] = []

            @classmethod
            def _should_skip_dynamo(cls) -> bool:
                # torch's documented opt-out: otherwise __torch_dispatch__ is wrapped in
                # torch._disable_dynamo, whose first call imports torch._dynamo (~2-5 s per
                # worker process). Nothing here is compiled, so there is nothing to skip.
                return False

            def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
                self.ops.append(func.overloadpacket.__name__)
                return func(*args, **(kwargs or {}))

        _recorder_class = OpRecorder
    return _recorder_class()


def kernel_warnings(caught: list) -> str:
    """torch's reasons for refusing a fused kernel, from the warnings it emitted."""
    reasons = []
    for item in caught:
        text = re.sub(r"\s*\(Triggered internally at [^)]*\)\.?", "", str(item.message)).strip()
        if text and text not in reasons and not text.endswith("not used because:"):
            reasons.append(text)
    return "; ".join(reasons)


def only_causal(mask: Mask) -> bool:
    """Whether the case's whole mask is a causal mask (so a causal flag can express it)."""
    if mask.causal is None:
        return False
    bare = Mask(causal=mask.causal, fully_masked_rows=mask.fully_masked_rows)
    return dataclasses.replace(mask, per_head=False) == bare


# --- SDPA ------------------------------------------------------------------------------------

# Which aten op proves each fused backend ran (CPU flash has its own op).
FUSED_OPS = {
    "flash": ("_scaled_dot_product_flash_attention", "_scaled_dot_product_flash_attention_for_cpu"),
    "efficient": ("_scaled_dot_product_efficient_attention", "_efficient_attention_forward"),
    "cudnn": ("_scaled_dot_product_cudnn_attention",),
}
ALL_FUSED = frozenset(op for ops in FUSED_OPS.values() for op in ops)

SDPA_FEATURES = (
    KERNEL_SHAPES
    | GROUPED_HEADS
    | EVERY_BOOLEAN_MASK
    | ADDITIVE_MASKS
    | {"scale", "dropout-training", "gradients"}
    # issue 14: ALiBi arrives in the float attn_mask as a bias (build_mask), the way
    # BLOOM/MPT ports call SDPA; SDPA has no softcap or sink argument
    | ALIBI
    # issue 14: the float attn_mask carries finite fills as written, packed segments and
    # left padding (a mask like any other)
    | MASKS_AS_WRITTEN
)

SDPA_UNSUPPORTED = {
    "layer": "SDPA is the kernel only: no projections (see torch.mha.* for the layer)",
    "weights": "scaled_dot_product_attention returns the output only, never the weights",
    "weights-mean": "scaled_dot_product_attention returns the output only, never the weights",
    "decode": "SDPA has no key/value cache; decoding is the caller's loop",
    "multi-axis": "SDPA attends over one sequence axis",
    "bias-kv": "add_bias_kv belongs to nn.MultiheadAttention, not to SDPA",
    "zero-attn": "add_zero_attn belongs to nn.MultiheadAttention, not to SDPA",
    "softcap": "no softcap argument (torch.flex.* expresses it as a score_mod)",
    "sink": "no sink logit argument",
    "sink-zero": "no off-by-one softmax argument",
    "dropout": "SDPA has no inference mode: it always applies dropout_p, and callers pass "
    "dropout_p=0 at inference (nn modules pass `self.p if self.training else 0.0`)",
}

# torch >= 2.5: every SDPA backend returns 0 for a query row whose keys are all masked
# (math: torch._safe_softmax; the fused kernels were updated in the same change). Measured in
# torch 2.13 on CPU for the math and flash-for-cpu backends, every dtype, bool and additive
# masks.
# issue 14: the math backend adds a float attn_mask to float32 logits for every half dtype
SDPA_FILL_AS_WRITTEN = dataclasses.replace(
    FILL_AS_WRITTEN,
    link="https://github.com/pytorch/pytorch/blob/main/aten/src/ATen/native/transformers/attention.cpp",
)

SDPA_MASKED_ROWS = Divergence(
    id="sdpa-masked-rows-zero",
    reason=(
        "SDPA returns zeros for a query row whose every key is masked (torch._safe_softmax "
        "in the math backend, the same convention in the fused kernels), not NaN"
    ),
    link=SAFE_SOFTMAX_PR,
    when=frozenset({"fully-masked-rows"}),
    masked_rows="zeros",
)


def sdpa_arguments(case: Case, inputs: CaseInputs, device: str) -> dict[str, Any]:
    """Keyword arguments for F.scaled_dot_product_attention, in torch's conventions."""
    s = case.shape
    kwargs: dict[str, Any] = {
        "query": to_torch(inputs.native("q"), case.dtype, device),
        "key": to_torch(inputs.native("k"), case.dtype, device),
        "value": to_torch(inputs.native("v"), case.dtype, device),
    }
    if s.num_kv_heads != s.num_heads:
        kwargs["enable_gqa"] = True  # query head h uses kv head h // (H / G), as canonical
    if case.scale is not None:
        kwargs["scale"] = case.scale  # left out otherwise: torch's default 1/sqrt(K) is tested
    if case.dropout is not None and case.dropout.training:
        kwargs["dropout_p"] = case.dropout.rate  # seeded in run(), one draw per call
    if only_causal(case.mask) and alibi_for_case(case) is None:  # ALiBi needs attn_mask
        if case.mask.causal == "top-left":
            kwargs["is_causal"] = True
        else:
            from torch.nn.attention.bias import causal_lower_right

            # Built here, outside the op recorder: a CausalBias cannot be created under a
            # TorchDispatchMode.
            kwargs["attn_mask"] = causal_lower_right(s.query_len, s.kv_len)
        return kwargs
    attend, bias = build_mask(case)
    if case.mask.fill is not None:  # issue 14: the user's float mask, finite fill as written
        additive = combined_additive(attend, bias, np.float64, fill=fill_value(case))
        kwargs["attn_mask"] = to_torch(additive, case.dtype, device)
    elif bias is None and attend is not None:
        kwargs["attn_mask"] = to_torch(attend, "bool", device)  # True = attend, as neutral
    elif bias is not None:
        additive = combined_additive(attend, bias, np.float64)
        kwargs["attn_mask"] = to_torch(additive, case.dtype, device)
    return kwargs


class TorchSdpaAdapter(Adapter):
    """F.scaled_dot_product_attention with SDPA's own backend choice."""

    backend: str | None = None  # None: let SDPA choose
    cuda_only = False

    declaration = Declaration(
        name="torch.sdpa",
        summary="torch.nn.functional.scaled_dot_product_attention, SDPA's own backend choice",
        framework="torch",
        features=SDPA_FEATURES,
        requires=REQUIRES,
        worker=WORKER,
        divergences=(SDPA_MASKED_ROWS, SDPA_FILL_AS_WRITTEN),
        unsupported_reasons=SDPA_UNSUPPORTED,
        # math backend: torch.dropout on the [B, H, T, S] weights after softmax; the fused
        # kernels drop the same weights with their own generator (Philox on CUDA).
        dropout=DropoutBehavior(target="weights", shared=()),
        notes=(
            "Bool masks are passed as is (True = attend); additive/bias masks as one float mask "
            "in the case dtype; a mask that is only causal uses is_causal=True (top-left) or "
            "causal_lower_right(T, S) (bottom-right). enable_gqa=True when G < H."
        ),
    )

    def setup(self) -> None:
        torch_setup()

    def devices(self) -> list[str]:
        return torch_devices(cpu=not self.cuda_only)

    def versions(self) -> dict[str, str]:
        return torch_versions()

    def _backends(self) -> list:
        from torch.nn.attention import SDPBackend

        names = {
            "math": SDPBackend.MATH,
            "flash": SDPBackend.FLASH_ATTENTION,
            "efficient": SDPBackend.EFFICIENT_ATTENTION,
            "cudnn": SDPBackend.CUDNN_ATTENTION,
        }
        return [names[self.backend]] if self.backend else list(names.values())

    def run(self, case: Case, inputs: CaseInputs, device: str) -> dict[str, np.ndarray]:
        import torch
        import torch.nn.functional as F
        from torch.nn.attention import sdpa_kernel

        kwargs = self._arguments(case, inputs, device)
        if "dropout_p" in kwargs:
            torch.manual_seed(case.dropout.seed)  # seeds the CPU and every CUDA generator
        leaves = (kwargs["query"], kwargs["key"], kwargs["value"])
        if case.gradients:  # autograd w.r.t. q, k and v: the backend's own backward runs
            for leaf in leaves:
                leaf.requires_grad_(True)
            d_out = to_torch(inputs.native("grad_output"), case.dtype, device)
        recorder = op_recorder()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                with (
                    torch.set_grad_enabled(case.gradients),
                    sdpa_kernel(self._backends()),
                    recorder,
                ):
                    out = F.scaled_dot_product_attention(**kwargs)
                    if case.gradients:
                        grads = torch.autograd.grad(out, leaves, d_out)
            except RuntimeError as error:
                if "No available kernel" not in str(error) or self.backend is None:
                    raise
                why = kernel_warnings(caught) or str(error)
                raise Unsupported(f"the {self.backend} backend refused this case: {why}") from None
        self._check_backend(recorder.ops, case.gradients)
        result = {"output": to_numpy(out)}
        if case.gradients:
            # enable_gqa keeps K/V at G heads, so every gradient is already canonical BHTK.
            result.update(zip(("grad_q", "grad_k", "grad_v"), map(to_numpy, grads), strict=True))
        return result

    def _arguments(self, case: Case, inputs: CaseInputs, device: str) -> dict[str, Any]:
        """SDPA's keyword arguments (a hook: adapters.traps_torch passes them the trapped way)."""
        return sdpa_arguments(case, inputs, device)

    def _check_backend(self, ops: list[str], backward: bool = False) -> None:
        """Prove the intended backend ran (a forced variant must not fall back silently).

        With gradients, also its backward: a fused forward op records its own `*_backward` op.
        """
        fused = ALL_FUSED.intersection(ops)
        if self.backend == "math" and fused:
            raise RuntimeError(f"sdpa_kernel(MATH) was asked for, but {sorted(fused)} ran")
        if self.backend in FUSED_OPS and not fused.intersection(FUSED_OPS[self.backend]):
            raise RuntimeError(
                f"sdpa_kernel({self.backend}) was asked for, but no {self.backend} op ran "
                f"(ops seen: {sorted(set(ops))})"
            )
        if backward and self.backend in FUSED_OPS:
            wanted = {f"{op}_backward" for op in FUSED_OPS[self.backend]}
            if not wanted.intersection(ops):
                raise RuntimeError(
                    f"the {self.backend} backend's backward op did not run "
                    f"(ops seen: {sorted(set(ops))})"
                )


def _variant(backend: str, summary: str, cuda_only: bool) -> type[TorchSdpaAdapter]:
    base = TorchSdpaAdapter.declaration
    declaration = dataclasses.replace(
        base,
        name=f"torch.sdpa.{backend}",
        summary=summary,
        notes=base.notes
        + f" The backend is forced with sdpa_kernel(SDPBackend.{backend.upper()}) and the "
        "aten ops that ran are checked; a case it cannot run is unsupported with torch's reason."
        + (" CUDA only: lists no device on a machine without CUDA." if cuda_only else ""),
    )
    return type(
        f"TorchSdpa{backend.capitalize()}Adapter",
        (TorchSdpaAdapter,),
        {"backend": backend, "cuda_only": cuda_only, "declaration": declaration,
         "__module__": __name__},
    )  # fmt: skip


TorchSdpaMathAdapter = _variant(
    "math", "F.scaled_dot_product_attention forced onto the math (composite) backend", False
)
TorchSdpaFlashAdapter = _variant(
    "flash",
    "F.scaled_dot_product_attention forced onto FlashAttention (CPU: flash_attention_for_cpu)",
    False,
)
TorchSdpaEfficientAdapter = _variant(
    "efficient", "F.scaled_dot_product_attention forced onto memory-efficient attention", True
)
TorchSdpaCudnnAdapter = _variant(
    "cudnn", "F.scaled_dot_product_attention forced onto cuDNN attention", True
)

ADAPTERS = [
    TorchSdpaAdapter,
    TorchSdpaMathAdapter,
    TorchSdpaFlashAdapter,
    TorchSdpaEfficientAdapter,
    TorchSdpaCudnnAdapter,
]
