"""Transform ``vmap``: the case's derivatives computed for a batch at once, each member judged against the
symbolic reference with the derived tolerance (not merely against the unbatched run: both could be wrong alike).

- batched cotangents: every cotangent of the point stacked, one ``torch.autograd.grad(..., is_grads_batched=True)``
  (torch.func.vmap over the backward, as gradcheck's check_batched_grad): the backward meets batched gradients;
- batched inputs: ``torch.func.vmap`` over forward and ``torch.func.vjp`` at MEMBERS points (the case's, then fresh
  samples of its vars), each member against the reference at its own point: the forward meets batched inputs, so a
  custom ``autograd.Function`` runs its ``vmap`` staticmethod (or the rule ``generate_vmap_rule`` makes);
- batched tangents: ``torch.func.vmap`` over ``torch.func.jvp``, where forward mode is supported.

torch refusing (a classic Function without ``setup_context``, one without a vmap rule, an op with no batching rule
and no fallback) is a skip with torch's reason; an op that falls back to a loop (torch warns) is fine and named.
"""

from __future__ import annotations

import contextlib
import re
import warnings
from pathlib import Path

import numpy as np

from ...model import Check
from ..point import Point, sample, stage_rng
from .judge import failure, judge_grads, judge_value, per_device, reference_at, tensor

MEMBERS = 3  # points in the batch of inputs (the case's own and two fresh samples)


def run(point: Point, requested: list[str]) -> list[Check]:
    return per_device(point, "vmap", on_device)


def on_device(point: Point, dtype: str, device: str) -> list[Check]:
    shared = batched_inputs(point, dtype, device, alone=next(iter(point.case.vars))) \
        if len(point.case.vars) > 1 else []
    return batched_cotangents(point, dtype, device) + batched_inputs(point, dtype, device) + shared + \
        batched_tangents(point, dtype, device)


@contextlib.contextmanager
def _fallbacks(notes: list):
    """Record the ops torch ran in a loop for want of a batching rule (torch says so only when asked to)."""
    import torch

    switch = getattr(torch._C._functorch, "_set_vmap_fallback_warning_enabled", lambda on: None)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        switch(True)
        try:
            yield
        finally:
            switch(False)  # torch's default
    for w in seen:
        found = re.search(r"batching rule for ([\w:.]+?)\.? ", str(w.message))
        if found:
            notes.append(found.group(1))
        elif "torch" not in Path(w.filename).parts:  # the user's own warnings are theirs to see
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


def _noted(checks: list[Check], notes: list) -> list[Check]:
    if notes:
        for check in checks:
            check.message += f" (torch ran {', '.join(sorted(set(notes)))} in a loop: no batching rule)"
    return checks


def batched_cotangents(point: Point, dtype: str, device: str) -> list[Check]:
    import torch

    from ...engines.autograd import _cotangent, _no_tf32, to_numpy
    from ...engines.impl import phase

    names, what = point.case.grad_vars, "batched cotangents"
    check = Check("vmap", point.engine, "symbolic", dtype=dtype, device=device)
    notes: list = []
    try:
        with phase("the impl's backward under vmap"), _no_tf32(), _fallbacks(notes):
            tensors = {n: tensor(point, n, x, dtype, device) for n, x in point.at(dtype).items()}
            out = point.fn(**tensors)
            leaves = [tensors[n] for n in names]
            batch = torch.stack([_cotangent(c, out, dtype, device) for c in point.cotangents])
            grads = torch.autograd.grad(out, leaves, batch, is_grads_batched=True, allow_unused=True) \
                if out.requires_grad else [None] * len(leaves)
    except BaseException as exc:
        failure(point, exc, check, "backward under vmap")
        check.message = f"{what}: {check.message}"
        return [check]
    got = [{n: (to_numpy(g[i]) if g is not None else np.zeros(np.shape(point.base[n])))
            for n, g in zip(names, grads)} for i in range(len(point.cotangents))]
    _, refs = point.expected(dtype)  # a declared surrogate stands in for the true derivative
    return _noted(judge_grads(point, "vmap", got, refs, dtype, device, what, details={"batch": "cotangents"}),
                  notes)


def members(point: Point, dtype: str) -> list[dict]:
    """The inputs of the batch: the case's point, then fresh samples of its vars (from this stage's stream)."""
    rng = stage_rng(point.seed, "vmap")
    x = point.at(dtype)
    from ...engines.autograd import round_to

    out = [x]
    for _ in range(MEMBERS - 1):
        fresh = sample(point.case, rng, point.low)
        out.append({n: v if point.case.vars[n].dtype else round_to(v, dtype) for n, v in fresh.items()})
    return out


