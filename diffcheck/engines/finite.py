"""Finite differences in float64 with Richardson extrapolation; every estimate carries its own error.

The symbolic engine already gives every entry of the gradient, so finite differences check it along random
signed directions (one forward pair per step, whatever the size: errors in single entries cannot cancel
against a Gaussian direction the way they can against gradcheck's non-negative one), and entry by entry for
small variables and for the entries a report shows. Steps are relative to each entry's magnitude, start at
1e-3 and shrink when an evaluation leaves the function's domain or crosses a kink (relu at 0 must not be
differenced across).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..tolerance import FD_SAFETY

U64 = 2.0**-53
BATCH_ENTRIES = 1 << 15  # probes are batched while the stacked inputs hold at most this many entries (256 KiB:
# beyond it the stacked temporaries cost more in fresh memory than the passes they save; measured at 64 x 100)


@dataclass(frozen=True)
class FDMethod:
    """How finite differences are taken: steps (relative to each entry's scale) start at ``first_step`` and
    shrink by ``shrink`` down to ``smallest_step``; ``safety`` is how far a bug must stand above the Richardson
    error estimate (estimates are estimates)."""

    first_step: float = 1e-3
    smallest_step: float = 1e-9
    shrink: float = 0.1
    safety: float = FD_SAFETY


DEFAULT = FDMethod()


@dataclass(frozen=True)
class Estimate:
    value: float
    error: float  # bound on |value - true derivative|: truncation (Richardson) + rounding
    step: float
    note: str = ""  # why no estimate could be made, when value is nan


Evaluator = Callable[[dict], tuple[float, list]]  # inputs -> (phi, kink signature)


def entry_scale(x: np.ndarray) -> np.ndarray:
    """Per-entry perturbation scale: relative to the entry, with a floor from the variable's size."""
    x = np.asarray(x, dtype=float)
    with np.errstate(over="ignore"):  # entries near float64's largest overflow rms to inf: no step is taken there
        rms = float(np.sqrt(np.mean(x * x))) if x.size else 0.0
    scale = np.abs(x) + 0.1 * rms
    return np.where(scale > 0, scale, 1e-6)  # an all-zero variable still needs a step


def directional(evaluate: Evaluator, point: dict, direction: dict, noise: float, sig0=None,
                method: FDMethod | None = None) -> Estimate:
    """d/dt phi(point + t*direction) at t=0. ``noise`` bounds float64 rounding in one evaluation of phi;
    ``sig0`` is the kink signature at ``point`` when the caller already has it."""
    method = method or DEFAULT
    if sig0 is None:
        sig0 = signature(evaluate, point)
    first = _first_round(evaluate, point, direction, list(direction.values()), noise, sig0, method)
    if first is not None and first[0] is not None:
        return first[0]
    h = method.first_step
    while h >= method.smallest_step:
        diffs = []
        crossed = bad = False
        for step in (h, h / 2, h / 4):
            plus, sig_p = evaluate(_shift(point, direction, step))
            minus, sig_m = evaluate(_shift(point, direction, -step))
            if not (np.isfinite(plus) and np.isfinite(minus)):
                bad = True
                break
            if not (_same(sig0, sig_p) and _same(sig0, sig_m)):
                crossed = True
                break
            diffs.append((plus - minus) / (2 * step))
        if not (bad or crossed):
            value, error = _richardson(diffs, h, noise)
            return Estimate(float(value), float(error), h)
        h *= method.shrink
    why = "a kink (non-differentiable point) lies within every step tried" if crossed else \
        "the function is not finite near this point (domain edge)"
    return Estimate(float("nan"), float("inf"), h, why)


def signature(evaluate: Evaluator, point: dict) -> list:
    """The kink signature at ``point``; an evaluator marked ``kinkless`` (a program without kinked steps, no user
    code) has the empty one everywhere, so its evaluation there is skipped."""
    return [] if getattr(evaluate, "kinkless", False) else evaluate(point)[1]


def _first_round(evaluate: Evaluator, point: dict, like: dict, directions: list, noise: float, sig0,
                 method: FDMethod) -> list | None:
    """The estimates at the first step along each of ``directions`` (arrays for the one variable in ``like``), all
    probes in one batched evaluation where ``evaluate`` has one (``evaluate.many``); None where it has not. An
    entry is None where a probe there left the domain or crossed a kink: ``directional`` then tries smaller
    steps, from the first one again, exactly as without the batch."""
    many = getattr(evaluate, "many", None)
    h = method.first_step
    if many is None or len(like) != 1 or h < method.smallest_step:
        return None
    (var, _), steps = next(iter(like.items())), (h, h / 2, h / 4)
    x = point[var]
    if 6 * len(directions) * np.size(x) > BATCH_ENTRIES:  # large inputs: the per-pass overhead is nothing, the
        return None                                       # stacked copies would be the peak memory
    rows = [x + t * d for d in directions for step in steps for t in (step, -step)]
    probes = many(point, var, np.stack(rows))
    if probes is None:
        return None
    phis, sigs = probes
    same = _same_rows(sig0, sigs, len(rows))
    out = []
    for j in range(len(directions)):
        diffs = []
        for k, step in enumerate(steps):
            r = 6 * j + 2 * k
            plus, minus = phis[r], phis[r + 1]
            if not (np.isfinite(plus) and np.isfinite(minus)) or not (same[r] and same[r + 1]):
                break
            diffs.append((plus - minus) / (2 * step))
        if len(diffs) < len(steps):
            out.append(None)
            continue
        value, error = _richardson(diffs, h, noise)
        out.append(Estimate(float(value), float(error), h))
    return out


def _same_rows(sig0: list, sigs: list, n: int) -> list[bool]:
    """``_same`` for each of the ``n`` rows of a batched signature (each entry's shape broadcast to its step's),
    every row at once: a row is the same where every entry equals its unbatched twin (``np.array_equal`` of the
    row, as ``(a == b).all()``: nan never equals)."""
    same = np.ones(n, bool)
    for a, b in zip(sig0, sigs):
        b = np.asarray(b)[:n]
        same &= (b == np.broadcast_to(a, b.shape[1:])).reshape(len(b), -1).all(axis=1)
    return same.tolist()


def _richardson(d: list, h: float, noise):
    """Two Richardson steps over central differences at h, h/2, h/4 (floats or arrays, ``noise`` bounding the
    rounding of one evaluation): the extrapolated value and its error bound, truncation + rounding."""
    r1a = (4 * d[1] - d[0]) / 3
    r1b = (4 * d[2] - d[1]) / 3
    r2 = (16 * r1b - r1a) / 15
    truncation = abs(r2 - r1b)
    rounding = 7.0 * noise / h  # how the Richardson weights amplify the rounding of phi
    return r2, truncation + rounding


def _shift(point: dict, direction: dict, t: float) -> dict:
    return {k: (v + t * direction[k] if k in direction else v) for k, v in point.items()}


def _same(a: list, b: list) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(a, b))


