"""ONNX Runtime plumbing shared by the adapters that run an ONNX model in it.

`onnx.attention.*`, `ort.contrib.*`, `torch.onnx.*` and (for the model cache) the OpenVINO
ONNX adapters use these: device and dtype maps, building a model with a fixed IR version,
sessions cached by configuration, the check (from ORT's profiler) that the intended kernel ran
and not a silently inlined function body, ORT's kernel registry, and saving a model next to a
failing result.
"""

from __future__ import annotations

import functools
import json
import os
import re
import tempfile
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from conformance.adapter_api.adapter import Adapter, Unsupported
from conformance.cases.case import Case

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}
ORT_DTYPES = ("float32", "float16", "float64")  # bfloat16 cannot travel as a NumPy array
NUMPY_DTYPES = {"float32": np.float32, "float16": np.float16, "float64": np.float64}
IR_VERSION = 10  # what onnxruntime >= 1.20 reads; onnx.helper would stamp a newer one


def onnx_elem_type(dtype: str) -> int:
    from onnx import TensorProto

    return {
        "float32": TensorProto.FLOAT,
        "float16": TensorProto.FLOAT16,
        "float64": TensorProto.DOUBLE,
        "bool": TensorProto.BOOL,
        "int64": TensorProto.INT64,
        "int32": TensorProto.INT32,
    }[dtype]


def ort_devices() -> list[str]:
    """'cpu', plus 'cuda:0' where this onnxruntime build has the CUDA provider."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    devices = ["cpu"]
    if PROVIDERS["cuda"] in available:
        devices.append("cuda:0")
    return devices


def ort_versions() -> dict[str, str]:
    import onnx
    import onnxruntime as ort

    return {"onnx": onnx.__version__, "onnxruntime": ort.__version__}


def provider_for(device: str) -> tuple[str, dict]:
    kind, _, index = device.partition(":")
    if kind not in PROVIDERS:
        raise Unsupported(f"no ONNX Runtime execution provider for device '{device}'")
    options = {"device_id": int(index or 0)} if kind == "cuda" else {}
    return PROVIDERS[kind], options


def make_model(nodes: list, inputs: list, outputs: list, opsets: dict[str, int], **kw: Any):
    """A ModelProto with the IR version onnxruntime reads."""
    from onnx import helper

    graph = helper.make_graph(nodes, "conformance", inputs, outputs, **kw)
    imports = [helper.make_opsetid(domain, version) for domain, version in opsets.items()]
    model = helper.make_model(graph, opset_imports=imports, producer_name="attention-conformance")
    model.ir_version = IR_VERSION
    return model


PathCheck = Callable[[list[tuple[str, str]]], "str | None"]


class OrtSession:
    """An InferenceSession plus the model it came from and a one-time check of the path taken.

    The first run is profiled: `check` receives the (op type, provider) of every node that ran
    and returns None if that is the variant's intended path, or the reason it is not; then the
    session (and any later case on it) is refused with that reason.
    """

    _profile_dir: str | None = None

    def __init__(self, model, device: str, check: PathCheck | None) -> None:  # noqa: ANN001
        import onnxruntime as ort

        self.model = model
        self.device = device
        self._check = check
        self.refused: str | None = None
        options = ort.SessionOptions()
        # The machine's cores are shared by several workers: one thread each is fastest overall.
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.log_severity_level = 4
        # No CPU arena: a session serves every shape of its structure, and its arena would
        # keep the largest one's memory for as long as the session is cached (up to 48 per
        # adapter). Allocation strategy only: the kernels and their results are the same.
        options.enable_cpu_mem_arena = False
        if check is not None:
            if OrtSession._profile_dir is None:
                OrtSession._profile_dir = tempfile.mkdtemp(prefix="conformance-ort-")
            options.enable_profiling = True
            options.profile_file_prefix = os.path.join(OrtSession._profile_dir, "run")
        provider = provider_for(device)
        self.session = ort.InferenceSession(
            model.SerializeToString(), options, providers=[provider]
        )
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.refused:
            raise Unsupported(self.refused)
        values = self.session.run(None, feeds)
        if self._check is not None:
            ran = executed_nodes(self.session.end_profiling())
            self._check, problem = None, self._check(ran)
            if problem:
                self.refused = problem
                raise Unsupported(problem)
        return dict(zip(self.output_names, values, strict=False))


def executed_nodes(profile_file: str) -> list[tuple[str, str]]:
    """(op type, provider) of each node in an ORT profile; the file is removed."""
    try:
        with open(profile_file) as handle:
            events = json.load(handle)
    finally:
        os.remove(profile_file)
    seen = []
    for event in events:
        args = event.get("args") or {}
        if event.get("cat") == "Node" and "op_name" in args:
            item = (args["op_name"], args.get("provider", ""))
            if item not in seen:
                seen.append(item)
    return seen


def require_fused(op_type: str, provider: str) -> PathCheck:
    """A path check: `op_type` itself must have run on `provider`, not a decomposition."""

    def check(ran: list[tuple[str, str]]) -> str | None:
        if (op_type, provider) in ran:
            return None
        ops = sorted({f"{op}@{p.replace('ExecutionProvider', '')}" for op, p in ran})
        return (
            f"ONNX Runtime did not run its {op_type} kernel on {provider} here (it ran "
            f"{', '.join(ops)}): no kernel is registered for this opset/dtype/provider, so it "
            "fell back to another path, which this variant does not cover"
        )

    return check


# Messages with which ORT refuses a model at session creation (ORT_ENFORCE in a kernel's
# constructor): the implementation declining the case, not a crash.
KNOWN_REFUSALS = {
    "scale must be greater than 0": "ONNX Runtime's Attention kernel refuses scale <= 0 when "
    "the session is created ('scale must be greater than 0 if specified')",
}


def open_session(model, device: str, check: PathCheck | None) -> OrtSession:  # noqa: ANN001
    """OrtSession, with ORT's known refusals turned into Unsupported."""
    try:
        return OrtSession(model, device, check)
    except Exception as error:
        for needle, why in KNOWN_REFUSALS.items():
            if needle in str(error):
                raise Unsupported(why) from None
        raise


