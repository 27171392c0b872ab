"""The schema of a training case (``kind = "train"``): pydantic models of the TOML tables, and the validated,
frozen ``TrainCase`` built from them. Imports neither torch nor matplotlib: loading case files stays cheap.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from ..errors import CaseError, ExpressionError
from ..expr.ir import Call, Node, Var, variables
from ..expr.parse import parse
from ..expr.shapes import infer
from ..validate import Strict, check_choices, check_name, check_seed, numbers

GENERATORS = ("rand", "randn", "linspace", "arange", "zeros", "ones", "value")
LOSSES = {"mse": "mean((p - y)**2)", "half_squared": "mean(0.5 * (y - p)**2)"}
SLIPS = {"zero_weight_not_grad": "zeroes each parameter's value instead of its gradient before backward, as seed "
                                 "004 does (gradients accumulate, weights restart from 0)",
         "grad_not_zeroed": "never zeroes the gradients, so they accumulate across steps (seed 001's warning)"}
MAX_ENTRIES = 10_000_000  # per data entry or parameter: keeps a hostile shape from exhausting memory
# Total work of a run, in entries touched: steps x (STEP_COST + entries of one step's batch and params). One step
# costs about as much as STEP_COST entries (Python and dispatch overhead of the five loops: 5,000 steps of a small
# case take 9-12 s of CPU), so the default allows about 50,000 small steps (about 2 minutes of one core) or 50
# full-batch steps over 10 million entries.
STEP_COST = 10_000
MAX_WORK = 5 * 10**8
WORK_ENV = "DIFFCHECK_MAX_TRAIN_WORK"


class DrawModel(Strict):
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


class ModelModel(Strict):
    type: Literal["linear", "expr"] = "expr"
    expr: str | None = None
    params: dict[str, DrawModel] = {}
    inputs: int | None = None  # linear: in_features
    outputs: int = 1  # linear: out_features


class TrainModel(Strict):
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


class TrainExpectModel(Strict):
    params: dict[str, Any] = {}
    atol: float = 1e-3
    least_squares: bool = False
    final_loss_below: float | None = None
    stop_step: int | None = None
    loss_decreasing: bool = False
    trajectory: Literal["matches", "diverges"] = "matches"


class TrainCaseModel(Strict):
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
    model_ir: Node | None = None  # the prediction as an expression of params and inputs
    expect_params: dict[str, np.ndarray] = field(default_factory=dict)  # broadcast to each param's shape
    total_steps: int = 0  # steps, or epochs x batches per epoch (before any stop rule)

    @property
    def param_names(self) -> list[str]:
        return list(self.param_shapes)


def build_train_case(raw: dict, where: str, validate_model) -> TrainCase:
    """Validate a ``kind = "train"`` case (``validate_model`` turns pydantic errors into CaseErrors)."""
    m: TrainCaseModel = validate_model(TrainCaseModel, raw)

    def fail(message: str, key: str):
        raise CaseError(message, where, m.name, key)

    t = m.train
    if not m.name.strip():
        fail("'name' must not be empty", "name")
    check_name(m.name, fail)
    check_seed(m.seed, fail)
    check_choices("dtypes", m.dtypes, fail)
    check_choices("devices", m.devices, fail)
    _check_train(t, fail)
    stop = _stop_rule(t.stop, fail) if t.stop is not None else None
    data_shapes = _data_shapes(m.data, fail)
    rows = _rows(t, data_shapes, fail)
    param_shapes, model_ir = _model(m.model, t, data_shapes, fail)
    for name in param_shapes:
        if name in data_shapes:
            fail(f"param '{name}' has the name of a [data] entry: the model could not tell them apart; rename one",
                 "model" if m.model.type == "linear" else f"model.params.{name}")
    try:
        loss_template = parse(LOSSES.get(t.loss, t.loss), {"p", "y"})
    except ExpressionError as exc:
        fail(f"bad train.loss (a name in {list(LOSSES)} or an expression of p and y): {exc}", "train.loss")
    loss_ir = _substitute(loss_template, {"p": model_ir, "y": Var(t.target)})
    shapes = {**{n: data_shapes[n] for n in [*t.inputs, t.target]}, **param_shapes}
    try:
        predicted = infer(model_ir, shapes)
        out = infer(loss_ir, shapes)
    except ExpressionError as exc:
        fail(f"model and data shapes do not fit: {exc}", "model")
    if t.loss in LOSSES and predicted != data_shapes[t.target]:
        fail(f"the model predicts shape {list(predicted)} but the target '{t.target}' has shape "
             f"{list(data_shapes[t.target])}: {t.loss} would broadcast them into each other", "model")
    if out != ():
        fail(f"the loss must be a scalar, got shape {list(out)}", "train.loss")
    total = _total_steps(t, rows)
    _check_work(t, total, rows, data_shapes, param_shapes, fail)
    expect_params = _expect(m, t, param_shapes, total, fail)
    return TrainCase(m.name, where, m, loss_ir, param_shapes, data_shapes, stop, m.description, tuple(m.dtypes),
                     tuple(m.devices), m.seed, model_ir, expect_params, total)


def _check_train(t: TrainModel, fail) -> None:
    if (t.steps is None) == (t.epochs is None):
        fail("give exactly one of train.steps and train.epochs", "train")
    key = "train.steps" if t.steps is not None else "train.epochs"
    if (t.steps if t.steps is not None else t.epochs) < 1:
        fail(f"{key} must be at least 1, got {t.steps if t.steps is not None else t.epochs}", key)
    if t.batch_size is not None:
        if t.epochs is None:
            fail("train.batch_size needs train.epochs (train.steps are full-batch steps)", "train.batch_size")
        if t.batch_size < 1:
            fail(f"train.batch_size must be at least 1, got {t.batch_size} (leave it out for full batches)",
                 "train.batch_size")
    if not (t.lr > 0 and math.isfinite(t.lr)):
        fail(f"train.lr must be a positive finite number, got {t.lr}", "train.lr")
    if t.slip is not None and t.slip not in SLIPS:
        fail(f"unknown slip '{t.slip}' (known: {', '.join(SLIPS)})", "train.slip")
    if not t.inputs:
        fail("train.inputs is empty: name the data entries the model reads", "train.inputs")
    if len(set(t.inputs)) != len(t.inputs):
        fail("train.inputs lists an entry twice", "train.inputs")


def _stop_rule(text: str, fail) -> tuple[str, float]:
    match = re.fullmatch(r"\s*loss\s*<\s*(\S+)\s*", text)
    try:
        threshold = float(match.group(1)) if match else math.nan
    except ValueError:
        threshold = math.nan
    if not math.isfinite(threshold):
        fail(f"train.stop must read 'loss < NUMBER' with a finite number, got {text!r}", "train.stop")
    return ("<", threshold)


def _data_shapes(data: dict, fail) -> dict[str, tuple]:
    """Each entry's shape, in the order listed: an expression may use only the entries above it."""
    shapes: dict[str, tuple] = {}
    for name, item in data.items():
        key = f"data.{name}"
        if not isinstance(item, str):
            shapes[name] = _draw_shape(item, key, fail)
            continue
        try:
            node = parse(item, set(data))
        except ExpressionError as exc:
            fail(f"{key}: {exc}", key)
        later = sorted(variables(node) - set(shapes))
        if later:
            uses = ", ".join(f"'{n}'" for n in later)
            itself = " (itself)" if name in later else ""
            fail(f"{key} uses {uses}{itself}, which [data] does not list above it: entries are computed in the "
                 f"order listed (above it: {', '.join(shapes) or 'none'}); move {key} below what it uses", key)
        try:
            shapes[name] = infer(node, shapes)
        except ExpressionError as exc:
            fail(f"{key}: {exc}", key)
        if math.prod(shapes[name]) > MAX_ENTRIES:
            fail(f"{key} has {math.prod(shapes[name])} entries; the limit is {MAX_ENTRIES}", key)
    return shapes


