"""What the compile and aliasing transforms share: when a dtype cannot be judged at a point (the same rules as
the autograd stage), and a user's code or torch raising under a transform as a check."""

from __future__ import annotations

import numpy as np

from ... import tolerance as tol
from ...model import Check
from ..autograd import unrepresentable_literal
from ..point import Point, first_bad_op
from ..probes import missing_kernel, torch_raised, user_failure


def unjudgeable(point: Point, dtype: str, fwd, grads) -> str | None:
    """Why ``dtype`` cannot be judged against the reference ``fwd``/``grads``, or None (as ``autograd.on_device``:
    a value that is not finite, a literal beyond the dtype, a mask that may flip, values beyond its range)."""
    if not grads:
        return f"at the inputs rounded to {dtype} the value is not finite ({first_bad_op(point.program, fwd)})"
    literal = unrepresentable_literal(point.case.ir, dtype)
    if literal:
        return literal
    jump = point.program.near_jump(fwd, tol.UNIT_ROUNDOFF[dtype])
    if jump:
        return jump
    peak = max([fwd.peak] + [float(np.max(np.abs(g.value), initial=0.0))
                             for gs in grads for g in gs.values() if np.all(np.isfinite(g.value))])
    if peak > tol.MAX[dtype]:
        return f"values reach {peak:.3g}, beyond {dtype}'s largest {tol.MAX[dtype]:.3g}"
    return None


def raised(point: Point, exc: BaseException, check: Check, what: str) -> Check:
    """``check`` failed (or skipped, for a missing kernel) from what the impl or torch raised under a transform;
    KeyboardInterrupt and the case's timeout propagate, as do errors of diffcheck itself."""
    if point.case.impl:
        found = user_failure(exc, check, what)
        if found is None:
            raise exc
        return found
    if not isinstance(exc, (RuntimeError, NotImplementedError, TypeError, AssertionError)):
        raise exc
    check.status = "skip" if missing_kernel(exc) else "fail"
    check.message = torch_raised(exc) + f" ({what})"
    check.details["skipped" if check.status == "skip" else "raised"] = \
        "missing_kernel" if check.status == "skip" else type(exc).__name__
    return check
