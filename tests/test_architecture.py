"""Structure checks (issue 20): the import graph of conformance/ has no cycle, no conformance/
module imports a framework when it is imported, docs/architecture.md names modules that
exist, every stage subpackage ships in the wheel, and the import paths from before the stage
subpackages (conformance/_moved.py) still give the same modules.

The graph is read from the source with `ast`, nothing is imported. An edge is every import a
module can execute: at module level or inside a function (a function-local import still ties
the two modules together, it only hides the cycle from the interpreter). Imports under
`if TYPE_CHECKING:` are not edges: they never run, and they are how a module names the type of
a module that depends on it (cases/masks.py, cases/inputs.py and cases/score_terms.py annotate
with cases.case.Case, while cases/case.py imports them).
"""

from __future__ import annotations

import ast
import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

import conformance
from conformance._moved import MOVED

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "conformance"
FRAMEWORKS = (
    "torch",
    "jax",
    "tensorflow",
    "keras",
    "onnxruntime",
    "flax",
    "openvino",
    "transformers",
)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    return "TYPE_CHECKING" in ast.unparse(node.test)


def imports(path: Path) -> list[tuple[str, int, bool]]:
    """(absolute module imported, line, at module level) for every import that can run;
    `from x import y` yields x.y when that is a module of the package, else x."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    known = modules()
    found: list[tuple[str, int, bool]] = []

    def targets(node: ast.Import | ast.ImportFrom) -> list[str]:
        if isinstance(node, ast.Import):
            return [alias.name for alias in node.names]
        if node.level:
            base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
            module = ".".join(base + ([node.module] if node.module else []))
        else:
            module = node.module or ""
        return [
            f"{module}.{a.name}" if f"{module}.{a.name}" in known else module for a in node.names
        ]

    def walk(node: ast.AST, top: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for stmt in child.orelse:
                    walk_stmt(stmt, top)
                continue
            walk_stmt(child, top)

    def walk_stmt(node: ast.AST, top: bool) -> None:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.extend((t, node.lineno, top) for t in targets(node))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            top = False
        walk(node, top)

    walk(ast.parse(path.read_text(encoding="utf-8")), True)
    return found


def import_graph() -> dict[str, set[str]]:
    known = modules()
    return {
        name: {t for t, _, _ in imports(path) if t in known and t != name}
        for name, path in known.items()
    }


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_graph_sees_imports_of_every_kind() -> None:
    graph = import_graph()
    assert "conformance.cases.masks" in graph["conformance.cases.case"]  # module level
    # inside a function
    assert "conformance.verdicts.evaluate" in graph["conformance.running.worker"]
    # from ..running import profile
    assert "conformance.running.profile" in graph["conformance.verdicts.evaluate"]
    # under TYPE_CHECKING only
    assert "conformance.cases.case" not in graph["conformance.cases.masks"]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles() -> None:
    graph = import_graph()
    found = cycles(graph)
    explained = []
    for component in found:
        members = set(component)
        edges = [f"{a} -> {b}" for a in component for b in sorted(graph[a] & members)]
        explained.append(", ".join(edges))
    assert not found, "import cycles in conformance/:\n  " + "\n  ".join(explained)


def test_no_framework_imported_at_module_level() -> None:
    """Importing conformance (or any of its modules) must not load a framework: adapters and
    workers import theirs when they run, so a missing or broken framework costs only its
    adapters."""
    offenders = []
    for path in modules().values():
        for target, line, top in imports(path):
            if top and target.split(".")[0] in FRAMEWORKS:
                offenders.append(f"{path.relative_to(ROOT)}:{line} imports {target}")
    assert not offenders, "\n".join(offenders)


# --- docs/architecture.md names what exists -------------------------------------------------

ARCHITECTURE = ROOT / "docs" / "architecture.md"
_PATH = re.compile(r"\b((?:conformance|adapters|specs|docs|tests)/[\w./*-]*)")
_DOTTED = re.compile(r"\bconformance(?:\.\w+)+")


def _defined(path: Path, name: str) -> bool:
    """Whether `name` is a function, class or assignment at the top level of `path`."""
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            if node.name == name:
                return True
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == name for t in targets):
                return True
        elif isinstance(node, ast.ImportFrom):  # re-exports
            if any((a.asname or a.name) == name for a in node.names):
                return True
    return False


def _dotted_exists(dotted: str) -> bool:
    """conformance.a.b[.name]: a module of the package (conformance.adapters is adapters/),
    optionally followed by one name defined at its top level."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        rel = parts[1:cut]
        if rel[:1] == ["adapters"]:
            base = ROOT / "adapters" / Path(*rel[1:]) if rel[1:] else ROOT / "adapters"
        else:
            base = PACKAGE / Path(*rel) if rel else PACKAGE
        for module in (base.with_suffix(".py"), base / "__init__.py"):
            if module.is_file():
                rest = parts[cut:]
                return not rest or (len(rest) == 1 and _defined(module, rest[0]))
    return False


def test_architecture_doc_names_paths_that_exist() -> None:
    text = ARCHITECTURE.read_text(encoding="utf-8")
    paths = {m.rstrip(".,:;)") for m in _PATH.findall(text)}
    assert len(paths) > 30  # the page walks the pipeline through the files
    missing = [
        p for p in sorted(paths) if not (list(ROOT.glob(p)) if "*" in p else (ROOT / p).exists())
    ]
    assert not missing, f"docs/architecture.md names paths that do not exist: {missing}"


