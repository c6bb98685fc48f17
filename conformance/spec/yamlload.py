"""Safe YAML loading that remembers where each value came from.

Specs are data, never code: only YAML's plain data subset is accepted (mappings, sequences,
strings, integers, floats, booleans, null). Tags that construct anything else
(`!!python/...`, `!!binary`, `!!set`, `!!timestamp`, ...) are refused, dates stay strings,
alias expansion is bounded (no "billion laughs": neither the number of aliases nor the
expanded size may grow past a limit), nesting depth is bounded, and every mapping remembers
the line of each key so that errors can point at it.

Every failure is a SpecError naming the file and, where known, the line and key.
"""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import yaml

from ..errors import SpecError

MAX_SPEC_BYTES = 2_000_000
MAX_ALIASES = 100
MAX_NODES = 200_000  # scalars + containers after alias expansion
MAX_NUMBER_CHARS = 100  # longer integers are refused before Python converts them
MAX_DEPTH = 32  # containers inside containers; real specs need about 5

# Tags a spec may use (implicitly or explicitly); anything else is refused.
_DATA_TAGS = {
    "tag:yaml.org,2002:" + name for name in ("str", "int", "float", "bool", "null", "map", "seq")
}


class LocatedDict(dict):
    """A dict that knows the 1-based source line of each key (and of itself)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.line: int | None = None
        self.key_lines: dict[str, int | None] = {}

    def line_of(self, key: str) -> int | None:
        return self.key_lines.get(key) or self.line


class LocatedList(list):
    """A list that knows the 1-based source line where it starts."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.line: int | None = None


class _Resolver(yaml.resolver.Resolver):
    """YAML 1.1's implicit types minus timestamps: a date in a spec is just text."""


_Resolver.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.resolver.Resolver.yaml_implicit_resolvers.items()
}


class _Loader(
    yaml.reader.Reader,
    yaml.scanner.Scanner,
    yaml.parser.Parser,
    yaml.composer.Composer,
    yaml.constructor.SafeConstructor,
    _Resolver,
):
    """SafeLoader with the resolver above, counted aliases and located containers."""

    def __init__(self, stream: str) -> None:
        yaml.reader.Reader.__init__(self, stream)
        yaml.scanner.Scanner.__init__(self)
        yaml.parser.Parser.__init__(self)
        yaml.composer.Composer.__init__(self)
        yaml.constructor.SafeConstructor.__init__(self)
        _Resolver.__init__(self)
        self._alias_count = 0

    def compose_node(self, parent, index):  # noqa: ANN001, ANN201 - PyYAML's signature
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

    def construct_object(self, node, deep=False):  # noqa: ANN001, ANN201 - PyYAML's signature
        if node.tag not in _DATA_TAGS:
            raise SpecError(
                f"YAML tag {node.tag!r} is not allowed",
                line=node.start_mark.line + 1,
                hint="specs are plain data (text, numbers, true/false, lists, mappings); "
                "tags such as !!python/object are never executed",
            )
        if node.tag == "tag:yaml.org,2002:int" and len(node.value) > MAX_NUMBER_CHARS:
            raise SpecError(
                f"a number with {len(node.value)} characters is far too large",
                line=node.start_mark.line + 1,
                hint="sizes in a spec are small integers",
            )
        try:
            return super().construct_object(node, deep=deep)
        except (ValueError, TypeError, OverflowError) as error:
            if not isinstance(node, yaml.ScalarNode):
                raise
            # e.g. an integer with more digits than Python converts, a malformed !!float
            raise SpecError(
                f"a value cannot be read: {str(error).splitlines()[0][:120]}",
                line=node.start_mark.line + 1,
                hint="use plain numbers, text and true/false",
            ) from None


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> LocatedDict:
    loader.flatten_mapping(node)
    result = LocatedDict()
    result.line = node.start_mark.line + 1
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if isinstance(key, (list, dict)) or key is None:
            raise SpecError("mapping keys must be plain words", line=key_node.start_mark.line + 1)
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


