"""The schema of a training case (``kind = "train"``): pydantic models of the TOML tables, and the validated,
frozen ``TrainCase`` built from them. Imports neither torch nor matplotlib: loading case files stays cheap.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from ..errors import CaseError, ExpressionError
from ..expr.ir import Call, Node, Var, variables
from ..expr.parse import parse
from ..expr.shapes import infer
from ..validate import Strict as _Strict
from ..validate import check_seed

GENERATORS = ("rand", "randn", "linspace", "arange", "zeros", "ones", "value")
LOSSES = {"mse": "mean((p - y)**2)", "half_squared": "mean(0.5 * (y - p)**2)"}
SLIPS = {"zero_weight_not_grad": "zeroes each parameter's value instead of its gradient before backward, as seed "
                                 "004 does (gradients accumulate, weights restart from 0)",
         "grad_not_zeroed": "never zeroes the gradients, so they accumulate across steps (seed 001's warning)"}
MAX_STEPS = 1_000_000


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
    check_seed(m.seed, fail)
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
