"""`torch.mha.*`: torch.nn.MultiheadAttention, one adapter per execution path.

MultiheadAttention.forward (torch 2.13, torch/nn/modules/activation.py) picks its path from
the arguments, and the paths disagree on fully masked rows, so each is a variant:

- `torch.mha.fast`          native fast path, need_weights=False: torch._native_multi_head_attention
- `torch.mha.fast-weights`  native fast path, need_weights=True (same op, its weights branch)
- `torch.mha.slow`          F.multi_head_attention_forward, need_weights=False: ends in
                            F.scaled_dot_product_attention
- `torch.mha.slow-weights`  F.multi_head_attention_forward, need_weights=True: explicit
                            baddbmm + softmax + bmm

Each variant proves its path ran: a TorchDispatchMode (see torch_sdpa.op_recorder) records the
aten ops, and the fast path shows up as `_native_multi_head_attention`, the slow weights path
as `_softmax`, the slow SDPA path as an SDPA kernel op (or the math backend's `_safe_softmax`).
A case the fast path cannot take (odd head count, no biases, float masks, cross-attention,
add_bias_kv, ...) is `unsupported` with the reason torch's own gate gives.

Gradient cases run on the slow variants only: forward() never takes the fast path while
autograd records (grad enabled and a parameter or query requiring grad), so the fast variants
declare gradients unsupported with that reason. The slow variants differentiate through the
module (torch.autograd.grad w.r.t. the input tensors and every parameter) and map the results
back to the canonical layout with conformance.layouts (packed in_proj_weight included).

batch_first (a case-independent choice): the fast variants use batch_first=True (the fast path
requires it), the slow variants batch_first=False, torch's default, so the slow variants
exercise the sequence-first layout and can never take the fast path by accident.

Conventions used, as in the installed source: boolean masks True = masked out (both
key_padding_mask and attn_mask); float masks are added to the logits; a 2-D attn_mask [T, S]
is shared by every batch element and head, a 3-D one is [B * H, T, S] indexed
batch * H + head. key_padding becomes key_padding_mask [B, S]; the rest of the case's mask
becomes attn_mask, 2-D when it is the same for every batch element and head, else 3-D.
is_causal=True is passed (as the hint it is: attn_mask is still the causal mask) exactly when
that attn_mask is a top-left causal mask. The scale is always 1/sqrt(E / H).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from conformance.adapter_api.adapter import (
    Adapter,
    Declaration,
    Divergence,
    DropoutBehavior,
    Unsupported,
)
from conformance.adapter_api.feature_sets import (
    ADDITIVE_MASKS,
    BOOLEAN_MASKS,
    PADDING,
    SEGMENTS_AND_LEFT_PADDING,
)
from conformance.cases import layouts
from conformance.cases.case import Case, Mask
from conformance.cases.inputs import CaseInputs
from conformance.cases.masks import build_mask, combined_additive, to_additive, to_true_masked

from .torch_sdpa import (
    ALL_FUSED,
    REQUIRES,
    SAFE_SOFTMAX_PR,
    WORKER,
    only_causal,
    op_recorder,
    to_numpy,
    to_torch,
    torch_devices,
    torch_dtype,
    torch_setup,
    torch_versions,
)

FAST_OP = "_native_multi_head_attention"

COMMON_FEATURES = (
    PADDING
    | BOOLEAN_MASKS
    | {"layer", "causal", "window", "fully-masked-rows", "dropout"}
    # issue 14: key_padding_mask from the neutral mask, valid keys at the start or the end
    # of the row (mha_masks); packed segments are entries of attn_mask (3-D, per batch)
    | SEGMENTS_AND_LEFT_PADDING
)
SLOW_ONLY = ADDITIVE_MASKS | {
    "dropout-training",
    "cross-attention",
    "kv-input-dims",
    "kv-len",
    "causal-top-left",
    "causal-bottom-right",
    "no-bias",
    "bias-kv",
    "zero-attn",
    "gradients",
}
WEIGHTS = frozenset({"weights", "weights-mean"})

UNSUPPORTED = {
    "kernel": "nn.MultiheadAttention is a layer (see torch.sdpa for the kernel)",
    "grouped-query": "nn.MultiheadAttention has one key/value head per query head (no GQA)",
    "multi-query": "nn.MultiheadAttention has one key/value head per query head (no MQA)",
    "value-dim": "the head dim is embed_dim / num_heads for queries, keys and values alike",
    "output-dim": "out_proj maps back to embed_dim: the output dim is the query dim",
    "scale": "no scale argument: the logits are always scaled by 1/sqrt(embed_dim / num_heads)",
    "decode": "no key/value cache",
    "multi-axis": "attends over one sequence axis",
    "weights": "need_weights=False returns no weights (see the -weights variant)",
    "weights-mean": "need_weights=False returns no weights (see the -weights variant)",
}
FAST_UNSUPPORTED = {
    **UNSUPPORTED,
    "cross-attention": "the fast path needs query, key and value to be the same tensor",
    "kv-input-dims": "the fast path needs the packed in_proj_weight (kdim == vdim == embed_dim)",
    "kv-len": "the fast path is self-attention only",
    "causal-top-left": "the fast path is self-attention only (T == S)",
    "causal-bottom-right": "the fast path is self-attention only (T == S)",
    "additive-mask": "float masks send MultiheadAttention to the slow path",
    "attn-bias": "float masks send MultiheadAttention to the slow path",
    "no-bias": "with bias=False in_proj_bias is None and forward() skips the fast path",
    "bias-kv": "add_bias_kv sends MultiheadAttention to the slow path",
    "zero-attn": "add_zero_attn sends MultiheadAttention to the slow path",
    "dropout-training": "forward() never takes the fast path in training mode (it checks "
    "self.training)",
    "gradients": (
        "the native fast path never runs while autograd records: forward() leaves it when grad "
        "is enabled and query or a projection parameter requires grad (see torch.mha.slow*)"
    ),
}

FAST_MASKED_ROWS = Divergence(
    id="mha-fast-masked-rows-nan",
    reason=(
        "the native fast path's masked_softmax gives NaN for a query row whose every key is "
        "masked (the slow need_weights=False path gives zeros through SDPA)"
    ),
    link="https://github.com/pytorch/pytorch/pull/190486",
    when=frozenset({"fully-masked-rows"}),
    masked_rows="nan",
)
SLOW_WEIGHTS_MASKED_ROWS = Divergence(
    id="mha-need-weights-masked-rows-nan",
    reason=(
        "need_weights=True computes a plain softmax over all -inf logits: NaN weights and "
        "outputs for a query row whose every key is masked (need_weights=False gives zeros)"
    ),
    link="https://github.com/pytorch/pytorch/issues/160064",
    when=frozenset({"fully-masked-rows"}),
    masked_rows="nan",
)
SLOW_MASKED_ROWS = Divergence(
    id="mha-sdpa-masked-rows-zero",
    reason=(
        "need_weights=False runs F.scaled_dot_product_attention, whose safe softmax gives zero "
        "attention for a query row whose every key is masked: the output row is out_proj.bias"
    ),
    link=SAFE_SOFTMAX_PR,
    when=frozenset({"fully-masked-rows"}),
    masked_rows="zeros",
)


@dataclasses.dataclass(frozen=True)
class _Config:
    """Everything a MultiheadAttention module is built from (the module cache key)."""

    embed_dim: int
    num_heads: int
    kdim: int
    vdim: int
    bias: bool
    add_bias_kv: bool
    add_zero_attn: bool
    batch_first: bool
    dtype: str
    device: str

    @property
    def packed(self) -> bool:
        return self.kdim == self.embed_dim and self.vdim == self.embed_dim


def _set_weights(module: Any, config: _Config, inputs: CaseInputs) -> None:
    """Copy the canonical weights into the module's parameters (layouts does the mapping)."""
    import torch

    def put(param: Any, array: np.ndarray) -> None:
        param.copy_(to_torch(array, config.dtype, config.device))

    w = {name: inputs.native(name) for name in inputs.weights}
    with torch.no_grad():
        if config.packed:
            weight, bias = layouts.to_packed_in_proj(
                w["wq"], w["wk"], w["wv"], w["bq"], w["bk"], w["bv"]
            )
            put(module.in_proj_weight, weight)
        else:
            parts = [layouts.to_linear(w[f"w{n}"], w[f"b{n}"]) for n in "qkv"]
            for param, (weight, _) in zip(
                (module.q_proj_weight, module.k_proj_weight, module.v_proj_weight),
                parts,
                strict=True,
            ):
                put(param, weight)
            bias = np.concatenate([b for _, b in parts])
        put(module.out_proj.weight, layouts.to_linear_out(w["wo"]))
        if config.bias:
            put(module.in_proj_bias, bias)
            put(module.out_proj.bias, w["bo"])
        if config.add_bias_kv:
            # bias_k [G, K] -> torch's [1, 1, E]: head h owns features h*K..h*K+K-1.
            put(module.bias_k, w["bias_k"].reshape(1, 1, -1))
            put(module.bias_v, w["bias_v"].reshape(1, 1, -1))


