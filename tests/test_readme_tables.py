"""README's behaviour table is generated from the committed scoreboard, never hand-edited."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _script():  # noqa: ANN202
    spec = importlib.util.spec_from_file_location(
        "adapter_table", ROOT / "scripts" / "adapter_table.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_behaviour_table_is_the_generated_one() -> None:
    script = _script()
    readme = (ROOT / "README.md").read_text()
    block = script.behaviour_block()
    assert block in readme, "run: python scripts/adapter_table.py --write"
    # What the table must let a reader see at a glance, from the data itself.
    assert "| NaN |" in block and "| zeros |" in block and "uniform weights" in block
    assert "`torch.sdpa`" in block and "`torch.mha.fast`" in block


def test_readme_adapter_table_is_the_generated_one() -> None:
    table = _script().adapter_table()
    assert table in (ROOT / "README.md").read_text(), "run: python scripts/adapter_table.py --write"
