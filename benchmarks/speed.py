"""Speed: diffcheck's full check against torch.autograd.gradcheck, in one process and one run.

    python benchmarks/speed.py [--quick] [--threads N]      (--big alone: only the 1000x1000 case, as JSON;
                                                            --training alone: only the training cases' floor)

``--threads 1`` (with ``OPENBLAS_NUM_THREADS=1``) measures as each worker of ``diffcheck run -j 2`` computes on a
2-core machine; on a machine shared with other jobs it also keeps idle threads from spinning against them.

For mean((x @ w + b - y)**2) with x 64xN, w NxN, b N, y 64xN (the issue's MSE case at N = 100) it prints, per N:
one forward+backward (the floor), diffcheck's full check (every entry of every gradient judged, float64 and
float32, with finite differences of the reference, on CPU; best of 7), gradcheck in slow mode (one pair of
forwards per input entry; best of 2 where a run takes under 10 s, skipped where it would take over a minute) and
in fast mode (random projections, cannot localize), the ratios, and diffcheck's peak traced memory. Then the
seeds' cases, the wall time of `diffcheck run cases/` and the start-up time of `diffcheck --help`. Every figure is
measured here, now.

The full check is timed through ``diffcheck.check`` (case building and validation included) as the median of 3
best-of-7 runs, so one noisy neighbour does not make the figure. Beside the table: a 1000x1000 weight (a million
gradient entries per dtype) checked once in a fresh process, with its peak memory two ways -- tracemalloc (numpy's
allocations) and the process's peak resident set growth (torch's allocations too); the per-case time of the corpus
from ``diffcheck run --json`` (median and 90th percentile of the cases' own seconds, start-up excluded); and
``pytest cases/`` with ``-n 2``, plain and with pytest's logging and hypothesis plugins off (full run only).
"""

from __future__ import annotations

import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import torch

import diffcheck
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


def median_of_best(fn, repeat: int, rounds: int = 3) -> float:
    """The median over ``rounds`` of the best of ``repeat``: robust to a neighbour's burst in one round."""
    return statistics.median(best(fn, repeat) for _ in range(rounds))


MSE_VARS = lambda n: {"x": {"shape": [64, n], "requires_grad": False}, "w": {"shape": [n, n]},
                      "b": {"shape": [n]}, "y": {"shape": [64, n], "requires_grad": False}}


def api_check(n: int):
    """The issue's measurement: the full check through the Python API (building and validating the case too)."""
    return diffcheck.check("mean((x @ w + b - y)**2)", vars=MSE_VARS(n), name=f"mse_{n}", seed=0,
                           dtypes=("float64", "float32"), devices=("cpu",))


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

    floor = median_of_best(fwd_bwd, 20)
    case = mse_case(n)
    run_case(case, Options(devices=("cpu",)))  # warm caches (sympy rules, first BLAS calls)
    api_check(n).assert_ok()
    check = median_of_best(lambda: api_check(n), 7)  # this VM's neighbours are noisy
    tracemalloc.start()
    result = run_case(mse_case(n), Options(devices=("cpu",)))  # a fresh case: nothing reused from the warm-up
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


def big() -> dict:
    """The 1000x1000 weight (x 64x1000), checked once after a small warm-up case: seconds, entries, peak memory."""
    import threading

    api_check(10).assert_ok()  # imports, sympy rules, first BLAS calls
    page = resource.getpagesize()

    def rss() -> int:  # the resident set now (ru_maxrss is the peak since start-up, imports included)
        return int(Path("/proc/self/statm").read_text().split()[1]) * page

    base_rss, peak, done = rss(), [0], threading.Event()

    def sample() -> None:
        while not done.wait(0.002):
            peak[0] = max(peak[0], rss())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    n = 1000
    inputs = (64 * n * 2 + n * n + n) * 8  # x, y, w, b in float64
    tracemalloc.start()
    start = time.perf_counter()
    result = api_check(n)
    seconds = time.perf_counter() - start
    traced = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    done.set()
    sampler.join()
    peak_rss = max(peak[0], rss())
    entries = sum(c.entries for c in result.checks if c.kind == "grad")
    return {"status": result.status, "seconds": seconds, "entries": entries, "inputs_bytes": inputs,
            "tracemalloc_peak": traced, "rss_growth": max(peak_rss - base_rss, 0)}  # sampled every 2 ms


