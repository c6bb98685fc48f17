"""attention-conformance: does your multi-head attention compute what you think it computes?

The public API for writing adapters lives here; see docs/plugins.md.
"""

from .adapter import Adapter, Declaration, Divergence, ToleranceOverride, Unsupported
from .case import Case
from .inputs import CaseInputs

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
