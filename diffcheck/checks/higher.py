"""Stage ``higher`` (``order = 2`` or ``3``): higher derivatives against the symbolic engine's exact ones.

The reference (``engines.jets``) runs the program's forward and reverse passes on jets along random directions
v (and w): the exact H v of <c, f> (and the third derivative D3[c, v, w]) with a per-entry rounding budget, from
sympy's derivatives of each op's rule. ``higher_reference`` cross-checks it, in float64, against Richardson
differences of the exact gradient (of the exact H v for the third order) -- the ``fd`` check of first order;
``higher_autograd`` judges torch's reverse-over-reverse H v (``hvp``), forward-over-reverse H v (``hvp_fwd``) and
reverse^3 third derivative (``d3``) in every dtype and device with ``tolerance.derived``'s allowance of the budget.
"""

from __future__ import annotations

import numpy as np

from .. import tolerance as tol
from ..compare import compare
from ..devices import device_skips
from ..model import Check
from .point import Point, stage_rng
from .probes import fd_source, missing_derivative, missing_kernel, torch_raised, user_failure

AGAINST = {"hvp": "symbolic (exact H v)", "hvp_fwd": "symbolic (exact H v)", "d3": "symbolic (exact D3[c, v, w])"}
HOW = {"hvp": "reverse-over-reverse (double backward)", "hvp_fwd": "forward-over-reverse (torch.func.jvp of the VJP)",
       "d3": "reverse-over-reverse-over-reverse"}


def directions(point: Point) -> list[dict]:
    """v (and w for order 3): random, scaled like the inputs, exact in the case's least precise dtype."""
    from ..engines import finite
    from ..engines.autograd import round_to

    rng = stage_rng(point.seed, "higher")
    x = point.at("float64")
    return [{n: round_to(finite.random_direction(x[n], rng), point.low) for n in point.case.grad_vars}
            for _ in range(point.case.order - 1)]


def higher_cotangent(point: Point):
    """c of H v = d/dx <grad <c, f>, v>: the first random cotangent (a scalar's random scale). Not the last one:
    for a small output that is a basis vector, and H v of one output entry misses a double backward wrong in
    every other entry."""
    return point.cotangents[1] if len(point.cotangents) > 1 else point.cotangents[0]


def exact(point: Point, dtype: str, dirs, fwd=None):
    """The jets of the gradient at ``dtype``'s point (or at ``fwd``): per var [grad, H v, (H w, D3[c, v, w])]."""
    from ..engines import jets

    fwd = fwd if fwd is not None else point.reference(dtype)[0]
    return jets.derivatives(point.program, fwd, higher_cotangent(point), dirs)


def higher_reference(point: Point) -> list[Check]:
    """The exact H v (and D3) against Richardson differences of the exact lower derivative, float64."""
    from ..engines import jets

    if point.case.callable_reference:  # no exact jets: higher_autograd differences the reference's gradient
        return []
    dirs = directions(point)
    fwd, grads = point.reference("float64")
    if not grads:
        return []
    try:
        ref = exact(point, "float64", dirs)
    except jets.Unavailable as exc:
        return [Check(kind, "symbolic", "exact higher derivatives", status="skip", message=str(exc))
                for kind in _kinds(point)]
    x, program, cot = point.at("float64"), point.program, higher_cotangent(point)

    def lower(inputs, component):  # detach() values stay those of the base point, as in double backward
        f = program.forward(inputs, tol.UNIT_ROUNDOFF[point.low], detached_from=fwd)
        if component == 0:
            return {n: g for n, g in program.vjp(f, cot).items()}, program.kink_signature(f)
        return ({n: jet[component] for n, jet in jets.derivatives(program, f, cot, dirs[:1]).items()},
                program.kink_signature(f))

    checks = []
    for kind, component, along, of in (("hvp", 1, dirs[0], 0), ("d3", 3, dirs[-1], 1))[:len(dirs)]:
        try:
            diff, err, why = _differences(lambda inputs, c=of: lower(inputs, c), x, along, point.fd)
        except jets.Unavailable as exc:  # a perturbed point reached a kink
            why = str(exc)
        if why:
            checks.append(Check(kind, "symbolic", "finite differences", status="skip", message=why))
            continue
        for n in point.case.grad_vars:
            value, budget = ref[n][component]
            if not np.all(np.isfinite(value)):  # as first order: a reference that is not finite is not differenced
                checks.append(Check(kind, "symbolic", "finite differences", var=n, status="skip",
                                    message="the exact derivative is not finite here"))
                continue
            allowed = point.fd.safety * err[n] + tol.derived(budget, value, "float64").allowed
            checks.append(compare(Check(kind, "symbolic", "finite differences", var=n, dtype="float64",
                                        device="cpu"), value, diff[n],
                                  tol.Tolerance(allowed, None, None, fd_source(point.fd)), fd=diff[n]))
    return checks


