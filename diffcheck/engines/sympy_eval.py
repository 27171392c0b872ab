"""Evaluate sympy expressions over numpy arrays -- no lambdify, no exec -- with a running rounding-error bound.

Each node returns ``(value, err)``: the float64 value and a first-order bound on the error the same formula
would have if every operation were rounded in a dtype with unit roundoff u, *in units of u* (so one array
serves every dtype). Inputs carry their own ``err``. Entries that overflow or turn into nan in float64 while
their inputs are finite are evaluated again one by one with mpmath (higher precision), so that e.g. the
derivative of sigmoid at -800 is 0 rather than inf/inf.
"""

from __future__ import annotations

import functools
import math

import mpmath
import numpy as np
import scipy.special as sc
import sympy as sp

# sympy function class -> (numpy function, mpmath function)
_FUNCS = {
    sp.exp: (np.exp, mpmath.exp), sp.log: (np.log, mpmath.log),
    sp.sin: (np.sin, mpmath.sin), sp.cos: (np.cos, mpmath.cos), sp.tan: (np.tan, mpmath.tan),
    sp.asin: (np.arcsin, mpmath.asin), sp.acos: (np.arccos, mpmath.acos), sp.atan: (np.arctan, mpmath.atan),
    sp.sinh: (np.sinh, mpmath.sinh), sp.cosh: (np.cosh, mpmath.cosh), sp.tanh: (np.tanh, mpmath.tanh),
    sp.asinh: (np.arcsinh, mpmath.asinh), sp.acosh: (np.arccosh, mpmath.acosh),
    sp.atanh: (np.arctanh, mpmath.atanh), sp.erf: (sc.erf, mpmath.erf), sp.erfc: (sc.erfc, mpmath.erfc),
    sp.erfinv: (sc.erfinv, mpmath.erfinv), sp.Abs: (np.abs, abs), sp.sign: (np.sign, mpmath.sign),
    sp.sec: (lambda x: 1 / np.cos(x), mpmath.sec), sp.csc: (lambda x: 1 / np.sin(x), mpmath.csc),
    sp.cot: (lambda x: 1 / np.tan(x), mpmath.cot), sp.sech: (lambda x: 1 / np.cosh(x), mpmath.sech),
    sp.csch: (lambda x: 1 / np.sinh(x), mpmath.csch), sp.coth: (lambda x: 1 / np.tanh(x), mpmath.coth),
}
_ZERO_SLOPE = (sp.sign, sp.Heaviside, sp.DiracDelta)
FUNCTION_ULPS = 4.0  # a library transcendental function: within 2 ulp, i.e. 4 u
REPAIR_LIMIT = 20_000  # entries re-evaluated in high precision at most, per case (seconds of mpmath)


class RepairLimit(Exception):
    """More entries need the high-precision repair than REPAIR_LIMIT allows: the case is skipped, never judged
    with unrepaired values."""


class _Repairs:
    left = REPAIR_LIMIT

    def reset(self) -> None:
        self.left = REPAIR_LIMIT

    def take(self, n: int) -> None:
        self.left -= n
        if self.left < 0:
            raise RepairLimit(f"more than {REPAIR_LIMIT} entries over- or underflow float64 and need the "
                              f"high-precision (mpmath) repair; the limit is {REPAIR_LIMIT} entries per case (a "
                              f"fixed limit of diffcheck, not configurable: use fewer entries or a narrower domain)")


REPAIRS = _Repairs()
EXTREME = 1e150  # an intermediate beyond this magnitude (or below its inverse) may over- or underflow later
_T = sp.Symbol("t", real=True)


@functools.cache
def _slope(func) -> sp.Expr:
    """d/dt func(t), derived once per function class, for propagating input errors."""
    return sp.diff(func(_T), _T)


