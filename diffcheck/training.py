"""Regression training as integration cases (``kind = "train"``): data, model, loss and loop described as data.

For each dtype and device the loop runs twice with autograd (the run under test, and again from the same seed:
``reproducible``), and once in float64 with the symbolic engine's gradient in place of autograd. ``trajectory``
compares the two step by step with a bound that grows with the steps (each step may add the rounding of its update
and of its gradient, from the symbolic error budget); ``converge`` compares the final parameters and loss with
``expect``: known values, or the closed-form least-squares fit of the same noisy data.

Data are drawn in the order the ``[data]`` table lists them, from torch's CPU generator seeded with ``seed`` and in
float32, as the seed tutorials do (``torch.manual_seed(10); x = torch.rand(20, 1) * 10; ...``), then converted to the
dtype under test. A model of ``type = "linear"`` is a real ``nn.Linear`` (initialised by torch after the data
draws); any other model is an expression of the params and inputs.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict

from . import tolerance as tol
from .compare import Check
from .errors import CaseError, ExpressionError
from .expr.ir import Call, Node, Var, variables
from .expr.parse import parse
from .expr.shapes import infer

GENERATORS = ("rand", "randn", "linspace", "arange", "zeros", "ones", "value")
LOSSES = {"mse": "mean((p - y)**2)", "half_squared": "mean(0.5 * (y - p)**2)"}
SLIPS = {"zero_weight_not_grad": "zeroes each parameter's value instead of its gradient before backward, as seed "
                                 "004 does (gradients accumulate, weights restart from 0)",
         "grad_not_zeroed": "never zeroes the gradients, so they accumulate across steps (seed 001's warning)"}
MAX_STEPS = 1_000_000
BUDGET_EVERY = 50


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class DrawModel(_Strict):
    rand: list[int] | None = None
    randn: list[int] | None = None
    linspace: list[float] | None = None  # [start, stop, count]
    arange: list[float] | None = None  # [start, stop, step]
    zeros: list[int] | None = None
    ones: list[int] | None = None
    value: Any = None
    scale: float = 1.0
    offset: float = 0.0
    shape: list[int] | None = None  # reshape after generating (linspace/arange/value)


class ModelModel(_Strict):
    type: Literal["linear", "expr"] = "expr"
    expr: str | None = None
    params: dict[str, DrawModel] = {}
    inputs: int | None = None  # linear: in_features
    outputs: int = 1  # linear: out_features


class TrainModel(_Strict):
    loss: str = "mse"
    optimizer: Literal["sgd", "adam", "manual"] = "sgd"
    lr: float
    steps: int | None = None
    epochs: int | None = None
    batch_size: int | None = None
    shuffle: bool = True
    stop: str | None = None
    slip: str | None = None
    inputs: list[str] = ["x"]
    target: str = "y"


class TrainExpectModel(_Strict):
    params: dict[str, Any] = {}
    atol: float = 1e-3
    least_squares: bool = False
    final_loss_below: float | None = None
    stop_step: int | None = None
    loss_decreasing: bool = False
    trajectory: Literal["matches", "diverges"] = "matches"


class TrainCaseModel(_Strict):
    kind: Literal["train"]
    name: str
    description: str = ""
    seed: int = 0
    dtypes: list[Literal["float64", "float32"]] = ["float32", "float64"]
    devices: list[Literal["cpu", "cuda"]] = ["cpu", "cuda"]
    data: dict[str, DrawModel | str]
    model: ModelModel
    train: TrainModel
    expect: TrainExpectModel = TrainExpectModel()


@dataclass(frozen=True)
class TrainCase:
    name: str
    path: str
    model: TrainCaseModel
    loss_ir: Node  # loss as an expression of params, inputs and target
    param_shapes: dict[str, tuple]
    data_shapes: dict[str, tuple]
    stop: tuple[str, float] | None
    description: str = ""
    dtypes: tuple = ()
    devices: tuple = ()
    seed: int = 0

    @property
    def param_names(self) -> list[str]:
        return list(self.param_shapes)


def build_train_case(raw: dict, where: str, validate_model) -> TrainCase:
    """Validate a ``kind = "train"`` case (``validate_model`` turns pydantic errors into CaseErrors)."""
    m: TrainCaseModel = validate_model(TrainCaseModel, raw)

    def fail(message: str, key: str):
        raise CaseError(message, where, m.name, key)

    t = m.train
    if not 0 <= m.seed < 2**63:
        fail(f"seed must be an integer from 0 to 2**63 - 1, got {m.seed}", "seed")
    if (t.steps is None) == (t.epochs is None):
        fail("give exactly one of train.steps and train.epochs", "train")
    count = t.steps if t.steps is not None else t.epochs
    if not 1 <= count <= MAX_STEPS:
        fail(f"must be between 1 and {MAX_STEPS}", "train.steps" if t.steps is not None else "train.epochs")
    if not (t.lr > 0 and math.isfinite(t.lr)):
        fail("train.lr must be a positive finite number", "train.lr")
    if t.slip is not None and t.slip not in SLIPS:
        fail(f"unknown slip '{t.slip}' (known: {', '.join(SLIPS)})", "train.slip")
    stop = None
    if t.stop is not None:
        match = re.fullmatch(r"\s*loss\s*<\s*([0-9.eE+-]+)\s*", t.stop)
        if not match:
            fail(f"stop must read 'loss < NUMBER', got {t.stop!r}", "train.stop")
        stop = ("<", float(match.group(1)))

    data_shapes = {}
    for name, item in m.data.items():
        key = f"data.{name}"
        if isinstance(item, str):
            try:
                node = parse(item, set(data_shapes))
                data_shapes[name] = infer(node, data_shapes)
            except ExpressionError as exc:
                fail(f"{key}: {exc}", key)
        else:
            data_shapes[name] = _draw_shape(item, key, fail)
    for name in [*t.inputs, t.target]:
        if name not in data_shapes:
            fail(f"'{name}' is not in [data] (known: {', '.join(data_shapes)})", "train")

    if m.model.type == "linear":
        if len(t.inputs) != 1:
            fail("a linear model takes exactly one input", "train.inputs")
        in_shape = data_shapes[t.inputs[0]]
        n_in = m.model.inputs or (in_shape[-1] if in_shape else 1)
        param_shapes = {"weight": (m.model.outputs, n_in), "bias": (m.model.outputs,)}
        model_ir: Node = Call("add", (Call("matmul", (Var(t.inputs[0]), Call("transpose", (Var("weight"),)))),
                                      Var("bias")))
    else:
        if not m.model.expr:
            fail("an expression model needs model.expr", "model.expr")
        param_shapes = {n: _draw_shape(d, f"model.params.{n}", fail) for n, d in m.model.params.items()}
        try:
            model_ir = parse(m.model.expr, set(param_shapes) | set(t.inputs))
        except ExpressionError as exc:
            fail(f"bad model.expr: {exc}", "model.expr")
        missing = set(param_shapes) - variables(model_ir)
        if missing:
            fail(f"params not used in model.expr: {', '.join(sorted(missing))}", "model.params")
    if not param_shapes:
        fail("the model has no parameters to train", "model.params")
    try:
        loss_template = parse(LOSSES.get(t.loss, t.loss), {"p", "y"})
    except ExpressionError as exc:
        fail(f"bad train.loss (a name in {list(LOSSES)} or an expression of p and y): {exc}", "train.loss")
    loss_ir = _substitute(loss_template, {"p": model_ir, "y": Var(t.target)})
    shapes = {**{n: data_shapes[n] for n in [*t.inputs, t.target]}, **param_shapes}
    try:
        out = infer(loss_ir, shapes)
    except ExpressionError as exc:
        fail(f"model and data shapes do not fit: {exc}", "model")
    if out != ():
        fail(f"the loss must be a scalar, got shape {list(out)}", "train.loss")
    for name in m.expect.params:
        if name not in param_shapes:
            fail(f"'{name}' is not a parameter (known: {', '.join(param_shapes)})", f"expect.params.{name}")
    if m.expect.least_squares and not _is_affine(m, t):
        fail("least_squares needs a model affine in its parameters (linear, or x @ w + b style)",
             "expect.least_squares")
    return TrainCase(m.name, where, m, loss_ir, param_shapes, data_shapes, stop, m.description, tuple(m.dtypes),
                     tuple(m.devices), m.seed)


def _is_affine(m: TrainCaseModel, t: TrainModel) -> bool:
    return m.model.type == "linear" or len(m.model.params) == 2


def _draw_shape(d: DrawModel, key: str, fail) -> tuple:
    given = [g for g in GENERATORS if getattr(d, g) is not None]
    if len(given) != 1:
        fail(f"{key} needs exactly one of {', '.join(GENERATORS)}", key)
    kind = given[0]
    if kind in ("rand", "randn", "zeros", "ones"):
        shape = tuple(getattr(d, kind))
    elif kind == "linspace":
        if len(d.linspace) != 3 or d.linspace[2] < 1 or d.linspace[2] != int(d.linspace[2]):
            fail(f"{key}.linspace must be [start, stop, count]", key)
        shape = (int(d.linspace[2]),)
    elif kind == "arange":
        if len(d.arange) != 3 or d.arange[2] == 0:
            fail(f"{key}.arange must be [start, stop, step] with step != 0", key)
        shape = (max(0, math.ceil((d.arange[1] - d.arange[0]) / d.arange[2])),)
    else:
        shape = np.shape(np.array(d.value, dtype=float))
    if d.shape is not None:
        if math.prod(d.shape) != math.prod(shape):
            fail(f"{key}.shape {d.shape} does not hold {math.prod(shape)} values", key)
        shape = tuple(d.shape)
    if any(s < 1 for s in shape) or math.prod(shape) > 10_000_000:
        fail(f"{key} has an unusable shape {list(shape)}", key)
    return shape


def _substitute(node: Node, mapping: dict[str, Node]) -> Node:
    if isinstance(node, Var):
        return mapping.get(node.name, node)
    if isinstance(node, Call):
        return Call(node.op, tuple(_substitute(a, mapping) for a in node.args), node.params)
    return node


# ---------------------------------------------------------------------------------------------- running
@dataclass
class Trajectory:
    params: list[dict[str, np.ndarray]]  # after each step (float64 copies); params[0] is the start
    losses: list[float]  # loss of each step, before its update (what a stop rule sees)
    stop_step: int | None = None
    grad_err: list[float] = field(default_factory=list)  # reference only: gradient rounding budget per step


def draw(case: TrainCase):
    """Data (float32, in ``[data]`` order) and initial params, from torch's generator seeded with the case seed."""
    import torch

    from .engines.autograd import build

    m = case.model
    data: dict[str, torch.Tensor] = {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(case.seed)
        for name, item in m.data.items():
            data[name] = build(parse(item, set(data)))(**data) if isinstance(item, str) else _generate(item)
            data[name] = torch.as_tensor(data[name], dtype=torch.float32)
        if m.model.type == "linear":
            layer = torch.nn.Linear(case.param_shapes["weight"][1], case.param_shapes["weight"][0])
            params = {"weight": layer.weight.detach().clone(), "bias": layer.bias.detach().clone()}
        else:
            params = {n: _generate(d) for n, d in m.model.params.items()}
    return ({k: v.double().numpy() for k, v in data.items()},
            {k: torch.as_tensor(v, dtype=torch.float32).double().numpy() for k, v in params.items()})


def _generate(d: DrawModel):
    import torch

    if d.rand is not None:
        t = torch.rand(d.rand)
    elif d.randn is not None:
        t = torch.randn(d.randn)
    elif d.linspace is not None:
        t = torch.linspace(d.linspace[0], d.linspace[1], int(d.linspace[2]))
    elif d.arange is not None:
        t = torch.arange(d.arange[0], d.arange[1], d.arange[2], dtype=torch.float32)
    elif d.zeros is not None:
        t = torch.zeros(d.zeros)
    elif d.ones is not None:
        t = torch.ones(d.ones)
    else:
        t = torch.tensor(np.array(d.value, dtype=np.float32))
    if d.shape is not None:
        t = t.reshape(d.shape)
    return t * d.scale + d.offset if (d.scale != 1.0 or d.offset != 0.0) else t


def batches(case: TrainCase, n: int):
    """The index batches of every step: full batch, or shuffled minibatches per epoch (torch generator)."""
    import torch

    t = case.model.train
    if t.epochs is None:
        return [None] * t.steps
    size = t.batch_size or n
    g = torch.Generator().manual_seed(case.seed + 1)
    out = []
    for _ in range(t.epochs):
        order = torch.randperm(n, generator=g).numpy() if t.shuffle else np.arange(n)
        out += [order[i:i + size] for i in range(0, n, size)]
    return out


def run_torch(case: TrainCase, data, init, dtype: str, device: str, steps) -> Trajectory:
    """The loop under test: autograd gradients and torch.optim, exactly as a user would write it."""
    import torch

    from .engines.autograd import TORCH_DTYPES, build

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
    traj = Trajectory([_snapshot(params)], [])
    for step, idx in enumerate(steps):
        batch = tensors if idx is None else {k: v[torch.as_tensor(idx, device=device)] for k, v in tensors.items()}
        if t.slip == "zero_weight_not_grad":
            for p in params.values():
                if p.grad is not None:
                    p.data.zero_()
        elif t.slip != "grad_not_zeroed":
            optimizer.zero_grad()
        loss = loss_fn(p=predict({n: batch[n] for n in t.inputs}), y=batch[t.target])
        loss.backward()
        optimizer.step()
        value = loss.item()
        traj.losses.append(value)
        traj.params.append(_snapshot(params))
        if case.stop and value < case.stop[1]:
            traj.stop_step = step
            break
    return traj


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


def _snapshot(params) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy().astype(np.float64) for k, v in params.items()}


