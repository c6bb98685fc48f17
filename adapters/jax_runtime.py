"""JAX plumbing shared by the adapters that run in a JAX worker (`jax.dpa.*`, `flax.*`, Keras
on JAX): the worker's environment, JAX's persistent compilation cache and the count of its
compilations, releasing compiled programs between cases, devices and versions, arrays to and
from JAX (held per case), and the canonical weights as Flax's parameter tree.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from conformance.adapter_api.adapter import Unsupported
from conformance.cases.case import Case
from conformance.cases.inputs import CaseInputs
from conformance.cases.layouts import from_einsum_kernel, to_einsum_kernel

# Set before a worker imports jax: x64 on (setup() repeats it), and no up-front grab of 75% of
# a GPU's memory, so several JAX workers (this runner starts more than one) share a GPU.
JAX_ENV = {"JAX_ENABLE_X64": "1", "XLA_PYTHON_CLIENT_PREALLOCATE": "false"}


def enable_compilation_cache(jax: Any) -> None:  # noqa: ANN401 - the jax module
    """JAX's persistent compilation cache in conformance's cache folder (conformance.cache).

    XLA compilation dominates these adapters' time (~0.25 s CPU per distinct signature on CPU,
    about 100 signatures per adapter on the shipped specs); later runs load the compiled
    programs (about 5x less CPU) and compute exactly the same thing.
    """
    from conformance.running.cache import cache_dir

    count_compilations(jax)
    folder = cache_dir("jax")
    if folder is None:
        return
    jax.config.update("jax_compilation_cache_dir", str(folder))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


_COMPILE_EVENTS = (
    "/jax/core/compile/jaxpr_trace_duration",
    "/jax/core/compile/jaxpr_to_mlir_module_duration",
    "/jax/core/compile/backend_compile_duration",
)
_listening = False
# Compiled programs held in this process since the last release_programs(); see there.
_programs = [0]
PROGRAMS_HELD = 256


def release_programs() -> None:
    """Drop JAX's in-memory compiled programs once PROGRAMS_HELD have been built since the
    last drop (jax.clear_caches: a later call of a dropped signature compiles again, or loads
    it from the persistent compilation cache; what it computes is unchanged).

    A worker runs shape-sorted cases, so a signature is seldom needed again once its shape has
    passed, but every program stays in memory: one JAX worker held 3.2 GiB at the end of the
    default run (benchmarks/memory.py). Called between cases, never while tracing.
    """
    if _programs[0] >= PROGRAMS_HELD:
        import jax

        jax.clear_caches()
        _programs[0] = 0


def count_compilations(jax: Any) -> None:  # noqa: ANN401 - the jax module
    """Report JAX's tracing, lowering and XLA compilation time to conformance.profile.

    JAX compiles inside the first call of each signature, so the harness cannot time it from
    outside; JAX's own monitoring events say how long each step took. One backend_compile event
    is one program (an XLA compilation, or a load from the persistent cache).
    """
    global _listening
    if _listening:
        return
    from conformance.running import profile

    def on_duration(name: str, seconds: float, **_: Any) -> None:  # noqa: ANN401
        if name in _COMPILE_EVENTS:
            count = 1 if name == "/jax/core/compile/backend_compile_duration" else 0
            profile.add("compile", seconds, count)
            _programs[0] += count

    def on_event(name: str, **_: Any) -> None:  # noqa: ANN401
        if name == "/jax/compilation_cache/cache_hits":
            profile.add("cache_hits", 0.0)

    try:
        from jax import monitoring

        monitoring.register_event_duration_secs_listener(on_duration)
        monitoring.register_event_listener(on_event)
    except (ImportError, AttributeError):  # an older JAX: no compile split, same results
        return
    _listening = True


def setup_jax() -> Any:
    """Import jax with x64 on. Must run before any JAX array exists in this process."""
    import jax

    jax.config.update("jax_enable_x64", True)
    enable_compilation_cache(jax)
    return jax


def jax_versions() -> dict[str, str]:
    import jax
    import jaxlib

    versions = {"jax": jax.__version__, "jaxlib": jaxlib.__version__}
    try:
        import flax

        versions["flax"] = flax.__version__
    except ImportError:  # jax.dpa needs no flax
        pass
    return versions


def jax_device_names(gpu_only: bool = False) -> list[str]:
    """'cpu' plus 'cuda:N' for every GPU JAX sees (platform 'gpu' covers CUDA here)."""
    import jax

    names = [] if gpu_only else ["cpu"]
    try:
        gpus = jax.devices("gpu")
    except RuntimeError:  # no GPU backend in this jaxlib
        gpus = []
    names += [f"cuda:{i}" for i in range(len(gpus))]
    return names


def jax_device(name: str) -> Any:
    import jax

    if name == "cpu":
        return jax.devices("cpu")[0]
    if name.startswith("cuda:"):
        return jax.devices("gpu")[int(name.split(":")[1])]
    raise Unsupported(f"unknown device {name!r}")


def jax_dtype(dtype: str) -> Any:
    import jax.numpy as jnp

    return {
        "float64": jnp.float64,
        "float32": jnp.float32,
        "float16": jnp.float16,
        "bfloat16": jnp.bfloat16,
        "bool": jnp.bool_,
    }[dtype]


def to_jax(x: np.ndarray, dtype: str, device: Any) -> Any:
    """A canonical array (storage form) as a JAX array of the case dtype on `device`.

    bfloat16 arrives as float32 holding exactly representable values, so the cast is lossless.
    """
    import jax

    return jax.device_put(np.asarray(x).astype(jax_dtype(dtype)), device)


class _HeldArrays:
    """Device copies of one CaseInputs' weights, reused while the runner stays on that object.

    The runner hands every adapter of a worker the same CaseInputs for a case (case-major
    order), and a training-mode dropout case the same one for each of its draws: the weights
    then cross to the device once, not once per adapter and draw. Keyed on the object itself
    (held, so its id cannot be reused), the dtype, the device and the layout. The harness
    never modifies a CaseInputs after make_inputs (fuzz's metamorphic runs derive copies).
    """

    def __init__(self, size: int = 4) -> None:
        self._entries: list[tuple[Any, tuple, dict[str, Any]]] = []
        self._size = size

    def get(self, inputs: CaseInputs, key: tuple, build: Any) -> dict[str, Any]:  # noqa: ANN401
        for held, held_key, arrays in self._entries:
            if held is inputs and held_key == key:
                return arrays
        arrays = build()
        self._entries = [(inputs, key, arrays), *self._entries[: self._size - 1]]
        return arrays


_HELD = _HeldArrays()

FLAX_PROJECTIONS = (("query", "q"), ("key", "k"), ("value", "v"))


def flax_params(case: Case, inputs: CaseInputs, device: Any) -> dict[str, dict[str, Any]]:  # noqa: ANN401
    """The canonical weights in Flax's parameter tree (nnx and linen name them alike):
    query/key/value {"kernel": [D, N, K] = to_einsum_kernel(w), "bias": [N, K]}, out
    {"kernel": [H, V, Do] (canonical wo), "bias": [Do]}; biases only with `use_bias`.
    """

    def build() -> dict[str, dict[str, Any]]:
        dt = case.dtype
        tree: dict[str, dict[str, Any]] = {}
        for proj, n in FLAX_PROJECTIONS:
            tree[proj] = {"kernel": to_jax(to_einsum_kernel(inputs.native(f"w{n}")), dt, device)}
            if case.use_bias:
                tree[proj]["bias"] = to_jax(inputs.native(f"b{n}"), dt, device)
        tree["out"] = {"kernel": to_jax(inputs.native("wo"), dt, device)}
        if case.use_bias:
            tree["out"]["bias"] = to_jax(inputs.native("bo"), dt, device)
        return tree

    return _HELD.get(inputs, ("flax", case.dtype, str(device), case.use_bias), build)


def flax_param_grads(grads: dict[str, dict[str, Any]]) -> dict[str, np.ndarray]:
    """Gradients in Flax's parameter tree -> canonical grad_w*/grad_b* (kernels [D, N, K] ->
    [N, D, K] with layouts.from_einsum_kernel; biases and the output kernel are canonical)."""
    out: dict[str, np.ndarray] = {}
    for proj, n in (*FLAX_PROJECTIONS, ("out", "o")):
        kernel = to_numpy(grads[proj]["kernel"])
        out[f"grad_w{n}"] = kernel if proj == "out" else from_einsum_kernel(kernel)
        if "bias" in grads[proj]:
            out[f"grad_b{n}"] = to_numpy(grads[proj]["bias"])
    return out


def to_numpy(x: Any) -> np.ndarray:
    """Back to NumPy; bfloat16 (not a NumPy floating type) widens losslessly to float32."""
    arr = np.asarray(x)
    if arr.dtype.name == "bfloat16":
        arr = arr.astype(np.float32)
    return arr


CPU_F16 = (
    "float16 under jax.jit on CPU: jax.nn.dot_product_attention asks for the F16_F16_F32 dot "
    "algorithm, which XLA:CPU refuses when the jitted function is compiled; its try/except "
    "fallback to the default precision only catches errors raised while tracing, so it works "
    "eagerly but not under jit (known: https://github.com/keras-team/keras-hub/pull/2354)"
)


def cpu_f16_refusal(error: ValueError) -> None:
    """Turn XLA:CPU's refusal of float16 dot algorithms into `unsupported` with the reason."""
    if "is not supported by dot_general on CPU" in str(error):
        raise Unsupported(f"{CPU_F16}; XLA said: {error}") from error


def strip_mask(case: Case, **fields: Any) -> Case:
    """The case with some mask components removed (they travel as framework flags instead).

    The random mask parts are keyed on the case's data key, which does not change, so the
    remaining components are exactly the ones the reference builds.
    """
    return dataclasses.replace(case, mask=dataclasses.replace(case.mask, **fields))