def evaluate(expr, env: dict, with_err: bool = True):
    """Value (and error bound in units of u) of sympy ``expr``; ``env`` maps Symbol -> (value, err)."""
    overflow: list = []
    with np.errstate(all="ignore"):
        value, err = _eval(expr, env, with_err, overflow)
        if overflow:
            bad = np.zeros(np.shape(value), dtype=bool)
            for mask in overflow:
                bad |= np.broadcast_to(mask, bad.shape) if np.ndim(mask) <= bad.ndim else False
            if bad.any():
                value, err = _repair(expr, env, value, err, bad)
    return value, err


def _repair(expr, env, value, err, bad):
    """Recompute with mpmath at 50 digits the entries where any intermediate overflowed or became nan:
    such an entry may be finite and still wrong (x*exp(-x)/(1+exp(-x))**2 at x = -700 gives 0 in float64)."""
    shape = np.broadcast_shapes(np.shape(value), *(np.shape(v) for v, _ in env.values()))  # 1/a1 beside a0[3]
    value, bad = np.broadcast_to(value, shape), np.broadcast_to(bad, shape)
    arrays = {s: np.broadcast_to(np.asarray(v, dtype=float), shape) for s, (v, _) in env.items()}
    idx = np.argwhere(bad)
    REPAIRS.take(len(idx))
    value = np.array(value, dtype=float, copy=True)
    err = np.array(np.broadcast_to(err, value.shape), dtype=float, copy=True)
    with mpmath.workdps(50):
        for i in map(tuple, idx):
            point = {s: a[i] for s, a in arrays.items()}
            if not all(math.isfinite(p) for p in point.values()):
                continue
            try:
                exact = _eval_mp(expr, point)
                if mpmath.im(exact) != 0:  # outside the real domain (log of a negative): stays nan
                    value[i] = float("nan")
                    continue
                real = float(mpmath.re(exact))
            except (ValueError, ZeroDivisionError, OverflowError, TypeError):
                continue
            if math.isfinite(real):
                value[i] = real
                # a finite float64 budget stays: it is the formula's own rounding (torch's s*(1-s) at s = 1)
                err[i] = max(err[i], FUNCTION_ULPS * abs(real)) if math.isfinite(err[i]) else FUNCTION_ULPS * abs(real)
    return (value if value.ndim else float(value)), (err if np.ndim(err) else float(err))


def _eval_mp(expr, point):
    if expr.is_Symbol:
        return mpmath.mpf(point[expr])
    if expr.is_Number or expr.is_NumberSymbol:
        return _mp_number(expr)
    if expr.is_Add:
        return mpmath.fsum(_eval_mp(a, point) for a in expr.args)
    if expr.is_Mul:
        out = mpmath.mpf(1)
        for a in expr.args:
            out *= _eval_mp(a, point)
        return out
    if expr.is_Pow:
        return mpmath.power(_eval_mp(expr.args[0], point), _eval_mp(expr.args[1], point))
    if isinstance(expr, sp.Piecewise):
        for branch, cond in expr.args:
            if _eval_cond_mp(cond, point):
                return _eval_mp(branch, point)
        raise ValueError("no branch")
    if isinstance(expr, sp.Heaviside):
        x = _eval_mp(expr.args[0], point)
        return mpmath.mpf(0.5) if x == 0 else mpmath.mpf(1 if x > 0 else 0)
    if isinstance(expr, sp.DiracDelta):
        return mpmath.mpf(0)
    if isinstance(expr, sp.atan2):
        return mpmath.atan2(_eval_mp(expr.args[0], point), _eval_mp(expr.args[1], point))
    func = _FUNCS.get(type(expr))
    if func is None:
        raise TypeError(f"no mpmath rule for {type(expr).__name__}")
    return func[1](_eval_mp(expr.args[0], point))


@functools.lru_cache(maxsize=1024)
def _mp_number(expr):
    return mpmath.mpf(sp.N(expr, 50))  # sympy's evalf is slow: once per constant, not per entry


def _eval_cond_mp(cond, point) -> bool:
    if cond is sp.true:
        return True
    if cond is sp.false:
        return False
    lhs, rhs = _eval_mp(cond.lhs, point), _eval_mp(cond.rhs, point)
    return bool(_RELATIONS[type(cond)](lhs, rhs))