def _parameters(module: Any, config: _Config) -> dict[str, Any]:
    """The module's parameters a gradient case differentiates, by torch name."""
    params = {"out_proj.weight": module.out_proj.weight}
    if config.packed:
        params["in_proj_weight"] = module.in_proj_weight
    else:
        for name in ("q_proj_weight", "k_proj_weight", "v_proj_weight"):
            params[name] = getattr(module, name)
    if config.bias:
        params["in_proj_bias"] = module.in_proj_bias
        params["out_proj.bias"] = module.out_proj.bias
    if config.add_bias_kv:
        params["bias_k"], params["bias_v"] = module.bias_k, module.bias_v
    return params


def _canonical_gradients(found: dict[str, Any], config: _Config) -> dict[str, np.ndarray]:
    """Gradients by torch name -> canonical names and layouts (the inverse of _set_weights)."""
    g = {name: to_numpy(value) for name, value in found.items()}
    h = config.num_heads
    out = {f"grad_{name}": g[name] for name in ("query", "key", "value") if name in g}
    bias = g.get("in_proj_bias")
    if config.packed:
        pairs = layouts.from_packed_in_proj(g["in_proj_weight"], bias, h)
    else:
        biases = [None] * 3 if bias is None else np.split(bias, 3)
        weights = (g[f"{n}_proj_weight"] for n in "qkv")
        pairs = tuple(layouts.from_linear(w, b, h) for w, b in zip(weights, biases, strict=True))
    for n, (w, b) in zip("qkv", pairs, strict=True):
        out[f"grad_w{n}"] = w
        if b is not None:
            out[f"grad_b{n}"] = b
    out["grad_wo"] = layouts.from_linear_out(g["out_proj.weight"], h)
    if config.bias:
        out["grad_bo"] = g["out_proj.bias"]
    if config.add_bias_kv:  # torch's [1, 1, E] -> canonical [G, K] (G = H here)
        out["grad_bias_k"] = g["bias_k"].reshape(h, -1)
        out["grad_bias_v"] = g["bias_v"].reshape(h, -1)
    return out


