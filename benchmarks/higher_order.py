"""False alarms of the higher-order checks on the shipped corpus: every gradient case of ``cases/`` (or the
paths given) run with ``order = 2`` (or ``--order 3``) in memory, CPU, float64 and float32. Every failing
``hvp``/``hvp_fwd``/``d3`` check is listed: a false alarm unless torch itself is off there (the README's known
torch deviations at higher order: binary_cross_entropy's eps, logaddexp/mish in float32, layer_norm's third
derivative); skips are counted with their reasons.

    python benchmarks/higher_order.py [--order 3] [--every N] [paths...]
"""

from __future__ import annotations

import argparse
import collections
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from diffcheck.casefile import Case
from diffcheck.model import HIGHER_KINDS, Options
from diffcheck.runner import load, run_case


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("paths", nargs="*", default=["cases"])
    parser.add_argument("--order", type=int, default=2, choices=(2, 3))
    parser.add_argument("--every", type=int, default=1, help="run every N-th case only (a sample)")
    parser.add_argument("-k", default=None, help="case name pattern, as diffcheck run -k")
    parser.add_argument("-v", action="store_true", help="print each false alarm's report")
    args = parser.parse_args()
    cases = [c for c in load(args.paths, args.k) if isinstance(c, Case)][::args.every]
    options = Options(devices=("cpu",), dtypes=("float64", "float32"))
    alarms, skips, ran, start = [], collections.Counter(), 0, time.monotonic()
    for case in cases:
        result = run_case(replace(case, order=args.order, dtypes=tuple(d for d in case.dtypes
                                                                           if d in ("float64", "float32"))),
                          options)
        higher = [c for c in result.checks if c.kind in HIGHER_KINDS]
        ran += any(c.status in ("pass", "warn") for c in higher)
        for c in higher:
            if c.status == "fail":
                alarms.append(f"{case.name}: {c.label}: {c.message} (margin {c.margin})")
                if args.v:
                    from diffcheck.report import check_lines

                    print("\n".join(check_lines(c, True)))
            elif c.status == "skip":
                skips[c.message.split(":")[0][:90]] += 1
    print(f"order {args.order}: {len(cases)} cases, {ran} with higher-order checks run, "
          f"{len(alarms)} failing checks, {time.monotonic() - start:.0f} s")
    for line in alarms:
        print("  FAIL", line)
    for why, n in skips.most_common():
        print(f"  skip x{n}: {why}")
    return 1 if alarms else 0


if __name__ == "__main__":
    sys.exit(main())
