"""``-v``'s derivative formulas: ``d/dw expr = ...`` by sympy for expressions of elementwise ops under at most one
outer sum or mean, with size and time limits (text only: never a check)."""

from __future__ import annotations

import numpy as np

from ..casefile import Case
from ..expr.ir import Call, Const, Var, walk
from ..expr.ops import OPS

FORMULA_NODES = 60  # -v prints no formula for larger expressions
FORMULA_OPS = 40  # derivatives with more operations are printed without sympy.simplify
FORMULA_SECONDS = 2.0  # and simplify gets this long (where a timer signal is available), else unsimplified


def _within(seconds: float, fn, arg):
    """fn(arg), or arg unchanged when fn takes longer than ``seconds``. The case's own timer (``--timeout``) is
    restored afterwards by ``time_limit``; where no timer can be set (off the main thread) the size limits above
    are the only bound and nothing is simplified."""
    from ..engines.impl import Timeout, time_limit

    try:
        with time_limit(seconds) as enforced:
            return fn(arg) if enforced else arg
    except Timeout:
        return arg


def formula(case: Case, limit: int = 400) -> list[str]:
    """``d/dw expr = ...`` for expressions made of elementwise ops under at most one outer sum or mean."""
    import sympy as sp

    from ..engines.symbolic import local_rules

    node, scale = case.ir, None
    if isinstance(node, Call) and node.op in ("sum", "mean") and node.param("dim") is None:
        scale = node.op
        node = node.args[0]
    if any(isinstance(n, Call) and (OPS[n.op].kind != "elementwise" or (OPS[n.op].zero_grad and not OPS[n.op].mask))
           for n in walk(node)):  # floor, detach: sympy would differentiate them wrongly (or forever)
        return []
    symbols = {name: sp.Symbol(name, real=True) for name in case.vars}
    count = sp.Symbol(next(n for n in ("N", "N_entries", "N__") if n not in case.vars))  # a var may be named N

    if sum(1 for _ in walk(node)) > FORMULA_NODES:
        return []

    def build(n):
        if isinstance(n, Const):  # a huge integer stays a Float: 10**10**10 must not be computed exactly
            small = float(n.value).is_integer() and abs(n.value) <= 1e6
            return sp.Integer(int(n.value)) if small else sp.Float(n.value)
        if isinstance(n, Var):
            return symbols[n.name]
        rules = local_rules(n.op, tuple(sorted(n.params)))
        return rules.value.subs(dict(zip(rules.symbols, [build(a) for a in n.args])), simultaneous=True)

    try:
        expr = build(node)
    except (TypeError, ValueError):
        return []
    lines = []
    for name in case.grad_vars:
        spec = case.vars[name]
        if spec.shape != case.out_shape and scale is None:
            continue
        if any(other.shape != spec.shape for other in case.vars.values() if other.shape and scale) and \
                spec.shape != tuple(np.broadcast_shapes(*(v.shape for v in case.vars.values()))):
            continue
        d = sp.diff(expr, symbols[name])
        if sp.count_ops(d) <= FORMULA_OPS:  # simplify is exponential in the worst case: past this, as derived
            d = _within(FORMULA_SECONDS, sp.simplify, d)
        if scale == "mean":
            d = d / count
        text = f"d/d{name} {case.expr} = {sp.sstr(d, full_prec=False)}" + (" (per entry)" if spec.shape else "")
        if scale == "mean":
            text += f", {count} = number of entries"
        if len(text) <= limit:
            lines.append(text)
    return lines