def run_reference(case: TrainCase, data, init, steps) -> Trajectory:
    """The same loop in float64 with the symbolic engine's gradient: what the trajectory should be."""
    from .engines.symbolic import Program

    t = case.model.train
    names = [*t.inputs, t.target]
    programs: dict[tuple, Program] = {}
    params = {k: np.array(v, dtype=float) for k, v in init.items()}
    adam = {k: (np.zeros_like(v), np.zeros_like(v)) for k, v in params.items()}
    budget = {k: 0.0 for k in params}
    traj = Trajectory([{k: v.copy() for k, v in params.items()}], [])
    for step, idx in enumerate(steps):
        batch = {n: data[n] if idx is None else data[n][idx] for n in names}
        shapes = {**{n: batch[n].shape for n in names}, **{k: v.shape for k, v in params.items()}}
        key = tuple(sorted(shapes.items()))
        if key not in programs:
            programs[key] = Program(case.loss_ir, shapes, list(params))
        program = programs[key]
        # the gradient's rounding budget moves slowly: refresh it every BUDGET_EVERY steps
        with_err = step % BUDGET_EVERY == 0
        fwd = program.forward({**batch, **params}, None, with_err=with_err)
        grads = program.vjp(fwd, 1.0, with_err=with_err)
        loss = float(fwd.values[program.out])
        for k in params:
            g, gerr = grads[k]
            if with_err:
                budget[k] = float(np.max(np.abs(gerr), initial=0.0))
            if t.optimizer in ("sgd", "manual"):
                params[k] = params[k] - t.lr * g
            else:
                params[k] = _adam(params[k], g, adam[k], step + 1, t.lr)
            traj.grad_err.append(budget[k])
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


