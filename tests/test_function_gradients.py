"""Function adapters in gradient and training-dropout cases (kernel_adapter)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conformance.adapter_api.plugin import kernel_adapter, layer_adapter
from conformance.spec import load_spec
from conformance.verdicts.evaluate import ReferenceCache, evaluate

SPECS = Path(__file__).resolve().parent.parent / "specs"
# Score terms and rotary embeddings do not reach a kernel_adapter function (it gets q, k, v,
# the mask and the scale): those cases are an Adapter subclass's (the last test here).
TERMS_AND_ROPE = frozenset({"softcap", "alibi", "alibi-standard", "sink", "sink-zero",
                            "rope-half", "rope-interleaved", "rope-partial"})  # fmt: skip
KERNEL_GRADS = [
    c
    for c in load_spec(SPECS / "gradients.yaml")
    if c.mode == "kernel" and c.dtype in ("float64", "float32")
]
GRAD_CASES = [
    c for c in KERNEL_GRADS
    if "fully-masked-rows" not in c.features and not c.features & TERMS_AND_ROPE
]  # fmt: skip
DROPOUT = {c.id: c for c in load_spec(SPECS / "dropout.yaml")}


def _run_all(adapter, cases) -> dict[str, dict]:  # noqa: ANN001
    adapter.setup()
    cache = ReferenceCache()
    return {c.id: evaluate(adapter, c, "cpu", cache) for c in cases}


def _torch_attention(q, k, v, mask, scale):  # noqa: ANN001, ANN202
    import torch

    r = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(r, dim=1), v.repeat_interleave(r, dim=1)
    logits = torch.einsum("bhtk,bhsk->bhts", q, k) * scale
    if mask is not None:
        logits = logits + mask
    return torch.einsum("bhts,bhsv->bhtv", torch.softmax(logits, dim=-1), v)


def test_torch_autodiff_through_the_function() -> None:
    pytest.importorskip("torch")

    @kernel_adapter(name="test.torch-autodiff", arrays="torch", gradients="autodiff")
    def attn(q, k, v, mask, *, scale):  # noqa: ANN001, ANN202
        return _torch_attention(q, k, v, mask, scale)

    assert "gradients" in attn.declaration.features
    records = _run_all(attn(), GRAD_CASES)
    assert len(records) >= 20
    assert {r["verdict"] for r in records.values()} == {"pass"}, {
        k: r["message"] for k, r in records.items() if r["verdict"] != "pass"
    }
    assert all("grad_k" in r["compared"] for r in records.values())


def test_autodiff_with_bthk_layout_and_repeated_kv_heads() -> None:
    pytest.importorskip("torch")

    @kernel_adapter(
        name="test.torch-bthk", arrays="torch", gradients="autodiff", layout="BTHK",
        kv_heads="repeat",
    )  # fmt: skip
    def attn(q, k, v, mask, *, scale):  # noqa: ANN001, ANN202
        # [B,T,H,K] in and out; H = G here (the helper repeated the key/value heads)
        out = _torch_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), mask, scale)
        return out.transpose(1, 2)

    gqa = [c for c in GRAD_CASES if c.shape.num_kv_heads != c.shape.num_heads]
    assert gqa
    records = _run_all(attn(), gqa)
    assert {r["verdict"] for r in records.values()} == {"pass"}, records


def test_jax_autodiff_through_the_function() -> None:
    pytest.importorskip("jax")

    @kernel_adapter(name="test.jax-autodiff", arrays="jax", gradients="autodiff")
    def attn(q, k, v, mask, *, scale):  # noqa: ANN001, ANN202
        import jax
        import jax.numpy as jnp

        r = q.shape[1] // k.shape[1]
        k, v = jnp.repeat(k, r, axis=1), jnp.repeat(v, r, axis=1)
        logits = jnp.einsum("bhtk,bhsk->bhts", q, k) * scale
        if mask is not None:
            logits = logits + mask
        return jnp.einsum("bhts,bhsv->bhtv", jax.nn.softmax(logits, axis=-1), v)

    cases = [c for c in GRAD_CASES if c.dtype == "float32"][:4]
    records = _run_all(attn(), cases)
    assert {r["verdict"] for r in records.values()} == {"pass"}, records


def test_returned_gradients_and_a_wrong_one_fails() -> None:
    pytest.importorskip("torch")

    def make(wrong: bool):  # noqa: ANN202
        @kernel_adapter(name="test.returns-grads", arrays="torch")
        def attn(q, k, v, mask, *, scale, grad_output):  # noqa: ANN001, ANN202
            import torch

            leaves = [t.detach().requires_grad_(True) for t in (q, k, v)]
            with torch.enable_grad():
                out = _torch_attention(*leaves, mask, scale)
                if grad_output is None:
                    return out.detach()
                d_q, d_k, d_v = torch.autograd.grad(out, leaves, grad_output)
            if wrong:
                d_k = d_k * 1.01  # a planted bug in the key gradient
            return {"output": out.detach(), "grad_q": d_q, "grad_k": d_k, "grad_v": d_v}

        return attn()

    case = next(c for c in GRAD_CASES if c.id == "gradients/basic-kernel[float64]")
    assert evaluate(make(False), case, "cpu")["verdict"] == "pass"
    bad = evaluate(make(True), case, "cpu")
    assert bad["verdict"] == "fail" and "grad_k" in bad["message"]


def _numpy_dropout(rescale: bool):  # noqa: ANN202
    @kernel_adapter(name="test.numpy-dropout")
    def attn(q, k, v, mask, *, scale, dropout_p, training, seed):  # noqa: ANN001, ANN202
        r = q.shape[1] // k.shape[1]
        k, v = np.repeat(k, r, axis=1), np.repeat(v, r, axis=1)
        logits = np.einsum("bhtk,bhsk->bhts", q, k) * scale
        if mask is not None:
            logits = logits + mask
        w = np.exp(logits - logits.max(-1, keepdims=True))
        w /= w.sum(-1, keepdims=True)
        if training and dropout_p > 0:
            keep = np.random.default_rng(seed).random(w.shape) >= dropout_p
            w = w * keep / ((1 - dropout_p) if rescale else 1.0)
        return np.einsum("bhts,bhsv->bhtv", w, v)

    return attn()


def test_dropout_training_cases_with_a_numpy_function() -> None:
    good, bad = _numpy_dropout(rescale=True), _numpy_dropout(rescale=False)
    assert {"dropout", "dropout-training"} <= type(good).declaration.features
    for cid in ("dropout/training-kernel-p0.1[float32]", "dropout/inference-kernel[float64]"):
        record = evaluate(good, DROPOUT[cid], "cpu")
        assert record["verdict"] == "pass", (cid, record["message"])
    record = evaluate(bad, DROPOUT["dropout/training-kernel-p0.1[float32]"], "cpu")
    assert record["verdict"] == "fail", record["message"]


LAYER_GRAD_CASES = [
    c
    for c in load_spec(SPECS / "gradients.yaml")
    if c.mode == "layer" and c.dtype == "float64" and "fully-masked-rows" not in c.features
]


def _torch_linear_layer(query, key, value, params, mask, scale, case):  # noqa: ANN001, ANN202

    s = case.shape

    def project(x, p, n):  # noqa: ANN001, ANN202
        y = x @ params[f"{p}_weight"].T
        if params[f"{p}_bias"] is not None:
            y = y + params[f"{p}_bias"]
        return y.reshape(*x.shape[:2], n, -1).transpose(1, 2)  # [B,N,L,K]

    q = project(query, "q", s.num_heads)
    k = project(key, "k", s.num_kv_heads)
    v = project(value, "v", s.num_kv_heads)
    heads = _torch_attention(q, k, v, mask, scale)  # [B,H,T,V]
    y = heads.transpose(1, 2).reshape(*query.shape[:2], -1) @ params["out_weight"].T
    return y if params["out_bias"] is None else y + params["out_bias"]


def test_layer_autodiff_with_linear_weights() -> None:
    pytest.importorskip("torch")

    @layer_adapter(name="test.torch-layer", weights="linear", arrays="torch", gradients="autodiff")
    def layer(query, key, value, params, mask, *, scale, case):  # noqa: ANN001, ANN202
        return _torch_linear_layer(query, key, value, params, mask, scale, case)

    assert "gradients" in layer.declaration.features
    records = _run_all(layer(), LAYER_GRAD_CASES)
    ran = {k: r for k, r in records.items() if r["verdict"] != "unsupported"}
    assert len(ran) >= 3
    assert {r["verdict"] for r in ran.values()} == {"pass"}, {
        k: r["message"] for k, r in ran.items() if r["verdict"] != "pass"
    }
    assert any("grad_wq" in r["compared"] for r in ran.values())


def test_training_dropout_verifies_composed_divergences() -> None:
    from conformance import Divergence

    float32 = Divergence(id="computes-float32", reason="float32 inside",
                         dtypes=frozenset({"float64"}), compute_dtype="float32")  # fmt: skip
    noted = Divergence(id="dropout-noted", reason="a second applicable divergence",
                       when=frozenset({"dropout-training"}))  # fmt: skip

    @kernel_adapter(name="test.dropout-f32", divergences=[float32, noted])
    def attn(q, k, v, mask, *, scale, dropout_p, training, seed):  # noqa: ANN001, ANN202
        q, k, v = (np.asarray(a, np.float32) for a in (q, k, v))
        logits = np.einsum("bhtk,bhsk->bhts", q, k) * np.float32(scale)
        if mask is not None:
            logits = logits + np.asarray(mask, np.float32)
        w = np.exp(logits - logits.max(-1, keepdims=True))
        w /= w.sum(-1, keepdims=True)
        if training and dropout_p > 0:
            keep = np.random.default_rng(seed).random(w.shape) >= dropout_p
            w = w * keep / np.float32(1 - dropout_p)
        return np.einsum("bhts,bhsv->bhtv", w, v).astype(np.float64)

    record = evaluate(attn(), DROPOUT["dropout/training-kernel-causal[float64]"], "cpu")
    assert record["verdict"] == "diverges", record["message"]
    assert [d["id"] for d in record["divergences"]] == ["computes-float32", "dropout-noted"]
    assert "checked at float32 precision" in record["message"]


def test_torch_autograd_agrees_through_score_terms_and_rope() -> None:
    """The oracle's analytic backward through softcap, ALiBi, sinks and RoPE against torch's
    autograd of the forward pass written from the definitions (an Adapter subclass reads
    case.scores and case.rope): an independent check of the chain rule for each term."""
    torch = pytest.importorskip("torch")
    from conformance.adapter_api.adapter import Adapter, Declaration
    from conformance.cases.case import FEATURES
    from conformance.cases.masks import build_mask
    from conformance.cases.rotary import key_positions, query_positions, tables
    from conformance.cases.score_terms import without_alibi

    def rotate(x, positions, case):  # noqa: ANN001, ANN202
        cos, sin = (torch.from_numpy(a) for a in tables(case.rope, x.shape[-1], positions))
        d = 2 * cos.shape[-1]
        rot, rest = x[..., :d], x[..., d:]
        if case.rope.style == "half":
            x1, x2 = rot[..., : d // 2], rot[..., d // 2 :]
            y = torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
        else:
            x1, x2 = rot[..., 0::2], rot[..., 1::2]
            y = torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).flatten(-2)
        return torch.cat([y, rest], dim=-1)

    class TorchTerms(Adapter):
        declaration = Declaration(name="test.torch-terms", summary="test: torch autograd",
                                  framework="torch", features=frozenset(FEATURES))  # fmt: skip

        def run(self, case, inputs, device):  # noqa: ANN001, ANN202
            a = inputs.arrays
            q, k, v = (torch.tensor(a[n], dtype=torch.float64, requires_grad=True)
                       for n in ("q", "k", "v"))  # fmt: skip
            qr, kr = q, k
            if case.rope is not None:
                qr, kr = (
                    rotate(q, query_positions(case), case),
                    rotate(k, key_positions(case), case),
                )
            r = q.shape[1] // k.shape[1]
            kr, vr = kr.repeat_interleave(r, dim=1), v.repeat_interleave(r, dim=1)
            logits = torch.einsum("bhtk,bhsk->bhts", qr, kr) * case.effective_scale
            terms = without_alibi(case).scores
            if terms is not None and terms.softcap is not None:
                logits = terms.softcap * torch.tanh(logits / terms.softcap)
            attend, bias = build_mask(case)  # ALiBi is part of the bias
            if bias is not None:
                finite = np.isfinite(bias)
                logits = logits + torch.from_numpy(np.where(finite, bias, 0.0))
                attend = finite if attend is None else attend & finite
            if attend is not None:
                logits = logits.masked_fill(~torch.from_numpy(attend), float("-inf"))
            if terms is not None and terms.sink is not None:
                sink = torch.tensor(terms.sink, dtype=torch.float64)[None, :, None, None]
                sink = sink.expand(*logits.shape[:3], 1)
                probs = torch.softmax(torch.cat([logits, sink], dim=-1), dim=-1)[..., :-1]
            else:
                probs = torch.softmax(logits, dim=-1)
            out = torch.einsum("bhts,bhsv->bhtv", probs, vr)
            d_out = torch.from_numpy(a["grad_output"])
            grads = torch.autograd.grad(out, (q, k, v), d_out)
            result = {"output": out.detach().numpy()}
            result.update(
                zip(("grad_q", "grad_k", "grad_v"), (g.numpy() for g in grads), strict=True)
            )
            return result

    cases = [c for c in KERNEL_GRADS if c.features & TERMS_AND_ROPE]
    assert {"softcap", "sink", "alibi-standard", "rope-half", "rope-interleaved",
            "rope-partial"} <= set().union(*(c.features for c in cases))  # fmt: skip
    records = _run_all(TorchTerms(), cases)
    assert {r["verdict"] for r in records.values()} == {"pass"}, {
        k: r["message"] for k, r in records.items() if r["verdict"] != "pass"
    }
