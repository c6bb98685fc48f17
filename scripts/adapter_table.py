"""Print README's adapter table from the adapters' declarations (the single source of truth).

python scripts/adapter_table.py
"""

from __future__ import annotations

from conformance.registry import all_entries

docs = {
    "torch.compile": "torch_compile",
    "hf": "transformers",
    "keras.ops": "keras_ops",
    "openvino": "openvino",
    "torch.onnx": "onnx",
    "torch": "torch",
    "jax": "jax",
    "flax": "jax",
    "keras": "keras",
    "tf_keras": "keras",
    "onnx": "onnx",
    "ort": "onnx",
}
rows = [
    "| adapter | what it calls | modes | declared divergences | notes |",
    "|---|---|---|---|---|",
]
for e in all_entries():
    d = e.declaration
    doc = next((v for k, v in docs.items() if e.name.startswith(k + ".") or e.name == k), None)
    name = f"[`{e.name}`](docs/adapters/{doc}.md)" if doc else f"`{e.name}`"
    modes = "/".join(m for m in ("layer", "kernel") if m in d.features)
    divs = ", ".join(sorted({v.id for v in d.divergences})) or "-"
    extra = []
    for tag in ("gradients", "decode", "grouped-query", "weights", "dropout"):
        if tag in d.features:
            extra.append(tag)
    summary = d.summary.replace("|", "\\|")
    rows.append(f"| {name} | {summary} | {modes} | {divs} | {', '.join(extra)} |")
print("\n".join(rows))