_RELATIONS = {
    sp.StrictLessThan: lambda a, b: a < b, sp.LessThan: lambda a, b: a <= b,
    sp.StrictGreaterThan: lambda a, b: a > b, sp.GreaterThan: lambda a, b: a >= b,
    sp.Equality: lambda a, b: a == b, sp.Unequality: lambda a, b: a != b,
}


def times(a, b):
    """a * b for error terms, with 0 * inf = 0: an exact input (error 0), or one its result does not depend on
    (derivative 0, e.g. exp(-inf)), contributes nothing. Without this one saturated intermediate turns every
    budget downstream into nan, and a nan tolerance can never be judged."""
    with np.errstate(invalid="ignore", over="ignore"):
        out = np.multiply(a, b)
    if np.isnan(out).any():
        out = np.where(np.isnan(out) & ((np.asarray(a) == 0) | (np.asarray(b) == 0)), 0.0, out)
        return out if np.ndim(out) else float(out)
    return out


def _number_err(x: float) -> float:
    """A literal costs one rounding unless float32 holds it exactly."""
    return 0.0 if float(np.float32(x)) == x else abs(x)


@functools.lru_cache(maxsize=8192)
def _compiled(expr):
    """``expr`` as a tree of closures, ``(env, with_err, overflow) -> (value, err)``, built once per expression
    (shared by every case of the process): evaluating it walks no sympy objects, whose attribute dispatch costs
    more than the numpy arithmetic on small arrays. Each node computes what it always did, in the same order;
    every node but a symbol records where its value is extreme, for the repair."""
    node = _compile_node(expr)
    if expr.is_Symbol:
        return node

    def run(env, with_err, overflow=None):
        value, err = node(env, with_err, overflow)
        if overflow is not None:
            mag = np.abs(value)
            extreme = ~np.isfinite(mag) | (mag > EXTREME) | ((mag < 1 / EXTREME) & (mag > 0))
            if np.any(extreme):
                overflow.append(extreme)
        return value, err

    return run


def _eval(expr, env, with_err, overflow=None):
    return _compiled(expr)(env, with_err, overflow)