def _rows(t: TrainModel, data_shapes: dict[str, tuple], fail) -> int:
    """The number of samples: the first dimension, the same for every input and the target."""
    for name in [*t.inputs, t.target]:
        if name not in data_shapes:
            fail(f"'{name}' is not in [data] (known: {', '.join(data_shapes)})",
                 "train.target" if name == t.target else "train.inputs")
        if data_shapes[name] == ():
            fail(f"data.{name} is a scalar: inputs and the target need one row per sample (shape [n, ...])",
                 f"data.{name}")
    rows = data_shapes[t.target][0]
    for name in t.inputs:
        if data_shapes[name][0] != rows:
            fail(f"data.{name} has {data_shapes[name][0]} rows but the target '{t.target}' has {rows}: every input "
                 f"needs one row per sample", f"data.{name}")
    return rows


def _model(mm: ModelModel, t: TrainModel, data_shapes: dict[str, tuple], fail) -> tuple[dict[str, tuple], Node]:
    if mm.type == "linear":
        for key in ("expr", "params"):
            if key in mm.model_fields_set:
                fail(f"a linear model (nn.Linear) has params weight and bias of its own: model.{key} is for "
                     f"type = \"expr\"", f"model.{key}")
        if len(t.inputs) != 1:
            fail("a linear model takes exactly one input", "train.inputs")
        in_shape = data_shapes[t.inputs[0]]
        n_in = mm.inputs if mm.inputs is not None else (in_shape[-1] if len(in_shape) > 1 else 1)
        for key, size in (("inputs", n_in), ("outputs", mm.outputs)):
            if not 1 <= size <= MAX_ENTRIES:
                fail(f"model.{key} (nn.Linear's {key[:-1]} features) must be from 1 to {MAX_ENTRIES}, got {size}",
                     f"model.{key}")
        if n_in * mm.outputs > MAX_ENTRIES:
            fail(f"nn.Linear({n_in}, {mm.outputs}) has {n_in * mm.outputs} weights; the limit is {MAX_ENTRIES}",
                 "model.outputs")
        param_shapes = {"weight": (mm.outputs, n_in), "bias": (mm.outputs,)}
        model_ir: Node = Call("add", (Call("matmul", (Var(t.inputs[0]), Call("transpose", (Var("weight"),)))),
                                      Var("bias")))
        return param_shapes, model_ir
    for key in ("inputs", "outputs"):
        if key in mm.model_fields_set:
            fail(f"model.{key} is an nn.Linear size: it needs type = \"linear\"", f"model.{key}")
    if not mm.expr:
        fail("an expression model needs model.expr", "model.expr")
    param_shapes = {n: _draw_shape(d, f"model.params.{n}", fail) for n, d in mm.params.items()}
    try:
        model_ir = parse(mm.expr, set(param_shapes) | set(t.inputs))
    except ExpressionError as exc:
        fail(f"bad model.expr: {exc}", "model.expr")
    missing = set(param_shapes) - variables(model_ir)
    if missing:
        fail(f"params not used in model.expr: {', '.join(sorted(missing))}", "model.params")
    if not param_shapes:
        fail("the model has no parameters to train", "model.params")
    return param_shapes, model_ir


