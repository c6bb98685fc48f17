"""Import paths from before the stage subpackages (issue 20) -> where each module lives now.

`conformance/__init__.py` keeps every old path importable as the same module object, so
plugins, entry points, saved reproducers and `--resume` of old results keep working
(docs/plugins.md, "Import paths"). New code imports the new paths; tests/test_architecture.py
checks both halves of this table.
"""

from __future__ import annotations

MOVED = {
    # spec language and loading
    "yamlload": "spec.yamlload",
    "limits": "spec.limits",
    "schema": "spec.schema",
    # the case model and its arrays
    "case": "cases.case",
    "score_terms": "cases.score_terms",
    "rotary": "cases.rotary",
    "kv_cache": "cases.kv_cache",
    "inputs": "cases.inputs",
    "masks": "cases.masks",
    "layouts": "cases.layouts",
    "seeding": "cases.seeding",
    "dtypes": "cases.dtypes",
    # the float64 oracle
    "reference": "oracle.reference",
    "backward": "oracle.backward",
    "dropout": "oracle.dropout",
    "stats": "oracle.stats",
    "reference_cache": "oracle.reference_cache",
    # the adapter API
    "adapter": "adapter_api.adapter",
    "plugin": "adapter_api.plugin",
    "registry": "adapter_api.registry",
    "external": "adapter_api.external",
    # verdicts
    "compare": "verdicts.compare",
    "tolerance": "verdicts.tolerance",
    "divergences": "verdicts.divergences",
    "evaluate": "verdicts.evaluate",
    # running
    "runner": "running.runner",
    "worker": "running.worker",
    "results": "running.results",
    "environment": "running.environment",
    "progress": "running.progress",
    "summary": "running.summary",
    "feature_table": "running.feature_table",
    "maxfail": "running.maxfail",
    "executed": "running.executed",
    "profile": "running.profile",
    "cache": "running.cache",
    "expected": "running.expected",
    "pytest_plugin": "running.pytest_plugin",
    # around the pipeline
    "commands": "cli.commands",
    "suggest": "cli.suggest",
    "bench": "cli.bench",
    "importers": "peers.importers",
    "reproducer": "report.reproducer",
    "strategies": "fuzz.strategies",
}
