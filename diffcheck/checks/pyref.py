"""Cases without ``expr``: a Python ``reference`` (engines.callable_ref), or the impl alone, its own verified
float64 backward being the reference of its lower dtypes. ``prepare`` builds their point, ``relabel`` names what
the shared stages judged (the reference, or the impl itself, instead of the symbolic engine), and the stage
``precision`` measures the rounding noise of an impl's float64 forward: a float32 buffer inside a float64 run is
reported as exactly that.
"""

from __future__ import annotations

import numpy as np

from .. import tolerance as tol
from ..compare import compare
from ..model import Check
from .point import SMALL, Point, build_point, stage_rng

SPACING = 4 * 2.0**-24  # relative steps of the precision probe: each crosses a few float32 rounding boundaries
POINTS = 17  # points on the line per step size
TRIMMED = 3  # the largest second differences left out
NOISE_LIMIT = 1e-10  # float64 arithmetic stays near 1e-16 (1e-13 when ill-conditioned); float32 near 6e-8
SPLIT = 8  # localization: a failing block of entries is split into this many, each probed on its own
KEEP = 4  # and at most this many failing blocks are followed down


def prepare(case, options, seed: int, fn, dtypes, checks: list[Check]) -> Point | None:
    """The point of a case without ``expr``, its float64 reference computed for every dtype; None (with the
    failing check appended) where the reference, or the impl alone, fails while it runs as the reference."""
    from ..engines.callable_ref import ReferenceFailure
    from ..engines.impl import Timeout

    try:
        point = build_point(case, options, seed, fn, dtypes)
    except ReferenceFailure as exc:
        checks.append(failure_check(exc.exception, exc.who))
        return None
    try:
        for dtype in ["float64", *dtypes]:
            point.reference(dtype)
    except (KeyboardInterrupt, Timeout):
        raise
    except BaseException as exc:  # user code: a finding about the case, never a traceback
        checks.append(failure_check(exc, point.program.who, "backward"))
        return None
    return point


def failure_check(exc: BaseException, who: str, phase: str = "forward") -> Check:
    """A failing check for the reference (or the impl alone) raising while it runs as the reference."""
    from ..engines.impl import ImplFailure

    failure = ImplFailure.of(exc, phase)
    check = Check("value", who, "its own forward", dtype="float64", device="cpu", status="fail")
    if who == "impl":
        check.message = failure.message
        check.details["impl_failure"] = dict(failure.details, message=failure.message)
    else:
        check.message = failure.message.replace("the impl ", "the reference ", 1)
        check.details["reference_failure"] = dict(failure.details, message=check.message)
    return check


def self_reference(point: Point) -> bool:
    """Whether the impl is its own reference (a case with neither expr nor reference)."""
    return getattr(point.program, "who", None) == "impl"


def relabel(point: Point, checks: list[Check]) -> None:
    """Name the engine the shared stages judged as the reference: the case's reference function, or, for the impl
    alone, the impl's own float64 run (its backward against finite differences of its own forward is ``self_fd``).
    Tolerances say their budget was measured (engines.callable_ref)."""
    alone = self_reference(point)
    for c in checks:
        if c.engine == "symbolic":
            if alone and c.kind == "fd":
                c.kind, c.against = "self_fd", "finite differences of the impl's own forward"
            c.engine = "impl" if alone else "reference"
        if c.against.startswith("symbolic"):
            c.against = ("float64 impl (its own, verified)" if alone else "reference") + c.against[len("symbolic"):]
        c.tolerance = c.tolerance.replace("error budget", "measured rounding budget")


