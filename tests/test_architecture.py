"""Structure checks (issue 20): the import graph of conformance/ has no cycle, no conformance/
module imports a framework when it is imported, and docs/architecture.md names modules that
exist.

The graph is read from the source with `ast`, nothing is imported. An edge is every import a
module can execute: at module level or inside a function (a function-local import still ties
the two modules together, it only hides the cycle from the interpreter). Imports under
`if TYPE_CHECKING:` are not edges: they never run, and they are how a module names the type of
a module that depends on it (masks.py, inputs.py and score_terms.py annotate with case.Case,
while case.py imports them).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

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
    assert "conformance.masks" in graph["conformance.case"]  # module level
    assert "conformance.evaluate" in graph["conformance.worker"]  # inside a function
    assert "conformance.profile" in graph["conformance.evaluate"]  # from . import profile
    assert "conformance.case" not in graph["conformance.masks"]  # under TYPE_CHECKING only
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
    assert "conformance.masks.build_mask" in names
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
