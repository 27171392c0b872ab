"""Transform ``compile``: the judged function (the expression built in torch, or the user's impl) under
``torch.compile`` (inductor, ``dynamic=False``), its value and every cotangent's VJP judged against the symbolic
reference in every dtype and device with the derived tolerance -- the reference stays the symbolic one, never the
eager gradient.

Reassociation needs no widening, and the tolerance text says why. The budget of a k-term sum
(``structured.accumulation``) is sqrt(k) * hypot(||t||_2, |S|), a function of the terms alone, and it bounds the
rounding of *every* summation order fixed by the shapes, not only the sequential one: the sampled terms are
exchangeable (their order carries no information), so a partial sum of m <= k of them, with the terms' mean mu and
variance s2, has E[partial**2] = m s2 + (m mu)**2 <= ||t||_2**2 + S**2; any summation tree has k - 1 partial sums,
each rounded once, so the expected squared error is at most u**2 (k - 1) (||t||_2**2 + S**2), within the budget.
Inductor's vectorised, split and fused reductions are such orders; fusion keeps intermediates in the dtype (wider
for float16/bfloat16), so it only removes roundings the budget counts.

Compiled graphs are cached per judged function within a run: one ``torch.compile`` wrapper per case, which dynamo
recompiles once per dtype/device (and once more for aliased inputs); the previous case's graphs are dropped with
``torch._dynamo.reset()`` (the lowered expressions of all cases share one code object, whose cache would otherwise
hit dynamo's recompile limit and silently fall back to eager). A counting backend records each graph inductor
compiles, so a function dynamo ran eagerly is a skip, never a vacuous pass. Compile time (the first call: tracing,
inductor, the C++ build) is reported apart from the time of the check itself.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ... import tolerance as tol
from ...compare import compare
from ...devices import device_skips
from ...model import Check, Kind
from ..autograd import unjudgeable
from ..point import Point
from .judge import raised

REASSOCIATION = ("reassociation: no widening (the k-term sum budget sqrt(k) hypot(|t|_2, |sum|) bounds every "
                 "summation order fixed by the shapes, which inductor's reductions are)")
RECOMPILE_LIMIT = 64  # dtypes x devices x (plain, aliased) of one function, with room


@dataclass
class Compiled:
    fn: Callable  # the compiled function, guarded like point.fn for an impl
    graphs: list = field(default_factory=list)  # one entry (its node count) per graph inductor compiled
    seen: dict = field(default_factory=dict)  # (dtype, device, variant) -> (compile seconds, graphs)


_CACHE: dict = {}  # "source": the judged function, "compiled": its Compiled (one function at a time)


def run(point: Point, requested: list[str]) -> list[Check]:
    checks = []
    for device, skip in device_skips(point.case.devices, point.devices).items():
        for dtype in point.dtypes:
            if skip:
                checks.append(Check("compile", point.engine, "symbolic", dtype=dtype, device=device, status="skip",
                                    message=skip.message, details={"skipped": skip.code}))
            else:
                checks += on_device(point, dtype, device)
    return checks


def on_device(point: Point, dtype: str, device: str) -> list[Check]:
    from ...engines.autograd import run as autograd_run
    from ..autograd import worst_over_cotangents

    case, engine, out = point.case, point.engine, point.program.out
    fwd, grads = point.expected(dtype)  # a declared surrogate stands in for the true derivative
    base = Check("compile", engine, "symbolic", dtype=dtype, device=device)
    why = unjudgeable(point, dtype, fwd, grads) or environment(device)
    if why:
        base.status, base.message = "skip", why
        return [base]
    inputs, grad_vars = point.at(dtype), case.grad_vars
    try:
        compiled, compile_s = warm(point, dtype, device, "plain", inputs)
        if compiled is None:
            base.status, base.message = "skip", compile_s
            return [base]
        start = time.perf_counter()
        res = call(lambda: autograd_run(compiled.fn, inputs, grad_vars, dtype, device, point.cotangents, False,
                                        point.var_dtypes))
        check_s = time.perf_counter() - start
    except BaseException as exc:  # what the impl or torch raised under compile is a finding; the environment a skip
        env = compile_environment(exc)
        if env:
            base.status, base.message = "skip", env
            return [base]
        return [raised(point, exc, base, "the compiled forward or backward")]
    timing = {"compile_s": round(compile_s, 3), "check_s": round(check_s, 3),
              "graphs": compiled.seen[(dtype, device, "plain")][1]}
    checks = []
    if res.problems:
        checks.append(Check("compile", engine, "input metadata", dtype=dtype, device=device, status="fail",
                            message="under torch.compile: " + "; ".join(res.problems), details=dict(timing)))
    value = compare(Check("compile", engine, "symbolic", dtype=dtype, device=device), res.value, fwd.values[out],
                    tol.derived(fwd.errs[out], fwd.values[out], dtype, case.tolerance))
    value.message = "; ".join(m for m in (f"value under torch.compile: {value.message}" if value.message
                                          else "value under torch.compile",
                                          f"compiled in {compile_s:.1f} s ({plural(timing['graphs'], 'graph')}), "
                                          f"checked in {check_s:.2f} s") if m)
    checks.append(value)
    for name in grad_vars:
        check = worst_over_cotangents(point, res, grads, name, dtype, device)
        check.kind = Kind.COMPILE
        checks.append(check)
    for check in checks:
        check.details.update(timing)
        if check.atol is None and check.tolerance.startswith("derived"):
            check.tolerance += "; " + REASSOCIATION
    return checks


def compiled_for(point: Point) -> Compiled:
    """The compiled function of ``point.fn``, built on its first use in this run (see the module docstring)."""
    import torch

    if _CACHE.get("source") is not point.fn:
        torch._dynamo.reset()
        graphs: list = []

        def backend(gm, example_inputs):
            from torch._inductor.compile_fx import compile_fx

            graphs.append(len(gm.graph.nodes))
            return compile_fx(gm, example_inputs)

        inner = getattr(point.fn, "__wrapped__", None)  # an impl: compile the user's function, keep diffcheck's guard
        if inner is not None:
            from ...engines.impl import guard

            fn = guard(torch.compile(inner, backend=backend, dynamic=False), point.case.out_shape)
        else:
            fn = torch.compile(point.fn, backend=backend, dynamic=False)
        _CACHE.clear()
        _CACHE.update(source=point.fn, compiled=Compiled(fn, graphs))
    return _CACHE["compiled"]


def warm(point: Point, dtype: str, device: str, variant: str, inputs: dict, alias=None):
    """(compiled, compile seconds) after the first call of the compiled function for this dtype, device and
    variant ("plain" or "aliased"): forward and one VJP, timed as compile time; later calls reuse it. (None, why)
    when inductor compiled no graph for it (dynamo ran it eagerly: nothing compiled to judge)."""
    from ...engines.autograd import run as autograd_run

    compiled = compiled_for(point)
    key = (dtype, device, variant)
    if key not in compiled.seen:
        before = len(compiled.graphs)
        start = time.perf_counter()
        if alias is None:
            call(lambda: autograd_run(compiled.fn, inputs, point.case.grad_vars, dtype, device, point.cotangents[:1],
                                      False, point.var_dtypes))
        else:
            call(lambda: alias(compiled.fn))
        compiled.seen[key] = (time.perf_counter() - start, len(compiled.graphs) - before)
    seconds, graphs = compiled.seen[key]
    if not graphs:  # a new dtype, device or aliasing always fails dynamo's guards: no new graph means eager
        return None, ("torch.compile compiled no graph of this function for this call (dynamo ran all of it "
                      "eagerly): nothing compiled to judge")
    return compiled, seconds


def call(thunk):
    """``thunk()`` with dynamo's recompile limit raised for the variants of one function."""
    import torch

    with torch._dynamo.config.patch(recompile_limit=RECOMPILE_LIMIT):
        return thunk()


def environment(device: str) -> str | None:
    """Why inductor cannot compile on ``device`` here (no C++ compiler for CPU, no Triton for CUDA), or None."""
    if device == "cpu":
        try:
            from torch._inductor.cpp_builder import get_cpp_compiler

            get_cpp_compiler()
        except Exception as exc:  # torch's own probe of the compiler: any failure means none usable
            return f"torch.compile (inductor) needs a C++ compiler on CPU: {type(exc).__name__}: {str(exc)[:150]}"
        return None
    from torch.utils._triton import has_triton

    return None if has_triton() else f"torch.compile (inductor) needs Triton on {device}; it is not installed"


def compile_environment(exc: BaseException) -> str | None:
    """The reason when ``exc`` is the environment failing to build compiled code (the C++ compiler), else None."""
    from torch._inductor.exc import CppCompileError, InvalidCxxCompiler

    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, CppCompileError | InvalidCxxCompiler):
            first = (str(exc).strip().splitlines() or [""])[0]
            return f"torch.compile could not build its C++ code here ({type(exc).__name__}: {first[:150]})"
        exc = getattr(exc, "exception", None) or getattr(exc, "inner_exception", None) or exc.__cause__ \
            or exc.__context__
    return None


def plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"