def precision(point: Point) -> list[Check]:
    """The float64 forward's rounding noise: second differences of the output along a random line (their trimmed
    mean), at two step sizes (rounding noise does not shrink with the step, curvature does). Noise far above
    float64's is a lower precision inside: a float32 buffer, a ``.float()`` somewhere."""
    import torch

    from ..engines import finite
    from ..engines.autograd import input_tensor, to_numpy
    from ..engines.impl import phase
    from .probes import user_failure

    x, case = point.at("float64"), point.case
    names = list(case.grad_vars)
    rng = stage_rng(point.seed, "precision")
    v = {n: finite.random_direction(x[n], rng) for n in names}
    check = Check("precision", "impl", "float64 rounding noise", dtype="float64", device="cpu")

    def forward(t):
        with torch.no_grad():
            inputs = {n: x[n] + t * v[n] if n in v else x[n] for n in x}
            return to_numpy(point.fn(**{n: input_tensor(a, "float64", "cpu", False, case.vars[n].dtype)
                                        for n, a in inputs.items()}))

    levels = []
    try:
        with phase("the impl's forward"):
            for step in (SPACING, SPACING / 2):
                values = [forward(step * j) for j in range(-POINTS // 2, POINTS // 2 + 1)]
                scale = float(np.sqrt(np.mean(np.square(values[POINTS // 2])))) if np.size(values[0]) else 0.0
                second = sorted(float(np.sqrt(np.mean(np.square(values[j - 1] - 2 * values[j] + values[j + 1]))))
                                for j in range(1, len(values) - 1))
                kept = second[:len(second) - TRIMMED]  # a kink or jump on the line spoils one or two of them
                levels.append(float(np.mean(kept)) / 2 / scale if scale > 0 else 0.0)
    except BaseException as exc:  # user code: the value checks report it; this probe only says so
        failed = user_failure(exc, check, "forward")
        if failed is None:
            raise
        return [failed]
    if not all(np.isfinite(levels)):
        check.status, check.message = "skip", "the forward is not finite along the probe line"
        return [check]
    noise = levels[0]
    check.details["noise"] = noise
    rounding = levels[1] > levels[0] / 2  # noise, not curvature (that would fall 4x with the halved step)
    if noise > NOISE_LIMIT and rounding:
        dtype = "float32" if noise <= 64 * 2.0**-24 else "float16 or bfloat16"
        u = 2.0**-24 if dtype == "float32" else 2.0**-11
        check.status = "fail"
        check.details["internal_precision"] = {"dtype": dtype, "noise": noise}
        check.message = (f"the impl computes in {dtype} internally: its float64 forward deviates from a smooth "
                         f"function by ~{noise:.1g} relative (second differences along a random line; float64 "
                         f"arithmetic gives ~1e-16, {dtype}'s unit roundoff is {u:.1g})")
    else:
        check.message = f"rounding noise of the float64 forward ~{noise:.1g} relative: float64 arithmetic"
    return [check]


def localize(point: Point, checks: list[Check]) -> None:
    """The impl alone has no reference gradient to compare entry by entry, so a failing random-direction
    ``self_fd`` of a large var is followed down: its entries are split into SPLIT blocks, each block probed along
    a random direction of its own, the failing ones (at most KEEP) split again, down to SMALL entries, which are
    then differenced one by one. The entrywise check is put before the directional one, so the verdict names
    the entries."""
    for c in list(checks):
        if c.kind == "self_fd" and c.status == "fail" and c.details.get("probe") == "random direction" and \
                c.engine == "impl" and c.var in point.case.grad_vars:
            found = _localized(point, c.var)
            if found is not None:
                checks.insert(checks.index(c), found)


def _localized(point: Point, name: str) -> Check | None:
    from ..engines import finite

    evaluate, noise = point.evaluator(0)
    x = point.at("float64")
    g = point.reference("float64")[1][0][name]
    shape, size = g.value.shape, g.value.size
    if size <= SMALL:
        return None
    scale = finite.entry_scale(x[name]).reshape(-1)
    flat_g, flat_err = g.value.reshape(-1), np.broadcast_to(g.err, shape).reshape(-1)
    rng = stage_rng(point.seed, "localize")

    def fails(block) -> bool:
        v = np.zeros(size)
        v[block] = rng.standard_normal(len(block)) * scale[block]
        est = finite.directional(evaluate, x, {name: v.reshape(shape)}, noise, method=point.fd)
        if not np.isfinite(est.value):
            return False
        allowed = point.fd.safety * est.error + tol.SAFETY * tol.UNIT_ROUNDOFF["float64"] * float(
            np.sum(np.abs(v) * flat_err))
        return abs(float(np.sum(flat_g * v)) - est.value) > allowed

    blocks = [np.arange(size)]
    while blocks and max(len(b) for b in blocks) > SMALL:
        blocks = [part for b in blocks for part in np.array_split(b, SPLIT) if len(part) and fails(part)][:KEEP]
    if not blocks:
        return None
    flats = np.concatenate(blocks)
    ests = finite.entrywise(evaluate, x, name, [int(f) for f in flats], noise, method=point.fd)
    values, errors, judged = flat_g.copy(), np.zeros(size), np.zeros(size, bool)
    for f, e in zip(flats, ests):
        if np.isfinite(e.value):
            values[f], errors[f], judged[f] = e.value, e.error, True
    allowed = point.fd.safety * errors + tol.derived(flat_err, flat_g, "float64").allowed
    check = Check("self_fd", "impl", "finite differences of the impl's own forward", var=name, dtype="float64",
                  device="cpu", details={"probe": "localized", "differenced": int(judged.sum())})
    compare(check, g.value, values.reshape(shape), tol.Tolerance(allowed.reshape(shape), None, None,
            f"{point.fd.safety:g} x Richardson error estimate + float64 budget"), fd=values.reshape(shape),
            judge=judged.reshape(shape))
    if check.status == "fail":
        check.message += f" (of {int(judged.sum())} entries differenced, found by bisecting random-direction probes)"
    return check