def entrywise(evaluate: Evaluator, point: dict, var: str, indices, noise: float,
              method: FDMethod | None = None) -> list[Estimate]:
    """Finite-difference estimates of single gradient entries of ``var`` (flat indices)."""
    x = np.asarray(point[var], dtype=float)
    scale = entry_scale(x).reshape(-1)
    sig0 = signature(evaluate, point)
    indices = list(indices)
    dirs = []
    for flat in indices:
        e = np.zeros(x.size)
        e[flat] = scale[flat]
        dirs.append(e.reshape(x.shape))
    first = _first_round(evaluate, point, {var: None}, dirs, noise, sig0, method or DEFAULT) or [None] * len(dirs)
    out = []
    for flat, d, est in zip(indices, dirs, first):
        if est is None:
            est = directional(evaluate, point, {var: d}, noise, sig0, method)
        with np.errstate(invalid="ignore"):  # no estimate (nan, inf error) stays no estimate
            out.append(Estimate(est.value / scale[flat], est.error / scale[flat], est.step, est.note))
    return out


def random_direction(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return rng.standard_normal(np.shape(x)) * entry_scale(x)


def directional_vector(evaluate: Callable[[dict], dict], point: dict, direction: dict,
                       method: FDMethod | None = None) -> tuple[dict, dict]:
    """d/dt G(point + t*direction) for a vector-valued G (dict of arrays), Richardson per entry.

    Used for Hessian-vector products: G is the exact symbolic gradient, so only truncation and float64
    rounding of G limit the estimate; both are returned per entry.
    """
    h = (method or DEFAULT).first_step
    base = evaluate(point)
    diffs = []
    for step in (h, h / 2, h / 4):
        plus = evaluate(_shift(point, direction, step))
        minus = evaluate(_shift(point, direction, -step))
        diffs.append({k: (plus[k] - minus[k]) / (2 * step) for k in plus})
    value, error = {}, {}
    for k in diffs[0]:
        scale = max(float(np.max(np.abs(base[k]), initial=0.0)), 1e-300)
        value[k], error[k] = _richardson([x[k] for x in diffs], h, 64 * U64 * scale)
    return value, error
