"""Stage ``autograd``: autograd (or the impl) per dtype and device against the reference -- value, every
cotangent's gradient, the semantic checks -- and the known answers on what autograd computed."""

from __future__ import annotations

import numpy as np

from .. import tolerance as tol
from ..compare import _finite, _margins, _ranked, compare, ranks
from ..devices import device_skips
from ..expr.ir import Call, Const, walk
from ..model import Check
from ..outputs import name_entries
from ..text import clip
from .point import Point, cotangent_name, first_bad_op
from .probes import mark_lower_precision, missing_kernel, torch_raised, user_failure


def autograd(point: Point) -> list[Check]:
    checks = []
    for device, skip in device_skips(point.case.devices, point.devices).items():
        if skip:  # reported, never dropped silently
            checks += [Check("grad", point.engine, "symbolic", dtype=dtype, device=device, status="skip",
                             message=skip.message, details={"skipped": skip.code}) for dtype in point.dtypes]
            continue
        for dtype in point.dtypes:
            checks += on_device(point, dtype, device)
    return checks


def unjudgeable(point: Point, dtype: str, fwd, grads) -> str | None:
    """Why ``dtype`` cannot be judged against the reference ``fwd``/``grads`` at the case's point, or None: a value
    that is not finite there, a literal beyond the dtype, a mask (or a surrogate's) that may flip, values beyond
    the dtype's range. The autograd stage and the transforms skip by this one rule."""
    if not grads:  # the inputs rounded to this dtype leave the function's domain (1e-30 is 0 in float16)
        return f"at the inputs rounded to {dtype} the value is not finite ({first_bad_op(point.program, fwd)})"
    literal = unrepresentable_literal(point.case.ir, dtype) if point.case.ir is not None else None
    return literal or point.program.near_jump(fwd, tol.UNIT_ROUNDOFF[dtype]) or point.surrogate_jump(dtype) \
        or beyond_range(fwd, grads, dtype)


def beyond_range(fwd, grads, dtype: str) -> str | None:
    """Values or gradients (the finite ones) beyond ``dtype``'s largest number: nothing can be judged there."""
    peak = max(fwd.peak, _grads_peak(grads))
    return f"values reach {peak:.3g}, beyond {dtype}'s largest {tol.MAX[dtype]:.3g}" if peak > tol.MAX[dtype] else None


_PEAK: list = []  # [grads, their peak]: the latest reference's, which every dtype of a case asks about


def _grads_peak(grads) -> float:
    """The largest magnitude over the finite gradients of ``grads`` (one dict per cotangent), found once per
    reference (the list is held, so identity names it; nothing changes a reference once built)."""
    if not _PEAK or _PEAK[0] is not grads:
        _PEAK[:] = [grads, max([0.0] + [float(np.max(np.abs(g.value), initial=0.0))
                                        for gs in grads for g in gs.values() if np.all(np.isfinite(g.value))])]
    return _PEAK[1]