def least_squares(case: TrainCase, data) -> dict[str, np.ndarray]:
    """Closed-form float64 least-squares fit of the same (noisy) data, in the model's parameter layout."""
    t = case.model.train
    x = np.asarray(data[t.inputs[0]], dtype=float)
    y = np.asarray(data[t.target], dtype=float)
    x2 = x.reshape(len(x), -1)
    design = np.hstack([x2, np.ones((len(x2), 1))])
    coef, *_ = np.linalg.lstsq(design, y.reshape(len(y), -1), rcond=None)
    w, b = coef[:-1], coef[-1]
    if case.model.model.type == "linear":
        return {"weight": w.T.reshape(case.param_shapes["weight"]), "bias": b.reshape(case.param_shapes["bias"])}
    (wn, ws), (bn, bs) = list(case.param_shapes.items())[:2]  # documented: weight first, then bias
    return {wn: w.reshape(ws), bn: b.reshape(bs)}


def plot(case: TrainCase, data, runs: dict, directory) -> str:
    """A PNG of the loss curves and, for one input feature, the fitted line over the data. Returns its path."""
    from pathlib import Path

    from matplotlib.figure import Figure

    t = case.model.train
    fig = Figure(figsize=(11, 4.2))
    ax_loss, ax_fit = fig.subplots(1, 2)
    for label, run in runs.items():
        ax_loss.plot(range(len(run.losses)), run.losses, label=label)
    ax_loss.set_yscale("log")
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("loss (before the step's update)")
    ax_loss.legend(fontsize=8)
    x = np.asarray(data[t.inputs[0]], dtype=float)
    y = np.asarray(data[t.target], dtype=float)
    if x.ndim <= 2 and x.reshape(len(x), -1).shape[1] == 1:
        xs = x.reshape(-1)
        ax_fit.scatter(xs, y.reshape(len(xs), -1)[:, 0], s=12, label="data")
        label, run = next(iter(runs.items()))
        final = run.params[-1]
        grid = np.linspace(xs.min(), xs.max(), 50)
        if case.model.model.type == "linear":
            line = grid * float(final["weight"].reshape(-1)[0]) + float(final["bias"].reshape(-1)[0])
        else:
            (_wn, w), (_bn, b) = list(final.items())[:2]
            line = grid * float(np.reshape(w, -1)[0]) + float(np.reshape(b, -1)[0])
        ax_fit.plot(grid, line, color="red", label=f"fit ({label})")
        ax_fit.legend(fontsize=8)
    else:
        ax_fit.text(0.5, 0.5, "more than one input feature:\nno line to draw", ha="center", va="center")
    ax_fit.set_title(case.name, fontsize=9)
    Path(directory).mkdir(parents=True, exist_ok=True)
    path = Path(directory) / f"{re.sub(r'[^A-Za-z0-9_.-]', '_', case.name)}.png"
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    return str(path)


