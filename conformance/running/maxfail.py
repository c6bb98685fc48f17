"""`-x` / `--maxfail N` for `conformance run`, as in pytest: stop after N fail or error results.

The counter raises MaxFailReached from the result callback; the runner's cleanup stops the
workers, and the run keeps (and reports) every result it has.
"""

from __future__ import annotations

import argparse


class MaxFailReached(Exception):
    """N fail/error results were reached; the run stops early."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-x", "--exitfirst", action="store_const", const=1, dest="maxfail",
                   help="stop after the first fail or error result (--maxfail 1)")  # fmt: skip
    p.add_argument("--maxfail", type=int, metavar="N", default=None,
                   help="stop after N fail or error results")  # fmt: skip


class Counter:
    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self.bad = 0

    def see(self, record: dict) -> None:
        if record["verdict"] in ("fail", "error"):
            self.bad += 1
            if self.limit is not None and self.bad >= self.limit:
                raise MaxFailReached(f"stopped after {self.bad} fail/error result(s) (--maxfail)")
