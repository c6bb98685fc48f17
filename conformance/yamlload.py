"""Safe YAML loading that remembers where each value came from.

Specs are data, never code: only YAML's safe subset is accepted (`!!python/...` tags are
rejected), alias expansion is bounded (no "billion laughs"), and every mapping remembers the
line of each key so that errors can point at it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from .errors import SpecError

MAX_SPEC_BYTES = 2_000_000
MAX_ALIASES = 100


class LocatedDict(dict):
    """A dict that knows the 1-based source line of each key (and of itself)."""

    line: int | None = None
    key_lines: dict[str, int]

    def line_of(self, key: str) -> int | None:
        return self.key_lines.get(key, self.line)


class LocatedList(list):
    line: int | None = None


class _Loader(yaml.SafeLoader):
    """SafeLoader whose containers record line numbers and whose aliases are counted."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._alias_count = 0

    def compose_node(self, parent, index):  # noqa: ANN001 - PyYAML's signature
        if self.check_event(yaml.AliasEvent):
            self._alias_count += 1
            if self._alias_count > MAX_ALIASES:
                event = self.peek_event()
                raise SpecError(
                    f"more than {MAX_ALIASES} YAML aliases",
                    line=event.start_mark.line + 1,
                    hint="specs do not need anchors and aliases at this scale; "
                    "use a matrix: instead",
                )
        return super().compose_node(parent, index)


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> LocatedDict:
    loader.flatten_mapping(node)
    result = LocatedDict()
    result.line = node.start_mark.line + 1
    result.key_lines = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if not isinstance(key, (str, int, float, bool)) or key is None:
            raise SpecError(
                "mapping keys must be plain words", line=key_node.start_mark.line + 1
            )
        key = str(key)
        if key in result:
            raise SpecError(
                "duplicate key",
                line=key_node.start_mark.line + 1,
                key=key,
                hint="each key may appear once per mapping",
            )
        result[key] = loader.construct_object(value_node, deep=True)
        result.key_lines[key] = key_node.start_mark.line + 1
    return result


def _construct_sequence(loader: _Loader, node: yaml.SequenceNode) -> LocatedList:
    result = LocatedList(loader.construct_object(child, deep=True) for child in node.value)
    result.line = node.start_mark.line + 1
    return result


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_sequence)


def load_yaml_text(text: str, file: str) -> Any:
    """Parse YAML text into LocatedDict/LocatedList; raise SpecError with file and line."""
    if "\t" in text.split("\n", 1)[0] or any(
        line[: len(line) - len(line.lstrip())].count("\t") for line in text.splitlines()
    ):
        bad = next(
            i
            for i, line in enumerate(text.splitlines(), 1)
            if "\t" in line[: len(line) - len(line.lstrip())]
        )
        raise SpecError(
            "tab character in indentation",
            file=file,
            line=bad,
            hint="YAML indents with spaces only; replace the tabs with spaces",
        )
    loader = _Loader(text)
    try:
        return loader.get_single_data()
    except SpecError as error:
        raise error.located(file, None) from None
    except yaml.constructor.ConstructorError as error:
        mark = error.problem_mark
        raise SpecError(
            f"unsupported YAML tag: {error.problem}",
            file=file,
            line=mark.line + 1 if mark else None,
            hint="specs are plain data: tags such as !!python/object are never executed",
        ) from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise SpecError(
            f"not valid YAML: {problem}",
            file=file,
            line=mark.line + 1 if mark else None,
            hint="check indentation, colons and brackets near this line",
        ) from None
    finally:
        loader.dispose()


def load_yaml_file(path: Path) -> Any:
    """Read and parse one spec file, refusing oversized, binary and non-UTF-8 files."""
    name = str(path)
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise SpecError(f"cannot read file: {error.strerror}", file=name) from None
    if len(raw) > MAX_SPEC_BYTES:
        raise SpecError(
            f"file is {len(raw)} bytes; specs are limited to {MAX_SPEC_BYTES}",
            file=name,
            hint="split it into several spec files",
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        raise SpecError(
            f"not UTF-8 text (byte 0x{raw[error.start]:02x} at offset {error.start})",
            file=name,
            line=line,
            hint="save the spec as UTF-8",
        ) from None
    if "\x00" in text:
        raise SpecError("file contains NUL bytes: not a text file", file=name)
    return load_yaml_text(text, name)
