"""Transform ``forward``: forward mode in every dtype and device -- the JVP J v along a random tangent v, by
``torch.func.jvp`` (by ``torch.autograd.forward_ad`` for a classic ``autograd.Function``, which torch.func refuses
without ``setup_context``; its ``jvp`` staticmethod runs either way) -- against the symbolic reference's J v.

The reference has reverse mode only: entry k of J v is <J^T e_k, v>, one reference VJP per basis cotangent e_k
(outputs up to ENTRYWISE entries); larger outputs are judged as one probe <c, J v> = <J^T c, v> per cotangent c.
The budget of entry k comes from the reference's: sum_i |v_i| err(J^T e_k)_i (each path's rounding, which forward
mode meets in the other order) plus ``levels`` roundings of every term |(J^T e_k)_i v_i| for summing them up, plus
``levels`` roundings at the scale max|v| max|J^T e_k|: forward mode rounds an op's tangent at the scale of every
tangent reaching it, also those whose derivative is 0 there (torch's minimum: other_t + (self_t - other_t) * mask).
"""

from __future__ import annotations

import math

import numpy as np

from ... import tolerance as tol
from ...compare import compare
from ...model import Check
from ..point import Point, stage_rng
from .judge import failure, per_device, tensor

ENTRYWISE = 64  # outputs up to this many entries get J v entry by entry (one reference VJP per entry)


def run(point: Point, requested: list[str]) -> list[Check]:
    return per_device(point, "forward", on_device)


def on_device(point: Point, dtype: str, device: str) -> list[Check]:
    from ...engines.impl import phase

    v = tangent(point, dtype, stage_rng(point.seed, "forward"))
    check = Check("forward", point.engine, "symbolic J v", dtype=dtype, device=device)
    try:
        with phase("the impl's forward mode"):
            jv, api = jvp(point, point.at(dtype), v, dtype, device)
    except BaseException as exc:  # user code failing is a finding; torch refusing forward mode a skip
        failure(point, exc, check, "forward mode")
        if check.status == "skip":
            check.message = f"forward mode not supported: {check.message}"
        return [check]
    return [judge_jvp(point, check, dtype, [jv], [v], f"forward mode ({api})")]


def tangent(point: Point, dtype: str, rng) -> dict:
    """A random tangent per grad var, representable in ``dtype``."""
    from ...engines import finite
    from ...engines.autograd import round_to

    x = point.at(dtype)
    return {n: round_to(finite.random_direction(x[n], rng), dtype) for n in point.case.grad_vars}


def jvp(point: Point, inputs: dict, v: dict, dtype: str, device: str):
    """(J v as float64, the API that computed it)."""
    import torch

    from ...engines.autograd import _load_forward_ad, _no_tf32, to_numpy

    names = point.case.grad_vars
    fixed = {n: tensor(point, n, x, dtype, device, False) for n, x in inputs.items() if n not in names}
    primals = tuple(tensor(point, n, inputs[n], dtype, device, False) for n in names)
    dirs = tuple(tensor(point, n, v[n], dtype, device, False) for n in names)

    def call(*xs):
        return point.fn(**dict(fixed, **dict(zip(names, xs))))

    _load_forward_ad()
    with _no_tf32():
        try:
            _, out = torch.func.jvp(call, primals, dirs)
            return to_numpy(out), "torch.func.jvp"
        except Exception as exc:
            cause = getattr(exc, "exception", None) or exc  # what torch raised, under the impl guard's wrapper
            if not isinstance(cause, RuntimeError) or "setup_context" not in str(cause):
                raise  # torch.func refuses a classic Function; forward_ad takes it
        from torch.autograd import forward_ad

        with forward_ad.dual_level():
            out = call(*(forward_ad.make_dual(p, d) for p, d in zip(primals, dirs)))
            jv = forward_ad.unpack_dual(out).tangent
        return (to_numpy(jv) if jv is not None else np.zeros(tuple(out.shape))), "torch.autograd.forward_ad"


