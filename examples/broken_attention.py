"""A deliberately broken attention: the boolean mask's polarity is inverted.

The classic mix-up between torch nn.MultiheadAttention (True = masked out) and SDPA, JAX,
Keras, Flax and ONNX (True = attend): this function asks for True = attend masks and then
treats True as masked. Unmasked cases pass; every masked case fails. The feature table points
at the mask features, and the reproducer shows one failing case in a standalone script:

    conformance run specs --adapter examples.broken_attention:broken_attention
"""

import numpy as np

from conformance.adapter_api.plugin import kernel_adapter


@kernel_adapter(name="example.broken.mask-polarity", mask="attend", returns_weights=True)
def broken_attention(q, k, v, mask, *, scale):  # noqa: ANN001
    """NumPy attention with the mask polarity inverted (a bug planted on purpose)."""
    group = q.shape[1] // k.shape[1]
    k, v = np.repeat(k, group, axis=1), np.repeat(v, group, axis=1)
    logits = np.einsum("bhtk,bhsk->bhts", q, k) * scale
    if mask is not None:
        logits = np.where(mask, -np.inf, logits)  # BUG: True means "attend" in this form
    with np.errstate(invalid="ignore"):
        exps = np.exp(logits - logits.max(axis=-1, keepdims=True))
        weights = exps / exps.sum(axis=-1, keepdims=True)
    return np.einsum("bhts,bhsv->bhtv", weights, v), weights


ADAPTERS = [broken_attention]