def _compile_node(expr):
    if expr.is_Symbol:
        return lambda env, with_err=True, overflow=None: env[expr]
    if expr.is_Number or expr.is_NumberSymbol:
        number = float(expr)
        pair = (number, _number_err(number))
        return lambda env, with_err, overflow: pair
    if expr.is_Add:
        terms = [_compiled(a) for a in expr.args]

        def add(env, with_err, overflow):
            parts = [t(env, with_err, overflow) for t in terms]
            value = sum(p[0] for p in parts)
            if not with_err:
                return value, 0.0
            # k-1 roundings, each bounded by the sum of the magnitudes of the terms
            err = sum(p[1] for p in parts) + (len(parts) - 1) * sum(np.abs(p[0]) for p in parts)
            return value, err
        return add
    if expr.is_Mul:
        factors = [_compiled(a) for a in expr.args]

        def mul(env, with_err, overflow):
            parts = [f(env, with_err, overflow) for f in factors]
            value = parts[0][0]
            for p in parts[1:]:
                value = value * p[0]
            if not with_err:
                return value, 0.0
            err = (len(parts) - 1) * np.abs(value)
            for i, (_, e) in enumerate(parts):
                if np.any(e):
                    others = 1.0
                    for j, (v, _) in enumerate(parts):
                        if j != i:
                            others = others * v
                    err = err + times(np.abs(others), e)
            return value, err
        return mul
    if expr.is_Pow:
        base, power = _compiled(expr.args[0]), _compiled(expr.args[1])
        exponent = expr.args[1]
        steps = abs(int(exponent)) if exponent.is_Integer and abs(int(exponent)) <= 4 else FUNCTION_ULPS

        def pow_(env, with_err, overflow):
            (b, eb), (x, ex) = base(env, with_err, overflow), power(env, with_err, overflow)
            value = np.power(b, x) if np.ndim(b) or np.ndim(x) else _scalar_pow(b, x)
            if not with_err:
                return value, 0.0
            err = times(np.abs(x * np.power(b, x - 1.0)), eb) if np.any(eb) else 0.0
            if np.any(ex):
                err = err + times(np.abs(value * np.log(np.abs(b))), ex)
            return value, err + steps * np.abs(value)
        return pow_
    if isinstance(expr, sp.Piecewise):
        return _compile_piecewise(expr)
    if isinstance(expr, sp.Heaviside):
        arg = _compiled(expr.args[0])
        return lambda env, with_err, overflow: (np.heaviside(arg(env, False)[0], 0.5), 0.0)
    if isinstance(expr, sp.DiracDelta):
        arg = _compiled(expr.args[0])
        return lambda env, with_err, overflow: (np.zeros_like(np.asarray(arg(env, False)[0], dtype=float)), 0.0)
    if isinstance(expr, sp.atan2):
        num, den = _compiled(expr.args[0]), _compiled(expr.args[1])

        def atan2(env, with_err, overflow):
            (y, ey), (x, ex) = num(env, with_err, overflow), den(env, with_err, overflow)
            value = np.arctan2(y, x)
            if not with_err:
                return value, 0.0
            r2 = x * x + y * y
            return value, np.abs(x / r2) * ey + np.abs(y / r2) * ex + FUNCTION_ULPS * np.abs(value)
        return atan2
    cls = type(expr)
    func = _FUNCS.get(cls)
    if func is None or len(expr.args) != 1:
        def unsupported(env, with_err, overflow):
            raise TypeError(f"the symbolic engine cannot evaluate {cls.__name__}")
        return unsupported
    arg, fn = _compiled(expr.args[0]), func[0]

    def call(env, with_err, overflow):
        a, ea = arg(env, with_err, overflow)
        value = fn(a)
        if not with_err:
            return value, 0.0
        err = FUNCTION_ULPS * np.abs(value)
        if cls not in _ZERO_SLOPE and np.any(ea):
            slope, _ = _compiled(_slope(cls))({_T: (a, 0.0)}, False)
            err = err + times(np.abs(slope), ea)
        return value, err
    return call


def _scalar_pow(b: float, x: float) -> float:
    try:
        return float(b) ** float(x) if b >= 0 or float(x).is_integer() else float("nan")
    except OverflowError:
        return float("inf")
    except ZeroDivisionError:
        return float("inf")


def _compile_piecewise(expr):
    conds = [_compile_cond(c) for _, c in expr.args]
    branches = [_compiled(b) for b, _ in expr.args]

    def piecewise(env, with_err, overflow):
        cs = [c(env) for c in conds]
        values = [b(env, with_err) for b in branches]  # an unused branch may overflow: ignore it
        shape = np.broadcast_shapes(*(np.shape(c) for c in cs), *(np.shape(b[0]) for b in values))
        value = np.full(shape, np.nan)
        err = np.zeros(shape)
        taken = np.zeros(shape, dtype=bool)
        for (bv, be), c in zip(values, cs):
            pick = np.broadcast_to(c, shape) & ~taken
            value = np.where(pick, np.broadcast_to(bv, shape), value)
            if with_err:
                err = np.where(pick, np.broadcast_to(be, shape), err)
            taken |= pick
        return (value if shape else float(value)), (err if shape else float(err))
    return piecewise


def _compile_cond(cond):
    if cond is sp.true:
        return lambda env: True
    if cond is sp.false:
        return lambda env: False
    if isinstance(cond, (sp.And, sp.Or)):
        parts, both = [_compile_cond(c) for c in cond.args], isinstance(cond, sp.And)

        def combine(env):
            out = both
            for c in parts:
                out = (out & c(env)) if both else (out | c(env))
            return out
        return combine
    lhs, rhs, relation = _compiled(cond.lhs), _compiled(cond.rhs), _RELATIONS[type(cond)]
    return lambda env: relation(np.asarray(lhs(env, False)[0]), np.asarray(rhs(env, False)[0]))