def _fold(masks: np.ndarray, num_heads: int) -> np.ndarray:
    """[B, 1|H, T, S] -> torch's 2-D [T, S] when shared by all, else 3-D [B * H, T, S]."""
    if (masks == masks[:1, :1]).all():
        return masks[0, 0]
    b, _, t, s = masks.shape
    return np.broadcast_to(masks, (b, num_heads, t, s)).reshape(b * num_heads, t, s)


def mha_masks(case: Case, device: str) -> dict[str, Any]:
    """attn_mask, key_padding_mask and is_causal keyword arguments in torch MHA's convention."""
    kwargs: dict[str, Any] = {}
    m = case.mask
    padding = m.key_padding
    # padding_side (issue 14) stays with whichever part still has padding: left padding puts
    # the valid keys at the end of key_padding_mask's row, as a left-padded batch's mask has.
    rest_side = m.padding_side if m.query_padding is not None else "right"
    rest_mask = dataclasses.replace(m, key_padding=None, padding_side=rest_side)
    rest = dataclasses.replace(case, mask=rest_mask)
    attend, bias = build_mask(rest)
    float_masks = bias is not None
    if padding is not None:
        padding_only = Mask(key_padding=padding, padding_side=m.padding_side)
        only_padding = dataclasses.replace(case, mask=padding_only)
        keep = build_mask(only_padding)[0][:, 0, 0, :]  # [B, S] True = attend
        if float_masks:  # torch deprecates mixing bool and float masks: match attn_mask
            kwargs["key_padding_mask"] = to_torch(to_additive(keep), case.dtype, device)
        else:
            kwargs["key_padding_mask"] = to_torch(to_true_masked(keep), "bool", device)
    if float_masks:
        additive = combined_additive(attend, bias, np.float64)
        kwargs["attn_mask"] = to_torch(_fold(additive, case.shape.num_heads), case.dtype, device)
    elif attend is not None:
        masked = _fold(to_true_masked(attend), case.shape.num_heads)
        kwargs["attn_mask"] = to_torch(masked, "bool", device)
    s = case.shape
    if only_causal(rest.mask) and (rest.mask.causal == "top-left" or s.query_len == s.kv_len):
        kwargs["is_causal"] = True  # a true hint: attn_mask is exactly the top-left causal mask
    return kwargs


