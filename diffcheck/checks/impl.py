"""Stage ``impl``: a user's implementation against itself in float64 -- its backward against finite differences
of its own forward (``self_fd``), and its forward mode against its reverse mode (``jvp``)."""

from __future__ import annotations

import numpy as np

from .. import tolerance as tol
from ..compare import compare
from ..model import Check
from .point import SMALL, Point, difference_entries, stage_rng
from .probes import directional_check, entrywise_check, user_failure


def self_consistency(point: Point) -> list[Check]:
    from ..engines.autograd import input_tensor, run, to_numpy
    from ..engines.impl import phase

    fn, x, names = point.fn, point.at("float64"), list(point.case.vars)
    rng = stage_rng(point.seed, "impl")
    _, grads = point.reference("float64")

    def impl_forward(inputs):
        import torch

        with torch.no_grad():
            return to_numpy(fn(**{n: input_tensor(inputs[n], "float64", "cpu", False, point.case.vars[n].dtype)
                                  for n in names}))

    checks: list[Check] = []
    try:
        with phase("the impl's backward"):
            res = run(fn, x, point.case.grad_vars, "float64", "cpu", point.cotangents, var_dtypes=point.var_dtypes)
        from .pyref import self_reference

        # the impl alone is its own reference: the reference stage's fd checks are these (its self_fd)
        for ci in sorted({0, len(point.cotangents) - 1}) if not self_reference(point) else ():
            evaluate, noise = point.evaluator(ci, impl_forward)
            for name in point.case.grad_vars:
                got, g = res.vjps[ci][name], grads[ci][name]
                if not np.all(np.isfinite(g.value)) or (name in point.surrogates and ci):
                    continue
                if name in point.surrogates:
                    checks.append(Check("self_fd", "impl", "finite differences of the impl's own forward", var=name,
                                        dtype="float64", device="cpu", status="skip",
                                        message=f"surrogate.{name} declares a backward that is not the derivative "
                                                "of the forward, so finite differences of the forward do not apply"))
                    continue
                if g.value.size <= SMALL and ci == 0:
                    diffs = difference_entries(evaluate, x, name, g.value.shape, noise, point.fd)
                    check = entrywise_check(diffs, name, got, g, point.cotangents[0], point.fd, "self_fd", "impl")
                else:
                    check = directional_check(rng, evaluate, x, name, got, g, noise, point.fd, "self_fd", "impl")
                check.against = "finite differences of the impl's own forward"
                checks.append(check)
        checks += jvp_check(point, res, grads, rng)
    except BaseException as exc:  # user code: a crash is a finding, not a diffcheck error
        check = user_failure(exc, Check("self_fd", "impl", "finite differences of the impl", dtype="float64",
                                        device="cpu"), "backward")
        if check is None:
            raise
        checks.append(check)
    return checks


def jvp_check(point: Point, res, grads, rng) -> list[Check]:
    """Forward mode (torch.func.jvp) and reverse mode of the impl against the reference, float64."""
    from ..engines import finite
    from ..engines.autograd import jvp

    x, names = point.at("float64"), point.case.grad_vars
    v = {n: finite.random_direction(x[n], rng) for n in names}
    check = Check("jvp", "impl", "symbolic (forward mode vs reverse mode)", dtype="float64", device="cpu",
                  details={"probe": "random direction"})
    if point.surrogates:  # a declared backward rule (nonlinear in g, perhaps) says nothing about forward mode
        check.status = "skip"
        check.message = (f"surrogate gradients are declared for {', '.join(point.surrogates)}: forward mode has no "
                         "declared rule to be judged against")
        return [check]
    try:
        jv = jvp(point.fn, x, names, v, "float64", "cpu", point.var_dtypes)
    except Exception as exc:  # forward mode is optional for a custom Function
        exc = getattr(exc, "exception", None) or exc  # what the impl itself raised, under the guard's wrapper
        check.status = "skip"
        reason = " ".join(str(exc).split())  # whole, on one line
        check.message = f"forward mode not supported by the impl: {type(exc).__name__}: {reason}"
        return [check]
    got, ref, allowed = [], [], []
    for ci in sorted({0, len(point.cotangents) - 1}):
        c = point.cotangents[ci]
        if np.shape(jv) != np.shape(np.broadcast_to(c, np.shape(jv))):
            break
        got.append(float(np.sum(c * jv)))
        ref.append(sum(float(np.sum(grads[ci][n].value * v[n])) for n in names))
        budget = sum(float(np.sum(np.abs(v[n]) * grads[ci][n].err)) for n in names)
        allowed.append(2 * tol.SAFETY * tol.UNIT_ROUNDOFF["float64"] * budget + 1e-300)
    tolerance = tol.Tolerance(np.array(allowed), None, None, "derived: float64 budget of <J^T c, v>")
    compare(check, np.array(got), np.array(ref), tolerance)
    if check.status == "fail":  # one number <c, J v> per cotangent: no entry can be named from it
        check.error_matrix = None
        check.message = f"{check.bad} of {check.entries} probes <c, J v> (one per cotangent c) are off"
        check.diagnosis = ("a directional probe: forward mode's <c, J v> along a random v disagrees with the "
                           "reference; it does not say which entries are off")
    return [check]
