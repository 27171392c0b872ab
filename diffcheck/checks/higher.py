"""Stage ``higher`` (``order = 2``): Hessian-vector products by double backward against Richardson differences
of the exact symbolic gradient (second derivatives have no error budget yet: the allowance is 64 u per entry,
stated)."""

from __future__ import annotations

import numpy as np

from .. import tolerance as tol
from ..compare import compare
from ..model import Check
from .point import Point, stage_rng
from .probes import user_failure


def hvp(point: Point) -> list[Check]:
    from ..engines import finite
    from ..engines.autograd import hvp as torch_hvp
    from ..engines.impl import phase

    x, names, program = point.at("float64"), point.case.grad_vars, point.program
    cot = point.cotangents[-1]
    v = {n: finite.random_direction(x[n], stage_rng(point.seed, "higher")) for n in names}

    base, _ = point.reference("float64")

    def gradient(inputs):  # detach() values stay those of the base point, as in double backward
        f = program.forward(inputs, None, with_err=True, detached_from=base)
        grads = program.vjp(f, cot, with_err=False)
        return {n: grads[n][0] for n in names}

    ref, err = finite.directional_vector(gradient, x, v, method=point.fd)
    checks = []
    for dtype in point.dtypes:
        try:
            with phase("the impl's double backward"):
                got = torch_hvp(point.fn, point.at(dtype), names, cot, v, dtype, "cpu", point.var_dtypes)
        except BaseException as exc:  # user code or an op without double backward
            if point.case.impl:
                check = user_failure(exc, Check("hvp", point.engine, "symbolic", dtype=dtype, device="cpu"),
                                     "double backward")
                if check is not None:
                    checks.append(check)
                    continue
            if not isinstance(exc, Exception):
                raise
            checks.append(Check("hvp", point.engine, "symbolic", dtype=dtype, device="cpu", status="fail",
                                message=f"double backward raised {type(exc).__name__}: {str(exc)[:160]}",
                                details={"raised": type(exc).__name__}))
            continue
        u = tol.UNIT_ROUNDOFF[dtype] + tol.UNIT_ROUNDOFF["float64"]
        for n in names:
            scale = np.abs(ref[n]) + float(np.sqrt(np.mean(np.square(ref[n])))) if ref[n].size else 0.0
            allowed = point.fd.safety * err[n] + 64 * u * scale + tol.FLOOR * tol.TINY[dtype]
            tolerance = tol.Tolerance(allowed, None, None, "4 x Richardson error + 64 u x |Hv| (second order)")
            checks.append(compare(Check("hvp", point.engine, "symbolic", var=n, dtype=dtype, device="cpu"),
                                  got[n], ref[n], tolerance))
    return checks
