"""Deterministic inputs and canonical weights for a case.

Canonical weight layout (the multi-query paper's per-head projection tensors):
    wq [H, Dq, K]  bq [H, K]        query projection
    wk [G, Dk, K]  bk [G, K]        key projection (G = H multi-head, 1 multi-query)
    wv [G, Dv, V]  bv [G, V]        value projection
    wo [H, V, Do]  bo [Do]          output projection: Y = einsum("bhtv,hvd->btd", O, wo) + bo
    bias_k [G, K]  bias_v [G, V]    torch add_bias_kv's learned extra key/value position

Values are drawn in float64 and rounded to the case dtype *before* anyone sees them, so the
reference computes on exactly the numbers the implementation received.

A case with `inputs: file.npz#group` (imported peer suites) carries its own arrays instead:
members `group/q`, `group/k`, ... (float64 holding values exact in the case dtype), and
optionally `group/mask.attend` / `group/mask.bias` for its boolean / additive mask.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from .dtypes import round_to, to_storage
from .seeding import stream

if TYPE_CHECKING:  # annotations only: case -> masks -> inputs at run time
    from .case import Case

LAYER_WEIGHTS = ("wq", "bq", "wk", "bk", "wv", "bv", "wo", "bo")
STORED_MASKS = ("mask.attend", "mask.bias")  # members of a stored group that are masks


def split_ref(ref: str) -> tuple[str, str]:
    """Split "file.npz#member" into (file, member); a `specs/...` file (as results store it)
    is found in the shipped specs when the working directory has no such file."""
    from ..paths import resolve_stored_file

    path, _, member = ref.partition("#")
    return resolve_stored_file(path), member


# Stored arrays are small conformance data; a data file declaring more is refused before any
# decompression (issue 18: a zip bomb must not exhaust memory).
MAX_STORED_BYTES = 256 * 2**20


def _npz_headers(path: str) -> list[tuple[str, int, tuple, np.dtype]]:
    """(member, declared bytes, shape, dtype) of every array in an .npz, nothing inflated
    beyond the .npy headers; ValueError when it is not a zip of .npy arrays."""
    import zipfile

    out = []
    try:
        with zipfile.ZipFile(path) as archive:
            for member in archive.infolist():
                with archive.open(member) as handle:
                    version = np.lib.format.read_magic(handle)
                    read = (
                        np.lib.format.read_array_header_1_0
                        if version == (1, 0)
                        else np.lib.format.read_array_header_2_0
                    )
                    shape, _, dtype = read(handle, max_header_size=2**16)
                out.append((member.filename, member.file_size, shape, dtype))
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as error:
        raise ValueError(f"{path} is not a readable .npz file: {error}") from None
    return out


def check_npz_size(path: str) -> None:
    """Raise ValueError when the .npz at `path` is not a zip of .npy arrays or declares more
    than MAX_STORED_BYTES, by its zip directory and its array headers (nothing is inflated)."""
    headers = _npz_headers(path)
    declared = sum(size for _, size, _, _ in headers)
    if declared > MAX_STORED_BYTES:
        raise ValueError(
            f"{path} declares {declared} bytes of arrays; stored inputs are limited to "
            f"{MAX_STORED_BYTES}"
        )
    for name, member_size, shape, dtype in headers:
        size = int(np.prod(shape, dtype=object)) * dtype.itemsize
        if size > member_size:  # the header promises more than the member holds
            raise ValueError(
                f"{path}: array '{name}' declares shape {shape} of {dtype} ({size} bytes) in a "
                f"{member_size}-byte member: refused"
            )


@functools.lru_cache(maxsize=8)
def _npz(path: str) -> dict[str, np.ndarray]:
    # Read once per process: the runner sends many cases of one data file to each worker.
    check_npz_size(path)
    with np.load(path, allow_pickle=False) as data:
        return {name: data[name] for name in data.files}


def stored_array(ref: str) -> np.ndarray:
    """One stored array, "file.npz#member" (a stored expected output, for instance)."""
    path, member = split_ref(ref)
    arrays = _npz(path)
    if member not in arrays:
        raise KeyError(f"{path} has no array '{member}'")
    return arrays[member]


def stored_group(ref: str) -> dict[str, np.ndarray]:
    """The arrays of a stored group "file.npz#group", keyed by their name inside the group."""
    path, group = split_ref(ref)
    prefix = f"{group}/"
    return {k[len(prefix) :]: v for k, v in _npz(path).items() if k.startswith(prefix)}


@dataclass
class CaseInputs:
    """Arrays for one case, float64 (already rounded to the case dtype).

    Kernel mode: q [B, H, T, K], k [B, G, S, K], v [B, G, S, V].
    Layer mode: query [B, T, Dq] (or [B, *inner, Dq]), key [B, S, Dk], value [B, S, Dv] and
    the canonical weights. For self-attention, key and value are the query array itself.
    Gradient cases also hold grad_output, the upstream gradient (the output's shape).
    """

    dtype: str
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    weights: dict[str, np.ndarray] = field(default_factory=dict)

    def native(self, name: str) -> np.ndarray:
        """An input or weight in the case dtype's storage form (what adapters hand over)."""
        value = self.arrays[name] if name in self.arrays else self.weights[name]
        return to_storage(value, self.dtype)


def _normal(key: str, name: str, shape: tuple[int, ...], std: float, dtype: str) -> np.ndarray:
    return round_to(std * stream(key, name).standard_normal(shape), dtype)


def expected_shapes(case: Case) -> dict[str, tuple[int, ...]]:
    """The shape every input array and weight of a case must have."""
    s = case.shape
    h, g = s.num_heads, s.num_kv_heads
    if case.mode == "kernel":
        return {
            "q": (s.batch, h, s.query_len, s.key_dim),
            "k": (s.batch, g, s.kv_len, s.key_dim),
            "v": (s.batch, g, s.kv_len, s.value_dim),
        }
    kv = s.kv_shape or (s.kv_len,)
    shapes = {
        "query": (s.batch, *(s.query_shape or (s.query_len,)), s.query_dim),
        "key": (s.batch, *kv, s.key_input_dim),
        "value": (s.batch, *kv, s.value_input_dim),
        "wq": (h, s.query_dim, s.key_dim),
        "bq": (h, s.key_dim),
        "wk": (g, s.key_input_dim, s.key_dim),
        "bk": (g, s.key_dim),
        "wv": (g, s.value_input_dim, s.value_dim),
        "bv": (g, s.value_dim),
        "wo": (h, s.value_dim, s.output_dim),
        "bo": (s.output_dim,),
    }
    if case.add_bias_kv:
        shapes.update(bias_k=(g, s.key_dim), bias_v=(g, s.value_dim))
    return shapes


def _stored_inputs(case: Case) -> CaseInputs:
    """The case's own arrays, exactly as stored (checked for shape and dtype exactness)."""
    stored = stored_group(case.inputs)
    out = CaseInputs(dtype=case.dtype)
    for name, shape in expected_shapes(case).items():
        if case.self_attention and name in ("key", "value"):
            continue
        if name not in stored:
            if name.startswith("b") and not case.use_bias:
                out.weights[name] = np.zeros(shape)
                continue
            raise ValueError(f"{case.id}: {case.inputs} has no '{name}' array")
        value = np.array(stored[name], dtype=np.float64)
        if value.shape != shape:
            raise ValueError(f"{case.id}: stored '{name}' has shape {value.shape}, not {shape}")
        if not np.array_equal(round_to(value, case.dtype), value, equal_nan=True):
            raise ValueError(f"{case.id}: stored '{name}' is not exact in {case.dtype}")
        target = out.arrays if name in ("q", "k", "v", "query", "key", "value") else out.weights
        target[name] = value
    if case.mode == "layer" and case.self_attention:
        out.arrays["key"] = out.arrays["value"] = out.arrays["query"]
    return out


def make_inputs(case: Case) -> CaseInputs:
    s, key, dt = case.shape, case.data_key, case.dtype
    if case.inputs:
        out = _stored_inputs(case)
        shape = expected_shapes(case)["q" if case.mode == "kernel" else "query"]
        if case.mode == "kernel":
            output_shape = (*shape[:3], s.value_dim)
        else:
            output_shape = (*shape[:-1], s.output_dim)
        return _with_grad_output(case, out, output_shape)
    out = CaseInputs(dtype=dt)
    if case.mode == "kernel":
        out.arrays["q"] = _normal(key, "q", (s.batch, s.num_heads, s.query_len, s.key_dim), 1, dt)
        out.arrays["k"] = _normal(key, "k", (s.batch, s.num_kv_heads, s.kv_len, s.key_dim), 1, dt)
        out.arrays["v"] = _normal(key, "v", (s.batch, s.num_kv_heads, s.kv_len, s.value_dim), 1, dt)
        return _with_grad_output(case, out, (s.batch, s.num_heads, s.query_len, s.value_dim))

    query_shape = (s.batch, *(s.query_shape or (s.query_len,)), s.query_dim)
    out.arrays["query"] = _normal(key, "query", query_shape, 1, dt)
    if case.self_attention:
        out.arrays["key"] = out.arrays["value"] = out.arrays["query"]
    else:
        kv_shape = s.kv_shape or (s.kv_len,)
        out.arrays["key"] = _normal(key, "key", (s.batch, *kv_shape, s.key_input_dim), 1, dt)
        out.arrays["value"] = _normal(key, "value", (s.batch, *kv_shape, s.value_input_dim), 1, dt)
    h, g = s.num_heads, s.num_kv_heads
    shapes = {
        "wq": ((h, s.query_dim, s.key_dim), s.query_dim**-0.5),
        "wk": ((g, s.key_input_dim, s.key_dim), s.key_input_dim**-0.5),
        "wv": ((g, s.value_input_dim, s.value_dim), s.value_input_dim**-0.5),
        "wo": ((h, s.value_dim, s.output_dim), (h * s.value_dim) ** -0.5),
    }
    for name, (shape, std) in shapes.items():
        out.weights[name] = _normal(key, name, shape, std, dt)
    biases = {"bq": (h, s.key_dim), "bk": (g, s.key_dim), "bv": (g, s.value_dim)}
    biases["bo"] = (s.output_dim,)
    for name, shape in biases.items():
        if case.use_bias:
            out.weights[name] = _normal(key, name, shape, 0.1, dt)
        else:
            out.weights[name] = np.zeros(shape)
    if case.add_bias_kv:
        out.weights["bias_k"] = _normal(key, "bias_k", (g, s.key_dim), 1, dt)
        out.weights["bias_v"] = _normal(key, "bias_v", (g, s.value_dim), 1, dt)
    return _with_grad_output(case, out, (*query_shape[:-1], s.output_dim))


def _with_grad_output(case: Case, out: CaseInputs, output_shape: tuple[int, ...]) -> CaseInputs:
    """Gradient cases: the upstream gradient dL/dY, shaped like the output, in the case dtype.

    Its own stream, so adding `gradients: true` to a case leaves every other array unchanged.
    """
    if case.gradients:
        out.arrays["grad_output"] = _normal(
            case.data_key, "grad_output", output_shape, 1, case.dtype
        )
    return out
