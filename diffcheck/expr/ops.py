"""One table of every op the language knows: arity, parameters, and each engine's definition.

Elementwise ops carry a sympy definition (the symbolic engine differentiates it once and caches the result),
a float64 numpy forward (stable formulas, independent of torch) and the torch function under test. Their
``kink`` is a sympy expression whose zero set is where the op is not differentiable; ``domain`` is where
random inputs for that argument are valid; ``ulps`` is how many units of roundoff torch's own implementation
may be off by (forward and local derivative), which feeds the derived tolerance.

Torch and scipy are imported lazily so that ``diffcheck --help`` stays fast.

Why it is over 400 lines: it is the one op table (about 130 ops) and the small sympy definitions the table
entries use; a table split across files would no longer be the single list a reader checks.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

NUMBER = (int, float)


@dataclass(frozen=True)
class Param:
    name: str
    kind: str  # "number", "bool", "dims" (None, int or tuple of ints), "choice" (a string), "tensor" (an argument)
    default: object
    choices: tuple[str, ...] = ()  # the strings a "choice" parameter accepts


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
    zero_grad: bool = False  # no gradient flows through (masks, floor, detach): the result is never active
    jump: bool = False  # ``kink`` marks a discontinuity of the value (a mask or floor flips there)
    mask: bool = False  # the result is a boolean mask (0/1 in the reference, torch.bool under test)
    tensor_list: bool = False  # the first argument is a list of tensors (cat, stack)
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


def _cmp(name, fn):
    """A comparison: a 0/1 mask with a jump where a == b; no gradient flows through it."""
    def sym(a, b):
        return _sp().Piecewise((1, fn(a, b)), (0, True))

    return Op(name, 2, "elementwise", (), sym, lambda a, b: fn(_np().asarray(a), b).astype(float), fn,
              kink=lambda a, b: a - b, domain=((-1, 1), (-1, 1)), ulps=0, zero_grad=True, jump=True, mask=True)


def _logical(name, arity, np_fn, sym):
    return Op(name, arity, "elementwise", (), sym, lambda *m: np_fn(*(_np().asarray(a) != 0 for a in m)).astype(float),
              None, domain=((0, 1),) * arity, ulps=0, zero_grad=True, mask=True)


def _mask_ops() -> list[Op]:
    import operator

    np = _Lazy(_np)
    return [
        _cmp("lt", operator.lt), _cmp("le", operator.le), _cmp("gt", operator.gt), _cmp("ge", operator.ge),
        _cmp("eq", operator.eq), _cmp("ne", operator.ne),
        _logical("logical_and", 2, np.logical_and, lambda a, b: a * b),
        _logical("logical_or", 2, np.logical_or, lambda a, b: a + b - a * b),
        _logical("logical_not", 1, np.logical_not, lambda a: 1 - a),
        # where(cond, a, b): cond is a mask (exact 0/1), so the derivative is cond towards a and 1 - cond towards b
        Op("where", 3, "elementwise", (), lambda c, a, b: c * a + (1 - c) * b,
           lambda c, a, b: _np().where(_np().asarray(c) != 0, a, b), None, domain=((0, 1), (-1, 1), (-1, 1)),
           ulps=0, doc="torch.where(cond, a, b); cond must be a mask"),
    ]


def _gelu(x, approximate):
    sp = _sp()
    if approximate == "tanh":
        return x / 2 * (1 + sp.tanh(sp.sqrt(2 / sp.pi) * (x + sp.Rational(44715, 1000000) * x**3)))
    return x / 2 * (1 + sp.erf(x / sp.sqrt(2)))


def _np_gelu(x, approximate):
    np = _np()
    if approximate == "tanh":
        return x / 2 * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))
    return x / 2 * (1 + _special().erf(x / math.sqrt(2)))


SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946


def _rounding(name, sym, np_fn, torch_fn, kink):
    """floor, ceil, round, trunc, sign: piecewise constant, zero gradient, a jump at each step."""
    return Op(name, 1, "elementwise", (), sym, np_fn, torch_fn, kink, ((-3, 3),), ulps=0, zero_grad=True,
              jump=True, doc="zero gradient; jumps where the value steps")


class _Lazy:
    """``_Lazy(_torch).sign`` is a function that imports torch on its first call, not when the table is built."""

    def __init__(self, module):
        self._module = module

    def __getattr__(self, name):
        return lambda *args, **kwargs: getattr(self._module(), name)(*args, **kwargs)


def _elementwise_ops() -> list[Op]:
    sp, np, torch, F = _Lazy(_sp), _Lazy(_np), _Lazy(_torch), _Lazy(_F)
    pw = sp.Piecewise
    steps = lambda x: _sp().sin(_sp().pi * x)
    return [
        _rounding("sign", lambda x: _sp().sign(x), np.sign, torch.sign, lambda x: x),
        _rounding("floor", lambda x: _sp().floor(x), np.floor, torch.floor, steps),
        _rounding("ceil", lambda x: _sp().ceiling(x), np.ceil, torch.ceil, steps),
        _rounding("trunc", lambda x: _sp().floor(_sp().Abs(x)) * _sp().sign(x), np.trunc, torch.trunc, steps),
        # round half to even, as torch and numpy do: the steps sit at the half-integers
        _rounding("round", lambda x: _sp().floor(x + _sp().Rational(1, 2)), np.round, torch.round,
                  lambda x: _sp().cos(_sp().pi * x)),
        Op("detach", 1, "elementwise", (), lambda x: x, lambda x: x, lambda x: x.detach(), ulps=0, zero_grad=True,
           domain=((-1, 1),), doc="the value of x; no gradient flows through (x.detach() is the same)"),
        _unary("square", lambda x: x**2, np.square, torch.square, (-2, 2), ulps=1),
        _unary("reciprocal", lambda x: 1 / x, np.reciprocal, torch.reciprocal, (0.5, 2), ulps=1),
        _unary("log2", lambda x: _sp().log(x) / _sp().log(2), np.log2, torch.log2, (0.1, 3)),
        _unary("log10", lambda x: _sp().log(x) / _sp().log(10), np.log10, torch.log10, (0.1, 3)),
        _unary("exp2", lambda x: 2**x, np.exp2, torch.exp2, (-3, 3)),
        Op("logaddexp", 2, "elementwise", (), lambda a, b: _sp().log(_sp().exp(a) + _sp().exp(b)), np.logaddexp,
           torch.logaddexp, domain=((-3, 3), (-3, 3)), formula=True),  # absolute error: cancels near 0
        Op("hypot", 2, "elementwise", (), lambda a, b: _sp().sqrt(a**2 + b**2), np.hypot, torch.hypot,
           domain=((-1, 1), (0.5, 2))),
        Op("xlogy", 2, "elementwise", (), lambda a, b: a * _sp().log(b), lambda a, b: _special().xlogy(a, b),
           torch.xlogy, domain=((-1, 1), (0.1, 3))),
        _unary("hardtanh", lambda x, min_val, max_val: pw((min_val, x <= min_val), (max_val, x >= max_val), (x, True)),
               lambda x, min_val, max_val: np.clip(x, min_val, max_val),
               lambda x, min_val, max_val: F.hardtanh(x, min_val, max_val), (-2, 2), ulps=0,
               kink=lambda x, min_val, max_val: (x - min_val) * (x - max_val),
               params=(Param("min_val", "number", -1.0), Param("max_val", "number", 1.0))),
        _unary("relu6", lambda x: pw((0, x <= 0), (6, x >= 6), (x, True)), lambda x: np.clip(x, 0.0, 6.0),
               F.relu6, (-2, 8), ulps=0, kink=lambda x: x * (x - 6)),
        _unary("hardsigmoid", lambda x: pw((0, x <= -3), (1, x >= 3), (x / 6 + _sp().Rational(1, 2), True)),
               lambda x: np.clip(x / 6 + 0.5, 0.0, 1.0), F.hardsigmoid, (-5, 5), ulps=2,
               kink=lambda x: (x + 3) * (x - 3)),
        _unary("hardswish", lambda x: pw((0, x < -3), (x * (x + 3) / 6, x <= 3), (x, True)),
               lambda x: x * np.clip(x + 3, 0.0, 6.0) / 6, F.hardswish, (-5, 5), formula=True,
               kink=lambda x: (x + 3) * (x - 3)),
        _unary("mish", lambda x: x * _sp().tanh(_sp().log(1 + _sp().exp(x))),
               lambda x: x * np.tanh(np.logaddexp(0.0, x)),
               F.mish, (-4, 4), formula=True),
        _unary("logsigmoid", lambda x: -_sp().log(1 + _sp().exp(-x)), lambda x: -np.logaddexp(0.0, -x), F.logsigmoid,
               (-4, 4)),
        _unary("selu", lambda x: SELU_SCALE * pw((SELU_ALPHA * (_sp().exp(x) - 1), x <= 0), (x, True)),
               lambda x: SELU_SCALE * np.where(x > 0, x, SELU_ALPHA * np.expm1(np.minimum(x, 0))), F.selu, (-2, 2),
               kink=lambda x: x, formula=True),
        _unary("celu", lambda x, alpha: pw((alpha * (_sp().exp(x / alpha) - 1), x <= 0), (x, True)),
               lambda x, alpha: np.where(x > 0, x, alpha * np.expm1(np.minimum(x, 0) / alpha)),
               lambda x, alpha: F.celu(x, alpha=alpha), (-2, 2), kink=lambda x, alpha: x, formula=True,
               params=(Param("alpha", "number", 1.0),)),
        _unary("softsign", lambda x: x / (1 + _sp().Abs(x)), lambda x: x / (1 + np.abs(x)), F.softsign, (-3, 3),
               formula=True),
        # clamp(x, min=, max=): numbers or tensors, either optional; lowered to maximum/minimum by the reference
        Op("clamp", 1, "composite", (Param("min", "tensor", -math.inf), Param("max", "tensor", math.inf)),
           domain=((-1, 1),), ulps=0, doc="torch.clamp: min and max are numbers or tensors, either optional"),
    ]


def _reductions() -> list[Op]:
    dims = (Param("dim", "dims", None), Param("keepdim", "bool", False))
    return [
        Op("amax", 1, "reduce", dims, domain=((-1, 1),), ulps=0, doc="torch.amax: ties share the gradient equally"),
        Op("amin", 1, "reduce", dims, domain=((-1, 1),), ulps=0, doc="torch.amin"),
        Op("prod", 1, "reduce", dims, domain=((0.5, 1.5),), ulps=1, doc="torch.prod over all entries or one dim"),
        Op("var", 1, "composite", (Param("dim", "dims", None), Param("correction", "number", 1.0),
                                   Param("keepdim", "bool", False)), domain=((-1, 1),),
           doc="torch.var: sum((x - mean)**2) / (n - correction)"),
        Op("std", 1, "composite", (Param("dim", "dims", None), Param("correction", "number", 1.0),
                                   Param("keepdim", "bool", False)), domain=((-1, 1),), doc="sqrt(var)"),
        Op("norm", 1, "composite", (Param("p", "number", 2.0), *dims), domain=((-1, 1),),
           doc="torch.linalg.vector_norm(x, ord=p): sum(abs(x)**p)**(1/p), p > 0"),
        Op("cumsum", 1, "scan", (Param("dim", "dims", None),), domain=((-1, 1),), ulps=0, doc="torch.cumsum"),
        Op("cumprod", 1, "scan", (Param("dim", "dims", None),), domain=((0.5, 1.5),), ulps=1,
           doc="torch.cumprod"),
        Op("sort", 1, "scan", (Param("dim", "dims", -1), Param("descending", "bool", False)), domain=((-1, 1),),
           ulps=0, doc="torch.sort(...).values: the sorted values; ties share nothing, any order is right"),
    ]


def _shape_ops() -> list[Op]:
    """Ops that only move, repeat or zero entries: one index map each, with an exact (accumulating) adjoint."""
    def op(name, *params, doc="", tensor_list=False):
        return Op(name, 1, "shape", params, domain=((-1, 1),), ulps=0, doc=doc, tensor_list=tensor_list)

    return [
        op("reshape", Param("shape", "ints", None), doc="torch.reshape(x, [sizes]); one size may be -1"),
        op("flatten", Param("start_dim", "int", 0), Param("end_dim", "int", -1)),
        op("permute", Param("dims", "ints", None)),
        op("swapdims", Param("dim0", "int", 0), Param("dim1", "int", 1), doc="torch.transpose(x, dim0, dim1)"),
        op("mT", doc="x.mT: the last two dims swapped"),
        op("unsqueeze", Param("dim", "int", None)),
        op("squeeze", Param("dim", "dims", None), doc="size-1 dims only, as torch"),
        op("expand", Param("size", "ints", None), doc="torch's x.expand(sizes); -1 keeps a size"),
        op("flip", Param("dims", "ints", None)),
        op("tril", Param("diagonal", "int", 0)),
        op("triu", Param("diagonal", "int", 0)),
        op("cat", Param("dim", "int", 0), tensor_list=True, doc="torch.cat([a, b, ...], dim=0)"),
        op("stack", Param("dim", "int", 0), tensor_list=True, doc="torch.stack([a, b, ...], dim=0)"),
        op("index", Param("index", "index", ()), doc="x[...]: integers, slices with positive steps, ... and None"),
    ]


REDUCTION = Param("reduction", "choice", "mean", ("mean", "sum", "none"))


def _nn_ops() -> list[Op]:
    """torch.nn.functional's layers, lowered by the reference to the ops above (matmul, mean, var, softmax, an
    index map for the causal mask); an absent weight or bias is the number 1 or 0."""
    weight, bias = Param("weight", "tensor", 1.0), Param("bias", "tensor", 0.0)
    return [
        Op("linear", 2, "nn", (bias,), domain=((-1, 1), (-1, 1)), doc="F.linear(x, w, b): x @ w.mT + b"),
        Op("layer_norm", 1, "nn", (Param("normalized_shape", "ints", None), weight, bias,
                                   Param("eps", "number", 1e-5)), domain=((-1, 1),)),
        Op("rms_norm", 1, "nn", (Param("normalized_shape", "ints", None), weight, Param("eps", "number", None)),
           domain=((-1, 1),), doc="F.rms_norm; eps is required here (torch's default depends on the dtype)"),
        Op("scaled_dot_product_attention", 3, "nn", (Param("is_causal", "bool", False),
                                                     Param("scale", "number", 0.0)), domain=((-1, 1),) * 3,
           doc="F.scaled_dot_product_attention(q, k, v, is_causal=False, scale=None (0 here means 1/sqrt(E)))"),
        Op("causal_fill", 1, "shape", (), domain=((-1, 1),), ulps=0),  # entries above the diagonal -> -inf
        *(Op(name, 2, "nn", (bias, Param("stride", "ints", (1,)), Param("padding", "ints", (0,)),
                             Param("dilation", "ints", (1,)), Param("groups", "int", 1)), domain=((-1, 1),) * 2,
             doc=f"F.{name}(x, w, b, stride, padding, dilation, groups): a correlation, as torch")
          for name in ("conv1d", "conv2d")),
        *(Op(name, 1, "nn", (Param("kernel_size", "ints", None), Param("stride", "ints", ()),
                             Param("padding", "ints", (0,))), domain=((-1, 1),),
             doc=f"F.{name}(x, kernel_size, stride=kernel_size, padding=0)") for name in ("avg_pool2d", "max_pool2d")),
        # the sliding windows of a conv or pool: (N, groups, positions, channels per group * kernel entries)
        Op("patches", 1, "shape", (Param("kernel", "ints", ()), Param("stride", "ints", ()),
                                   Param("padding", "ints", ()), Param("dilation", "ints", ()),
                                   Param("groups", "int", 1), Param("fill", "number", 0.0)), domain=((-1, 1),)),
    ]


def _losses() -> list[Op]:
    two = ((-1, 1), (-1, 1))
    return [
        Op("binary_cross_entropy_with_logits", 2, "composite", (REDUCTION,), domain=((-3, 3), (0, 1)),
           doc="logaddexp(0, x) - x*y, as F.binary_cross_entropy_with_logits"),
        Op("l1_loss", 2, "composite", (REDUCTION,), domain=two),
        Op("smooth_l1_loss", 2, "composite", (REDUCTION, Param("beta", "number", 1.0)), domain=two),
        Op("huber_loss", 2, "composite", (REDUCTION, Param("delta", "number", 1.0)), domain=two),
        Op("kl_div", 2, "composite", (Param("reduction", "choice", "mean", ("mean", "sum", "none", "batchmean")),
                                      Param("log_target", "bool", False)), domain=((-3, 0), (0.05, 1))),
        Op("cosine_similarity", 2, "composite", (Param("dim", "int", 1), Param("eps", "number", 1e-8)), domain=two),
        Op("normalize", 1, "composite", (Param("p", "number", 2.0), Param("dim", "int", 1),
                                         Param("eps", "number", 1e-12)), domain=((-1, 1),)),
        # pieces of the losses above (not callable by name)
        _unary("smooth_l1_piece", lambda d, beta: _sp().Piecewise((d**2 / (2 * beta), _sp().Abs(d) < beta),
                                                                  (_sp().Abs(d) - beta / 2, True)),
               lambda d, beta: _np().where(_np().abs(d) < beta, 0.5 * d * d / beta, _np().abs(d) - 0.5 * beta),
               None, kink=lambda d, beta: (d - beta) * (d + beta), params=(Param("beta", "number", 1.0),)),
        _unary("huber_piece", lambda d, delta: _sp().Piecewise((d**2 / 2, _sp().Abs(d) <= delta),
                                                               (delta * (_sp().Abs(d) - delta / 2), True)),
               lambda d, delta: _np().where(_np().abs(d) <= delta, 0.5 * d * d, delta * (_np().abs(d) - 0.5 * delta)),
               None, kink=lambda d, delta: (d - delta) * (d + delta), params=(Param("delta", "number", 1.0),)),
    ]


def _index_ops() -> list[Op]:
    """Ops that read entries at int64 indices: the adjoint scatter-adds, so repeated indices accumulate."""
    index = Param("index", "tensor", None)
    return [
        Op("embedding", 2, "take", (), domain=((0, 1), (-1, 1)), ulps=0, doc="F.embedding(idx, weight): rows"),
        Op("index_var", 2, "take", (), domain=((-1, 1), (0, 1)), ulps=0, doc="x[idx]: entries along dim 0"),
        Op("index_select", 1, "take", (Param("dim", "int", None), index), domain=((-1, 1),), ulps=0),
        Op("gather", 1, "take", (Param("dim", "int", None), index), domain=((-1, 1),), ulps=0),
        Op("cross_entropy", 2, "composite", (Param("label_smoothing", "number", 0.0), REDUCTION),
           domain=((-3, 3), (0, 1)), doc="F.cross_entropy: class indices (int64) or class probabilities"),
        Op("nll_loss", 2, "composite", (REDUCTION,), domain=((-3, 0), (0, 1)), doc="F.nll_loss: class indices"),
    ]


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
        _unary("gelu", _gelu, _np_gelu, lambda x, approximate: _F().gelu(x, approximate=approximate), (-3, 3),
               formula=True, params=(Param("approximate", "choice", "none", ("none", "tanh")),)),
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
        Op("mse_loss", 2, "composite", (REDUCTION,), domain=((-1, 1), (-1, 1)), doc="mean((a - b)**2)"),
        Op("binary_cross_entropy", 2, "composite", (REDUCTION,), domain=((0.05, 0.95), (0, 1)),
           doc="mean(-(y*log(p) + (1-y)*log(1-p))); torch clamps (1-p)*p at 1e-12 in backward"),
        Op("matmul", 2, "matmul", (), domain=((-1, 1), (-1, 1)), ulps=0),
        Op("transpose", 1, "transpose", (), domain=((-1, 1),), ulps=0),
        *_mask_ops(),
        *_elementwise_ops(),
        *_reductions(),
        *_shape_ops(),
        *_index_ops(),
        *_losses(),
        *_nn_ops(),
        Op("einsum", 1, "einsum", (Param("equation", "equation", ""),), domain=((-1, 1),), ulps=0,
           doc='torch.einsum("bij,bjk->bik", a, b): letters, commas and ->; no ... and no repeated index'),
    ]
    return {op.name: op for op in ops}


OPS: dict[str, Op] = _build()

# Ops written as operators, not called by name.
OPERATOR_OPS = {"add", "sub", "mul", "div", "pow", "powc", "neg", "matmul", "transpose", "lt", "le", "gt", "ge",
                "eq", "ne", "logical_and", "logical_or", "logical_not", "mT", "index", "index_var", "smooth_l1_piece",
                "huber_piece", "causal_fill", "patches"}
# Function names that mean another op: torch.transpose(x, dim0, dim1) is swapdims (``.T`` is "transpose").
ALIASES = {"transpose": "swapdims"}
# Names a case file may call as functions.
FUNCTIONS = sorted([name for name in OPS if name not in OPERATOR_OPS] + list(ALIASES))
# Ops also written as a method without arguments (``x.detach()``).
METHODS = {"detach"}
# Named constants allowed in expressions.
CONSTANTS = {"pi": math.pi}