def check_train_case(case: TrainCase, dtypes, devices, plot_dir=None) -> tuple[list[Check], list[str]]:
    """Every check of one training case (converge, trajectory and reproducible, per dtype and device), and the
    paths of the plots written."""
    from .engines.autograd import cuda_status

    data, init = draw(case)
    steps = batches(case, len(data[case.model.train.target]))
    reference = run_reference(case, data, init, steps)
    checks = []
    runs = {"symbolic-gradient loop (float64)": reference}
    for device in case.devices:
        if device not in devices:  # excluded by --device: reported, never dropped silently
            checks += [Check("converge", "autograd", "expect", dtype=d, device=device, status="skip",
                             message=f"{device} not requested (--device {', '.join(devices)})")
                       for d in case.dtypes if d in dtypes]
            continue
        if device == "cuda":
            ok, why = cuda_status()
            if not ok:
                checks += [Check(kind, "autograd", "expect", dtype=d, device="cuda", status="skip", message=why)
                           for d in case.dtypes if d in dtypes for kind in ("converge", "trajectory")]
                continue
        for dtype in case.dtypes:
            if dtype not in dtypes:
                continue
            run = run_torch(case, data, init, dtype, device, steps)
            runs[f"autograd {dtype} {device}"] = run
            again = run_torch(case, data, init, dtype, device, steps)
            checks.append(_converge(case, data, run, dtype, device))
            checks.append(_trajectory(case, run, reference, dtype, device))
            checks.append(_reproducible(run, again, dtype, device))
    plots = [plot(case, data, dict(reversed(list(runs.items()))), plot_dir)] if plot_dir is not None else []
    return checks, plots


