"""What the transforms share: the device x dtype loop with the autograd stage's skip rules and when a dtype
cannot be judged at a point, the reference at a point other than the case's own (a batch member, a point whose
values repeat, the aliased point), VJPs judged against it, and the rule that tells torch refusing a transform (a
skip) from user code failing under it (a finding)."""

from __future__ import annotations

import sysconfig
from pathlib import Path

import numpy as np

from ... import tolerance as tol
from ...compare import compare, worst_margin
from ...devices import device_skips
from ...model import Check
from ..autograd import beyond_range, unjudgeable
from ..point import Point, cotangent_name, first_bad_op
from ..probes import missing_kernel, torch_raised, user_failure


def per_device(point: Point, kind: str, on_device) -> list[Check]:
    """``on_device(point, dtype, device)`` for every dtype and device the run asked for; the devices that cannot
    run and the dtypes whose point the autograd stage skips are skipped here too, with the same reasons."""
    checks = []
    for device, skip in device_skips(point.case.devices, point.devices).items():
        if skip:  # reported, never dropped silently
            checks += [Check(kind, point.engine, "symbolic", dtype=dtype, device=device, status="skip",
                             message=skip.message, details={"skipped": skip.code}) for dtype in point.dtypes]
            continue
        for dtype in point.dtypes:
            why = unjudgeable(point, dtype, *point.expected(dtype))
            if why:
                checks.append(Check(kind, point.engine, "symbolic", dtype=dtype, device=device, status="skip",
                                    message=why))
                continue
            checks += on_device(point, dtype, device)
    return checks


def reference_at(point: Point, inputs: dict, dtype: str, cotangents) -> tuple:
    """(forward, one gradient per cotangent, None) of the reference at ``inputs`` (values representable in
    ``dtype``), or (forward, [], why) where that point cannot be judged in ``dtype``."""
    program = point.program
    fwd = program.forward(inputs, kink_u=tol.UNIT_ROUNDOFF[point.low])
    if point.surrogates:  # the declared rules are evaluated at the case's own point (Point.expected) only
        return fwd, [], "a declared surrogate gradient is judged at the case's own point only"
    bad = program.outside_domain(fwd)
    if bad or not point.finite(fwd):
        return fwd, [], bad or f"the value is not finite there ({first_bad_op(program, fwd)})"
    grads = [program.gradient(fwd, c) for c in cotangents]
    if not all(np.all(np.isfinite(g.value)) for gs in grads for g in gs.values()):
        return fwd, [], "the reference gradient is not finite there (a singularity)"
    return fwd, grads, program.near_jump(fwd, tol.UNIT_ROUNDOFF[dtype]) or beyond_range(fwd, grads, dtype)


def tensor(point: Point, name: str, x, dtype: str, device: str, requires_grad: bool = True):
    from ...engines.autograd import input_tensor

    return input_tensor(x, dtype, device, requires_grad and name in point.case.grad_vars,
                        point.var_dtypes.get(name))


def judge_grads(point: Point, kind: str, got: list[dict], grads: list[dict], dtype: str, device: str, what: str,
                upstreams=None, details=None, labels=None) -> list[Check]:
    """Each grad var's VJPs (one per cotangent, ``got``) against the reference ``grads`` under the derived
    tolerance; the worst cotangent (or the worst of ``labels``) is reported in full, its message starting with
    ``what``."""
    checks = []
    upstreams = point.cotangents if upstreams is None else upstreams
    for name in point.case.grad_vars:
        check = Check(kind, point.engine, "symbolic", var=name, dtype=dtype, device=device,
                      details=dict(details or {}))
        if not all(np.all(np.isfinite(g[name].value)) for g in grads):
            check.status = "skip"
            check.message = f"{what}: the reference gradient is not finite at this point (a singularity)"
            checks.append(check)
            continue
        tolerances = [tol.derived(g[name].err, g[name].value, dtype, point.case.tolerance) for g in grads]
        margins = [worst_margin(v[name], g[name].value, t.allowed, g[name].lo, g[name].hi)
                   for v, g, t in zip(got, grads, tolerances)]
        ci = int(np.argmax(margins))
        g = grads[ci][name]
        compare(check, got[ci][name], g.value, tolerances[ci], lo=g.lo, hi=g.hi, upstream=upstreams[ci])
        worst = labels[ci] if labels else f"{len(got)} cotangents, worst: {cotangent_name(ci, len(got))}"
        check.message = f"{what}: " + (check.message + "; " if check.message else "") + worst
        checks.append(check)
    return checks


def judge_value(point: Point, kind: str, got, fwd, dtype: str, device: str, what: str, details=None) -> Check:
    """The forward value against the reference's (``fwd`` a list: ``got`` stacks one value per forward)."""
    out = point.program.out
    ref, err = (np.stack([f.values[out] for f in fwd]),
                np.stack([np.broadcast_to(f.errs[out], np.shape(f.values[out])) for f in fwd])) \
        if isinstance(fwd, list) else (fwd.values[out], fwd.errs[out])
    check = compare(Check(kind, point.engine, "symbolic", dtype=dtype, device=device, details=dict(details or {})),
                    got, ref, tol.derived(np.broadcast_to(err, np.shape(ref)), ref, dtype, point.case.tolerance))
    check.message = f"{what}: value" + (f"; {check.message}" if check.message else "")
    return check


def in_user_code(exc: BaseException) -> bool:
    """Whether ``exc`` was raised in or through a frame of the user's code (not torch, diffcheck or Python's)."""
    import torch

    ours = (str(Path(torch.__file__).parent), str(Path(__file__).resolve().parent.parent.parent),
            sysconfig.get_paths()["stdlib"], "<")
    tb = exc.__traceback__
    while tb is not None:
        name = tb.tb_frame.f_code.co_filename
        if not name.startswith(ours):
            return True
        tb = tb.tb_next
    return False


def failure(point: Point, exc: BaseException, check: Check, phase_name: str, refused: str = "skip") -> Check:
    """``check`` filled from ``exc`` escaping a run under a transform: user code failing (it raised, or its frames
    are on the way) is a finding; torch refusing the transform (no batching rule, no forward-mode formula, a
    Function without ``setup_context``) is ``refused`` ("skip" or "fail") with torch's reason. Re-raises the
    case's timeout, KeyboardInterrupt, and what is neither (a bug of diffcheck's)."""
    from ...engines.impl import ImplFailure, Timeout

    if isinstance(exc, KeyboardInterrupt | Timeout):
        raise exc
    cause = exc.exception if isinstance(exc, ImplFailure) else exc
    if point.case.impl and (cause is None or in_user_code(cause)):
        return user_failure(exc, check, phase_name)
    if not isinstance(cause, RuntimeError | NotImplementedError | TypeError | ValueError):
        raise exc
    check.message = torch_raised(cause)
    if missing_kernel(cause):
        check.status = "skip"
        check.details["skipped"] = "missing_kernel"
    else:
        check.status = refused
        check.details["raised"] = type(cause).__name__
    return check


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
