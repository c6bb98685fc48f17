"""One case for an external implementation: its directory of request.json, case.txt and .npy
inputs (`write_request`), and the .npy outputs read back (`read_outputs`)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..cases.case import Case
from ..cases.inputs import CaseInputs
from .external_config import PROTOCOL, ExternalError


def write_request(
    case: Case,
    inputs: CaseInputs,
    directory: str | Path,
    mask_form: str = "additive",
    device: str = "cpu",
) -> dict:
    """Write a case's arrays, request.json and case.txt into `directory`; return the request."""
    from .mask_forms import mask_for

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    names = list(inputs.arrays) + list(inputs.weights)
    files = {}
    for name in names:
        np.save(directory / f"{name}.npy", np.ascontiguousarray(inputs.native(name)))
        files[name] = f"{name}.npy"
    mask = mask_for(case, mask_form, broadcast=True)
    if mask is not None:
        np.save(directory / "mask.npy", mask)
    shape = {k: v for k, v in vars(case.shape).items()}
    case_dict = case.to_dict()
    case_dict.pop("expected", None)  # stored peer-suite outputs are not the implementation's
    request = {
        "type": "case",
        "protocol": PROTOCOL,
        "id": case.id,
        "dir": str(directory.resolve()),
        "mode": case.mode,
        "dtype": case.dtype,
        "device": device,
        "scale": case.effective_scale,
        "shape": shape,
        "self_attention": case.self_attention,
        "use_bias": case.use_bias,
        "compare": list(case.compare),
        "features": sorted(case.features),
        "inputs": files,
        "mask": "mask.npy" if mask is not None else None,
        "mask_form": mask_form,
        # "output" always (the report shows its error), weights when the case compares them
        "outputs": {name: f"{name}.npy" for name in ("output", *case.compare)},
        "case": case_dict,
    }
    (directory / "request.json").write_text(json.dumps(request, indent=1, default=list))
    lines = [f"protocol {PROTOCOL}", f"mode {case.mode}", f"dtype {case.dtype}", f"device {device}"]
    lines += [f"{k} {shape[k]}" for k in (
        "batch", "query_len", "kv_len", "num_heads", "num_kv_heads", "key_dim", "value_dim",
        "query_dim", "key_input_dim", "value_input_dim", "output_dim",
    )]  # fmt: skip
    lines += [
        f"scale {case.effective_scale!r}",
        f"self_attention {int(case.self_attention)}",
        f"use_bias {int(case.use_bias)}",
        f"mask {mask_form if mask is not None else 'none'}",
        "inputs " + " ".join(names),
        "compare " + " ".join(case.compare),
        "outputs " + " ".join(dict.fromkeys(("output", *case.compare))),
    ]
    (directory / "case.txt").write_text("\n".join(lines) + "\n")
    return request


def read_outputs(directory: Path, names: dict[str, str]) -> dict[str, np.ndarray]:
    out = {}
    for name, file in names.items():
        path = (directory / file).resolve()
        if path.parent != directory.resolve():
            raise ExternalError(f"output '{name}' names a file outside the case directory: {file}")
        if path.exists():
            out[name] = np.load(path, allow_pickle=False)
    return out
