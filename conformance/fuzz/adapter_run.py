"""Fuzzing one adapter: every applicable property, one report."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from ..adapter_api.adapter import Adapter
from ..cases.case import FEATURES
from ..errors import UsageError
from .context import Context
from .counterexample import describe, slug, write_failure
from .limits import DEFAULT_LIMITS, LIMITS_BY_TIER, Limits
from .properties import PROPERTIES
from .running import PropertyResult, run_property

# --- one adapter ---------------------------------------------------------------------------

DEFAULT_MAX_EXAMPLES = 50
DEFAULT_OUT = Path("reports/fuzz")


@dataclass
class FuzzReport:
    adapter: str
    device: str
    seed: int
    max_examples: int
    results: list[PropertyResult]

    @property
    def ok(self) -> bool:
        return all(r.status in ("ok", "no examples", "not applicable") for r in self.results)

    def to_dict(self) -> dict:
        return {
            "adapter": self.adapter,
            "device": self.device,
            "seed": self.seed,
            "max_examples": self.max_examples,
            "ok": self.ok,
            "properties": {
                r.prop: {
                    "status": r.status,
                    "examples": r.examples,
                    "outcomes": dict(r.outcomes),
                    "skipped": dict(r.skipped),
                    "shrink_runs": r.shrink_runs,
                    "reason": r.reason,
                    "message": r.failure.message if r.failure else None,
                    "cases": [c.id for c in r.failure.cases] if r.failure else [],
                    "files": [str(f) for f in r.files],
                    "seconds": round(r.seconds, 3),
                    "warnings": r.warnings,
                }
                for r in self.results
            },
        }

    def write(self, path: Path) -> Path:
        """summary.json: per property its status and counts (CI artifacts, tests)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path


def fuzz_adapter(
    adapter: Adapter,
    *,
    target: str,
    max_examples: int = DEFAULT_MAX_EXAMPLES,
    seed: int = 0,
    out_dir: Path | str = DEFAULT_OUT,
    properties: Iterable[str] | None = None,
    device: str | None = None,
    limits: Limits = DEFAULT_LIMITS,
    log: Callable[[str], None] = print,
    selector: str | None = None,
    forbid: Iterable[str] = (),
) -> FuzzReport:
    """Fuzz an adapter instance whose setup() already ran. Writes counterexamples to out_dir.

    target: "module:Class" (for reproducers); selector: what --adapter needs to find it again
    (its registered name, or the target for an unregistered adapter); forbid: feature tags
    never to generate (to fuzz around a known bug; the adapter's declaration is unchanged).
    """
    names = list(properties or PROPERTIES)
    unknown = [n for n in names if n not in PROPERTIES]
    if unknown:
        raise UsageError(f"unknown property {unknown[0]!r}; choose from {', '.join(PROPERTIES)}")
    decl = adapter.declaration
    if device is None:
        available = list(adapter.devices())
        if not available:
            raise UsageError(f"{decl.name} has no device on this machine")
        device = available[0]
    ctx = Context(adapter, device)
    forbid = frozenset(forbid)
    unknown = sorted(forbid - set(FEATURES))
    if unknown:
        raise UsageError(f"--forbid: unknown feature tag {unknown[0]!r}")
    log(f"fuzz {decl.name} on {device} (seed {seed}, up to {max_examples} examples per property)")
    if forbid:
        log(f"  not generating: {', '.join(sorted(forbid))}")
    results = []
    for name in names:
        result = run_property(PROPERTIES[name], ctx, max_examples=max_examples, seed=seed,
                              limits=limits, prefix=f"{slug(decl.name)}-{name}",
                              forbid=forbid)  # fmt: skip
        log(f"  {name:<19} {result.line()}")
        if result.failure is not None:
            rerun = (f"conformance fuzz --adapter {_quote(selector or target)}"
                     f" --property {name} --seed {seed} --max-examples {max_examples}")  # fmt: skip
            tier = next((t for t, lim in LIMITS_BY_TIER.items() if lim == limits), "small")
            rerun += "" if tier == "small" else f" --tier {tier}"  # the sizes the seed drew
            result.files = write_failure(result.failure, adapter=adapter, target=target,
                                         device=device, out_dir=Path(out_dir), seed=seed,
                                         rerun=rerun)  # fmt: skip
            message = result.failure.message
            if len(message) > 600:  # gradient cases list every input; failure.json has it all
                message = message[:600] + " ... (full message in failure.json)"
            log(f"      {message}")
            for case in result.failure.cases:
                log(f"      case {case.id}: {describe(case)}")
            for path in result.files:
                log(f"      wrote {path}")
            log(f"      rerun: {rerun}")
        results.append(result)
    seen_warnings = sorted({w for r in results for w in r.warnings})
    for text in seen_warnings:
        log(f"  warning from the implementation: {text[:300]}")
    report = FuzzReport(decl.name, device, seed, max_examples, results)
    report.write(Path(out_dir) / slug(decl.name) / "summary.json")
    total = sum(r.examples for r in results)
    failed = [r.prop for r in results if r.status in ("counterexample", "error")]
    if failed:
        log(f"{decl.name}: counterexample or error in {', '.join(failed)} ({total} examples)")
    else:
        log(f"{decl.name}: no counterexample ({total} examples)")
    return report


def _quote(text: str) -> str:
    return text if all(ch.isalnum() or ch in "._-:/" for ch in text) else repr(text)