class SessionCache:
    """Sessions by configuration key (LRU): building one per case would dominate the run time."""

    def __init__(self, size: int = 48) -> None:
        self._items: OrderedDict[Any, OrtSession] = OrderedDict()
        self._size = size

    def get(self, key: Any, build: Callable[[], OrtSession]) -> OrtSession:
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key]
        session = build()
        self._items[key] = session
        if len(self._items) > self._size:
            self._items.popitem(last=False)
        return session


def safe_filename(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=,-]+", "_", text).strip("_")[:150]


def write_model(model, directory: str | Path, stem: str, feeds: dict | None = None) -> list[Path]:  # noqa: ANN001
    """Save a model (and the inputs of its first call, .npz) for the user to reproduce."""
    import onnx

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{safe_filename(stem)}.onnx"
    onnx.save(model, str(path))
    paths = [path]
    if feeds:
        npz = path.with_suffix(".inputs.npz")
        np.savez(npz, **feeds)
        paths.append(npz)
    return paths


_TYPE_NAMES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
}


@functools.lru_cache(maxsize=64)
def kernel_dtypes(
    op_type: str, domain: str, provider: str, opset: int, constraint: str
) -> frozenset[str]:
    """Dtypes ORT registers a kernel for (op, domain, provider, opset), from its kernel registry.

    The registry says what ORT will try; the profiler check on each session says what ran.
    """
    from onnxruntime.capi import onnxruntime_pybind11_state as C

    found: set[str] = set()
    for kdef in C.get_all_opkernel_def():
        if kdef.op_name != op_type or kdef.domain != domain or kdef.provider != provider:
            continue
        low, high = kdef.version_range
        if low <= opset <= high:
            for name in kdef.type_constraints.get(constraint, []):
                if name in _TYPE_NAMES:
                    found.add(_TYPE_NAMES[name])
    return frozenset(found)


def require_kernel(
    case: Case, op_type: str, domain: str, device: str, opset: int, constraint: str, hint: str = ""
) -> None:
    """Unsupported unless ORT registers `op_type` for the case dtype on the device's provider."""
    provider, _ = provider_for(device)
    have = kernel_dtypes(op_type, domain, provider, opset, constraint)
    if case.dtype not in have:
        name = f"{domain}.{op_type}" if domain else f"{op_type}-{opset}"
        raise Unsupported(
            f"ONNX Runtime {_ort_version()} registers {name} on {provider} for "
            f"{', '.join(sorted(have)) or 'no float type'} only, not {case.dtype}{hint}"
        )


def _ort_version() -> str:
    import onnxruntime as ort

    return ort.__version__


def require_dtype(case: Case, dtypes: tuple[str, ...], why: str) -> np.dtype:
    if case.dtype not in dtypes:
        raise Unsupported(f"{case.dtype}: {why}")
    return np.dtype(NUMPY_DTYPES[case.dtype])


class OrtAdapter(Adapter):
    """What every ONNX Runtime adapter shares: a quiet ORT, a session cache, devices, versions."""

    def setup(self) -> None:
        import onnxruntime as ort

        ort.set_default_logger_severity(3)
        self._sessions = SessionCache()

    def devices(self) -> list[str]:
        return ort_devices()

    def versions(self) -> dict[str, str]:
        return ort_versions()
