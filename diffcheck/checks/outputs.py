"""Stage ``outputs`` (cases with several outputs): each differentiable output alone, the others' gradients
undefined -- torch's ``check_undefined_grad``. ``torch.autograd.grad`` runs on that one output tensor of the
impl's (or the expression's) result, not through the flat concatenation the other stages use, so a custom
Function's backward receives None (with ``ctx.set_materialize_grads(False)``) or materialised zeros for the
others; its VJP is judged against the reference VJP with a cotangent that is zero outside that output.
"""

from __future__ import annotations

import numpy as np

from .. import tolerance as tol
from ..compare import compare
from ..devices import device_skips
from ..model import Check
from ..outputs import block
from .point import Point, stage_rng
from .probes import user_failure


def undefined_grads(point: Point) -> list[Check]:
    case = point.case
    parts = getattr(point.fn, "parts", None)
    if parts is None:
        return []
    from ..engines.autograd import round_to

    rng = stage_rng(point.seed, "outputs")
    cots = {o.name: block(case.outputs, o, round_to(rng.standard_normal(o.shape), point.low))
            for o in case.outputs if not o.value_only}
    checks: list[Check] = []
    for device, skip in device_skips(case.devices, point.devices).items():
        if skip:  # the autograd stage reports the device's skip
            continue
        for dtype in point.dtypes:
            fwd, grads = point.reference(dtype)
            if not grads or point.program.near_jump(fwd, tol.UNIT_ROUNDOFF[dtype]):
                continue  # not finite, or a mask may flip here: the autograd stage reports the skip
            for index, o in enumerate(case.outputs):
                if o.name in cots:
                    checks += one_output(point, parts, index, o, cots[o.name], fwd, dtype, device)
    return checks


def one_output(point: Point, parts, index: int, output, cotangent, fwd, dtype: str, device: str) -> list[Check]:
    case = point.case
    details = {"output": output.name}
    against = "symbolic (cotangent on this output only)"
    try:
        from ..engines.impl import phase

        with phase("the impl's backward"):
            got = output_vjp(parts, point.at(dtype), case.grad_vars, dtype, device, index,
                             cotangent[output.offset:output.offset + output.size], point.var_dtypes)
    except BaseException as exc:  # user code: whatever the backward raises on undefined gradients is a finding
        if not case.impl:
            raise
        check = user_failure(exc, Check("grad", point.engine, against, dtype=dtype, device=device,
                                        details=details), "backward")
        if check is None:
            raise
        others = ", ".join(o.name for o in case.outputs if o is not output)
        check.message = (f"with only output {output.name} used (the gradients of {others} undefined): "
                         f"{check.message}")
        return [check]
    ref = point.program.gradient(fwd, cotangent)
    checks = []
    for name in case.grad_vars:
        g = ref[name]
        check = Check("grad", point.engine, against, var=name, dtype=dtype, device=device, details=dict(details))
        if not np.all(np.isfinite(g.value)):
            check.status, check.message = "skip", "the reference gradient is not finite at this point"
        else:
            compare(check, got[name], g.value, tol.derived(g.err, g.value, dtype, case.tolerance), lo=g.lo, hi=g.hi)
            if check.status == "fail":
                check.message += f"; with only output {output.name} used, the others' gradients undefined"
        checks.append(check)
    return checks


def output_vjp(parts, inputs, grad_vars, dtype, device, index, cotangent, var_dtypes) -> dict[str, np.ndarray]:
    """The VJP of output ``index`` alone: torch.autograd.grad on that tensor, so every other output's gradient
    is undefined. An output that does not require grad gives zero gradients (as ``engines.autograd.run``)."""
    import torch

    from ..engines.autograd import _no_tf32, input_tensor, to_numpy

    with _no_tf32():
        tensors = {n: input_tensor(v, dtype, device, n in grad_vars, var_dtypes.get(n)) for n, v in inputs.items()}
        out = parts(**tensors)[index]
        leaves = [tensors[n] for n in grad_vars]
        grads = [None] * len(leaves)
        if out.requires_grad:
            g = torch.as_tensor(np.asarray(cotangent).reshape(tuple(out.shape)), dtype=out.dtype, device=out.device)
            grads = torch.autograd.grad(out, leaves, g, allow_unused=True)
        return {n: np.zeros(tuple(leaf.shape)) if grad is None else
                to_numpy(grad).reshape(tuple(leaf.shape)) if grad.numel() == leaf.numel() else
                np.full(tuple(leaf.shape), np.nan) for n, leaf, grad in zip(grad_vars, leaves, grads)}