def _converge(case: TrainCase, data, run: Trajectory, dtype, device) -> Check:
    e = case.model.expect
    check = Check("converge", "autograd", "expect", dtype=dtype, device=device)
    final = run.params[-1]
    problems, notes = [], []
    targets = {k: np.broadcast_to(np.array(v, dtype=float), case.param_shapes[k]) for k, v in e.params.items()}
    source = "expect.params"
    if e.least_squares:
        targets, source = least_squares(case, data), "least squares of the same data"
    worst = 0.0
    for k, want in targets.items():
        diff = float(np.max(np.abs(final[k] - want)))
        worst = max(worst, diff / e.atol)
        notes.append(f"{k} = {_fmt(final[k])} (want {_fmt(want)})")
        if diff > e.atol:
            problems.append(f"{k} is {diff:.3g} from {source} (atol {e.atol:g})")
    final_loss = run.losses[-1]
    notes.append(f"final loss {final_loss:.3g} after {len(run.losses)} steps")
    if e.final_loss_below is not None and not final_loss < e.final_loss_below:
        problems.append(f"final loss {final_loss:.3g} is not below {e.final_loss_below:g}")
    if e.stop_step is not None and run.stop_step != e.stop_step:
        problems.append(f"the stop rule fired at step {run.stop_step}, expected {e.stop_step}")
    if e.stop_step is not None:
        notes.append(f"stop rule fired at step {run.stop_step}")
    if e.loss_decreasing:
        # a rise counts only above the loss's own rounding: each residual may be off by u * (|p| + |y|), so a
        # mean of squared residuals L may move by (sqrt(L) + u * 2|y|)**2 - L, plus u * L for the mean itself
        u = tol.SAFETY * tol.UNIT_ROUNDOFF[dtype]
        ymax = float(np.max(np.abs(data[case.model.train.target]), initial=0.0))

        def noise(loss: float) -> float:
            return (math.sqrt(max(loss, 0.0)) + 2 * u * ymax) ** 2 - loss + u * loss

        rises = [i for i in range(1, len(run.losses))
                 if run.losses[i] - run.losses[i - 1] > noise(run.losses[i - 1])]
        if rises:
            problems.append(f"the loss rose at {len(rises)} step(s), first at step {rises[0]}")
    check.margin = worst
    check.atol = e.atol
    check.tolerance = f"atol {e.atol:g} against {source}"
    check.details = {"final_params": {k: np.asarray(v).tolist() for k, v in final.items()},
                     "target_params": {k: np.asarray(v).tolist() for k, v in targets.items()},
                     "target_source": source if targets else None, "final_loss": final_loss,
                     "first_loss": run.losses[0], "steps": len(run.losses), "stop_step": run.stop_step}
    check.status = "fail" if problems else "pass"
    check.message = "; ".join(problems) if problems else "; ".join(notes)
    check.diagnosis = "; ".join(notes) if problems else ""
    return check