def rows(point: Point, dtype: str) -> list[dict] | None:
    """The reference VJP of every basis cotangent e_k (the rows of J) at ``dtype``'s point, for outputs up to
    ENTRYWISE entries (those the point already has are reused); None for larger outputs."""
    from ..point import SMALL_OUTPUT

    shape = point.program.out_shape
    size = int(np.prod(shape)) if shape else 1
    if size > ENTRYWISE:
        return None
    fwd, grads = point.reference(dtype)
    if size == 1:
        return [grads[0]]
    if size <= SMALL_OUTPUT:  # point.cotangents ends with every basis vector
        return grads[len(grads) - size:]
    out = []
    for k in range(size):
        basis = np.zeros(size)
        basis[k] = 1.0
        out.append(point.program.gradient(fwd, basis.reshape(shape)))
    return out


def judge_jvp(point: Point, check: Check, dtype: str, jvs: list, vs: list[dict], what: str) -> Check:
    """``jvs`` (J v for each tangent of ``vs``, stacked) against the reference's J v: entry by entry for small
    outputs, else one probe <c, J v> per cotangent c."""
    names = point.case.grad_vars
    terms = sum(int(np.size(vs[0][n])) for n in names)
    levels = math.ceil(math.log2(max(terms, 1))) + 1
    by_entry = rows(point, dtype)
    _, grads = point.reference(dtype)
    basis = by_entry if by_entry is not None else grads
    if not all(np.all(np.isfinite(g[n].value)) for g in basis for n in names):
        check.status = "skip"
        check.message = f"{what}: the reference gradient is not finite at this point (a singularity)"
        return check
    with np.errstate(invalid="ignore", over="ignore"):  # an infinite budget or hull: compare says so
        got, ref, budget, lo, hi = _rows_times(point, jvs, vs, basis, by_entry is not None, levels)
    shape = (len(jvs), *point.program.out_shape) if by_entry is not None else (len(jvs), len(basis))
    got, ref, lo, hi, budget = (np.reshape(a, shape) for a in (np.array(got), ref, lo, hi, np.array(budget)))
    if len(jvs) == 1:
        got, ref, lo, hi, budget = got[0], ref[0], lo[0], hi[0], budget[0]
    tolerance = tol.derived(budget, ref, dtype, point.case.tolerance)
    if point.case.tolerance is None:
        tolerance = tol.Tolerance(tolerance.allowed, None, None,
                                  tolerance.source + f", of J v from each row's reverse-mode budget + {levels} "
                                  "roundings of each term and of max|v| max|row|")
    compare(check, got, ref, tolerance, lo=lo, hi=hi)
    if by_entry is None:
        check.details["probe"] = "<c, J v> per cotangent c"
        check.error_matrix = None
        if check.status == "fail":
            check.message = f"{check.bad} of {check.entries} probes <c, J v> (one per cotangent c) are off"
            check.diagnosis = ("a directional probe: forward mode's <c, J v> along a random v disagrees with the "
                               "reference; it does not say which entries are off")
    check.message = f"{what}: J v" + (f"; {check.message}" if check.message else "")
    return check


def _rows_times(point: Point, jvs, vs, basis, by_entry: bool, levels: int):
    """(got, reference, budget, hull lo, hull hi) of each entry of J v (or probe <c, J v>), flat."""
    names = point.case.grad_vars
    got, ref, budget, lo, hi = [], [], [], [], []
    for jv, v in zip(jvs, vs):
        for ci, g in enumerate(basis):
            ref.append(sum(float(np.sum(g[n].value * v[n])) for n in names))
            spread = max(float(np.max(np.abs(v[n]), initial=0.0)) for n in names) * \
                max(float(np.max(np.abs(g[n].value), initial=0.0)) for n in names)
            budget.append(sum(float(np.sum(np.abs(v[n]) * g[n].err + levels * np.abs(g[n].value * v[n])))
                              for n in names) + levels * spread)
            lo.append(sum(float(np.sum(np.minimum(g[n].lo * v[n], g[n].hi * v[n]))) for n in names))
            hi.append(sum(float(np.sum(np.maximum(g[n].lo * v[n], g[n].hi * v[n]))) for n in names))
            if not by_entry:
                c = point.cotangents[ci]
                got.append(float(np.sum(np.broadcast_to(c, np.shape(jv)) * jv)))
        if by_entry:
            got += [float(e) for e in np.ravel(jv)] if np.size(jv) == len(basis) else [np.nan] * len(basis)
    return got, ref, budget, lo, hi
