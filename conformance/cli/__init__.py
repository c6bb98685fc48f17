"""The `conformance` command: the parser and its subcommands (`main`), `run`/`list`/`show`
(`commands`, which registers them; `selection`, `arguments`, `run`, `resume`, `run_messages`,
`list_show` hold them), `bench` (`bench`) and "did you mean" (`suggest`). Other subcommands live with
their stage: `conformance report` in report/, `fuzz` in fuzz/, `import` in peers/.

`conformance.cli` was one module before the stage subpackages; its names stay here.
"""

from .main import (
    EPILOG,
    OPTIONAL_EXTRAS,
    SUBCOMMAND_MODULES,
    build_parser,
    main,
    unknown_command,
)

__all__ = [
    "EPILOG",
    "OPTIONAL_EXTRAS",
    "SUBCOMMAND_MODULES",
    "build_parser",
    "main",
    "unknown_command",
]
