"""NumPy <-> torch / JAX / TensorFlow arrays for function adapters (conformance.plugin).

Framework code lives under adapters/, never in the core: each framework is imported only when a
user's function asks for its arrays.
"""

from __future__ import annotations

import importlib
from typing import Any

import numpy as np

ARRAY_KINDS = ("numpy", "torch", "jax", "tensorflow")


def prepare_arrays(kind: str) -> None:
    """Import the framework a function adapter's arrays come from (in its worker's setup)."""
    if kind == "jax":
        import jax

        jax.config.update("jax_enable_x64", True)  # float64 cases must stay float64
    elif kind != "numpy":
        importlib.import_module(kind)


def to_framework(array: np.ndarray, dtype: str, kind: str, device: str = "cpu") -> Any:
    """A NumPy array in the case dtype's storage form -> the framework's array of that dtype.

    Boolean arrays stay boolean. bfloat16 (stored as float32 holding bfloat16 values) becomes
    the framework's bfloat16, losslessly.
    """
    is_bool = array.dtype == np.bool_
    if kind == "numpy":
        return array
    if kind == "torch":
        import torch

        tensor = torch.from_numpy(np.ascontiguousarray(array))
        if not is_bool:
            tensor = tensor.to(getattr(torch, dtype))
        return tensor.to(device)
    if kind == "jax":
        import jax
        import jax.numpy as jnp

        target = jnp.bool_ if is_bool else getattr(jnp, dtype)
        value = jnp.asarray(array, dtype=target)
        if device != "cpu":
            platform, _, index = device.partition(":")
            value = jax.device_put(value, jax.devices(platform)[int(index or 0)])
        return value
    if kind == "tensorflow":
        import tensorflow as tf

        target = tf.bool if is_bool else getattr(tf, dtype)
        with tf.device(_tf_device(device)):
            return tf.constant(array, dtype=target)
    raise ValueError(f"arrays must be one of {ARRAY_KINDS}, got {kind!r}")


def _tf_device(device: str) -> str:
    platform, _, index = device.partition(":")
    return f"/{'GPU' if platform == 'cuda' else platform.upper()}:{index or 0}"


def to_numpy(value: Any) -> np.ndarray:
    """Any framework's array -> NumPy, keeping its precision (bfloat16 widens to float32)."""
    if hasattr(value, "detach"):  # torch
        value = value.detach().cpu()
        if str(value.dtype) == "torch.bfloat16":
            value = value.float()
        return value.numpy()
    if hasattr(value, "numpy") and not isinstance(value, np.ndarray):  # tensorflow
        value = value.numpy()
    array = np.asarray(value)
    if array.dtype.name == "bfloat16":  # ml_dtypes (JAX, TensorFlow): not a NumPy floating type
        array = array.astype(np.float32)
    return array
