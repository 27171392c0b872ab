"""Transform ``layouts``: the same value and gradients from inputs laid out otherwise in memory -- what a backward
that calls ``.view()``, reads ``.data_ptr()`` or ``as_strided`` with contiguous strides gets wrong -- each judged
against the symbolic reference at the same values:

- ``transposed``: storage in the other order of the last two dims (``x.mT.contiguous().mT``), vars with both > 1;
- ``strided``: every other row of a buffer twice as long (``buf[::2]``), vars with more than one entry;
- ``expanded``: stride 0 (``x[:1].expand(...)``), at a point where the var's values repeat along its first dim
  of size > 1 (the reference is evaluated there), vars with such a dim;
- ``channels_last``: ``memory_format=torch.channels_last``, 4-D vars;
- ``upstream``: the inputs as usual, every cotangent passed as a non-contiguous tensor.

A layout that no var (or, for ``upstream``, not the output) can take is a skip naming why.
"""

from __future__ import annotations

import numpy as np

from ...model import Check
from ..point import Point
from .judge import failure, judge_grads, judge_value, per_device, reference_at, tensor

LAYOUTS = ("transposed", "strided", "expanded", "channels_last", "upstream")


def run(point: Point, requested: list[str]) -> list[Check]:
    return per_device(point, "layouts", on_device)


def on_device(point: Point, dtype: str, device: str) -> list[Check]:
    checks = []
    for layout in LAYOUTS:
        checks += variant(point, layout, dtype, device)
    return checks


def transposed(t):
    return t.mT.contiguous().mT if t.ndim >= 2 and t.shape[-1] > 1 and t.shape[-2] > 1 else None


def strided(t):
    import torch

    if t.ndim == 0 or t.numel() <= 1:
        return None
    buf = torch.zeros((2 * t.shape[0], *t.shape[1:]), dtype=t.dtype, device=t.device)
    buf[::2] = t
    return buf[::2]


def channels_last(t):
    import torch

    return t.contiguous(memory_format=torch.channels_last) if t.ndim == 4 else None


def _repeat_dim(shape) -> int | None:
    return next((d for d, s in enumerate(shape) if s > 1), None)


def expanded(t):
    d = _repeat_dim(t.shape)
    return None if d is None else t.narrow(d, 0, 1).clone().expand(t.shape)  # its own storage: one slice


MAKERS = {"transposed": transposed, "strided": strided, "expanded": expanded, "channels_last": channels_last,
          "upstream": strided}
WHY_NOT = {"transposed": "no var has two last dims of size > 1", "strided": "no var has more than one entry",
           "expanded": "no var has a dim of size > 1", "channels_last": "no var is 4-D",
           "upstream": "the output has a single entry"}


def _laid_out(make, t):
    """``make(t)`` as a leaf of the same values, or None where the layout does not apply (or changes nothing)."""
    laid = make(t)
    if laid is None or laid.is_contiguous():
        return None
    return laid.detach().requires_grad_(t.requires_grad)


def variant(point: Point, layout: str, dtype: str, device: str) -> list[Check]:
    import torch

    from ...engines.autograd import _cotangent, _no_tf32, to_numpy
    from ...engines.impl import phase

    names, make = point.case.grad_vars, MAKERS[layout]
    inputs = dict(point.at(dtype))
    floats = [n for n in point.case.vars if not point.case.vars[n].dtype]
    base = {n: tensor(point, n, x, dtype, device) for n, x in inputs.items()}
    changed, why = [], None
    fwd, refs = point.expected(dtype)  # a declared surrogate stands in for the true derivative
    if layout == "expanded":  # a point where the values repeat: the first slice along the repeated dim
        for n in floats:
            d = _repeat_dim(np.shape(inputs[n]))
            if d is not None:
                inputs[n] = np.broadcast_to(np.take(inputs[n], [0], axis=d), np.shape(inputs[n])).copy()
                base[n] = tensor(point, n, inputs[n], dtype, device)
        fwd, refs, why = reference_at(point, inputs, dtype, point.cotangents)
    check = Check("layouts", point.engine, "symbolic", dtype=dtype, device=device, details={"layout": layout})
    if layout == "expanded" and why:
        check.status, check.message = "skip", f"layout expanded: the point with repeated values cannot be judged: {why}"
        return [check]
    tensors = dict(base)
    if layout != "upstream":
        for n in floats:
            laid = _laid_out(make, base[n])
            if laid is not None:
                tensors[n] = laid
                changed.append(n)
        if not changed:
            check.status, check.message = "skip", f"layout {layout} does not apply: {WHY_NOT[layout]}"
            return [check]
    what = f"layout {layout} ({', '.join(changed) if changed else 'the upstream gradient'})"
    try:
        with phase(f"the impl with {layout} inputs"), _no_tf32():
            out = point.fn(**tensors)
            ups = []
            for c in point.cotangents:
                up = _cotangent(c, out, dtype, device)
                ups.append(_laid_out(make, up) if layout == "upstream" else up)
            if layout == "upstream" and ups[0] is None:
                check.status, check.message = "skip", f"layout upstream does not apply: {WHY_NOT[layout]}"
                return [check]
            leaves = [tensors[n] for n in names]
            got = []
            for up in ups:
                grads = torch.autograd.grad(out, leaves, up, retain_graph=True, allow_unused=True) \
                    if out.requires_grad else [None] * len(leaves)
                got.append({n: (to_numpy(g).reshape(np.shape(inputs[n])) if g is not None and g.numel() ==
                                np.size(inputs[n]) else np.zeros(np.shape(inputs[n])) if g is None
                                else np.full(np.shape(inputs[n]), np.nan)) for n, g in zip(names, grads)})
    except BaseException as exc:  # torch's own ops take any layout: a failure is a finding whoever raised
        failure(point, exc, check, f"forward or backward with {layout} inputs", refused="fail")
        check.message = f"{what}: {check.message}"
        return [check]
    details = {"layout": layout}
    value = [] if layout == "upstream" else [judge_value(point, "layouts", to_numpy(out), fwd, dtype, device, what,
                                                          details)]
    return value + judge_grads(point, "layouts", got, refs, dtype, device, what, details=details)