class TorchMhaAdapter(Adapter):
    """nn.MultiheadAttention's native fast path, need_weights=False."""

    fast = True
    need_weights = False

    declaration = Declaration(
        name="torch.mha.fast",
        summary=(
            "nn.MultiheadAttention native fast path (torch._native_multi_head_attention), "
            "eval + no_grad, batch_first=True, need_weights=False"
        ),
        framework="torch",
        features=COMMON_FEATURES,
        requires=REQUIRES,
        worker=WORKER,
        divergences=(FAST_MASKED_ROWS,),
        unsupported_reasons=FAST_UNSUPPORTED,
        # F.multi_head_attention_forward: dropout(softmax(...)) on the [B * H, T, S] weights
        # (need_weights=True; SDPA's dropout_p otherwise), one mask entry per weight; the
        # weights it returns are the dropped ones.
        dropout=DropoutBehavior(target="weights", shared=(), returned_weights="dropped"),
        notes=(
            "Self-attention on one tensor object, packed in_proj_weight, biases on, bool masks "
            "only, even head count: the conditions forward() checks before calling "
            "torch._native_multi_head_attention. The call is recorded to prove it ran. Inside "
            "that op, need_weights=False with no mask and head_dim % 8 == 0 goes through SDPA; "
            "any other case through masked_softmax."
        ),
    )

    def __init__(self) -> None:
        self._modules: dict[_Config, Any] = {}

    def setup(self) -> None:
        torch_setup()

    def devices(self) -> list[str]:
        return torch_devices()

    def versions(self) -> dict[str, str]:
        return torch_versions()

    def _config(self, case: Case, device: str) -> _Config:
        s = case.shape
        embed = s.num_heads * s.key_dim
        if s.query_dim != embed:
            raise Unsupported(
                f"the head dim is embed_dim / num_heads, so query_dim must be H*K = {embed} "
                f"(got {s.query_dim})"
            )
        if self.fast and s.num_heads % 2:
            raise Unsupported(
                f"the fast path needs an even head count (forward() checks num_heads % 2; "
                f"got {s.num_heads})"
            )
        return _Config(
            embed_dim=embed,
            num_heads=s.num_heads,
            kdim=s.key_input_dim,
            vdim=s.value_input_dim,
            bias=case.use_bias,
            add_bias_kv=case.add_bias_kv,
            add_zero_attn=case.add_zero_attn,
            batch_first=self.fast,
            dtype=case.dtype,
            device=device,
        )

    def _module(self, config: _Config) -> Any:
        """Built once per config (the runner sends cases sorted by shape); weights per case."""
        module = self._modules.get(config)
        if module is None:
            import torch

            module = torch.nn.MultiheadAttention(
                config.embed_dim,
                config.num_heads,
                bias=config.bias,
                add_bias_kv=config.add_bias_kv,
                add_zero_attn=config.add_zero_attn,
                kdim=config.kdim,
                vdim=config.vdim,
                batch_first=config.batch_first,
                device=config.device,
                dtype=torch_dtype(config.dtype),
            )
            module.eval()  # the fast path needs eval; run() switches to train() for dropout
            module.requires_grad_(False)
            self._modules[config] = module
        return module

    def run(self, case: Case, inputs: CaseInputs, device: str) -> dict[str, np.ndarray]:
        import torch

        config = self._config(case, device)
        module = self._module(config)
        _set_weights(module, config, inputs)
        # Dropout: the rate always goes to the module (an attribute forward() reads); only a
        # training-mode case switches it to train(), seeded per draw by conformance.dropout.
        dropout = case.dropout
        training = dropout is not None and dropout.training
        module.dropout = dropout.rate if dropout is not None else 0.0
        module.train(training)
        grad = case.gradients
        module.requires_grad_(grad)  # a cached module: reset per case

        query = to_torch(inputs.native("query"), case.dtype, device)
        if case.self_attention:
            key = value = query  # one tensor object: the fast path checks `query is key`
            leaves = {"query": query}  # its gradient is the total through q, k and v
        else:
            key = to_torch(inputs.native("key"), case.dtype, device)
            value = to_torch(inputs.native("value"), case.dtype, device)
            leaves = {"query": query, "key": key, "value": value}
        if grad:  # leaves in the canonical [B, T, D] layout, before any transpose
            for leaf in leaves.values():
                leaf.requires_grad_(True)
            leaves.update(_parameters(module, config))
            d_out = to_torch(inputs.native("grad_output"), case.dtype, device)
            if not config.batch_first:
                d_out = d_out.transpose(0, 1)
        if not config.batch_first:
            if case.self_attention:
                query = key = value = query.transpose(0, 1)
            else:
                query, key, value = (x.transpose(0, 1) for x in (query, key, value))
        masks = self._masks(case, device)

        # One call per requested form of the weights: average_attn_weights decides which.
        averages = [False] if "weights" in case.compare else []
        if "weights_mean" in case.compare:
            averages.append(True)
        results: dict[str, np.ndarray] = {}
        for average in averages or [True]:
            if training:
                torch.manual_seed(dropout.seed)  # the same mask for every call of this draw
            recorder = op_recorder()
            first = "output" not in results
            with torch.set_grad_enabled(grad), recorder:
                out, weights = module(
                    query,
                    key,
                    value,
                    need_weights=self.need_weights,
                    average_attn_weights=average,
                    **masks,
                )
                if grad and first:  # autograd through the module, once per case
                    found = torch.autograd.grad(out, tuple(leaves.values()), d_out)
                    by_name = dict(zip(leaves, found, strict=True))
                    results.update(_canonical_gradients(by_name, config))
            self._check_path(recorder.ops)
            if first:
                out = out if config.batch_first else out.transpose(0, 1)
                results["output"] = to_numpy(out)
            if self.need_weights:
                results["weights_mean" if average else "weights"] = to_numpy(weights)
        return results

    def _masks(self, case: Case, device: str) -> dict[str, Any]:
        """The mask keyword arguments (a hook: adapters.traps_torch passes them the trapped way)."""
        return mha_masks(case, device)

    def _check_path(self, ops: list[str]) -> None:
        """Prove the intended path ran; a silent fallback would make the variant a lie."""
        ran_fast = FAST_OP in ops
        if self.fast and not ran_fast:
            raise RuntimeError(
                "MultiheadAttention did not take its fast path (no "
                f"torch.{FAST_OP} call) although the case meets its documented conditions"
            )
        if not self.fast and ran_fast:
            raise RuntimeError(f"the slow-path variant ran torch.{FAST_OP}")
        if not self.fast and self.need_weights and "_softmax" not in ops:
            raise RuntimeError("need_weights=True did not run the explicit softmax path")
        if not self.fast and not self.need_weights:
            if not (ALL_FUSED.intersection(ops) or "_safe_softmax" in ops):
                raise RuntimeError("need_weights=False did not run scaled_dot_product_attention")


