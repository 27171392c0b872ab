"""One table of every op the language knows: arity, parameters, and each engine's definition.

Elementwise ops carry a sympy definition (the symbolic engine differentiates it once and caches the result),
a float64 numpy forward (stable formulas, independent of torch) and the torch function under test. Their
``kink`` is a sympy expression whose zero set is where the op is not differentiable; ``domain`` is where
random inputs for that argument are valid; ``ulps`` is how many units of roundoff torch's own implementation
may be off by (forward and local derivative), which feeds the derived tolerance.

Torch and scipy are imported lazily so that ``diffcheck --help`` stays fast.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

NUMBER = (int, float)


@dataclass(frozen=True)
class Param:
    name: str
    kind: str  # "number", "bool", "dims" (None, int or tuple of ints)
    default: object


@dataclass(frozen=True)
class Op:
    name: str
    arity: int
    kind: str  # "elementwise", "reduce", "matmul", "transpose", "composite"
    params: tuple[Param, ...] = ()
    sympy: Callable | None = None  # (*symbols, **params) -> sympy expression
    numpy: Callable | None = None  # (*arrays, **params) -> float64 array
    torch: Callable | None = None  # (*tensors, **params) -> tensor
    kink: Callable | None = None  # (*symbols, **params) -> sympy expression, zero where not differentiable
    domain: tuple[tuple[float, float], ...] = ()  # per argument, for sampling
    ulps: float = 4.0  # accuracy of torch's implementation, in units of roundoff u
    doc: str = ""
    formula: bool = False  # implemented by its defining formula: its value budget comes from that formula
    grad_alt: Callable | None = None  # (*symbols, **params) -> derivatives as torch computes them
    grad_out: Callable | None = None  # (out, *symbols, **params) -> derivatives computed from the op's output
    param_names: tuple[str, ...] = field(init=False, default=())

    def __post_init__(self):
        object.__setattr__(self, "param_names", tuple(p.name for p in self.params))


def _sp():
    import sympy

    return sympy


def _special():
    import scipy.special

    return scipy.special


def _np():
    import numpy

    return numpy


def _torch():
    import torch

    return torch


def _F():
    import torch.nn.functional as F

    return F


# ---- sympy definitions (piecewise ones follow torch's conventions for which side owns the kink) ----
def _relu(x):
    sp = _sp()
    return sp.Piecewise((0, x <= 0), (x, True))


def _elu(x, alpha):
    sp = _sp()
    return sp.Piecewise((alpha * (sp.exp(x) - 1), x <= 0), (x, True))


def _leaky(x, negative_slope):
    sp = _sp()
    return sp.Piecewise((negative_slope * x, x <= 0), (x, True))


def _softplus(x, beta, threshold):
    sp = _sp()
    return sp.Piecewise((x, beta * x > threshold), (sp.log(1 + sp.exp(beta * x)) / beta, True))


def _maximum(x, y):
    sp = _sp()
    return sp.Piecewise((x, x >= y), (y, True))


def _minimum(x, y):
    sp = _sp()
    return sp.Piecewise((x, x <= y), (y, True))


def _np_softplus(x, beta, threshold):
    np = _np()
    bx = beta * x
    return np.where(bx > threshold, x, np.log1p(np.exp(np.minimum(bx, threshold))) / beta)


def _unary(name, sympy_fn, numpy_fn, torch_fn, domain=(-1.0, 1.0), ulps=4.0, kink=None, params=(), doc="",
           formula=False, grad_alt=None, grad_out=None):
    return Op(name, 1, "elementwise", tuple(params), sympy_fn, numpy_fn, torch_fn, kink, (domain,), ulps, doc,
              formula, grad_alt, grad_out)


def _sig(x):
    return 1 / (1 + _sp().exp(-x))


def _build() -> dict[str, Op]:
    ops: list[Op] = [
        # arithmetic (written with operators in case files)
        Op("add", 2, "elementwise", (), lambda a, b: a + b, lambda a, b: a + b, lambda a, b: a + b,
           domain=((-1, 1), (-1, 1)), ulps=1),
        Op("sub", 2, "elementwise", (), lambda a, b: a - b, lambda a, b: a - b, lambda a, b: a - b,
           domain=((-1, 1), (-1, 1)), ulps=1),
        Op("mul", 2, "elementwise", (), lambda a, b: a * b, lambda a, b: a * b, lambda a, b: a * b,
           domain=((-1, 1), (-1, 1)), ulps=1),
        Op("div", 2, "elementwise", (), lambda a, b: a / b, lambda a, b: a / b, lambda a, b: a / b,
           domain=((-1, 1), (0.5, 2)), ulps=2),
        Op("pow", 2, "elementwise", (), lambda a, b: a**b, lambda a, b: _np().power(a, b),
           lambda a, b: a**b, domain=((0.5, 2), (-2, 2)), ulps=4),
        Op("neg", 1, "elementwise", (), lambda a: -a, lambda a: -a, lambda a: -a, domain=((-1, 1),), ulps=0),
        # x ** c with a constant c: its own rule, since sympy writes d/dx x**y as y*x**y/x (0/0 at x = 0)
        Op("powc", 1, "elementwise", (Param("exponent", "number", 1.0),), lambda a, exponent: a**exponent,
           lambda a, exponent: _np().power(a, exponent), lambda a, exponent: a**exponent, domain=((0.5, 2),)),
        # unary functions
        _unary("exp", lambda x: _sp().exp(x), lambda x: _np().exp(x), lambda x: _torch().exp(x), (-3, 3)),
        _unary("log", lambda x: _sp().log(x), lambda x: _np().log(x), lambda x: _torch().log(x), (0.1, 3)),
        _unary("log1p", lambda x: _sp().log(1 + x), lambda x: _np().log1p(x), lambda x: _torch().log1p(x),
               (-0.9, 3)),
        _unary("expm1", lambda x: _sp().exp(x) - 1, lambda x: _np().expm1(x), lambda x: _torch().expm1(x),
               (-3, 3), grad_out=lambda out, x: (out + 1,)),  # torch's backward: grad * (result + 1)
        _unary("sqrt", lambda x: _sp().sqrt(x), lambda x: _np().sqrt(x), lambda x: _torch().sqrt(x), (0.1, 3)),
        _unary("rsqrt", lambda x: 1 / _sp().sqrt(x), lambda x: 1 / _np().sqrt(x),
               lambda x: _torch().rsqrt(x), (0.1, 3)),
        _unary("abs", lambda x: _sp().Abs(x), lambda x: _np().abs(x), lambda x: _torch().abs(x), ulps=0,
               kink=lambda x: x),
        _unary("sin", lambda x: _sp().sin(x), lambda x: _np().sin(x), lambda x: _torch().sin(x), (-3, 3)),
        _unary("cos", lambda x: _sp().cos(x), lambda x: _np().cos(x), lambda x: _torch().cos(x), (-3, 3)),
        _unary("tan", lambda x: _sp().tan(x), lambda x: _np().tan(x), lambda x: _torch().tan(x), (-1.2, 1.2)),
        _unary("asin", lambda x: _sp().asin(x), lambda x: _np().arcsin(x), lambda x: _torch().asin(x),
               (-0.9, 0.9)),
        _unary("acos", lambda x: _sp().acos(x), lambda x: _np().arccos(x), lambda x: _torch().acos(x),
               (-0.9, 0.9)),
        _unary("atan", lambda x: _sp().atan(x), lambda x: _np().arctan(x), lambda x: _torch().atan(x), (-3, 3)),
        _unary("sinh", lambda x: _sp().sinh(x), lambda x: _np().sinh(x), lambda x: _torch().sinh(x), (-3, 3)),
        _unary("cosh", lambda x: _sp().cosh(x), lambda x: _np().cosh(x), lambda x: _torch().cosh(x), (-3, 3)),
        _unary("tanh", lambda x: _sp().tanh(x), lambda x: _np().tanh(x), lambda x: _torch().tanh(x), (-3, 3)),
        _unary("asinh", lambda x: _sp().asinh(x), lambda x: _np().arcsinh(x), lambda x: _torch().asinh(x),
               (-3, 3)),
        _unary("acosh", lambda x: _sp().acosh(x), lambda x: _np().arccosh(x), lambda x: _torch().acosh(x),
               (1.1, 4)),
        _unary("atanh", lambda x: _sp().atanh(x), lambda x: _np().arctanh(x), lambda x: _torch().atanh(x),
               (-0.9, 0.9)),
        _unary("erf", lambda x: _sp().erf(x), lambda x: _special().erf(x), lambda x: _torch().erf(x), (-2, 2)),
        _unary("erfc", lambda x: _sp().erfc(x), lambda x: _special().erfc(x), lambda x: _torch().erfc(x),
               (-2, 2)),
        _unary("erfinv", lambda x: _sp().erfinv(x), lambda x: _special().erfinv(x),
               lambda x: _torch().erfinv(x), (-0.9, 0.9), ulps=8),
        _unary("sigmoid", _sig, lambda x: _special().expit(x), lambda x: _torch().sigmoid(x), (-4, 4),
               grad_alt=lambda x: (_sig(x) * (1 - _sig(x)),)),
        _unary("relu", _relu, lambda x: _np().maximum(x, 0.0), lambda x: _torch().relu(x), ulps=0,
               kink=lambda x: x),
        _unary("elu", _elu, lambda x, alpha: _np().where(x > 0, x, alpha * _np().expm1(_np().minimum(x, 0))),
               lambda x, alpha: _F().elu(x, alpha=alpha), (-2, 2), kink=lambda x, alpha: x, formula=True,
               params=(Param("alpha", "number", 1.0),),  # elu_'s backward (and candle's): out + alpha
               grad_out=lambda out, x, alpha: (_sp().Piecewise((out + alpha, x <= 0), (1, True)),)),
        _unary("leaky_relu", _leaky, lambda x, negative_slope: _np().where(x > 0, x, negative_slope * x),
               lambda x, negative_slope: _F().leaky_relu(x, negative_slope=negative_slope), ulps=1,
               kink=lambda x, negative_slope: x, params=(Param("negative_slope", "number", 0.01),)),
        _unary("softplus", _softplus, _np_softplus,
               lambda x, beta, threshold: _F().softplus(x, beta=beta, threshold=threshold), (-4, 4), formula=True,
               kink=lambda x, beta, threshold: beta * x - threshold,
               params=(Param("beta", "number", 1.0), Param("threshold", "number", 20.0))),
        _unary("silu", lambda x: x * _sig(x), lambda x: x * _special().expit(x), lambda x: _F().silu(x), (-4, 4),
               formula=True, grad_alt=lambda x: (_sig(x) * (1 + x * (1 - _sig(x))),)),
        _unary("gelu", lambda x: x / 2 * (1 + _sp().erf(x / _sp().sqrt(2))),
               lambda x: x / 2 * (1 + _special().erf(x / math.sqrt(2))), lambda x: _F().gelu(x), (-3, 3),
               formula=True),
        Op("atan2", 2, "elementwise", (), lambda y, x: _sp().atan2(y, x), lambda y, x: _np().arctan2(y, x),
           lambda y, x: _torch().atan2(y, x), domain=((-1, 1), (0.5, 2))),
        Op("maximum", 2, "elementwise", (), _maximum, lambda a, b: _np().maximum(a, b),
           lambda a, b: _torch().maximum(a, b), kink=lambda a, b: a - b, domain=((-1, 1), (-1, 1)), ulps=0),
        Op("minimum", 2, "elementwise", (), _minimum, lambda a, b: _np().minimum(a, b),
           lambda a, b: _torch().minimum(a, b), kink=lambda a, b: a - b, domain=((-1, 1), (-1, 1)), ulps=0),
        # structural ops: exact adjoint rules in the symbolic engine
        Op("sum", 1, "reduce", (Param("dim", "dims", None), Param("keepdim", "bool", False)), domain=((-1, 1),),
           ulps=0, doc="sum over all entries, or over dim (an int or a tuple of ints)"),
        Op("mean", 1, "reduce", (Param("dim", "dims", None), Param("keepdim", "bool", False)),
           domain=((-1, 1),), ulps=1),
        Op("logsumexp", 1, "reduce", (Param("dim", "dims", None), Param("keepdim", "bool", False)),
           domain=((-3, 3),), doc="log(sum(exp(x))) over all entries, or over dim"),
        Op("softmax", 1, "composite", (Param("dim", "dims", -1),), domain=((-3, 3),)),
        Op("log_softmax", 1, "composite", (Param("dim", "dims", -1),), domain=((-3, 3),)),
        Op("mse_loss", 2, "composite", (), domain=((-1, 1), (-1, 1)), doc="mean((a - b)**2)"),
        Op("binary_cross_entropy", 2, "composite", (), domain=((0.05, 0.95), (0, 1)),
           doc="mean(-(y*log(p) + (1-y)*log(1-p))); torch clamps (1-p)*p at 1e-12 in backward"),
        Op("matmul", 2, "matmul", (), domain=((-1, 1), (-1, 1)), ulps=0),
        Op("transpose", 1, "transpose", (), domain=((-1, 1),), ulps=0),
    ]
    return {op.name: op for op in ops}


OPS: dict[str, Op] = _build()

# Ops written as operators, not called by name.
OPERATOR_OPS = {"add", "sub", "mul", "div", "pow", "powc", "neg", "matmul", "transpose"}
# Names a case file may call as functions.
FUNCTIONS = sorted(name for name in OPS if name not in OPERATOR_OPS)
# Named constants allowed in expressions.
CONSTANTS = {"pi": math.pi}
