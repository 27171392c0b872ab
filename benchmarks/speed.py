"""Speed: diffcheck's full check against torch.autograd.gradcheck, in one process and one run.

    python benchmarks/speed.py [--quick]

For mean((x @ w + b - y)**2) with x 64xN, w NxN, b N, y 64xN (the issue's MSE case at N = 100) it prints, per N:
one forward+backward (the floor), diffcheck's full check (every entry of every gradient judged, float64 and
float32, with finite differences of the reference, on CPU; best of 7), gradcheck in slow mode (one pair of
forwards per input entry; best of 2 where a run takes under 10 s, skipped where it would take over a minute) and
in fast mode (random projections, cannot localize), the ratios, and diffcheck's peak traced memory. Then the
seeds' cases, the wall time of `diffcheck run cases/` and the start-up time of `diffcheck --help`. Every figure is
measured here, now.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import torch

from diffcheck.casefile import build_case
from diffcheck.runner import Options, load, run_case

ROOT = Path(__file__).resolve().parent.parent
SIZES = [10, 30, 100, 200, 300]
SLOW_LIMIT_S = 60.0


def best(fn, repeat: int = 5) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def mse_case(n: int):
    return build_case({"name": f"mse_{n}", "expr": "mean((x @ w + b - y)**2)", "devices": ["cpu"], "seed": 0,
                       "dtypes": ["float64", "float32"],
                       "vars": {"x": {"shape": [64, n], "requires_grad": False}, "w": {"shape": [n, n]},
                                "b": {"shape": [n]}, "y": {"shape": [64, n], "requires_grad": False}}})


def torch_inputs(n: int):
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(64, n, generator=g, dtype=torch.float64), torch.rand(64, n, generator=g, dtype=torch.float64)
    w = torch.rand(n, n, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.rand(n, generator=g, dtype=torch.float64, requires_grad=True)
    return x, y, w, b


def measure(n: int) -> str:
    """One table row: floor, diffcheck's full check, gradcheck slow and fast, ratios, peak memory."""
    x, y, w, b = torch_inputs(n)

    def f(w, b):
        return ((x @ w + b - y) ** 2).mean()

    def fwd_bwd():
        torch.autograd.grad(f(w, b), (w, b))

    floor = best(fwd_bwd, 20)
    case = mse_case(n)
    run_case(case, Options(devices=("cpu",)))  # warm caches (sympy rules, first BLAS calls)
    check = best(lambda: run_case(case, Options(devices=("cpu",))), 7)  # best of 7: this VM's neighbours are noisy
    tracemalloc.start()
    result = run_case(case, Options(devices=("cpu",)))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert result.status == "pass", result.message
    entries = sum(c.entries for c in result.checks if c.kind == "grad")
    fast = best(lambda: torch.autograd.gradcheck(f, (w, b), fast_mode=True), 3)
    estimate = floor * 2 * (n * n + n)
    if estimate < SLOW_LIMIT_S:
        slow = best(lambda: torch.autograd.gradcheck(f, (w, b)), 2 if estimate < 10 else 1)
        slow_text, ratio = f"{slow:.3g} s", f"{slow / check:.0f}x"
    else:
        slow_text, ratio = f"not run (~{estimate:.0f} s)", "-"
    return (f"| {n} | {entries} | {floor * 1e3:.2f} ms | {check * 1e3:.1f} ms | {slow_text} | {fast * 1e3:.1f} ms | "
            f"{ratio} | {check / floor:.0f}x | {peak / 2**20:.1f} MiB |")


def main(quick: bool) -> None:
    sizes = SIZES[:3] if quick else SIZES
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    print("| N | entries judged | fwd+bwd | diffcheck full check | gradcheck slow | gradcheck fast | "
          "slow / diffcheck | check / fwd+bwd | diffcheck peak memory |")
    print("|---|---|---|---|---|---|---|---|---|")
    for n in sizes:
        print(measure(n))

    seeds = [c for c in load([ROOT / "cases" / "seeds.toml"]) if not isinstance(c, Exception)]
    total = best(lambda: [run_case(c, Options(devices=("cpu",))) for c in seeds], 3)
    print(f"\nseeds.toml: {len(seeds)} cases fully checked in {total * 1e3:.0f} ms")

    exe = str(Path(sys.executable).with_name("diffcheck"))
    start = time.perf_counter()
    proc = subprocess.run([exe, "run", str(ROOT / "cases"), "--device", "cpu"], capture_output=True, text=True)
    wall = time.perf_counter() - start
    last = proc.stdout.strip().splitlines()[-1]
    print(f"diffcheck run cases/ (cpu): {wall:.1f} s wall, exit {proc.returncode}: {last}")
    helps = []
    for _ in range(5):
        start = time.perf_counter()
        subprocess.run([exe, "--help"], capture_output=True, check=True)
        helps.append(time.perf_counter() - start)
    print(f"diffcheck --help: median {statistics.median(helps) * 1e3:.0f} ms over 5 runs")


if __name__ == "__main__":
    main("--quick" in sys.argv)