def _differences(lower, x, along, method):
    """d/dt of the exact lower derivative G(x + t v) by Richardson differences (as ``finite.directional``:
    steps shrink while a step crosses a kink or jump, or leaves the domain): values, error bounds and, where no
    step worked, why. The error bound is the worst of the Richardson estimates at the first good step h and at
    h/10 and of their disagreement (a truncation estimate can be too hopeful), plus the rounding of G: its
    float64 budget and the floor ``finite.directional_vector`` takes, through the Richardson weights."""
    from ..engines import finite

    base, sig0 = lower(x)
    h, found = method.first_step, []
    while h >= method.smallest_step and len(found) < 2:
        diffs, noise = [], {n: 64 * finite.U64 * float(np.max(np.abs(g[0]), initial=0.0)) for n, g in base.items()}
        for step in (h, h / 2, h / 4):
            (plus, sig_p), (minus, sig_m) = lower(finite._shift(x, along, step)), lower(finite._shift(x, along, -step))
            if not (finite._same(sig0, sig_p) and finite._same(sig0, sig_m)) or not all(
                    np.all(np.isfinite(p[0])) and np.all(np.isfinite(m[0])) for p, m in zip(plus.values(),
                                                                                         minus.values())):
                break
            diffs.append({n: (plus[n][0] - minus[n][0]) / (2 * step) for n in plus})
            for n in plus:
                noise[n] = np.maximum(noise[n], finite.U64 * np.maximum(plus[n][1], minus[n][1]))
        if len(diffs) == 3:
            found.append({n: finite._richardson([d[n] for d in diffs], h, noise[n]) for n in diffs[0]})
        elif found:
            break
        h *= method.shrink
    if not found:
        return None, None, "a kink or jump lies within every step tried, or the function is not finite near here"
    value = {n: v for n, (v, _) in found[0].items()}
    error = {n: e if len(found) == 1 else np.maximum(np.maximum(e, found[1][n][1]), np.abs(v - found[1][n][0]))
             for n, (v, e) in found[0].items()}
    return value, error, ""


def higher_autograd(point: Point) -> list[Check]:
    """torch's higher derivatives (autograd or the impl) per dtype and device against the exact ones."""
    checks = []
    dirs = directions(point)
    if point.case.callable_reference:
        return _callable_higher(point, dirs)
    for device, skip in device_skips(point.case.devices, point.devices).items():
        for dtype in point.dtypes:
            if skip:  # reported, never dropped silently
                checks += [Check(kind, point.engine, AGAINST[kind], dtype=dtype, device=device, status="skip",
                                 message=skip.message, details={"skipped": skip.code}) for kind in _kinds(point)]
            else:
                checks += _on_device(point, dtype, device, dirs)
    return checks


def _callable_higher(point: Point, dirs) -> list[Check]:
    """A Python reference (or the impl alone) has no exact jets: the impl's double backward H v, float64 on each
    device, against Richardson differences of the reference's own float64 gradient along v (the impl's own, for
    the impl alone: its double backward must agree with its backward). Other dtypes, forward-over-reverse and
    the third order have no measured budget here and are skips that say so."""
    from ..engines import finite, torch_higher
    from ..engines.impl import phase

    x, names, cot, program = point.at("float64"), point.case.grad_vars, higher_cotangent(point), point.program

    def lower(inputs):
        grads = program.vjp(program.forward(inputs, with_err=False), cot)
        return {n: (g, np.zeros(np.shape(g))) for n, (g, _) in grads.items()}, []

    what = "finite differences of the reference's gradient"
    try:
        diff, err, why = _differences(lower, x, dirs[0], point.fd)
    except Exception as exc:  # the reference raised at a step: reported as its first-order checks report it
        diff, why = None, f"the reference raised {type(exc).__name__} at a finite-difference step"
    checks = []
    for device, skip in device_skips(point.case.devices, point.devices).items():
        for dtype in point.dtypes:
            others = {"hvp_fwd": "forward-over-reverse", "d3": "the third derivative"}
            reason = skip.message if skip else why or (
                f"judged in float64 only: a {'Python reference' if point.case.reference else 'impl alone'} has no "
                f"rounding budget for {dtype}'s H v" if dtype != "float64" else "")
            for kind in _kinds(point):
                if reason or kind != "hvp":
                    checks.append(Check(kind, point.engine, what, dtype=dtype, device=device, status="skip",
                                        message=reason or f"{others[kind]} needs expr's exact higher derivatives "
                                                          "(a Python reference has none)"))
            if reason:
                continue
            allowed = {n: point.fd.safety * err[n] + 64 * finite.U64 * np.max(np.abs(diff[n]), initial=0.0)
                       for n in names}
            zero, kind = all(np.all(np.abs(diff[n]) <= allowed[n]) for n in names), "hvp"
            check = Check(kind, point.engine, what, dtype=dtype, device=device)
            try:
                with phase(f"the impl's {HOW['hvp']}"):
                    got = torch_higher.reverse(point.fn, x, names, cot, dirs[:1], dtype, device, point.var_dtypes,
                                               (zero, False))
            except BaseException as exc:
                failed = _raised(point, check, exc, kind)
                if failed is None:
                    raise
                checks.append(failed)
                continue
            checks += [compare(Check(kind, point.engine, what, var=n, dtype=dtype, device=device), got[n], diff[n],
                               tol.Tolerance(allowed[n], None, None, fd_source(point.fd)), fd=diff[n])
                       for n in names]
    return checks