def _total_steps(t: TrainModel, rows: int) -> int:
    if t.epochs is None:
        return t.steps
    return t.epochs * math.ceil(rows / min(t.batch_size or rows, rows))


def _check_work(t: TrainModel, total: int, rows: int, data_shapes, param_shapes, fail) -> None:
    """Bound the run: steps x (STEP_COST + entries of one step) against MAX_WORK (or the environment's limit)."""
    batch = min(t.batch_size or rows, rows)
    per_step = sum(math.prod(data_shapes[n]) // rows * batch for n in {*t.inputs, t.target})
    per_step += sum(math.prod(s) for s in param_shapes.values())
    work = total * (STEP_COST + per_step)
    limit = work_limit(fail)
    if work > limit:
        key = "train.steps" if t.epochs is None else "train.epochs"
        steps = f"{total} steps" if t.epochs is None else f"{t.epochs} epochs x {total // t.epochs} batches"
        fail(f"{key}: {steps} x ({STEP_COST} + {per_step} entries per step) = {work:.3g} units of work; the limit "
             f"is {limit:.3g} (about {limit / STEP_COST:,.0f} small steps); the environment variable {WORK_ENV} "
             f"raises it", key)


def work_limit(fail) -> float:
    """MAX_WORK, or the number in the environment variable WORK_ENV: set by whoever runs diffcheck, never by a
    case file."""
    text = os.environ.get(WORK_ENV)
    try:
        return MAX_WORK if text is None else float(text)
    except ValueError:
        fail(f"the environment variable {WORK_ENV} must be a number, got {text!r}", "train")


def _expect(m: TrainCaseModel, t: TrainModel, param_shapes: dict[str, tuple], total: int, fail):
    e = m.expect
    for key in ("atol", "final_loss_below"):
        value = getattr(e, key)
        if value is not None and not math.isfinite(value):
            fail(f"expect.{key} must be a finite number, got {value}", f"expect.{key}")
    if e.atol < 0:
        fail(f"expect.atol must be >= 0, got {e.atol}", "expect.atol")
    if e.stop_step is not None:
        if t.stop is None:
            fail("expect.stop_step needs a stop rule: add train.stop = \"loss < NUMBER\"", "expect.stop_step")
        if not 0 <= e.stop_step < total:
            fail(f"expect.stop_step must be a step from 0 to {total - 1} (the run has {total} steps), got "
                 f"{e.stop_step}", "expect.stop_step")
    if e.params and e.least_squares:
        fail("give expect.params or expect.least_squares, not both", "expect.least_squares")
    targets = {}
    for name, raw in e.params.items():
        key = f"expect.params.{name}"
        if name not in param_shapes:
            fail(f"'{name}' is not a parameter (known: {', '.join(param_shapes)})", key)
        value = numbers(raw, key, fail)
        try:
            targets[name] = np.broadcast_to(value, param_shapes[name])
        except ValueError:
            fail(f"{key} has shape {list(value.shape)}, which does not fit the parameter's shape "
                 f"{list(param_shapes[name])}", key)
    if e.least_squares:
        affine = m.model.type == "linear" or (len(param_shapes) == 2 and len(t.inputs) == 1)
        if not affine:
            fail("least_squares needs a model affine in its parameters and its one input: linear, or x @ w + b "
                 "style with the weight first and the bias second", "expect.least_squares")
    return targets


def _draw_shape(d: DrawModel, key: str, fail) -> tuple:
    given = [g for g in GENERATORS if getattr(d, g) is not None]
    if len(given) != 1:
        fail(f"{key} needs exactly one of {', '.join(GENERATORS)}", key)
    kind = given[0]
    for name in ("scale", "offset"):
        if not math.isfinite(getattr(d, name)):
            fail(f"{key}.{name} must be a finite number, got {getattr(d, name)}", f"{key}.{name}")
    if kind in ("rand", "randn", "zeros", "ones"):
        shape = tuple(getattr(d, kind))
    elif kind == "linspace":
        lin = d.linspace
        if len(lin) != 3 or not all(math.isfinite(v) for v in lin) or lin[2] < 1 or lin[2] != int(lin[2]):
            fail(f"{key}.linspace must be [start, stop, count] with finite start and stop and a whole count >= 1, "
                 f"got {lin}", f"{key}.linspace")
        shape = (int(lin[2]),)
    elif kind == "arange":
        ar = d.arange
        if len(ar) != 3 or not all(math.isfinite(v) for v in ar) or ar[2] == 0:
            fail(f"{key}.arange must be [start, stop, step] of finite numbers with step != 0, got {ar}",
                 f"{key}.arange")
        count = (ar[1] - ar[0]) / ar[2]
        if not count <= MAX_ENTRIES:  # also catches an overflow to inf
            fail(f"{key}.arange {ar} has more than {MAX_ENTRIES} values", f"{key}.arange")
        shape = (max(0, math.ceil(count)),)
    else:
        shape = numbers(d.value, f"{key}.value", fail).shape
    if d.shape is not None:
        if math.prod(d.shape) != math.prod(shape) or any(s < 1 for s in d.shape):
            fail(f"{key}.shape {d.shape} does not hold the {math.prod(shape)} values", f"{key}.shape")
        shape = tuple(d.shape)
    if any(s < 1 for s in shape) or math.prod(shape) > MAX_ENTRIES:
        fail(f"{key} has an unusable shape {list(shape)} (every dimension >= 1, at most {MAX_ENTRIES} entries)",
             key)
    return shape


def _substitute(node: Node, mapping: dict[str, Node]) -> Node:
    if isinstance(node, Var):
        return mapping.get(node.name, node)
    if isinstance(node, Call):
        return Call(node.op, tuple(_substitute(a, mapping) for a in node.args), node.params)
    return node