def _variant(
    name: str, fast: bool, need_weights: bool, summary: str, divergence: Divergence, notes: str
) -> type[TorchMhaAdapter]:
    features = COMMON_FEATURES | (frozenset() if fast else SLOW_ONLY)
    reasons = dict(FAST_UNSUPPORTED if fast else UNSUPPORTED)
    if need_weights:
        features |= WEIGHTS
        reasons.pop("weights")
        reasons.pop("weights-mean")
    declaration = dataclasses.replace(
        TorchMhaAdapter.declaration,
        name=name,
        summary=summary,
        features=features,
        divergences=(divergence,),
        unsupported_reasons=reasons,
        notes=notes,
    )
    class_name = "TorchMha" + "".join(p.capitalize() for p in name.split(".")[-1].split("-"))
    return type(
        class_name + "Adapter",
        (TorchMhaAdapter,),
        {"fast": fast, "need_weights": need_weights, "declaration": declaration,
         "__module__": __name__},
    )  # fmt: skip


_SLOW_NOTES = (
    "batch_first=False (sequence-first, torch's default), which keeps forward() off the fast "
    "path. Packed in_proj_weight when kdim == vdim == embed_dim, else q/k/v_proj_weight. "
    "Bool masks (True = masked) unless the case has additive or bias terms, then float masks "
    "(key_padding_mask too, to match). "
)