def test_architecture_doc_names_modules_and_names_that_exist() -> None:
    text = ARCHITECTURE.read_text(encoding="utf-8")
    names = set(_DOTTED.findall(text))
    assert "conformance.cases.masks.build_mask" in names
    missing = [n for n in sorted(names) if not _dotted_exists(n)]
    assert not missing, f"docs/architecture.md names modules or names that do not exist: {missing}"


def test_architecture_doc_names_every_module() -> None:
    """A new module of conformance/ gets a place on the map (or the map says where it fits)."""
    text = ARCHITECTURE.read_text(encoding="utf-8")
    unnamed = [
        str(path.relative_to(ROOT))
        for path in sorted(PACKAGE.rglob("*.py"))
        if str(path.relative_to(ROOT)) not in text and path.name != "__init__.py"
    ]
    assert not unnamed, f"modules docs/architecture.md does not place: {unnamed}"


# --- the stage subpackages ship, and the old import paths keep working ---------------------


def _pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def test_every_subpackage_is_in_the_wheel() -> None:
    """pyproject.toml lists packages by hand: a stage subpackage left out would be missing
    from the wheel (tests/test_packaging.py builds one) while every test here passes."""
    config = _pyproject()
    listed = set(config["tool"]["setuptools"]["packages"])
    tree = {module_name(p.parent) for p in PACKAGE.rglob("__init__.py")}
    assert tree - listed == set(), "add these to pyproject.toml's packages"
    assert "conformance.adapters" in listed  # adapters/, through package-dir


def test_entry_points_name_modules_that_exist() -> None:
    config = _pyproject()
    targets = list(config["project"]["scripts"].values())
    targets += list(config["project"]["entry-points"]["pytest11"].values())
    for target in targets:
        module, _, attr = target.partition(":")
        loaded = importlib.import_module(module)
        assert not attr or hasattr(loaded, attr), target


@pytest.mark.parametrize("old", sorted(MOVED))
def test_old_import_path_is_the_moved_module(old: str) -> None:
    """`conformance.masks` (docs/plugins.md, "Import paths") is conformance.cases.masks itself,
    whichever way it is reached."""
    new = importlib.import_module(f"conformance.{MOVED[old]}")
    assert importlib.import_module(f"conformance.{old}") is new
    assert getattr(conformance, old) is new  # conformance.masks after `import conformance`
    namespace: dict = {}
    exec(f"from conformance import {old} as m", namespace)
    assert namespace["m"] is new


def test_old_paths_are_free_and_new_ones_exist() -> None:
    """An old path reaches its alias only while nothing else sits at that name, and each alias
    names a module of the tree."""
    for old, new in MOVED.items():
        assert not (PACKAGE / f"{old}.py").exists(), old
        assert not (PACKAGE / old / "__init__.py").exists(), old
        assert f"conformance.{new}" in modules(), new


def test_public_names_users_import() -> None:
    """What docs/plugins.md, examples/ and the entry points import, by the paths from before
    the stage subpackages."""
    from conformance.adapter import Unsupported  # noqa: F401
    from conformance.case import Case as Case2
    from conformance.external import external_adapter  # noqa: F401
    from conformance.layouts import to_linear  # noqa: F401
    from conformance.masks import build_mask  # noqa: F401
    from conformance.plugin import kernel_adapter, layer_adapter, mask_for  # noqa: F401

    from conformance import Adapter, Case, CaseInputs, Declaration, Divergence  # noqa: F401
    from conformance.cli import main  # noqa: F401
    from conformance.spec import load_spec, load_specs, shipped_specs_dir  # noqa: F401

    assert Case2 is Case


def test_python_dash_m_conformance_cli_still_runs() -> None:
    """`python -m conformance.cli` (tests, CI scripts) runs the command: cli/ is a package with
    a __main__. Old paths are for imports; `-m` takes a module's new path."""
    out = subprocess.run(
        [sys.executable, "-m", "conformance.cli", "--version"], capture_output=True, text=True
    )
    assert out.returncode == 0 and "attention-conformance" in out.stdout


def _code_files() -> list[Path]:
    found = []
    for folder in ("conformance", "adapters", "tests", "benchmarks", "scripts", "examples"):
        found += sorted((ROOT / folder).rglob("*.py"))
    return [p for p in found if p != Path(__file__).resolve()]


def test_the_project_imports_the_new_paths() -> None:
    """The old paths are for users' code; the project's own code names where modules live, so
    the tree stays the map. (A merged branch written before the move fails here: rename its
    imports with the table in conformance/_moved.py.)"""
    old = {f"conformance.{name}" for name in MOVED}
    offenders = []
    for path in _code_files():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            named: list[str] = []
            if isinstance(node, ast.Import):
                named = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                module = node.module or ""
                if node.level:  # relative: from ..case import Case in conformance/fuzz/
                    package = module_name(path).split(".")
                    package = package[: len(package) - node.level + (path.name == "__init__.py")]
                    module = ".".join(package + ([module] if module else []))
                named = [module] + [f"{module}.{a.name}" for a in node.names]
            hits = [n for n in named if any(n == o or n.startswith(o + ".") for o in old)]
            if hits:
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} {hits[0]}")
    assert not offenders, "\n".join(offenders)
