"""Skipped checks on random correct compositions, grouped by reason: where an engine is not judged, and why.

    python benchmarks/skips.py [N]

A skip is honest only where the function is singular, a mask may flip, or a dtype cannot represent the case; a
reason that recurs on smooth, finite points is an engine silently left out (a clamp with one bound, an exact zero
under a square, were found this way). Numbers, indices and quoted sub-expressions are folded so that one reason
is one line; each line shows an example expression and its dtype.
"""

from __future__ import annotations

import re
import sys
from collections import Counter

from hypothesis import HealthCheck, given, settings

from diffcheck.runner import Options, run_case
from diffcheck.strategies import cases, indexed_cases, structured_cases

N = int(sys.argv[1]) if len(sys.argv) > 1 else 500
DTYPES = ("float64", "float32", "float16", "bfloat16")
reasons: Counter = Counter()
examples: dict = {}


def folded(message: str) -> str:
    message = re.sub(r"'[^']*'", "'E'", message)
    message = re.sub(r"\[[-\d, ]*\]", "[I]", message)
    return re.sub(r"[-+]?\d[\d.e+-]*", "N", message)[:110]


@settings(max_examples=N, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(cases(dtypes=DTYPES) | structured_cases(dtypes=DTYPES) | indexed_cases(dtypes=DTYPES))
def sweep(case):
    for check in run_case(case, Options(devices=("cpu",))).checks:
        if check.status == "skip" and check.device != "cuda":
            key = (str(check.kind), folded(check.message))
            reasons[key] += 1
            examples.setdefault(key, (case.expr, check.dtype))


if __name__ == "__main__":
    sweep()
    print(f"{N} random cases, {sum(reasons.values())} skipped checks (CUDA aside):")
    for (kind, message), count in reasons.most_common():
        expr, dtype = examples[(kind, message)]
        print(f"{count:6d}  {kind:10s} {message}\n        e.g. [{dtype}] {expr[:140]}")
