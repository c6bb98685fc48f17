"""JAX workers drop their in-memory compiled programs every PROGRAMS_HELD compilations
(adapters/jax_runtime.release_programs), so a long run's memory does not grow with its signatures;
a dropped signature compiles again (or loads from the persistent cache) and gives the same
output."""

from __future__ import annotations

import pytest

jax = pytest.importorskip("jax")

from conformance.spec import load_spec, shipped_specs_dir  # noqa: E402
from conformance.verdicts.evaluate import ReferenceCache, evaluate  # noqa: E402


def test_programs_are_released_and_results_do_not_change(monkeypatch) -> None:  # noqa: ANN001
    from conformance.adapters import jax_dpa, jax_runtime

    before = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    try:
        adapter = jax_dpa.JaxDpaXla()
        adapter.setup()
        cases = [c for c in load_spec(shipped_specs_dir() / "basic.yaml") if c.mode == "kernel"]
        cache = ReferenceCache()
        first = {c.id: evaluate(adapter, c, "cpu", cache) for c in cases}

        monkeypatch.setattr(jax_runtime, "PROGRAMS_HELD", 1)
        jax_runtime._programs[0] = 1  # as if one program had been built since the last release
        cleared = []
        original = jax.clear_caches
        monkeypatch.setattr(jax, "clear_caches", lambda: (cleared.append(1), original())[1])
        again = {c.id: evaluate(adapter, c, "cpu", cache) for c in cases}
    finally:
        jax.config.update("jax_enable_x64", before)
    assert cleared, "no release happened"
    for case_id, record in first.items():
        assert record["verdict"] in ("pass", "diverges"), (case_id, record.get("message"))
        assert again[case_id]["verdict"] == record["verdict"], case_id
        assert again[case_id]["max_abs_error"] == record["max_abs_error"], case_id
