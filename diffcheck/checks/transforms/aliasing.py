"""Transform ``aliasing``: two (or more) grad vars of the same shape passed the very same tensor (one leaf used
twice). The gradient of that leaf must be the sum of the partials -- judged against the symbolic reference
evaluated at the aliased point (every var of the group set to the same value), in every dtype and device; eagerly,
and under ``torch.compile`` too when the run also asks for the ``compile`` transform (dynamo deduplicates the
repeated input, the classic place a compiled gradient loses half of itself).

The budget of the summed gradient is the partials' budgets plus one rounding of each addition autograd makes when
it accumulates them into the leaf. A case without two grad vars of one shape is a skip that says so.
"""

from __future__ import annotations

import time

import numpy as np

from ... import tolerance as tol
from ...compare import compare, worst_margin
from ...devices import device_skips
from ...model import Check
from ..autograd import unjudgeable
from ..point import Point, cotangent_name
from .judge import raised

AGAINST = "symbolic at the aliased point"


def alias_group(case) -> list[str]:
    """The first grad vars (in the case's order) that share a shape, two or more of them; [] when none do."""
    by_shape: dict[tuple, list[str]] = {}
    for name in case.grad_vars:
        by_shape.setdefault(tuple(case.vars[name].shape), []).append(name)
    return next((names for names in by_shape.values() if len(names) > 1), [])


def run(point: Point, requested: list[str]) -> list[Check]:
    group = alias_group(point.case)
    modes = [False, True] if "compile" in requested else [False]  # compiled too when compile is requested
    checks = []
    for device, skip in device_skips(point.case.devices, point.devices).items():
        for dtype in point.dtypes:
            for compiled in modes:
                base = Check("aliasing", point.engine, AGAINST, dtype=dtype, device=device,
                             details={"compiled": compiled})
                if skip:
                    base.status, base.message = "skip", skip.message
                    base.details["skipped"] = skip.code
                    checks.append(base)
                elif not group:
                    base.status = "skip"
                    base.message = (f"no two grad vars share a shape (grad vars: "
                                    f"{', '.join(point.case.grad_vars) or 'none'}): nothing to alias")
                    checks.append(base)
                elif point.surrogates:  # the declared rules are evaluated at the case's own point only
                    base.status = "skip"
                    base.message = "a declared surrogate gradient is judged at the case's own point only"
                    checks.append(base)
                else:
                    checks += on_device(point, dtype, device, group, compiled, base)
    return checks


def aliased_point(point: Point, dtype: str, group: list[str]):
    """(inputs, value) with every var of ``group`` set to one value: the first member's sample that lies in
    every sampled member's domain; (None, why) when none does."""
    inputs = point.at(dtype)
    domains = [point.case.vars[n].domain for n in group if point.case.vars[n].value is None]
    for name in group:
        v = inputs[name]
        if v.size == 0 or all(lo <= v.min() and v.max() <= hi for lo, hi in domains):
            return dict(inputs, **{n: v for n in group}), name
    return None, (f"no sample of {', '.join(group)} lies in all their domains: they cannot take one value")


def aliased_reference(point: Point, inputs: dict, group: list[str]):
    """The reference at the aliased point: forward, and per cotangent each var's partial, with the group's
    partials summed into its first var (budget: the partials' plus one rounding of each addition)."""
    from ...engines.symbolic import Gradient

    program = point.program
    fwd = program.forward(inputs, kink_u=tol.UNIT_ROUNDOFF[point.low])
    if not point.finite(fwd):
        return fwd, []
    grads = []
    for c in point.cotangents:
        g = program.gradient(fwd, c)
        parts = [g[n] for n in group]
        value, err = parts[0].value, parts[0].err
        for p in parts[1:]:
            value = value + p.value
            err = err + p.err + np.abs(value)
        summed = Gradient(value, err, sum(p.lo for p in parts), sum(p.hi for p in parts))
        grads.append({n: (summed if n == group[0] else g[n]) for n in point.case.grad_vars if n not in group[1:]})
    return fwd, grads