def on_device(point: Point, dtype: str, device: str) -> list[Check]:
    from ..engines.autograd import run
    from ..engines.impl import phase

    case, engine, out = point.case, point.engine, point.program.out
    fwd, grads = point.expected(dtype)

    def skip(message):
        return [Check("grad", engine, "symbolic", dtype=dtype, device=device, status="skip", message=message)]

    why = unjudgeable(point, dtype, fwd, grads)
    if why:
        return skip(why)
    try:
        # torch's own ops on CPU: once per device is enough for the zero-cotangent and determinism checks;
        # a user's implementation, and CUDA (atomics), get them in every dtype
        semantic = bool(case.impl) or device != "cpu" or dtype == point.dtypes[0]
        with phase("the impl's backward"):
            res = run(point.fn, point.at(dtype), case.grad_vars, dtype, device, point.cotangents, semantic,
                      point.var_dtypes)
    except BaseException as exc:  # a user's impl: whatever it raises is a finding about it
        if case.impl:
            check = user_failure(exc, Check("grad", engine, "symbolic", dtype=dtype, device=device), "backward")
            if check is not None:
                return [check]
        if not isinstance(exc, (RuntimeError, NotImplementedError, TypeError)):
            raise
        kernel = missing_kernel(exc)
        return [Check("grad", engine, "symbolic", dtype=dtype, device=device, status="skip" if kernel else "fail",
                      message=torch_raised(exc),
                      details={"skipped": "missing_kernel"} if kernel else {"raised": type(exc).__name__})]
    checks = []
    if res.problems:
        details = {"nondeterministic": res.nondeterministic} if res.nondeterministic else {}
        if res.out_dtype and res.out_dtype != dtype:
            details["out_dtype"] = res.out_dtype
        checks.append(Check("semantic", engine, "input metadata", dtype=dtype, device=device, status="fail",
                            message="; ".join(res.problems), details=details))
    elif res.semantic_ran:  # recorded when it passes too, so -v and the JSON show what ran
        checks.append(Check("semantic", engine, "input metadata", dtype=dtype, device=device,
                            message="gradients have their inputs' dtype, device and shape; a zero upstream "
                                    "gradient gives zero; backward run twice gives the same gradient"))
    value_tol = tol.derived(fwd.errs[out], fwd.values[out], dtype, case.tolerance)
    value = compare(Check("value", engine, "symbolic", dtype=dtype, device=device), res.value, fwd.values[out],
                    value_tol)
    name_entries(value, case.outputs, res.value, fwd.values[out], value_tol.allowed)  # several outputs
    checks.append(value)
    if case.impl and value.status == "fail" and dtype == "float64":
        mark_lower_precision(value, [(res.value, fwd.values[out], fwd.errs[out])])
    for name in case.grad_vars:
        check = worst_over_cotangents(point, res, grads, name, dtype, device)
        checks.append(check)
        if case.impl and check.status == "fail" and dtype == "float64":
            mark_lower_precision(check, [(v[name], g[name].value, g[name].err) for v, g in zip(res.vjps, grads)])
    if case.expect is not None:
        checks += expect_on_autograd(point, res, fwd, grads, dtype, device)
    return checks


def worst_over_cotangents(point: Point, res, grads, name, dtype, device) -> Check:
    """Judge every cotangent's VJP; report the one with the worst margin in full."""
    against = "surrogate" if name in point.surrogates else "symbolic"
    if not all(_finite(ref[name].value) for ref in grads):
        return Check("grad", point.engine, against, var=name, dtype=dtype, device=device, status="skip",
                     message="the reference gradient is not finite at this point (a singularity)")
    margins = stacked_margins(res.vjps, grads, name, dtype, point.case.tolerance)
    known = {}  # cotangent -> (its tolerance, its _margins): the worst one's are not computed again
    if margins is None:  # one cotangent at a time
        margins = [one_margin(vjp[name], ref[name], dtype, point.case.tolerance, known, k)
                   for k, (vjp, ref) in enumerate(zip(res.vjps, grads))]
    worst_ci = int(np.argmax(margins))
    g = grads[worst_ci][name]
    surrogate = name in point.surrogates  # finite differences of the forward say nothing about a declared rule
    t, pre = known.get(worst_ci) or (tol.derived(g.err, g.value, dtype, point.case.tolerance), None)
    worst = compare(Check("grad", point.engine, against, var=name, dtype=dtype, device=device),
                    res.vjps[worst_ci][name], g.value, t,
                    lo=g.lo, hi=g.hi, fd=point.fd_values(name) if worst_ci == 0 and not surrogate else None,
                    upstream=point.cotangents[worst_ci], known=pre)
    if worst.status == "fail" and worst.worst and not surrogate:
        add_fd_column(point, worst, grads, worst_ci, name)
    what = cotangent_name(worst_ci, len(point.cotangents), point.case.outputs)
    worst.message = (worst.message + "; " if worst.message else "") + f"{len(res.vjps)} cotangents, worst: {what}"
    if surrogate:
        worst.message += f"; declared surrogate.{name} = {clip(repr(point.case.surrogate[name][0]), 80)}"
    return worst


def one_margin(got, g, dtype, override, known: dict, k: int) -> float:
    """``worst_margin`` of one cotangent's VJP against its reference ``g``; keeps the tolerance and margins of
    the worst so far in ``known`` (k -> them), for its report."""
    t = tol.derived(g.err, g.value, dtype, override)
    got = np.asarray(got, dtype=float)
    if got.shape != np.shape(g.value):
        return float("inf")
    pre = _margins(got, g.value, t.allowed, g.lo, g.hi)
    worst = float(np.max(_ranked(got, g.value, t.allowed, pre), initial=0.0))
    if not known or worst > known["worst"]:  # argmax keeps the first of equal margins: so does this
        known.clear()
        known.update({k: (t, pre), "worst": worst})
    return worst


STACKED_ENTRIES = 4096  # cotangents are ranked in one stacked pass while the stack holds at most this many entries
# (the pass saves numpy's per-call overhead on small arrays; on large ones its copies cost more than they save)


