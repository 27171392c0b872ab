"""The two training loops of a case: the one under test (autograd and torch.optim, as a user writes it), and the
same loop in float64 with the symbolic engine's gradient (what the trajectory should be).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from ..engines.autograd import TORCH_DTYPES, build
from ..engines.symbolic import Program
from ..expr.parse import parse
from .fastpath import ValueAndGrad
from .schema import LOSSES, TrainCase

BUDGET_EVERY = 50


@dataclass
class Trajectory:
    params: list[dict[str, np.ndarray]]  # after each step (float64 copies); params[0] is the start
    losses: list[float]  # loss of each step, before its update (what a stop rule sees)
    stop_step: int | None = None
    grad_err: list[float] = field(default_factory=list)  # reference only: gradient rounding budget per step
    blowup: int | None = None  # the step whose loss or updated params were not finite; the run stopped there


def run_torch(case: TrainCase, data, init, dtype: str, device: str, steps) -> Trajectory:
    """The loop under test: autograd gradients and torch.optim, exactly as a user would write it."""
    t = case.model.train
    tdt = TORCH_DTYPES[dtype]
    names = [*t.inputs, t.target]
    tensors = {k: torch.tensor(data[k], dtype=tdt, device=device) for k in names}  # copies: runs stay independent
    if case.model.model.type == "linear":
        w = case.param_shapes["weight"]
        layer = torch.nn.Linear(w[1], w[0]).to(device=device, dtype=tdt)
        with torch.no_grad():
            layer.weight.copy_(torch.tensor(init["weight"]))
            layer.bias.copy_(torch.tensor(init["bias"]))
        params = {"weight": layer.weight, "bias": layer.bias}
        predict = lambda inputs: layer(inputs[t.inputs[0]])
    else:
        params = {k: torch.nn.Parameter(torch.tensor(v, dtype=tdt, device=device)) for k, v in init.items()}
        model_fn = build(parse(case.model.model.expr, set(params) | set(t.inputs)))
        predict = lambda inputs: model_fn(**inputs, **params)
    if t.loss == "mse":  # nn.MSELoss itself, so the run matches a user's script to the last bit
        loss_fn = lambda p, y: torch.nn.functional.mse_loss(p, y)
    else:
        loss_fn = build(parse(LOSSES.get(t.loss, t.loss), {"p", "y"}))
    if t.optimizer == "manual":  # the tutorials' hand-written step, exactly: w.data.sub_(lr * w.grad)
        optimizer = _ManualSGD(list(params.values()), t.lr)
    else:
        opt_cls = torch.optim.SGD if t.optimizer == "sgd" else torch.optim.Adam
        optimizer = opt_cls(list(params.values()), lr=t.lr)
    history, stop_step, batch = _History(params), None, tensors
    for step, idx in enumerate(steps):
        if idx is not None:
            index = torch.as_tensor(idx, device=device)
            batch = {k: v[index] for k, v in tensors.items()}
        if t.slip == "zero_weight_not_grad":
            for p in params.values():
                if p.grad is not None:
                    p.data.zero_()
        elif t.slip != "grad_not_zeroed":
            optimizer.zero_grad()
        loss = loss_fn(p=predict({n: batch[n] for n in t.inputs}), y=batch[t.target])
        loss.backward()
        optimizer.step()
        history.add(loss, params)
        if case.stop and loss.item() < case.stop[1]:  # unless a step up to this one was not finite
            if history.check() is None:
                stop_step = step
            break
        if (step + 1) % CHECK_EVERY == 0 and history.check() is not None:
            break
    history.check()
    return history.trajectory(stop_step)


CHECK_EVERY = 32  # steps between finiteness checks of the torch loop (each checks every step since the last)
CHUNK_ENTRIES = 1 << 20  # entries stacked at once (a big parameter's steps are stacked a few at a time)


class _History:
    """The torch loop's loss and parameters after each step, kept as tensors and converted to float64 arrays once
    at the end. The first step whose loss or updated parameters are not finite is the blowup: the run is cut
    there (nothing after it can be judged), as if it had stopped at that step; the loop checks every CHECK_EVERY
    steps, so a diverged run goes on for at most CHECK_EVERY - 1 steps that are then dropped."""

    def __init__(self, params):
        self.names = list(params)
        self.params = [[p.detach().clone()] for p in params.values()]  # per param: the start, then every step
        self.losses: list[torch.Tensor] = []
        self.checked = 0  # steps known to be finite
        self.blowup: int | None = None

    def add(self, loss, params) -> None:
        self.losses.append(loss.detach())
        for hist, p in zip(self.params, params.values()):
            hist.append(p.detach().clone())

    def check(self) -> int | None:
        """The blowup step, looking at the steps not checked yet."""
        lo, hi = self.checked, len(self.losses)
        if self.blowup is None and hi > lo:
            ok = torch.isfinite(torch.stack(self.losses[lo:hi]))
            for hist in self.params:
                flags = []
                for _, chunk in _chunks(hist[lo + 1:hi + 1]):
                    finite = torch.isfinite(torch.stack(chunk))
                    flags.append(finite.flatten(1).all(1) if finite.ndim > 1 else finite)
                ok &= torch.cat(flags)
            bad = torch.nonzero(~ok)
            if len(bad):
                self.blowup = lo + int(bad[0, 0])
            self.checked = hi
        return self.blowup

    def trajectory(self, stop_step: int | None) -> Trajectory:
        n = len(self.losses) if self.blowup is None else self.blowup
        arrays = []
        for hist in self.params:
            kept, array = hist[:n + 1], np.empty((n + 1, *hist[0].shape))
            hist.clear()  # each chunk's tensors are freed once copied
            for i, chunk in _chunks(kept):
                array[i:i + len(chunk)] = torch.stack(chunk).cpu().numpy()
                kept[i:i + len(chunk)] = [None] * len(chunk)
                del chunk
            arrays.append(array)
        params = [{k: a[s, ...] for k, a in zip(self.names, arrays)} for s in range(n + 1)]
        losses = torch.stack(self.losses[:n]).tolist() if n else []
        return Trajectory(params, losses, stop_step=stop_step, blowup=self.blowup)


def _chunks(tensors: list):
    """(offset, run of consecutive tensors) of about CHUNK_ENTRIES entries in all, at least one tensor each."""
    size = max(1, CHUNK_ENTRIES // max(1, tensors[0].numel())) if tensors else 1
    for i in range(0, len(tensors), size):
        yield i, tensors[i:i + size]


class _ManualSGD:
    """``p.data.sub_(lr * p.grad)`` and ``p.grad.zero_()``, as the seed tutorials write it (lr * grad is rounded
    before the subtraction, unlike torch.optim.SGD's fused ``add_(grad, alpha=-lr)``)."""

    def __init__(self, params, lr: float):
        self.params, self.lr = params, lr

    def zero_grad(self) -> None:
        for p in self.params:
            if p.grad is not None:
                p.grad.zero_()

    def step(self) -> None:
        for p in self.params:
            if p.grad is not None:
                p.data.sub_(self.lr * p.grad)


def _finite(loss: float, params: dict[str, np.ndarray]) -> bool:
    return math.isfinite(loss) and all(np.isfinite(v).all() for v in params.values())


def run_reference(case: TrainCase, data, init, steps) -> Trajectory:
    """The same loop in float64 with the symbolic engine's gradient: what the trajectory should be."""
    t = case.model.train
    names = [*t.inputs, t.target]
    programs: dict[int | None, tuple[Program, ValueAndGrad]] = {}  # by batch size: the params keep their shapes
    params = {k: np.array(v, dtype=float) for k, v in init.items()}
    adam = {k: (np.zeros_like(v), np.zeros_like(v)) for k, v in params.items()}
    budget = {k: (0.0, 0.0) for k in params}  # the gradient's rounding budget: absolute, and relative to |g|
    traj = Trajectory([{k: v.copy() for k, v in params.items()}], [])
    with np.errstate(all="ignore"):  # overflow is detected below, as a blowup
        for step, idx in enumerate(steps):
            batch = {n: data[n] if idx is None else data[n][idx] for n in names}
            key = None if idx is None else len(idx)
            if key not in programs:
                shapes = {**{n: batch[n].shape for n in names}, **{k: v.shape for k, v in params.items()}}
                program = Program(case.loss_ir, shapes, list(params))
                programs[key] = program, ValueAndGrad(program)
            program, value_and_grad = programs[key]
            # the budget moves slowly: refresh it every BUDGET_EVERY steps, and in between let it grow with the
            # gradient (a diverging run's gradient grows by orders of magnitude in fewer steps)
            with_err = step % BUDGET_EVERY == 0
            if with_err:
                fwd = program.forward({**batch, **params}, None, with_err=True)
                grads = program.vjp(fwd, 1.0, with_err=True)
                loss = float(fwd.values[program.out])
            else:  # the same values as program.forward and vjp without the budget, planned once
                loss, grads = value_and_grad({**batch, **params})
            new, errs = {}, []
            for k in params:
                g = grads[k][0] if with_err else grads[k]
                size = float(np.max(np.abs(g), initial=0.0))
                if with_err:
                    b = float(np.max(np.abs(grads[k][1]), initial=0.0))
                    budget[k] = (b, b / size if size > 0 else 0.0)
                errs.append(max(budget[k][0], budget[k][1] * size))
                if t.optimizer in ("sgd", "manual"):
                    new[k] = params[k] - t.lr * g
                else:
                    new[k] = _adam(params[k], g, adam[k], step + 1, t.lr)
            if not _finite(loss, new):
                traj.blowup = step
                break
            params = new
            traj.grad_err += errs
            traj.losses.append(loss)
            traj.params.append({k: v.copy() for k, v in params.items()})
            if case.stop and loss < case.stop[1]:
                traj.stop_step = step
                break
    return traj


def _adam(p, g, state, t, lr, b1=0.9, b2=0.999, eps=1e-8):
    m, v = state
    m[...] = b1 * m + (1 - b1) * g
    v[...] = b2 * v + (1 - b2) * g * g
    mhat, vhat = m / (1 - b1**t), v / (1 - b2**t)
    return p - lr * mhat / (np.sqrt(vhat) + eps)
