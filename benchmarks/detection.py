"""Detection power on the bug corpus: diffcheck against torch.autograd.gradcheck (slow and fast mode).

    python benchmarks/detection.py               # the bug corpus, then the transform corpus
    python benchmarks/detection.py --transforms  # the transform corpus only

For each seeded bug (bug_*) and correct twin (ok_*) of benchmarks/bug_corpus, in float64 and float32, every tool
judges the same Function. diffcheck counts a bug as caught in a dtype only when a check *in that dtype* fails
(its float64 self-consistency check does not count for float32) -- except on the paths without an independent
reference (the impl alone, ``diffcheck.gradcheck``), where the float64 self-consistency check is what judges every
dtype and a run asked for the dtype must fail. The Python-reference path uses the case's expression built as a
plain torch function as the reference, so its tolerances are measured rather than taken from the symbolic budget.
gradcheck runs with its defaults (eps=1e-6, atol=1e-5, rtol=1e-3) at a point sampled from the case's
domains. Prints one table and writes nothing.

The transform corpus (every benchmarks/transform_corpus/*.toml; each file's cases are wrong only under one
transform) gets a second table, one row per transform and tool: diffcheck runs each case as shipped (with its
``transforms``); gradcheck runs with the flags that match the transform -- vmap: check_batched_grad, forward:
check_forward_ad, order 2: gradgradcheck, compile: gradcheck of torch.compile(fn), the others plain gradcheck.
"""

from __future__ import annotations

import sys
import time
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "bug_corpus"))

import kernels  # noqa: E402

from diffcheck.casefile import Case  # noqa: E402
from diffcheck.runner import Options, load, run_case  # noqa: E402

DTYPES = ("float64", "float32")


def diffcheck_verdict(case: Case, dtype: str, in_dtype: bool = True) -> bool:
    """True when diffcheck reports a failure in ``dtype`` (``in_dtype=False``: anywhere in a run asked for
    ``dtype``)."""
    result = run_case(case, Options(devices=("cpu",), dtypes=(dtype,)))
    return any(c.status == "fail" and (c.dtype == dtype or not in_dtype) for c in result.checks)


def reference_function_verdict(case: Case, dtype: str) -> bool:
    """The Python-reference path: the case's expression, built as a plain torch function, is the reference (its
    tolerances measured, not from the symbolic budget)."""
    from diffcheck.engines.autograd import build

    as_python = replace(case, expr=None, ir=None, out_shape=None, expect=None, reference=build(case.ir))
    return diffcheck_verdict(as_python, dtype)


def impl_alone_verdict(case: Case, dtype: str) -> bool:
    """The impl-alone path: no reference at all. Its lower dtypes are judged against the impl's own float64
    backward, which the float64 self-consistency check verifies in every run, so a bug counts in a dtype when the
    run asked for that dtype fails (as a user asking for float32 sees it)."""
    return diffcheck_verdict(replace(case, expr=None, ir=None, out_shape=None, expect=None), dtype, in_dtype=False)


def dropin_verdict(case: Case, dtype: str) -> bool:
    """diffcheck.gradcheck, called like torch's gradcheck, at the same inputs."""
    import diffcheck

    apply, inputs = _callable(case, dtype)
    try:
        return not diffcheck.gradcheck(apply, inputs, raise_exception=False)
    except Exception:
        return True


def _callable(case: Case, dtype: str):
    """The case's impl called torch's way, and gradcheck's inputs: sampled from the case's domains."""
    function = getattr(kernels, case.impl.split(":")[1])
    rng = np.random.default_rng(0)
    names = list(case.vars)
    inputs = tuple(torch.tensor(rng.integers(*map(int, case.vars[n].domain), case.vars[n].shape))
                   if case.vars[n].dtype == "int64" else  # indices: no gradient, as gradcheck expects
                   torch.tensor(rng.uniform(*case.vars[n].domain, case.vars[n].shape),
                                dtype=getattr(torch, dtype), requires_grad=True) for n in names)
    apply = function.apply if isinstance(function, type) and issubclass(function, torch.autograd.Function) else None
    if apply is None:  # the nn.Module twin: parameters are the case's vars
        module = function(**case.impl_args)

        def apply(x, w, b):
            return torch.func.functional_call(module, {"weight": w, "bias": b}, (x,))
    return apply, inputs


