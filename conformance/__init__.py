"""attention-conformance: does your multi-head attention compute what you think it computes?

The public API for writing adapters lives here; see docs/plugins.md. The package is laid out
as the pipeline (docs/architecture.md): spec/ -> cases/ -> oracle/ -> adapter_api/ and
running/ -> verdicts/ -> report/, with cli/, fuzz/ and peers/ around it.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
from types import ModuleType

from ._moved import MOVED
from .adapter_api.adapter import Adapter, Declaration, Divergence, ToleranceOverride, Unsupported
from .cases.case import Case
from .cases.inputs import CaseInputs

__version__ = "0.1.0"

__all__ = [
    "Adapter",
    "Case",
    "CaseInputs",
    "Declaration",
    "Divergence",
    "ToleranceOverride",
    "Unsupported",
    "__version__",
]


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """`import conformance.masks` (a path from before issue 20's layout) gives the module that
    now lives at `conformance.cases.masks`: the same object, so a monkeypatch, an isinstance
    check or a pickled class behaves as it did. Nothing is imported until a name is asked for.
    """

    def find_spec(self, fullname: str, path: object = None, target: object = None):  # noqa: ANN201
        old = fullname.partition(".")[2] if fullname.startswith(__name__ + ".") else None
        if old not in MOVED:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> None:
        return None  # a placeholder; exec_module swaps in the real module

    def exec_module(self, module: ModuleType) -> None:
        # The import system returns whatever sys.modules holds under the name once this runs.
        sys.modules[module.__name__] = _target(module.__name__)


def _target(fullname: str) -> ModuleType:
    return importlib.import_module(f"{__name__}.{MOVED[fullname.partition('.')[2]]}")


def __getattr__(name: str) -> ModuleType:
    """`conformance.masks` as an attribute (after `import conformance`), as before the move."""
    if name in MOVED:
        return _target(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# Ahead of the path finder: conformance/schema/ (the JSON Schema's folder) would otherwise be
# found as a namespace package for `conformance.schema`.
if not any(isinstance(finder, _MovedModules) for finder in sys.meta_path):
    sys.meta_path.insert(0, _MovedModules())