TorchMhaFastWeightsAdapter = _variant(
    "torch.mha.fast-weights",
    True,
    True,
    "nn.MultiheadAttention native fast path (torch._native_multi_head_attention), "
    "need_weights=True",
    dataclasses.replace(FAST_MASKED_ROWS),
    TorchMhaAdapter.declaration.notes
    + " need_weights=True: the op's explicit masked_softmax branch; average_attn_weights "
    "False gives per-head weights, True the head mean.",
)
TorchMhaSlowAdapter = _variant(
    "torch.mha.slow",
    False,
    False,
    "nn.MultiheadAttention slow path (F.multi_head_attention_forward), need_weights=False: "
    "F.scaled_dot_product_attention",
    SLOW_MASKED_ROWS,
    _SLOW_NOTES + "need_weights=False hands the heads to F.scaled_dot_product_attention (with "
    "is_causal and no attn_mask when the hint is set and there is no key_padding_mask).",
)
TorchMhaSlowWeightsAdapter = _variant(
    "torch.mha.slow-weights",
    False,
    True,
    "nn.MultiheadAttention slow path (F.multi_head_attention_forward), need_weights=True: "
    "baddbmm + softmax + bmm",
    SLOW_WEIGHTS_MASKED_ROWS,
    _SLOW_NOTES + "need_weights=True computes the weights explicitly (q scaled first, "
    "baddbmm with the mask, softmax); average_attn_weights False gives per-head weights, "
    "True the head mean.",
)

ADAPTERS = [
    TorchMhaAdapter,
    TorchMhaFastWeightsAdapter,
    TorchMhaSlowAdapter,
    TorchMhaSlowWeightsAdapter,
]