def aliased_run(fn, point: Point, inputs: dict, group: list[str], dtype: str, device: str, cotangents):
    """fn's value and, per cotangent, the gradient of each distinct leaf, with the group's vars one tensor."""
    import torch

    from ...engines.autograd import _cotangent, _no_tf32, input_tensor, to_numpy

    grad_vars = point.case.grad_vars
    with _no_tf32():
        tensors = {n: input_tensor(v, dtype, device, n in grad_vars, point.var_dtypes.get(n))
                   for n, v in inputs.items() if n not in group[1:]}
        tensors.update({n: tensors[group[0]] for n in group[1:]})
        out = fn(**tensors)
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"the function returned {type(out).__name__}, not a tensor")
        names = [n for n in grad_vars if n not in group[1:]]
        leaves = [tensors[n] for n in names]
        vjps = []
        for c in cotangents:
            grads = torch.autograd.grad(out, leaves, _cotangent(c, out, dtype, device), retain_graph=True,
                                        allow_unused=True) if out.requires_grad else [None] * len(leaves)
            vjps.append({n: np.zeros(tuple(t.shape)) if g is None else to_numpy(g) for n, t, g in
                         zip(names, leaves, grads)})
        return to_numpy(out), vjps


def on_device(point: Point, dtype: str, device: str, group: list[str], compiled: bool, base: Check) -> list[Check]:
    case, out = point.case, point.program.out
    how = "under torch.compile, " if compiled else ""
    shared = f"{' and '.join(group)} passed the very same tensor"
    inputs, why = aliased_point(point, dtype, group)
    fwd, grads = aliased_reference(point, inputs, group) if inputs is not None else (None, [])
    why = why if inputs is None else unjudgeable(point, dtype, fwd, grads)
    if not why and compiled:
        from .compile import environment

        why = environment(device)
    if why:
        base.status, base.message = "skip", f"{how}{shared}: {why}"
        return [base]
    timing = {}
    try:
        fn = point.fn
        if compiled:
            from .compile import call, warm

            comp, seconds = warm(point, dtype, device, "aliased", inputs,
                                 alias=lambda f: aliased_run(f, point, inputs, group, dtype, device,
                                                             point.cotangents[:1]))
            if comp is None:
                base.status, base.message = "skip", f"{how}{shared}: {seconds}"
                return [base]
            fn, timing = comp.fn, {"compile_s": round(seconds, 3)}
        start = time.perf_counter()
        runner = (lambda: aliased_run(fn, point, inputs, group, dtype, device, point.cotangents))
        value, vjps = call(runner) if compiled else runner()
        timing = dict(timing, check_s=round(time.perf_counter() - start, 3)) if compiled else timing
    except BaseException as exc:  # what the impl (or torch) raised with aliased inputs is a finding
        if compiled:
            from .compile import compile_environment

            env = compile_environment(exc)
            if env:
                base.status, base.message = "skip", env
                return [base]
        return [raised(point, exc, base, f"{how}the forward or backward with {shared}")]
    checks = [compare(Check("aliasing", point.engine, AGAINST, dtype=dtype, device=device,
                            details={"compiled": compiled, **timing}),
                      value, fwd.values[out], tol.derived(fwd.errs[out], fwd.values[out], dtype, case.tolerance))]
    checks[0].message = "; ".join(m for m in (f"{how}the value with {shared}", checks[0].message) if m)
    for name in vjps[0]:
        checks.append(worst(point, name, vjps, grads, dtype, device, compiled, timing,
                            f"{how}{shared}: the gradient of that tensor is the sum of the partials"
                            if name == group[0] else f"{how}with {shared}"))
    return checks


def worst(point: Point, name: str, vjps, grads, dtype, device, compiled, timing, what: str) -> Check:
    """The VJP of ``name`` for every cotangent against the aliased reference; the worst one reported in full."""
    tolerances, margins = [], []
    for vjp, ref in zip(vjps, grads):
        g = ref[name]
        if not np.all(np.isfinite(g.value)):
            return Check("aliasing", point.engine, AGAINST, var=name, dtype=dtype, device=device, status="skip",
                         message=f"{what}; the reference gradient is not finite at the aliased point")
        tolerances.append(tol.derived(g.err, g.value, dtype, point.case.tolerance))
        margins.append(worst_margin(vjp[name], g.value, tolerances[-1].allowed, g.lo, g.hi)
                       if np.shape(vjp[name]) == g.value.shape else np.inf)
    ci = int(np.argmax(margins))
    g = grads[ci][name]
    check = compare(Check("aliasing", point.engine, AGAINST, var=name, dtype=dtype, device=device,
                          details={"compiled": compiled, **timing}),
                    vjps[ci][name], g.value, tolerances[ci], lo=g.lo, hi=g.hi, upstream=point.cotangents[ci])
    check.message = "; ".join(m for m in (what, check.message,
                                          f"{len(vjps)} cotangents, worst: {cotangent_name(ci, len(vjps))}") if m)
    return check