def check_size(data: Any, file: str) -> None:
    """Refuse structures that are too deep or too large once aliases are expanded.

    Aliases share objects, so a "billion laughs" file is small in memory until something walks
    it; this walk counts each shared object by its expanded size (memoised, so it is linear in
    the file) before anything else does.
    """
    sizes: dict[int, int] = {}

    def size(value: Any, depth: int, line: int | None) -> int:
        if not isinstance(value, (list, dict)):
            return 1
        here = getattr(value, "line", None) or line
        if depth > MAX_DEPTH:
            raise SpecError(
                f"nested more than {MAX_DEPTH} levels deep",
                file=file,
                line=here,
                hint="a spec needs only a few levels: file > cases > case > shape/mask",
            )
        if id(value) in sizes:
            return sizes[id(value)]
        children = value.values() if isinstance(value, dict) else value
        total = 1
        for child in children:
            total += size(child, depth + 1, here)
            if total > MAX_NODES:
                raise SpecError(
                    f"expands to more than {MAX_NODES} values (through aliases?)",
                    file=file,
                    line=here,
                    hint="specs are small; use a matrix: instead of aliases",
                )
        sizes[id(value)] = total
        return total

    size(data, 0, None)


def _indent_tab_line(text: str) -> int | None:
    """The first line whose indentation holds a tab, or None."""
    for number, line in enumerate(text.splitlines(), 1):
        indent = line[: len(line) - len(line.lstrip(" \t"))]
        if "\t" in indent and line.strip():
            return number
    return None


def load_yaml_text(text: str, file: str) -> Any:
    """Parse YAML text into LocatedDict/LocatedList; raise SpecError with file and line."""
    bad = _indent_tab_line(text)
    if bad is not None:
        raise SpecError(
            "tab character in indentation",
            file=file,
            line=bad,
            hint="YAML indents with spaces only; replace the tabs with spaces",
        )
    loader = None
    try:
        loader = _Loader(text)  # the reader rejects control characters already here
        data = loader.get_single_data()
    except SpecError as error:
        raise error.located(file, None) from None
    except yaml.constructor.ConstructorError as error:
        mark = error.problem_mark or error.context_mark
        problem = error.problem or "cannot construct this value"
        hint = "specs are plain data: text, numbers, true/false, lists and mappings"
        if "recursive" in problem:
            problem, hint = "an alias refers to its own anchor (a loop)", "remove the loop"
        raise SpecError(
            f"not valid spec YAML: {problem}",
            file=file,
            line=mark.line + 1 if mark else None,
            hint=hint,
        ) from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        context = getattr(error, "context_mark", None)
        if context is not None and "end of stream" in problem:
            mark = context  # an unclosed quote or bracket: point where it opens
            problem += f" ({error.context})"
        line = mark.line + 1 if mark else None
        if isinstance(error, yaml.reader.ReaderError):
            line = text[: error.position].count("\n") + 1
        raise SpecError(
            f"not valid YAML: {problem}",
            file=file,
            line=line,
            hint="check indentation, colons, quotes and brackets near this line",
        ) from None
    except RecursionError:
        raise SpecError(
            "nested too deeply to parse",
            file=file,
            hint="a spec needs only a few levels: file > cases > case > shape/mask",
        ) from None
    except (ValueError, TypeError, OverflowError) as error:
        # e.g. an integer with more digits than Python converts, a malformed !!float
        raise SpecError(
            f"a value cannot be read: {str(error).splitlines()[0][:200]}",
            file=file,
            hint="use plain numbers, text and true/false",
        ) from None
    finally:
        if loader is not None:
            loader.dispose()
    check_size(data, file)
    return data


def load_yaml_file(path: Path) -> Any:
    """Read and parse one spec file, refusing oversized, binary and non-UTF-8 files."""
    name = str(path)
    try:
        # A FIFO would block and a device (/dev/zero) never ends: only regular files are read,
        # and never more than the cap (issue 18).
        mode = path.stat().st_mode
        if stat.S_ISDIR(mode):
            raise SpecError("cannot read file: it is a directory", file=name)
        if not stat.S_ISREG(mode):
            raise SpecError(
                "not a regular file (a device, FIFO or socket): refused, not read", file=name
            )
        with path.open("rb") as handle:
            raw = handle.read(MAX_SPEC_BYTES + 1)
    except OSError as error:
        raise SpecError(f"cannot read file: {error.strerror or error}", file=name) from None
    if len(raw) > MAX_SPEC_BYTES:
        raise SpecError(
            f"file is over {MAX_SPEC_BYTES} bytes; specs are limited to {MAX_SPEC_BYTES}",
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
        line = text[: text.index("\x00")].count("\n") + 1
        raise SpecError("file contains NUL bytes: not a text file", file=name, line=line)
    return load_yaml_text(text.removeprefix("\ufeff"), name)
