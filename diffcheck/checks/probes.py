"""Check builders the stages share: an entrywise and a directional finite-difference comparison, a user's code
failing as a finding, and the float32-scale reading of a failing float64 impl result. Each returns its Check;
none keeps state.
"""

from __future__ import annotations

import numpy as np

from .. import tolerance as tol
from ..compare import compare
from ..model import Check

FD_DIRECTIONS = 1
def fd_source(method) -> str:
    return f"{method.safety:g} x Richardson error estimate + float64 budget"


def entrywise_check(diffs: tuple, name: str, got, g, upstream, method, kind="fd", engine="symbolic") -> Check:
    """Every entry of ``got`` (a gradient of ``name``) against finite differences ``diffs`` = (values, errors,
    notes); ``g`` (the reference gradient) gives the budget and the kinks."""
    values, errors, notes = diffs
    usable = np.isfinite(values) & ~g.ambiguous
    check = Check(kind, engine, "finite differences", var=name, dtype="float64", device="cpu")
    if not usable.any():
        check.status, check.message = "skip", "; ".join(sorted(notes or {"every entry sits on a kink"}))
        return check
    allowed = method.safety * errors + tol.derived(g.err, g.value, "float64").allowed
    compare(check, got, values, tol.Tolerance(allowed, None, None, fd_source(method)), fd=values, judge=usable,
            upstream=upstream)
    skipped = int((~usable).sum())
    if skipped and check.status == "pass":
        check.status = "warn"
        check.message = f"{skipped} entries not differenced (kink or domain edge within every step)"
    return check


def directional_check(rng, evaluate, x, name, grad, g, noise, method, kind="fd", engine="symbolic") -> Check:
    """<grad, v> against finite differences along random directions v; ``g`` gives the budget."""
    from ..engines import finite

    got, ref, allowed, notes = [], [], [], []
    for _ in range(FD_DIRECTIONS):
        v = finite.random_direction(x[name], rng)
        est = finite.directional(evaluate, x, {name: v}, noise, method=method)
        if not np.isfinite(est.value):
            notes.append(est.note)
            continue
        got.append(float(np.sum(grad * v)))
        ref.append(est.value)
        budget = float(np.sum(np.abs(v) * g.err))
        allowed.append(method.safety * est.error + tol.SAFETY * tol.UNIT_ROUNDOFF["float64"] * budget)
    check = Check(kind, engine, "finite differences", var=name, dtype="float64", device="cpu",
                  details={"probe": "random direction"})
    if not got:
        check.status, check.message = "skip", "; ".join(sorted(set(notes)))
        return check
    compare(check, np.array(got), np.array(ref), tol.Tolerance(np.array(allowed), None, None, fd_source(method)))
    if check.status == "fail":  # one number <g, v> per direction: no entry of g can be named from it
        check.error_matrix = None
        check.message = "<gradient, v> along a random direction v is off"
        check.diagnosis = (f"a directional probe: <g, v> disagrees with the finite difference along v; "
                           f"it does not say which entries of the gradient of {name} are off")
    if notes and check.status == "pass":
        check.status, check.message = "warn", "; ".join(sorted(set(notes)))
    return check


def missing_kernel(exc: BaseException | None) -> bool:
    """torch has no kernel for this dtype/device ("... not implemented for 'Half'"): a skip, not a finding.
    torch raises a plain RuntimeError for it, so its text is the only signal; this is the one place read."""
    return exc is not None and "not implemented for" in _first_line(exc)


def missing_derivative(exc: BaseException | None) -> bool:
    """torch has no derivative formula for an op's backward ("derivative for aten::hardsigmoid_backward is not
    implemented"): a higher-order check cannot run, a skip. Read from the text, as ``missing_kernel``."""
    line = _first_line(exc) if exc is not None else ""
    return line.startswith("derivative for ") and "is not implemented" in line


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [""])[0]


def torch_raised(exc: BaseException) -> str:
    return f"torch raised {type(exc).__name__}: {_first_line(exc)[:200]}"


def user_failure(exc: BaseException, check: Check, phase_name: str) -> Check | None:
    """``check`` filled from ``exc``, escaping a call of the impl: failing with the structured
    ``details["impl_failure"]`` (a skip with ``details["skipped"] = "missing_kernel"`` where torch has no kernel
    for the dtype). None when it must propagate: KeyboardInterrupt and the case's timeout."""
    from ..engines.impl import ImplFailure, Timeout

    if isinstance(exc, KeyboardInterrupt | Timeout):
        return None
    failure = ImplFailure.of(exc, phase_name)
    cause = failure.exception
    if missing_kernel(cause):
        check.status, check.message = "skip", torch_raised(cause)
        check.details["skipped"] = "missing_kernel"
    else:
        check.status, check.message = "fail", failure.message
        check.details["impl_failure"] = dict(failure.details, message=failure.message)
    return check


def mark_lower_precision(check: Check, results) -> None:
    """A float64 result of a user's impl that fails, measured on float32's scale: when its error fits
    float32's rounding budget (``results``: (got, reference, budget) per cotangent), the impl likely computes
    in float32 inside; ``details["lower_precision"]`` records the margin for blame to decide from."""
    margins = []
    for got, ref, budget in results:
        got, ref = np.asarray(got, dtype=float), np.asarray(ref, dtype=float)
        if got.shape != ref.shape:
            return
        allowed = tol.derived(budget, ref, "float32").allowed
        with np.errstate(divide="ignore", invalid="ignore"):
            margin = np.where(got == ref, 0.0, np.abs(got - ref) / allowed)
        margins.append(float(np.max(np.where(np.isnan(margin), np.inf, margin), initial=0.0)))
    worst = max(margins, default=np.inf)
    if worst <= 1.0:
        check.details["lower_precision"] = {"dtype": "float32", "margin": worst}
        check.message += f"; the error fits float32's rounding budget (margin {worst:.2g} on float32's scale)"