def batched_inputs(point: Point, dtype: str, device: str, alone: str | None = None) -> list[Check]:
    """With ``alone``, only that var is batched (in_dims 0) and the others are shared (in_dims None), as in
    per-sample gradients: a vmap rule that assumes every input has a batch dim fails there."""
    import torch

    from ...engines.autograd import _no_tf32, to_numpy, to_tensor
    from ...engines.impl import phase

    names, order = point.case.grad_vars, list(point.case.vars)
    cot = point.cotangents[1 if len(point.cotangents) > 1 else 0]
    points = members(point, dtype)
    what = f"batched inputs ({MEMBERS} points)"
    if alone is not None:
        points = [dict(points[0], **{alone: p[alone]}) for p in points]
        what = f"batched inputs ({MEMBERS} points of {alone}, the other vars shared: in_dims None)"
    dims = [0 if alone is None or n == alone else None for n in order]
    check = Check("vmap", point.engine, "symbolic", dtype=dtype, device=device, details={"batch": "inputs"})
    notes: list = []

    def member(c, *xs):
        given = dict(zip(order, xs))

        def f(*gs):
            return point.fn(**dict(given, **dict(zip(names, gs))))

        out, pullback = torch.func.vjp(f, *[given[n] for n in names])
        return out, pullback(c)

    try:
        with phase("the impl under vmap"), _no_tf32(), _fallbacks(notes):
            stacked = [torch.stack([tensor(point, n, p[n], dtype, device, False) for p in points]) if d == 0
                       else tensor(point, n, points[0][n], dtype, device, False) for n, d in zip(order, dims)]
            c = to_tensor(np.broadcast_to(cot, point.program.out_shape), dtype, device)
            outs, grads = torch.func.vmap(member, in_dims=(None, *dims))(c, *stacked)
    except BaseException as exc:
        failure(point, exc, check, "forward and backward under vmap")
        check.message = f"{what}: {check.message}"
        return [check]
    checks, skipped = [], []
    values, refs, got, fwds, labels = [], [], [], [], []
    for i, p in enumerate(points):
        fwd, ref, why = reference_at(point, p, dtype, [cot])
        if why:
            skipped.append(f"point #{i}: {why}")
            continue
        fwds.append(fwd)
        values.append(to_numpy(outs[i]))
        refs.append(ref[0])
        labels.append(f"worst: point #{i}")
        got.append({n: to_numpy(g[i]) for n, g in zip(names, grads)})
    if not refs:
        check.status, check.message = "skip", f"{what}: no point of the batch can be judged ({'; '.join(skipped)})"
        return [check]
    checks.append(judge_value(point, "vmap", np.stack(values), fwds, dtype, device, what,
                              details={"batch": "inputs"}))
    checks += judge_grads(point, "vmap", got, refs, dtype, device, what, upstreams=[cot] * len(refs),
                          details={"batch": "inputs"}, labels=labels)
    for check in checks:
        check.message += "".join(f"; {s} (not judged)" for s in skipped)
    return _noted(checks, notes)


def batched_tangents(point: Point, dtype: str, device: str) -> list[Check]:
    import torch

    from ...engines.autograd import _load_forward_ad, _no_tf32, to_numpy
    from ...engines.impl import phase
    from .forward import judge_jvp, tangent

    names, x = point.case.grad_vars, point.at(dtype)
    rng = stage_rng(point.seed, "vmap tangents")
    tangents = [tangent(point, dtype, rng) for _ in range(MEMBERS)]
    what = f"batched tangents ({MEMBERS})"
    check = Check("vmap", point.engine, "symbolic J v", dtype=dtype, device=device, details={"batch": "tangents"})
    fixed = {n: tensor(point, n, v, dtype, device, False) for n, v in x.items() if n not in names}
    primals = tuple(tensor(point, n, x[n], dtype, device, False) for n in names)

    def call(*xs):
        return point.fn(**dict(fixed, **dict(zip(names, xs))))

    def jvp(*vs):
        return torch.func.jvp(call, primals, vs)[1]

    notes: list = []
    _load_forward_ad()
    try:
        with phase("the impl's forward mode"), _no_tf32():
            jvp(*(tensor(point, n, tangents[0][n], dtype, device, False) for n in names))
    except BaseException as exc:  # unbatched forward mode first: its absence is no vmap finding
        failure(point, exc, check, "forward mode")
        if check.status == "skip":
            check.message = f"{what}: forward mode not supported: {check.message}"
            return [check]
        check.message = f"{what}: forward mode without vmap fails already: {check.message}"
        return [check]
    try:
        with phase("the impl's forward mode under vmap"), _no_tf32(), _fallbacks(notes):
            stacked = [torch.stack([tensor(point, n, t[n], dtype, device, False) for t in tangents]) for n in names]
            jvs = torch.func.vmap(jvp)(*stacked)
    except BaseException as exc:
        failure(point, exc, check, "forward mode under vmap")
        check.message = f"{what}: {check.message}"
        return [check]
    jvs = to_numpy(jvs)
    return _noted([judge_jvp(point, check, dtype, list(jvs), tangents, what)], notes)
