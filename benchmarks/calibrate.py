"""False-alarm calibration: random correct compositions in every dtype; prints the worst margins seen.

    python benchmarks/calibrate.py [N]

A margin is observed error / allowed error; a correct function must stay below 1 everywhere. The largest
margins show how much headroom the derived tolerances leave (and which ops use it up).
"""

from __future__ import annotations

import sys
import time
from collections import Counter

from hypothesis import HealthCheck, given, settings

from diffcheck.expr.ir import Call, walk
from diffcheck.runner import Options, run_case
from diffcheck.strategies import cases, indexed_cases, structured_cases

N = int(sys.argv[1]) if len(sys.argv) > 1 else 300
DTYPES = ("float64", "float32", "float16", "bfloat16")
worst: list = []
statuses: Counter = Counter()
ops_seen: Counter = Counter()  # how often each op appears in the swept cases: which ops the sweep exercised


@settings(max_examples=N, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(cases(dtypes=DTYPES) | structured_cases(dtypes=DTYPES) | indexed_cases(dtypes=DTYPES))
def sweep(case):
    result = run_case(case, Options(devices=("cpu",)))
    statuses[result.status] += 1
    ops_seen.update({n.op for n in walk(case.ir) if isinstance(n, Call)})
    for c in result.checks:
        if c.status in ("pass", "warn", "fail"):
            worst.append((c.margin, c.status, c.label + " " + c.message[:60], case.expr, result.seed))


if __name__ == "__main__":
    start = time.perf_counter()
    try:
        sweep()
    except Exception as exc:  # a failure is what we are looking for: report it with the rest
        import traceback

        print(f"sweep stopped: {type(exc).__name__}: {exc}")
        traceback.print_exc(limit=-4)
    worst.sort(key=lambda w: -w[0])
    print(f"{N} random cases in {time.perf_counter() - start:.1f} s: {dict(statuses)}")
    by_kind = Counter()
    for margin, status, label, expr, seed in worst[:25]:
        print(f"{margin:9.3g} {status:5s} {label:28s} seed={seed} {expr[:110]}")
    print(f"{len(ops_seen)} ops exercised: " + ", ".join(f"{op} {n}" for op, n in sorted(ops_seen.items())))
    fails = [w for w in worst if w[1] == "fail"]
    print(f"failing checks: {len(fails)}")
    for margin, _status, label, expr, seed in fails[:15]:
        print(f"FAIL {margin:9.3g} {label:28s} seed={seed} {expr[:110]}")
