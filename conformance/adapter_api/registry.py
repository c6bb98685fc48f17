"""Where adapters come from: built-in modules, entry points, or `module:Class` on the command line.

Every adapter module exposes `ADAPTERS`, a list of Adapter subclasses. Listing adapters
imports the modules (cheap: frameworks are imported in `setup()`, inside workers) and reads
their declarations. Plugin code runs only when the user names it or installs it as an entry
point in the group below.
"""

from __future__ import annotations

import importlib
import os
import sys
import traceback
from dataclasses import dataclass
from importlib.metadata import entry_points
from types import ModuleType

from ..errors import UsageError, did_you_mean
from ..sanitize import strip_control
from .adapter import Adapter, Declaration

ENTRY_POINT_GROUP = "attention_conformance.adapters"

# One module per framework implementation, under conformance.adapters (the repo's adapters/).
BUILTIN_MODULES = (
    "reference",
    "numpy_einsum",
    "torch_mha",
    "torch_sdpa",
    "torch_flex",  # issue 14
    "torch_paged",  # issue 14: paged key/value caches
    "jax_dpa",
    "flax_nnx",
    "flax_linen",
    "keras_mha",
    "keras_gqa",
    "tf_keras_mha",
    "onnx_attention",
    "ort_contrib",
    "torch_onnx",
    "torch_compile",
    "torch_compile_mha",  # issue 15: torch.compile of nn.MultiheadAttention
    "hf_attention",
    "hf_layer",  # issue 14: the Llama layer with its rotary embedding
    "hf_cache",  # issue 15: the Llama layer decoding through its cache classes
    "keras_ops_dpa",
    "openvino_sdpa",
    "openvino_paged",  # issue 14: PagedAttentionExtension
    "openvino_onnx",
    "openvino_torch_onnx",  # issue 15: an exported MultiheadAttention graph
    # Trap adapters: the real calls, made the way users get them wrong (docs/adapters/traps.md).
    "traps_torch",
    "traps_keras",
    "traps_jax",
    "traps_onnx",
    "traps_hf",  # issue 14: a rotary convention ported without its permutation
)


@dataclass(frozen=True)
class AdapterEntry:
    name: str
    target: str  # "module:Class", importable inside a worker process
    declaration: Declaration
    source: str  # "builtin", "entry-point" or "command line"


def _import_plugin(module_name: str) -> ModuleType:
    """Import a plugin module; whatever goes wrong in its code is one clear UsageError."""
    try:
        return importlib.import_module(module_name)
    except ImportError as error:
        raise UsageError(f"cannot import adapter module '{module_name}': {error}") from None
    except (Exception, SystemExit) as error:  # noqa: BLE001 - a plugin's bug, not ours
        last = traceback.extract_tb(error.__traceback__)[-1:]
        where = f" (at {last[0].filename}:{last[0].lineno})" if last else ""
        if isinstance(error, SyntaxError) and error.filename:
            where = f" (at {error.filename}:{error.lineno})"
        raise UsageError(
            f"adapter module '{module_name}' failed to import: {type(error).__name__}: "
            f"{strip_control(error, newlines=False)[:300]}{where}"
        ) from None


def _entries_from_module(module_name: str, source: str) -> list[AdapterEntry]:
    module = _import_plugin(module_name)
    adapters = getattr(module, "ADAPTERS", None)
    if adapters is None:
        raise UsageError(f"module '{module_name}' has no ADAPTERS list")
    return [
        AdapterEntry(
            cls.declaration.name, f"{module_name}:{cls.__qualname__}", cls.declaration, source
        )
        for cls in adapters
    ]


def builtin_entries() -> list[AdapterEntry]:
    entries: list[AdapterEntry] = []
    for short in BUILTIN_MODULES:
        name = f"conformance.adapters.{short}"
        if importlib.util.find_spec(name) is None:
            continue  # not written yet, or stripped from this install
        entries.extend(_entries_from_module(name, "builtin"))
    return entries


def plugin_entries() -> list[AdapterEntry]:
    entries: list[AdapterEntry] = []
    for point in entry_points(group=ENTRY_POINT_GROUP):
        module_name = point.value.split(":")[0]
        entries.extend(_entries_from_module(module_name, "entry-point"))
    return entries


def load_target(target: str) -> type[Adapter]:
    """Import "module:Class" and return the class (or an adapter built from a function)."""
    module_name, _, attr = target.partition(":")
    # A user's module in the current folder must import, as with `python -m`; spawned
    # workers inherit sys.path.
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    module = _import_plugin(module_name)
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise UsageError(f"module '{module_name}' has no attribute '{attr}'")
        obj = getattr(obj, part)
    declaration = getattr(obj, "declaration", None)
    if not isinstance(declaration, Declaration):
        raise UsageError(
            f"'{target}' is not an adapter: it needs a `declaration` (conformance.Declaration)",
        )
    return obj


def all_entries() -> list[AdapterEntry]:
    return builtin_entries() + plugin_entries()


def resolve(selectors: list[str] | None) -> list[AdapterEntry]:
    """Adapters named by --adapter values (exact names, prefixes like 'torch', or module:Class).
    Opt-in adapters (Declaration.opt_in) are chosen only by their exact name."""
    entries = all_entries()
    if not selectors:
        _refuse_duplicate_names(entries)
        return [e for e in entries if not e.declaration.opt_in]
    chosen: list[AdapterEntry] = []
    for selector in selectors:
        from . import external

        if external.is_external(selector):
            target = external.target_for(selector)
            cls = load_target(target)
            chosen.append(
                AdapterEntry(cls.declaration.name, target, cls.declaration, "command line")
            )
            continue
        if ":" in selector:
            cls = load_target(selector)
            chosen.append(
                AdapterEntry(cls.declaration.name, selector, cls.declaration, "command line")
            )
            continue
        # An exact name selects that adapter only (torch.sdpa is not torch.sdpa.flash); a
        # prefix selects the family when no adapter has exactly that name.
        matched = [e for e in entries if e.name == selector] or [
            e for e in entries if e.name.startswith(selector + ".") and not e.declaration.opt_in
        ]
        if not matched:
            hint = did_you_mean(selector, [e.name for e in entries])
            raise UsageError(
                f"unknown adapter '{selector}'"
                + (f"; {hint}" if hint else "")
                + "\n  hint: `conformance list adapters` shows every name; "
                "a plugin is named as module:Class"
            )
        chosen.extend(e for e in matched if e not in chosen)
    _refuse_duplicate_names(chosen)
    return chosen


def _refuse_duplicate_names(entries: list[AdapterEntry]) -> None:
    """Two adapters with one name would mix their records (issue 18): name both sources."""
    first: dict[str, AdapterEntry] = {}
    for entry in entries:
        other = first.setdefault(entry.name, entry)
        if other is not entry and other.target != entry.target:
            raise UsageError(
                f"two adapters are named '{entry.name}': {other.target} ({other.source}) and "
                f"{entry.target} ({entry.source})\n  hint: give one of them another "
                "declaration name, or select only one"
            )