def stacked_margins(vjps, grads, name, dtype, override) -> list[float] | None:
    """``worst_margin`` of each cotangent's VJP of ``name`` against its reference, all cotangents stacked in one
    pass: the same elementwise arithmetic on every entry, so the same numbers, without a pass per cotangent.
    None where a VJP's shape is not its reference's (``worst_margin`` ranks it inf) or the stack is large."""
    shape = np.shape(grads[0][name].value)
    gots = [np.asarray(v[name], dtype=float) for v in vjps]
    if len(gots) != len(grads) or any(x.shape != shape for x in gots) or \
            any(np.shape(g[name].value) != shape for g in grads) or len(gots) * int(np.prod(shape)) > STACKED_ENTRIES:
        return None

    def stack(parts):  # each part broadcast into its row (np.stack of broadcast_to views costs more, in Python)
        out = np.empty((len(parts), *shape))
        for k, part in enumerate(parts):
            out[k] = part
        return out

    refs = [g[name] for g in grads]
    got, ref = stack(gots), stack([r.value for r in refs])
    allowed = tol.derived(stack([r.err for r in refs]), ref, dtype, override).allowed
    lo = stack([r.lo for r in refs])
    hull = all(r.lo is r.hi for r in refs)  # every reference without a kink: its hull is one array
    ranked = ranks(got, ref, allowed, lo, lo if hull else stack([r.hi for r in refs]))
    return [float(m) for m in np.max(ranked.reshape(len(gots), -1), axis=1, initial=0.0)]


def add_fd_column(point: Point, check: Check, grads, ci: int, name: str) -> None:
    """Finite differences of the failing entries, so the report shows all three values for each."""
    from ..engines import finite

    evaluate, noise = point.evaluator(ci)
    shape = grads[ci][name].value.shape
    flats = [int(np.ravel_multi_index(e.index, shape)) if shape else 0 for e in check.worst]
    for entry, est in zip(check.worst, finite.entrywise(evaluate, point.at("float64"), name, flats, noise,
                                                                  method=point.fd)):
        entry.fd = est.value if np.isfinite(est.value) else None


def expect_on_autograd(point: Point, res, fwd, grads, dtype, device) -> list[Check]:
    expect, checks = point.case.expect, []
    if expect.value is not None:
        t = tol.expected(expect.value, expect.atol, expect.rtol, fwd.errs[point.program.out], dtype)
        checks.append(name_entries(compare(Check("expect_value", point.engine, "expect", dtype=dtype, device=device),
                                           res.value, expect.value, t), point.case.outputs, res.value, expect.value,
                                   t.allowed))
    for name, want in expect.grad.items():
        g = grads[0][name]
        t = tol.expected(want, expect.atol, expect.rtol, g.err, dtype)
        checks.append(compare(Check("expect_grad", point.engine, "expect", var=name, dtype=dtype, device=device),
                              res.vjps[0][name], want, t, lo=g.lo, hi=g.hi))
    return checks


def unrepresentable_literal(ir, dtype: str) -> str | None:
    """Why ``dtype`` cannot run the expression as written: a number literal or parameter beyond its range
    (x**1e300 in float32 is x**inf), or None."""
    for n in walk(ir):
        values = [("literal", n.value)] if isinstance(n, Const) else \
            [(f"{n.op}() parameter {k} =", v) for k, v in n.params] if isinstance(n, Call) else []
        for what, v in values:
            if isinstance(v, float) and np.isfinite(v) and abs(v) > tol.MAX[dtype]:  # inf is every dtype's inf
                return f"the {what} {v:g} is not representable in {dtype} (its largest is {tol.MAX[dtype]:.3g})"
        eps = dict(n.params).get("eps") if isinstance(n, Call) and n.op in EPS_IN_DTYPE else None
        if eps and abs(eps) <= tol.TINY[dtype] * tol.UNIT_ROUNDOFF[dtype]:  # rounds to 0
            return (f"the {n.op}() parameter eps = {eps:g} is 0 in {dtype} (below its smallest subnormal "
                    f"{2 * tol.TINY[dtype] * tol.UNIT_ROUNDOFF[dtype]:.3g}): torch's max(norm, eps) is then 0 at a "
                    f"zero norm, and 0/0 is nan")
    return None


# ops whose torch kernel clamps a norm by eps in the input's own dtype (layer_norm and rms_norm compute float16 in
# float32, so their eps stays representable)
EPS_IN_DTYPE = ("normalize", "cosine_similarity")
