"""Time the float64 reference (and the same-dtype baseline) of every case of a tier.

    python benchmarks/reference_timing.py [--tier default] [--only-tier] [specs...]

Prints the slowest cases and the total; the issue's budget is 1 s per case at tier default.
Inputs are generated first and not counted (they are shared by every adapter anyway).
"""

from __future__ import annotations

import argparse
import time

from conformance.cases.case import in_tier
from conformance.spec import load_specs, shipped_specs_dir
from conformance.verdicts.evaluate import ReferenceCache


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("specs", nargs="*")
    parser.add_argument("--tier", default="default")
    parser.add_argument("--only-tier", action="store_true", help="skip the smaller tiers' cases")
    parser.add_argument("--top", type=int, default=10)
    args = parser.parse_args()
    cases = [c for c in load_specs(args.specs or [shipped_specs_dir()]) if in_tier(c, args.tier)]
    if args.only_tier:
        cases = [c for c in cases if c.tier == args.tier]
    timings = []
    for case in cases:
        cache = ReferenceCache()
        cache.inputs(case)
        start = time.perf_counter()
        policy = case.mask.fully_masked_rows
        cache.reference(case, policy)
        if case.dtype != "float64":
            cache.reference(case, policy, same_dtype=True)
        timings.append((time.perf_counter() - start, case.id))
    timings.sort(reverse=True)
    for seconds, case_id in timings[: args.top]:
        print(f"{seconds:8.3f} s  {case_id}")
    total = sum(s for s, _ in timings)
    print(f"{len(timings)} cases, total {total:.1f} s, max {timings[0][0]:.3f} s")


if __name__ == "__main__":
    main()
