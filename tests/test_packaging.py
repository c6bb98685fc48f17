"""The five-minute path as a user takes it: build the wheel, install it (core, no extras) into a
fresh virtual environment, and run a plugin from an empty folder.

No network: the wheel is built without build isolation from a copy of the sources (a stale
build/ in the checkout cannot leak into it), and the core dependencies (numpy, pyyaml) reach
the fresh environment through a .pth file pointing at symlinks to this interpreter's copies of
exactly those two distributions, so anything else the package imported would be missing there.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CORE_DEPENDENCIES = ("numpy", "pyyaml")

# The five-minute plugin exactly as docs/plugins.md shows it (its first Python block), plus a
# broken twin (the scale forgotten) so the run also has failures and reproducers.
sys.path.insert(0, str(Path(__file__).resolve().parent))
from docs_blocks import code_blocks  # noqa: E402

FIVE_MINUTES = code_blocks(ROOT / "docs" / "plugins.md")[0][1]
PLUGIN = (
    FIVE_MINUTES
    + '''

@kernel_adapter(name="mylib.unscaled")
def unscaled(q, k, v, mask):
    """Forgets the 1/sqrt(K) scale: every case fails."""
    r = q.shape[1] // k.shape[1]
    k, v = np.repeat(k, r, axis=1), np.repeat(v, r, axis=1)
    logits = np.einsum("bhtk,bhsk->bhts", q, k)
    if mask is not None:
        logits = logits + mask
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    return np.einsum("bhts,bhsv->bhtv", weights, v)
'''
)


def _link_core_dependencies(target: Path) -> None:
    """Symlink the top-level entries of numpy and pyyaml (packages, .libs, dist-info)."""
    target.mkdir()
    for name in CORE_DEPENDENCIES:
        dist = importlib.metadata.distribution(name)
        tops = {Path(str(f)).parts[0] for f in dist.files or ()}
        for top in sorted(tops):
            source = Path(str(dist.locate_file(top)))
            if source.exists() and not (target / top).exists() and top != "..":
                (target / top).symlink_to(source)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """bin/ of a fresh venv with the built wheel installed (no extras)."""
    if importlib.util.find_spec("setuptools") is None:
        pytest.skip("building the wheel offline needs setuptools (the [test] extra has it)")
    base = tmp_path_factory.mktemp("packaging")
    src = base / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for name in ("conformance", "adapters", "specs"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    # checkout -> sdist -> wheel: the wheel is built from the sdist alone, so anything the
    # sdist leaves out (specs, their data, the schema) is missing from what gets tested.
    sdists = base / "sdist"
    subprocess.run(
        [sys.executable, "-c", "import sys; from setuptools import build_meta as b; "
         "b.build_sdist(sys.argv[1])", str(sdists)],
        cwd=src, check=True, timeout=300, capture_output=True,
    )  # fmt: skip
    (sdist,) = sdists.glob("*.tar.gz")
    wheels = base / "wheels"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels), str(sdist)],
        check=True,
        timeout=300,
    )
    (wheel,) = wheels.glob("*.whl")
    env_dir = base / "venv"
    venv.create(env_dir, with_pip=False)
    python = env_dir / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    _link_core_dependencies(base / "deps")
    Path(site, "core_deps.pth").write_text(str(base / "deps") + "\n")
    # Without --no-deps: pip must find numpy and pyyaml satisfied, proving they are all it needs.
    subprocess.run(
        [*pip, "--python", str(python), "install", "--no-index", "-q", str(wheel)],
        check=True,
        timeout=300,
    )
    return env_dir / "bin"


def _run(bin_dir: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "CONFORMANCE_"))}
    env["CONFORMANCE_CACHE_DIR"] = "off"
    return subprocess.run(
        [str(bin_dir / "conformance"), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_wheel_carries_specs_data_and_schema(installed: Path) -> None:
    probe = subprocess.run(
        [str(installed / "python"), "-c",
         "from conformance.spec import shipped_specs_dir as d; from conformance.spec.schema import "
         "SCHEMA_PATH as s; print(d()); print(sorted(p.name for p in d().rglob('*.*'))); "
         "print(s.is_file())"],
        capture_output=True, text=True, check=True, cwd="/",
    )  # fmt: skip
    where, names, schema = probe.stdout.splitlines()
    assert "site-packages" in where and where.endswith("conformance/specs")
    for name in ("basic.yaml", "masks.yaml", "keras_attention.npz", "onnx_attention.npz"):
        assert name in names
    assert schema == "True"


def test_core_install_has_no_optional_dependencies(installed: Path) -> None:
    probe = subprocess.run(
        [str(installed / "python"), "-c", "import conformance, hypothesis"],
        capture_output=True,
        text=True,
    )
    assert "No module named 'hypothesis'" in probe.stderr


def test_plugin_runs_shipped_specs_from_an_empty_folder(installed: Path, tmp_path: Path) -> None:
    (tmp_path / "myattn.py").write_text(PLUGIN)
    args = ("run", "-k", "basic/kernel and not bfloat16", "--jobs", "1", "-q", "--out", "out")
    good = _run(installed, tmp_path, *args, "--adapter", "myattn:my_attention")
    assert good.returncode == 0, good.stdout + good.stderr
    assert "Traceback" not in good.stdout + good.stderr
    assert "mylib.attention: features" in good.stdout
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    verdicts = {r["verdict"] for r in results["results"]}
    assert verdicts == {"pass"}, verdicts
    # Sources are stored relative (conformance/paths.py): no machine path in results.
    source = next(iter(results["cases"].values()))["source"]
    assert source.startswith("specs/basic.yaml:"), source

    # docs/plugins.md's second command names specs/masks.yaml: outside a checkout that is
    # the shipped file.
    masks = _run(installed, tmp_path, "run", "specs/masks.yaml", "-k", "causal-square and float64",
                 "--adapter", "myattn:my_attention", "--jobs", "1", "-q", "--out", "masks")  # fmt: skip
    assert masks.returncode == 0, masks.stdout + masks.stderr

    bad = _run(installed, tmp_path, *args, "--adapter", "myattn:unscaled", "--out", "bad")
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "Traceback" not in bad.stdout + bad.stderr
    assert "reproduce with: python" in bad.stdout
    assert list((tmp_path / "bad" / "reproducers").rglob("reproduce.py"))


def test_every_core_subcommand_runs_and_fuzz_names_its_extra(
    installed: Path, tmp_path: Path
) -> None:
    for args in (("list", "adapters"), ("list", "cases"), ("--help",)):
        done = _run(installed, tmp_path, *args)
        assert done.returncode == 0, (args, done.stderr)
        assert "Traceback" not in done.stderr
    show = _run(installed, tmp_path, "show", "basic/self[float32]")
    assert show.returncode in (0, 2) and "Traceback" not in show.stderr
    fuzz = _run(installed, tmp_path, "fuzz", "--adapter", "numpy.einsum")
    assert fuzz.returncode == 2
    assert "attention-conformance[fuzz]" in fuzz.stderr
    assert "Traceback" not in fuzz.stderr


def test_wheel_carries_the_known_findings(installed: Path) -> None:
    """Reports explain known fails from adapters/findings/*.json: a wheel install has them."""
    probe = subprocess.run(
        [str(installed / "python"), "-c",
         "from conformance.report.findings import FINDINGS_DIR as d, known_findings as k; "
         "print(d); print(len(k()))"],
        capture_output=True, text=True, check=True, cwd="/",
    )  # fmt: skip
    where, count = probe.stdout.splitlines()
    assert "site-packages" in where and where.endswith("conformance/adapters/findings")
    from conformance.report.findings import known_findings

    assert int(count) == len(known_findings()) >= 1  # the same findings as the checkout