def corpus(exe: str) -> str:
    """`diffcheck run cases/`: wall with start-up, and the cases' own seconds from the JSON report."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp, "report.json")
        start = time.perf_counter()
        proc = subprocess.run([exe, "run", str(ROOT / "cases"), "--device", "cpu", "--json", str(report)],
                              capture_output=True, text=True)
        wall = time.perf_counter() - start
        cases = json.loads(report.read_text())["cases"]
    secs = sorted(c["seconds"] for c in cases)
    gradient = sorted(c["seconds"] for c in cases if "/train/" not in c["file"])
    last = proc.stdout.strip().splitlines()[-1]
    return (f"diffcheck run cases/ (cpu, -j auto): {wall:.1f} s wall, exit {proc.returncode}: {last}\n"
            f"  per case (its own seconds): median {statistics.median(secs) * 1e3:.1f} ms, 90th percentile "
            f"{secs[int(0.9 * (len(secs) - 1))] * 1e3:.1f} ms; gradient cases {len(gradient)}: median "
            f"{statistics.median(gradient) * 1e3:.1f} ms, total {sum(gradient):.1f} s; training cases "
            f"{len(secs) - len(gradient)}: total {sum(secs) - sum(gradient):.1f} s")


def training_floor() -> str:
    """What the training cases cost beyond the loops under test: each case through ``run_case`` against its torch
    loops alone (``run_torch``, twice per dtype as ``reproducible`` needs), and the cost of one step of a loop
    written by hand (T4's: 50 points, ``mean((y - (x @ w + b))**2)``, ``w.data.sub_(lr * w.grad)``)."""
    from diffcheck.training.data import batches, draw
    from diffcheck.training.loops import run_torch

    cases = [c for c in load([ROOT / "cases" / "train"]) if not isinstance(c, Exception)]
    whole = loops = t4 = 0.0
    steps_run = 0
    for case in cases:
        start = time.perf_counter()
        run_case(case, Options(devices=("cpu",)))
        whole += time.perf_counter() - start
        data, init = draw(case)
        steps = batches(case, len(data[case.model.train.target]))
        start = time.perf_counter()
        for dtype in case.dtypes:
            for _ in range(2):
                steps_run += len(run_torch(case, data, init, dtype, "cpu", steps).losses)
        loops += time.perf_counter() - start
        if case.name == "T4_3x_plus_0_8_2000_steps":  # the hand-written loop below is this case's
            t4 = (time.perf_counter() - start) / (4 * len(steps))
    per_step = [best(lambda dtype=dtype: _hand_loop(dtype, 500), 3) / 500 for dtype in (torch.float32, torch.float64)]
    return (f"training cases {len(cases)}: {whole:.1f} s through run_case in this process; their torch loops alone "
            f"{loops:.1f} s ({steps_run} optimizer steps, {loops / max(steps_run, 1) * 1e6:.0f} us a step); "
            f"T4_3x_plus_0_8_2000_steps's loop {t4 * 1e6:.0f} us a step, the same loop written by hand "
            f"{per_step[0] * 1e6:.0f} us a step in float32, {per_step[1] * 1e6:.0f} us in float64")


def _hand_loop(dtype, steps: int) -> None:
    """T4's loop as a user writes it, keeping the history a loop under test keeps."""
    x = torch.rand(50, 1, dtype=dtype)
    y, w = 3 * x + 0.8, torch.rand(1, 1, dtype=dtype, requires_grad=True)
    b = torch.zeros((), dtype=dtype, requires_grad=True)
    for _ in range(steps):
        if w.grad is not None:
            w.grad.zero_()
            b.grad.zero_()
        loss = torch.mean((y - (x @ w + b)) ** 2)
        loss.backward()
        w.data.sub_(0.01 * w.grad)
        b.data.sub_(0.01 * b.grad)
        w.detach().clone(), b.detach().clone(), loss.detach()


def pytest_corpus(workers: str, *flags: str) -> str:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", workers, *flags,
                           str(ROOT / "cases")], capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - start
    last = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else proc.stderr.strip()[-200:]
    return f"pytest cases/ -n {workers} {' '.join(flags)}: {wall:.1f} s wall: {last}".replace("  ", " ")


def main(quick: bool) -> None:
    sizes = SIZES[:3] if quick else SIZES
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    print("| N | entries judged | fwd+bwd | diffcheck full check | gradcheck slow | gradcheck fast | "
          "slow / diffcheck | check / fwd+bwd | diffcheck peak memory |")
    print("|---|---|---|---|---|---|---|---|---|")
    for n in sizes:
        print(measure(n))

    def seeds_run():  # loaded afresh each time (a case run again would reuse its sampled point and reference)
        cases = [c for c in load([ROOT / "cases" / "seeds.toml"]) if not isinstance(c, Exception)]
        return [run_case(c, Options(devices=("cpu",))) for c in cases]

    seeds = seeds_run()
    total = best(seeds_run, 3)
    print(f"\nseeds.toml: {len(seeds)} cases loaded and fully checked in {total * 1e3:.0f} ms")

    proc = subprocess.run([sys.executable, __file__, "--big", "--threads", str(torch.get_num_threads())],
                          capture_output=True, text=True)
    b = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"1000x1000 weight ({b['entries']} gradient entries judged over both dtypes): {b['status']} in "
          f"{b['seconds']:.2f} s; peak memory {b['tracemalloc_peak'] / 2**20:.0f} MiB traced (numpy), "
          f"{b['rss_growth'] / 2**20:.0f} MiB resident growth (numpy and torch) for "
          f"{b['inputs_bytes'] / 2**20:.1f} MiB of float64 inputs")

    exe = str(Path(sys.executable).with_name("diffcheck"))
    print(corpus(exe))
    print(training_floor())
    if not quick:
        print(pytest_corpus("2"))
        # pytest's logging plugin attaches a handler to each of torch's non-propagating loggers in every phase of
        # every item; hypothesis's plugin imports hypothesis at the end of the session
        print(pytest_corpus("2", "-p", "no:logging", "-p", "no:hypothesispytest"))
    helps = []
    for _ in range(5):
        start = time.perf_counter()
        subprocess.run([exe, "--help"], capture_output=True, check=True)
        helps.append(time.perf_counter() - start)
    print(f"diffcheck --help: median {statistics.median(helps) * 1e3:.0f} ms over 5 runs")


if __name__ == "__main__":
    if "--threads" in sys.argv:
        torch.set_num_threads(int(sys.argv[sys.argv.index("--threads") + 1]))
    if "--big" in sys.argv:
        print(json.dumps(big()))
    elif "--training" in sys.argv:
        print(training_floor())
    else:
        main("--quick" in sys.argv)