def gradcheck_verdict(case: Case, dtype: str, fast: bool) -> bool:
    """True when gradcheck reports a failure (or raises) for the case's impl in ``dtype``."""
    apply, inputs = _callable(case, dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return not torch.autograd.gradcheck(apply, inputs, fast_mode=fast, raise_exception=False)
        except Exception:
            return True


def main() -> None:
    cases = [c for c in load([HERE / "bug_corpus" / "cases.toml"]) if isinstance(c, Case)]
    bugs = [c for c in cases if c.name.startswith("bug_")]
    twins = [c for c in cases if c.name.startswith("ok_")]
    tools = {"diffcheck": diffcheck_verdict,
             "diffcheck, Python reference": reference_function_verdict,
             "diffcheck, impl alone": impl_alone_verdict,
             "diffcheck.gradcheck": dropin_verdict,
             "gradcheck (slow)": lambda c, d: gradcheck_verdict(c, d, False),
             "gradcheck (fast)": lambda c, d: gradcheck_verdict(c, d, True)}
    rows, missed = [], []
    for tool, verdict in tools.items():
        for dtype in DTYPES:
            start = time.perf_counter()
            caught = [verdict(c, dtype) for c in bugs]
            alarms = [verdict(c, dtype) for c in twins]
            seconds = time.perf_counter() - start
            rows.append((tool, dtype, sum(caught), len(bugs), sum(alarms), len(twins), seconds))
            missed += [f"{tool} {dtype}: missed {c.name}" for c, hit in zip(bugs, caught) if not hit]
            missed += [f"{tool} {dtype}: false alarm on {c.name}" for c, hit in zip(twins, alarms) if hit]
    print("| tool | dtype | bugs caught | false alarms on correct twins | time |")
    print("|---|---|---|---|---|")
    for tool, dtype, hit, nb, fa, nt, sec in rows:
        print(f"| {tool} | {dtype} | {hit} / {nb} | {fa} / {nt} | {sec:.1f} s |")
    print()
    for line in missed:
        print(line)


GRADCHECK_FLAGS = {"vmap": {"check_batched_grad": True}, "forward": {"check_forward_ad": True}}


def transform_gradcheck_verdict(case: Case, dtype: str, transform: str) -> bool:
    """True when gradcheck (with the transform's matching flags) reports a failure, or raises, for the impl."""
    from diffcheck.engines import impl

    fn = impl.load(case.impl, case.base_dir, list(case.vars), case.impl_args, case.path, case.name)
    if transform == "compile":
        torch._dynamo.reset()
        fn = torch.compile(fn, dynamic=False)
    names = list(case.vars)
    rng = np.random.default_rng(0)
    inputs = tuple(torch.tensor(rng.integers(*map(int, case.vars[n].domain), case.vars[n].shape))
                   if case.vars[n].dtype == "int64" else
                   torch.tensor(rng.uniform(*case.vars[n].domain, case.vars[n].shape), dtype=getattr(torch, dtype),
                                requires_grad=case.vars[n].requires_grad) for n in names)
    apply = lambda *ts: fn(**dict(zip(names, ts)))
    check = torch.autograd.gradgradcheck if case.order == 2 else torch.autograd.gradcheck
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return not check(apply, inputs, raise_exception=False, **GRADCHECK_FLAGS.get(transform, {}))
        except Exception:
            return True


def transforms_main() -> None:
    rows, missed = [], []
    for path in sorted((HERE / "transform_corpus").glob("*.toml")):
        cases = [c for c in load([path]) if isinstance(c, Case)]
        bugs = [c for c in cases if c.name.startswith("bug_")]
        twins = [c for c in cases if c.name.startswith("ok_")]
        transform = path.stem
        tools = {"diffcheck": diffcheck_verdict,
                 "gradcheck (matching flags)": lambda c, d, t=transform: transform_gradcheck_verdict(c, d, t)}
        for tool, verdict in tools.items():
            for dtype in DTYPES:
                start = time.perf_counter()
                caught = [verdict(c, dtype) for c in bugs]
                alarms = [verdict(c, dtype) for c in twins]
                rows.append((transform, tool, dtype, sum(caught), len(bugs), sum(alarms), len(twins),
                             time.perf_counter() - start))
                missed += [f"{transform} {tool} {dtype}: missed {c.name}" for c, hit in zip(bugs, caught) if not hit]
                missed += [f"{transform} {tool} {dtype}: false alarm on {c.name}"
                           for c, hit in zip(twins, alarms) if hit]
    print("| transform | tool | dtype | bugs caught | false alarms on correct twins | time |")
    print("|---|---|---|---|---|---|")
    for transform, tool, dtype, hit, nb, fa, nt, sec in rows:
        print(f"| {transform} | {tool} | {dtype} | {hit} / {nb} | {fa} / {nt} | {sec:.1f} s |")
    print()
    for line in missed:
        print(line)


if __name__ == "__main__":
    if "--transforms" not in sys.argv:
        main()
        print()
    transforms_main()
