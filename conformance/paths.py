"""Paths as results store them: relative, so results from two machines diff cleanly.

A path under the working directory is stored relative to it; one under the tool's own specs/
directory as `specs/<file>` (the shipped specs, named the same on every machine); anything
else (a spec outside both) is kept as given, since no relative form would point at it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

# CI artifact uploaders (actions/upload-artifact among them) refuse `:` and a few other
# characters in file names; adapter keys like "external:cmd" must not reach a file name as is.
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def display_path(path: str | os.PathLike[str], cwd: str | os.PathLike[str] | None = None) -> str:
    """`path` relative to `cwd` (default: the working directory) or to the shipped specs."""
    text = str(path)
    try:
        absolute = Path(text).resolve()
    except (OSError, RuntimeError):
        return text
    base = Path(cwd or os.getcwd()).resolve()
    if absolute.is_relative_to(base):
        return absolute.relative_to(base).as_posix() or "."
    shipped = shipped_specs_dir()
    if absolute.is_relative_to(shipped):
        return (Path("specs") / absolute.relative_to(shipped)).as_posix()
    return text


def shipped_specs_dir() -> Path:
    """The shipped specs: conformance/specs inside an installed wheel (pyproject maps the
    top-level specs/ there), else specs/ of the source checkout this package runs from
    (editable installs, `python -m` from a checkout). Independent of the working directory."""
    here = Path(__file__).resolve().parent
    installed = here / "specs"
    if installed.is_dir():
        return installed
    return here.parent / "specs"


def stored_ref_path(ref: str) -> str:
    """A stored-array reference "file.npz#member" in the form results keep: the file through
    `display_path`, so the shipped peer-suite data reads `specs/data/...` on every machine."""
    file, sep, member = ref.partition("#")
    return f"{display_path(file)}{sep}{member}"


def resolve_stored_file(file: str) -> str:
    """The file a stored reference names: as given when it exists (absolute, or relative to
    the working directory), else a `specs/...` name read from the shipped specs (a results
    file written on another machine or in another folder)."""
    if os.path.exists(file) or Path(file).is_absolute():
        return file
    parts = Path(file).parts
    if parts and parts[0] == "specs":
        shipped = shipped_specs_dir().joinpath(*parts[1:])
        if shipped.exists():
            return str(shipped)
    return file


def portable_case_dict(case_dict: dict) -> dict:
    """A case as results store it: stored-array references without this machine's paths."""
    out = dict(case_dict)
    if out.get("inputs"):
        out["inputs"] = stored_ref_path(out["inputs"])
    if out.get("expected"):
        out["expected"] = {k: stored_ref_path(v) for k, v in out["expected"].items()}
    return out


def safe_file_name(name: str) -> str:
    """`name` with every run of characters outside [A-Za-z0-9._-] replaced by one `_`."""
    return _UNSAFE.sub("_", name).strip("_") or "_"


def code_path(path: str) -> str:
    """A source file named in a message: relative to the working directory, or from its
    `site-packages/` (or `dist-packages/`) folder on, else as given."""
    for marker in ("/site-packages/", "/dist-packages/"):
        if marker in path:
            return marker.strip("/") + "/" + path.split(marker, 1)[1]
    # The tool's own code (an editable install or a checkout): conformance/... or adapters/...
    try:
        absolute = Path(path).resolve()
    except (OSError, RuntimeError):
        return path
    for package in _own_packages():
        if absolute.is_relative_to(package):
            return (Path(package.name) / absolute.relative_to(package)).as_posix()
    return display_path(path)


def _own_packages() -> list[Path]:
    """The folders of conformance and conformance.adapters (adapters/ in a checkout)."""
    import importlib.util

    folders = [Path(__file__).resolve().parent]
    spec = importlib.util.find_spec("conformance.adapters")
    if spec is not None and spec.submodule_search_locations:
        folders += [Path(p).resolve() for p in spec.submodule_search_locations]
    return folders