def _kinds(point: Point) -> tuple[str, ...]:
    return ("hvp", "hvp_fwd", "d3") if point.case.order == 3 else ("hvp", "hvp_fwd")


def _on_device(point: Point, dtype: str, device: str, dirs) -> list[Check]:
    from ..engines import jets, torch_higher
    from ..engines.impl import phase

    def skipped(message):
        return [Check(kind, point.engine, AGAINST[kind], dtype=dtype, device=device, status="skip",
                      message=message) for kind in _kinds(point)]

    fwd, grads = point.reference(dtype)
    if not grads:
        return skipped(f"at the inputs rounded to {dtype} the value is not finite")
    jump = point.program.near_jump(fwd, tol.UNIT_ROUNDOFF[dtype])
    if jump:
        return skipped(jump)
    try:
        ref = exact(point, dtype, dirs)
    except jets.Unavailable as exc:
        return skipped(str(exc))
    peak = max([fwd.peak, jets.PEAK.value] + [float(np.max(np.abs(c[0]), initial=0.0)) for jet in ref.values()
                                              for c in jet])
    if not np.isfinite(peak) or peak > tol.MAX[dtype]:
        return skipped(f"values reach {peak:.3g}, beyond {dtype}'s largest {tol.MAX[dtype]:.3g}")
    x, names, cot = point.at(dtype), point.case.grad_vars, higher_cotangent(point)
    checks = []
    for kind in _kinds(point):
        component = 3 if kind == "d3" else 1
        # 0 within the reference's own float64 rounding: a graph that ends there (a constant H v) is a 0
        zero = [all(np.all(np.abs(jet[c][0]) <= tol.derived(jet[c][1], jet[c][0], "float64").allowed)
                    for jet in ref.values()) for c in (1, 3)[:len(ref[names[0]]) // 2]]
        check = Check(kind, point.engine, AGAINST[kind], dtype=dtype, device=device)
        try:
            with phase(f"the impl's {HOW[kind]}"):
                if kind == "hvp_fwd":
                    got = torch_higher.forward_over_reverse(point.fn, x, names, cot, dirs[0], dtype, device,
                                                            point.var_dtypes)
                else:
                    got = torch_higher.reverse(point.fn, x, names, cot, dirs if kind == "d3" else dirs[:1], dtype,
                                               device, point.var_dtypes, zero)
        except BaseException as exc:  # user code, an op without a higher-order rule in torch
            failed = _raised(point, check, exc, kind)
            if failed is None:
                raise
            checks.append(failed)
            continue
        for n in names:
            value, budget = ref[n][component]
            if not np.all(np.isfinite(value)):  # 0/0 in a local derivative (x**2 lowered as pow at x = 0)
                checks.append(Check(kind, point.engine, AGAINST[kind], var=n, dtype=dtype, device=device,
                                    status="skip", message="the exact derivative is not finite here"))
                continue
            checks.append(compare(Check(kind, point.engine, AGAINST[kind], var=n, dtype=dtype, device=device),
                                  got[n], value, tol.derived(budget, value, dtype, point.case.tolerance)))
    return checks


def _raised(point: Point, check: Check, exc: BaseException, kind: str) -> Check | None:
    """What an exception of torch or the impl under a higher-order computation means: forward mode unsupported is
    a skip with the reason (as first order's ``jvp``); anything else from the impl a finding about it."""
    from ..engines.impl import Timeout

    if isinstance(exc, KeyboardInterrupt | Timeout):
        return None
    cause = getattr(exc, "exception", None) or exc
    if missing_derivative(cause):
        check.status, check.message = "skip", f"torch cannot compute it: {torch_raised(cause)}"
        return check
    if kind == "hvp_fwd":
        check.status = "skip"
        reason = " ".join(str(cause).split())[:300]
        check.message = f"forward-over-reverse not supported: {type(cause).__name__}: {reason}"
        return check
    if point.case.impl:
        return user_failure(exc, check, "double backward" if kind == "hvp" else "third-order backward")
    if not isinstance(exc, Exception):
        return None
    kernel = missing_kernel(exc)
    check.status, check.message = ("skip" if kernel else "fail"), torch_raised(exc)
    check.details = {"skipped": "missing_kernel"} if kernel else {"raised": type(exc).__name__}
    return check
