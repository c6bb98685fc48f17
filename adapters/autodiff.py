"""Gradients through a user's function with its framework's autodiff (plugin helpers).

`kernel_adapter(..., gradients="autodiff")` with arrays="torch", "jax" or "tensorflow": the
helper differentiates the function's output with respect to q, k, v for the case's seeded
upstream gradient dY (a vector-Jacobian product), exactly as a training step would:

    torch       torch.autograd.grad(out, (q, k, v), grad_outputs=dY)
    jax         jax.vjp(fn, q, k, v)[1](dY)
    tensorflow  tf.GradientTape().gradient(out, [q, k, v], output_gradients=dY)

Frameworks are imported here only when a gradient case runs (never at module import).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

AUTODIFF_KINDS = ("torch", "jax", "tensorflow")


def output_of(result: Any) -> Any:
    """The attention output in a function's result: out, (out, weights) or {"output": out}."""
    if isinstance(result, Mapping):
        return result["output"]
    if isinstance(result, tuple):
        return result[0]
    return result


def vjp(
    kind: str, call: Callable[..., Any], primals: tuple[Any, ...], d_out: Any
) -> tuple[Any, tuple[Any, ...]]:
    """(call(*primals), d(out . dY)/d primals) with `kind`'s autodiff; unused inputs get zeros.

    primals: framework arrays, e.g. q [B,H,T,K], k [B,G,S,K], v [B,G,S,V]; d_out: dY, the
    output's shape and layout.
    """
    if kind == "torch":
        import torch

        leaves = tuple(p.detach().requires_grad_(True) for p in primals)
        with torch.enable_grad():
            result = call(*leaves)
            grads = torch.autograd.grad(
                output_of(result), leaves, grad_outputs=d_out, allow_unused=True
            )
        grads = tuple(
            torch.zeros_like(p) if g is None else g for p, g in zip(leaves, grads, strict=True)
        )
        return _detach_torch(result), grads
    if kind == "jax":
        import jax

        def primal(*args: Any) -> tuple[Any, Any]:
            result = call(*args)
            return output_of(result), result

        _, pullback, result = jax.vjp(primal, *primals, has_aux=True)
        return result, tuple(pullback(d_out))
    if kind == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape:
            tape.watch(list(primals))
            result = call(*primals)
            out = output_of(result)
        grads = tape.gradient(out, list(primals), output_gradients=d_out)
        grads = tuple(
            tf.zeros_like(p) if g is None else g for p, g in zip(primals, grads, strict=True)
        )
        return result, grads
    raise ValueError(
        f"gradients='autodiff' needs arrays= one of {AUTODIFF_KINDS} (got {kind!r}); with "
        "NumPy, accept `grad_output` and return the gradients (docs/plugins.md)"
    )


def _detach_torch(result: Any) -> Any:
    if isinstance(result, Mapping):
        return {k: (v.detach() if hasattr(v, "detach") else v) for k, v in result.items()}
    if isinstance(result, tuple):
        return tuple(v.detach() if hasattr(v, "detach") else v for v in result)
    return result.detach()