def _trajectory(case: TrainCase, run: Trajectory, ref: Trajectory, dtype, device) -> Check:
    """Step by step against the symbolic-gradient loop; the allowed deviation grows with the steps."""
    want = case.model.expect.trajectory
    lr = case.model.train.lr
    u = tol.UNIT_ROUNDOFF[dtype] + tol.UNIT_ROUNDOFF["float64"]
    check = Check("trajectory", "autograd", "symbolic-gradient loop (float64)", dtype=dtype, device=device)
    steps = min(len(run.params), len(ref.params))
    allowed_sum, worst_margin, first_bad = 0.0, 0.0, None
    per_param_err = max(1, len(ref.params[0]))
    for s in range(1, steps):
        scale = max(float(np.max(np.abs(v), initial=0.0)) for v in ref.params[s].values())
        grad_budget = max(ref.grad_err[(s - 1) * per_param_err:s * per_param_err], default=0.0)
        allowed_sum += tol.SAFETY * u * (scale + lr * grad_budget) + tol.FLOOR * tol.TINY[dtype]
        dev = max(float(np.max(np.abs(run.params[s][k] - ref.params[s][k]), initial=0.0)) for k in ref.params[s])
        margin = dev / allowed_sum if allowed_sum else (math.inf if dev else 0.0)
        if margin > worst_margin:
            worst_margin = margin
        if margin > 1 and first_bad is None:
            first_bad = (s, dev, allowed_sum)
    check.margin = worst_margin
    check.tolerance = "sum over steps of 4 x (u + u_float64) x (|params| + lr x gradient budget)"
    check.entries = steps - 1
    if first_bad is None:
        check.status = "pass" if want == "matches" else "fail"
        check.message = (f"matches the symbolic-gradient loop over {steps - 1} steps (worst margin {worst_margin:.2g})"
                         if want == "matches" else "expected the run to diverge from the correct trajectory, "
                                                   "but it follows it")
    else:
        s, dev, allowed = first_bad
        text = f"diverges from the correct trajectory at step {s}: deviation {dev:.3g} > allowed {allowed:.3g}"
        check.status = "fail" if want == "matches" else "pass"
        check.message = text + (" (expected: the case reproduces a slip)" if want == "diverges" else "")
        if want == "diverges":
            check.margin = 0.0  # an expected divergence passes: its deviation is in the message, not a margin
    if case.model.train.slip:
        check.message += f"; slip: {SLIPS[case.model.train.slip]}"
    return check


def _reproducible(run: Trajectory, again: Trajectory, dtype, device) -> Check:
    check = Check("reproducible", "autograd", "a second run from the same seed", dtype=dtype, device=device)
    diff = max(float(np.max(np.abs(a[k] - b[k]), initial=0.0)) for a, b in zip(run.params, again.params) for k in a)
    same_length = len(run.params) == len(again.params)
    limit = 0.0 if device == "cpu" else 1e-6
    check.max_abs_err = diff
    if diff > limit or not same_length:
        check.status = "fail"
        check.message = f"two runs from the same seed differ by {diff:.3g}" + ("" if same_length else
                                                                           " and stop at different steps")
    else:
        check.message = "identical" if diff == 0 else f"within {diff:.3g}"
    return check


def _fmt(a) -> str:
    a = np.asarray(a, dtype=float)
    return f"{float(a.reshape(-1)[0]):.6g}" if a.size == 1 else np.array2string(a.reshape(-1), precision=5)
