"""Stage ``reference``: the symbolic reference against float64 finite differences, and the known answers
(``expect``) against the reference and the entrywise differences."""

from __future__ import annotations

import numpy as np

from .. import tolerance as tol
from ..compare import compare
from ..model import Check
from ..outputs import name_entries
from .point import Point, stage_rng
from .probes import directional_check, entrywise_check


def finite_differences(point: Point) -> list[Check]:
    """Small vars: every entry with the ones cotangent; every var: a random direction with a random cotangent
    (the reference VJP is linear in both, so one signed random probe catches a wrong rule)."""
    rng = stage_rng(point.seed, "reference")
    _, grads = point.reference("float64")
    x = point.at("float64")
    checks = []
    for ci in sorted({0, len(point.cotangents) - 1}):
        evaluate, noise = point.evaluator(ci) if ci != 0 else (None, None)
        for name in point.case.grad_vars:
            g = grads[ci][name]
            if not np.all(np.isfinite(g.value)):
                checks.append(Check("fd", "symbolic", "finite differences", var=name, device="cpu", dtype="float64",
                                    status="skip", message="the reference gradient is not finite at this point"))
            elif ci == 0 and name in point.fd_full:
                checks.append(entrywise_check(point.fd_full[name], name, g.value, g, point.cotangents[0], point.fd))
            elif ci != 0:
                checks.append(directional_check(rng, evaluate, x, name, g.value, g, noise, point.fd))
    return checks


def expect_on_reference(point: Point) -> list[Check]:
    expect = point.case.expect
    if expect is None:
        return []
    fwd, grads = point.expected("float64")  # expect.grad of a surrogate var is the declared rule's answer
    out = point.program.out
    checks = []
    if expect.value is not None:
        t = tol.expected(expect.value, expect.atol, expect.rtol, fwd.errs[out], "float64")
        checks.append(name_entries(compare(Check("expect_value", "symbolic", "expect", dtype="float64"),
                                           fwd.values[out], expect.value, t), point.case.outputs, fwd.values[out],
                                   expect.value, t.allowed))
    for name, want in expect.grad.items():
        g = grads[0][name]
        t = tol.expected(want, expect.atol, expect.rtol, g.err, "float64")
        check = compare(Check("expect_grad", "symbolic", "expect", var=name, dtype="float64"),
                        g.value, want, t, lo=g.lo, hi=g.hi)
        if name in point.surrogates:  # the declared rule's answer, evaluated symbolically
            check.message = (check.message + "; " if check.message else "") + f"surrogate.{name}"
        checks.append(check)
        fd = point.fd_values(name) if name not in point.surrogates else None
        if fd is not None and np.all(np.isfinite(fd)):
            t_fd = tol.Tolerance(t.allowed + 1e-6 * np.abs(want), t.atol, t.rtol,
                                 t.source + " + 1e-6 relative for differencing")
            checks.append(compare(Check("expect_grad", "finite", "expect", var=name, dtype="float64"),
                                  fd, want, t_fd, lo=g.lo, hi=g.hi))
    return checks


def reference(point: Point) -> list[Check]:
    return finite_differences(point) + expect_on_reference(point)
