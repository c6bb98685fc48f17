"""Which docs page explains an adapter: docs/adapters/<framework>.md, by adapter name prefix.

Paths are relative to the project root (reports carry no machine paths); the longest matching
prefix wins, so torch.onnx.* goes to the ONNX page, not the torch one.
"""

from __future__ import annotations

PAGES = {
    "torch.compile": "docs/adapters/torch_compile.md",
    "hf": "docs/adapters/transformers.md",
    "keras.ops": "docs/adapters/keras_ops.md",
    "openvino": "docs/adapters/openvino.md",
    "torch.onnx": "docs/adapters/onnx.md",
    "torch": "docs/adapters/torch.md",
    "jax": "docs/adapters/jax.md",
    "flax": "docs/adapters/jax.md",
    "keras": "docs/adapters/keras.md",
    "tf_keras": "docs/adapters/keras.md",
    "onnx": "docs/adapters/onnx.md",
    "ort": "docs/adapters/onnx.md",
}


def docs_page(adapter: str) -> str | None:
    """The docs page (relative to the project root) that explains `adapter`, or None."""
    for prefix in sorted(PAGES, key=len, reverse=True):
        if adapter == prefix or adapter.startswith(prefix + "."):
            return PAGES[prefix]
    return None
