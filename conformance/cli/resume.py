"""`conformance run --resume DIR`: which flags may change, and refusing edited cases."""

from __future__ import annotations

import argparse
import json

from ..cases.case import Case
from ..errors import UsageError
from .arguments import build_run_parser


def _case_digests(cases: list[Case]) -> dict[str, str]:
    """What each case is, compactly: a resumed run refuses to mix in records of edited cases."""
    import hashlib

    return {
        c.id: hashlib.sha256(
            json.dumps(c.to_dict(), sort_keys=True, default=str).encode()
        ).hexdigest()[:16]
        for c in cases
    }


def _check_resumable(saved: dict, cases: list[Case], previous: list[dict]) -> None:
    """Refuse to resume when a case that already has results was edited since (issue 18)."""
    stored = saved.get("cases")
    if not isinstance(stored, dict):
        return  # a run folder from before case digests were kept
    now = _case_digests(cases)
    done = {r["case"] for r in previous}
    changed = sorted(c for c in done if c in now and c in stored and stored[c] != now[c])
    if changed:
        shown = ", ".join(changed[:5]) + (
            f" and {len(changed) - 5} more" if len(changed) > 5 else ""
        )
        raise UsageError(
            f"--resume: {len(changed)} case definition(s) changed since the interrupted run "
            f"started ({shown}); their results would not match the specs any more\n"
            "  hint: start a fresh run (without --resume, or with another --out)"
        )


# With --resume, these flags given on the command line apply (they change how the run goes,
# not what its results mean); every other flag is refused rather than silently ignored.
RESUME_APPLIES = ("jobs", "quiet", "no_report", "no_cache")


def _apply_resume_flags(given: argparse.Namespace, saved: argparse.Namespace) -> None:
    defaults = build_run_parser().parse_args([])
    for dest, value in vars(given).items():
        if (
            dest.startswith("_")
            or dest in ("resume", "func", "command")
            or not hasattr(defaults, dest)
        ):
            continue
        if value == getattr(defaults, dest):
            continue
        if dest in RESUME_APPLIES:
            setattr(saved, dest, value)
            continue
        flag = {"specs": "SPEC_PATH", "keyword": "-k"}.get(dest, "--" + dest.replace("_", "-"))
        raise UsageError(
            f"--resume continues a run with its original options; {flag} cannot be changed "
            f"(only {', '.join('--' + d.replace('_', '-') for d in RESUME_APPLIES)} can)\n"
            "  hint: start a fresh run with the new options (another --out, or without --resume)"
        )
