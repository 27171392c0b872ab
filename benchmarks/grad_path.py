"""CPU figures of the gradient-case path, for comparing two versions of the code in one window (issue 17).

    OPENBLAS_NUM_THREADS=1 PYTHONPATH=<checkout> python benchmarks/grad_path.py [--api-only]

Run it from each checkout in turn, alternating, on the same machine: it prints the N = 100 MSE check through
``diffcheck.check`` (benchmarks/speed.py's ``api_check(100)``; median of 3 best-of-7 ``time.process_time``, one
thread) and, unless ``--api-only``, the median over the cases of ``cases/ops`` and ``cases/seeds.toml`` of each
case's minimum CPU time over 4 runs of ``run_case`` (the minimum keeps a noisy neighbour out of the figure).
"""

from __future__ import annotations

import glob
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import speed  # noqa: E402

from diffcheck.runner import Options, load, run_case  # noqa: E402


def cpu(fn) -> float:
    start = time.process_time()
    fn()
    return time.process_time() - start


def main() -> None:
    torch.set_num_threads(1)
    speed.api_check(100)
    rounds = [min(cpu(lambda: speed.api_check(100)) for _ in range(7)) for _ in range(3)]
    print(f"api_check(100): {1000 * statistics.median(rounds):.2f} ms CPU (median of 3 best-of-7)")
    if "--api-only" in sys.argv:
        return
    files = [*sorted(glob.glob(str(ROOT / "cases/ops/*.toml"))), str(ROOT / "cases/seeds.toml")]
    options = Options(devices=("cpu",))
    best: list[float] = []
    for _ in range(4):  # loaded afresh each round: a case run again reuses its sampled point and reference
        cases = [c for f in files for c in load(f) if not isinstance(c, Exception)]
        best = best or [float("inf")] * len(cases)
        for i, case in enumerate(cases):
            best[i] = min(best[i], cpu(lambda case=case: run_case(case, options)))
    print(f"{len(cases)} small cases: median {1000 * statistics.median(best):.2f} ms CPU a case "
          f"(each case's minimum over 4 runs), {sum(best):.2f} s in all")


if __name__ == "__main__":
    main()
