"""Exact higher derivatives of the symbolic program, with error budgets: forward-over-reverse by jets.

Every value of the forward pass and of the reverse pass is carried as a *jet*: its value and its derivatives along
one direction v (order 2: components [x, x_v]) or two directions v, w (order 3: [x, x_v, x_w, x_vw], with
eps_v**2 = eps_w**2 = 0). Running ``Program.vjp``'s reverse pass on jets gives, per grad var, the gradient
(component 0), the Hessian-vector product H v (component v) and the third derivative contracted with the
cotangent, v and w (component vw): exactly, up to float64 rounding.

Rules, all from what the first-order engine already has:
- elementwise ops: derivatives up to third order by ``sympy.diff`` of the op's own rule (cached per op and
  parameters), evaluated by ``sympy_eval`` with their error bounds; where the op states another way torch computes
  its derivative (``grad_alt``, ``grad_out``), the budget takes the worse of the ways, differentiated the same way;
- linear steps (sum, mean, cumsum, index maps, take, transpose, and amax/amin/sort with their selection fixed):
  applied to each component with the first-order engine's own forward and adjoint rules;
- matmul and einsum: multilinear (product rule over the operands and the upstream gradient);
- logsumexp: composed from exp, sum and log;
- prod and cumprod have no rule here: ``Unavailable`` (the check is skipped with the reason), as is a point on a
  kink, where second derivatives do not exist.

Budgets: each component carries a first-order bound in units of u, propagated as the first-order engine does (a
product adds |a| e_b + |b| e_a + |ab|, a k-term sum (k - 1) times the sum of the terms' magnitudes; the linear
steps charge what their first-order rules charge).

Why it is over 400 lines: the jet arithmetic (products, sums, composition with a budget) and the per-family rules
of the forward and reverse passes that use it (elementwise, linear, multilinear, logsumexp) are read together, as
``structured`` keeps its rule pairs together; split apart, each half would import every helper of the other.
"""

from __future__ import annotations

import functools
import itertools

import numpy as np
import sympy as sp

from ..expr.ops import OPS
from . import structured, sympy_eval
from .structured import Instr
from .symbolic import OUT, local_rules

ZERO = (0.0, 0.0)
LINEAR = ("sum", "mean", "cumsum", "gather_map", "transpose", "take", "amax", "amin", "sort")


class Unavailable(Exception):
    """The exact higher derivative cannot be computed here (an op without a rule, a point on a kink)."""


class _Peak:
    """The largest finite magnitude of any factor of the last ``derivatives`` run (a local second derivative
    -1/x**2 at x = 1e-30 overflows float32 though H v does not): a dtype it exceeds is not judged."""

    value = 0.0

    def see(self, *arrays) -> None:
        for a in arrays:
            finite = np.abs(a)[np.isfinite(a)]
            if finite.size:
                self.value = max(self.value, float(finite.max()))


PEAK = _Peak()


def _nonzero(c) -> bool:
    return not (np.ndim(c[0]) == 0 and c[0] == 0 and np.ndim(c[1]) == 0 and c[1] == 0)


def _submasks(m: int):
    return [s for s in range(m + 1) if s & m == s]


def _bits(m: int):
    return [b for b in (1, 2) if m & b]


def _sum(terms):
    """(value, err) of a sum of (value, err) terms: their errors plus (k - 1) roundings of the magnitudes."""
    terms = [t for t in terms if _nonzero(t)]
    if not terms:
        return ZERO
    value = sum(t[0] for t in terms)
    err = sum(t[1] for t in terms) + (len(terms) - 1) * sum(np.abs(t[0]) for t in terms)
    return value, err


def _product(*factors):
    """(value, err) of a product of (value, err) factors: each factor's error through the others, plus one
    rounding per multiplication."""
    value = factors[0][0]
    for f in factors[1:]:
        value = value * f[0]
    PEAK.see(value, *(f[0] for f in factors))
    err = (len(factors) - 1) * np.abs(value)
    for i, (_, e) in enumerate(factors):
        if np.any(e):
            others = 1.0
            for j, (v, _) in enumerate(factors):
                if j != i:
                    others = others * np.abs(v)
            err = err + sympy_eval.times(others, e)
    return value, err


def multiply(a: list, b: list) -> list:
    """The jet of a product."""
    return [_sum([_product(a[s], b[m ^ s]) for s in _submasks(m) if _nonzero(a[s]) and _nonzero(b[m ^ s])])
            for m in range(len(a))]


def add(a: list, b: list) -> list:
    """The jet of a sum (an adjoint reached twice: correlated errors add, as ``Program.vjp`` does)."""
    out = []
    for x, y in zip(a, b):
        if not _nonzero(x) or not _nonzero(y):
            out.append(y if not _nonzero(x) else x)
        else:
            total = x[0] + y[0]
            out.append((total, x[1] + y[1] + np.abs(total)))
    return out


def compose(base, first, second, args: list) -> list:
    """The jet of f(args) from f's value ``base`` and its derivatives at the base point: ``first[k]`` =
    d f / d a_k, ``second[k][q]`` = d2 f / d a_k d a_q (only needed with two directions), each (value, err)."""
    n = len(args[0])
    out = [base] + [ZERO] * (n - 1)
    for m in range(1, n):
        terms = [_product(first[k], a[m]) for k, a in enumerate(args) if _nonzero(a[m]) and _nonzero(first[k])]
        if m == 3:
            terms += [_product(second[k][q], a[1], b[2]) for k, a in enumerate(args) for q, b in enumerate(args)
                      if _nonzero(a[1]) and _nonzero(b[2]) and _nonzero(second[k][q])]
        out[m] = _sum(terms)
    return out


# ---- elementwise rules: derivatives of the op's sympy rule, with every way of computing them ----
@functools.cache
def _ways(op_name: str, params: tuple, path: tuple) -> tuple:
    """Expressions of d^len(path) f / d a_path[0] ... : the exact rule first, then the other ways a backward may
    compute it (``grad_alt``, and ``grad_out`` written with the op's output OUT), for the budget."""
    rules = local_rules(op_name, params)
    syms = rules.symbols
    k, rest = path[0], path[1:]
    ways = [rules.grads[k]]
    if rules.grads_alt:
        ways.append(rules.grads_alt[k])
    if rules.grads_out:
        ways.append(rules.grads_out[k])
    for q in rest:  # the total derivative: OUT depends on the arguments, through its derivative from OUT too
        dout = rules.grads_out[q] if rules.grads_out else rules.grads[q]
        ways = [sp.diff(e, syms[q]) + sp.diff(e, OUT) * dout for e in ways]
    return tuple(ways)


def _derivative(ins: Instr, path: tuple, env: dict, env_out: dict, lower):
    """d^len(path) f / d a_path... at the base point, (value, err). ``lower`` is the derivative one order below,
    as computed (value, err): autograd differentiates *its* computation, f_k (1 + delta(x)), whose derivative
    f_kl (1 + delta) + f_k delta' carries f_k's relative error delta into f_kl (torch's sigmoid'' from y(1 - y)
    at y ~ 1); the f_k delta' part is the ways' own budget."""
    params = tuple(sorted(ins.params.items()))
    ways = _ways(ins.op, params, path)
    try:
        value, err = sympy_eval.evaluate(ways[0], env, True)
        for other in ways[1:]:
            err = np.maximum(err, sympy_eval.evaluate(other, env_out if other.has(OUT) else env, True)[1])
    except TypeError as exc:  # a function of a higher derivative the evaluator has no rule for
        raise Unavailable(f"no higher-order rule for {ins.op}: {exc}") from None
    with np.errstate(all="ignore"):
        low, low_err = np.abs(lower[0]), lower[1]
        inherited = np.where(low > 0, sympy_eval.times(np.abs(value), low_err / np.where(low > 0, low, 1.0)), 0.0)
    return np.broadcast_to(value, ins.shape), np.broadcast_to(np.maximum(err, inherited), ins.shape)


def _elementwise(prog, i, ins: Instr, fwd, jets, order_n: int):
    """Jet of an elementwise step (forward)."""
    rules = local_rules(ins.op, tuple(sorted(ins.params.items())))
    args = [jets[a] for a in ins.args]
    env = {s: (fwd.values[a], fwd.errs[a]) for s, a in zip(rules.symbols, ins.args)}
    env_out = {**env, OUT: (fwd.values[i], fwd.errs[i])}
    active = [prog.slots[a].active for a in ins.args]
    first = [fwd.derivs[i][k] if active[k] else ZERO for k in range(len(args))]
    second = None
    if order_n == 4:
        second = [[_derivative(ins, (k, q), env, env_out, first[k]) if active[k] and active[q] else ZERO
                   for q in range(len(args))] for k in range(len(args))]
    out = compose((fwd.values[i], fwd.errs[i]), first, second, args)
    return [out[0]] + [(np.broadcast_to(v, ins.shape), np.broadcast_to(e, ins.shape)) if _nonzero((v, e)) else ZERO
                       for v, e in out[1:]]


def _elementwise_back(prog, i, ins: Instr, fwd, jets, g: list, order_n: int):
    """Adjoint jets of an elementwise step's arguments: g times the jet of each local derivative."""
    rules = local_rules(ins.op, tuple(sorted(ins.params.items())))
    args = [jets[a] for a in ins.args]
    env = {s: (fwd.values[a], fwd.errs[a]) for s, a in zip(rules.symbols, ins.args)}
    env_out = {**env, OUT: (fwd.values[i], fwd.errs[i])}
    active = [prog.slots[a].active for a in ins.args]
    n = len(args)
    for k, arg in enumerate(ins.args):
        if not active[k]:
            continue
        second = [_derivative(ins, (k, q), env, env_out, fwd.derivs[i][k]) if active[q] else ZERO for q in range(n)]
        third = None
        if order_n == 4:
            third = [[_derivative(ins, (k, q, m), env, env_out, second[q]) if active[q] and active[m] else ZERO
                      for m in range(n)] for q in range(n)]
        d = compose(fwd.derivs[i][k], second, third, args)
        contrib = multiply(g, d)
        yield arg, [_unbroadcast(c, ins.shape, prog.slots[arg].shape) for c in contrib]


def _unbroadcast(c, full, shape):
    """An adjoint component of the step's shape ``full`` summed back to its argument's ``shape``."""
    if not _nonzero(c):
        return ZERO
    v, e = structured._unbroadcast(np.broadcast_to(np.asarray(c[0], float), full), np.broadcast_to(c[1], full),
                                   shape, True)
    return v, np.broadcast_to(e, np.shape(v))


# ---- structured steps ----
def _linear(prog, i, ins: Instr, fwd, comps: list):
    """A linear step applied to one component of each argument (the selection of amax/sort/take fixed)."""
    x, e = comps[0]
    if ins.op in ("amax", "amin"):
        dims, keep = ins.params["dims"], ins.params["keepdim"]
        d = fwd.aux[i]["d"]
        if not dims:
            return x, e
        return (np.sum(d * x, axis=dims, keepdims=keep),
                np.sum(d * np.broadcast_to(e, np.shape(d)), axis=dims, keepdims=keep))
    if ins.op == "sort":
        idx, axis = fwd.aux[i]["idx"], ins.params["axis"]
        x = np.broadcast_to(x, idx.shape)
        return np.take_along_axis(x, idx, axis), np.take_along_axis(np.broadcast_to(e, idx.shape), idx, axis)
    if ins.op == "take":
        m = fwd.aux[i]["map"]
        shape = prog.slots[ins.args[0]].shape
        return (np.broadcast_to(x, shape).reshape(-1)[m], np.broadcast_to(e, shape).reshape(-1)[m])
    if ins.op == "gather_map":  # a filled entry (-inf of the causal mask) is a constant: its tangent is 0
        tangent = Instr(ins.op, ins.args, dict(ins.params, fill=0.0), ins.shape)
        shapes = [prog.slots[a].shape for a in ins.args]
        vals = [np.broadcast_to(c[0], s) for c, s in zip(comps, shapes)]
        errs = [np.broadcast_to(c[1], s) for c, s in zip(comps, shapes)]
        return structured.step(prog, i, tangent, None, vals, errs, None, True)
    shape = prog.slots[ins.args[0]].shape
    return structured.step(prog, i, ins, None, [np.broadcast_to(x, shape)], [np.broadcast_to(e, shape)], None, True)


def _assignments(m: int, k: int):
    """Every way of giving each direction bit of ``m`` to one of ``k`` factors: the masks per factor."""
    bits = _bits(m)
    for choice in itertools.product(range(k), repeat=len(bits)):
        masks = [0] * k
        for b, c in zip(bits, choice):
            masks[c] |= b
        yield masks


def _multilinear(prog, i, ins: Instr, jets):
    args = [jets[a] for a in ins.args]
    n = len(args[0])
    out = [None] * n
    for m in range(1, n):
        terms = []
        for masks in _assignments(m, len(args)):
            comps = [a[s] for a, s in zip(args, masks)]
            if all(_nonzero(c) for c in comps):
                vals = [np.broadcast_to(c[0], prog.slots[a].shape) for c, a in zip(comps, ins.args)]
                errs = [c[1] for c in comps]
                terms.append(structured.step(prog, i, ins, None, vals, errs, None, True))
        out[m] = _sum(terms)
    return out


def _multilinear_back(prog, i, ins: Instr, fwd, jets, g: list):
    """Adjoints of matmul/einsum: multilinear in the upstream gradient and the *other* operands."""
    args = [jets[a] for a in ins.args]
    shapes = [prog.slots[a].shape for a in ins.args]
    n = len(g)
    out = [[[] for _ in range(n)] for _ in ins.args]
    for m in range(n):
        for masks in _assignments(m, len(args) + 1):
            comps = [g[masks[0]]] + [a[s] for a, s in zip(args, masks[1:])]
            if not all(_nonzero(c) for c in comps):
                continue
            vals = [np.asarray(np.broadcast_to(c[0], s), float) for c, s in zip(comps[1:], shapes)]
            errs = [c[1] for c in comps[1:]]
            gv = np.broadcast_to(comps[0][0], ins.shape)
            if ins.op == "matmul":
                back = structured._matmul_back(ins, vals, errs, shapes, gv, comps[0][1], True)
            else:
                back = structured._einsum_back(ins, vals, errs, shapes, gv, comps[0][1], True)
            for j, (_, ga) in enumerate(back):
                if masks[1 + j] == 0:  # operand j's own adjoint does not depend on operand j
                    out[j][m].append(ga)
    for j, arg in enumerate(ins.args):
        if prog.slots[arg].active:
            yield arg, [_sum(terms) for terms in out[j]]


def _exp(x: list) -> list:
    e = np.exp(x[0][0])
    ee = sympy_eval.FUNCTION_ULPS * np.abs(e) + np.abs(e) * x[0][1]
    return compose((e, ee), [(e, ee)], [[(e, ee)]], [x])


def _log(x: list) -> list:
    v, e = x[0]
    with np.errstate(all="ignore"):
        val = np.log(v)
        d1 = (1 / v, np.abs(1 / v) * (1 + e / np.abs(v)))
        d2 = (-1 / v**2, np.abs(1 / v**2) * (2 + 2 * e / np.abs(v)))
    return compose((val, sympy_eval.FUNCTION_ULPS * np.abs(val) + np.abs(e / v)), [d1], [[d2]], [x])


def _neg(jet: list) -> list:
    return [(-c[0], c[1]) if _nonzero(c) else ZERO for c in jet]


def _lse_parts(prog, i, ins: Instr, fwd, jets):
    """lse's jet (keepdim) and the softmax jet q = exp(x - lse(x)), composed from exp, sum and log."""
    x = jets[ins.args[0]]
    dims, keep = ins.params["dims"], ins.params["keepdim"]
    m = np.max(x[0][0], axis=dims, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    shifted = [(x[0][0] - m, x[0][1] + np.abs(x[0][0] - m)), *x[1:]]
    total = Instr("sum", ins.args, {"dims": dims, "keepdim": True}, ())
    s = [_linear(prog, i, total, fwd, [c]) if _nonzero(c) else ZERO for c in _exp(shifted)]
    lse = [(_keep(fwd.values[i], dims, keep), _keep(fwd.errs[i], dims, keep)), *_log(s)[1:]]
    return _exp(add(x, _neg(lse))), lse


def _keep(v, dims, keep):
    v = np.asarray(v, float)
    return v if keep or not dims or np.ndim(v) == 0 else np.expand_dims(v, axis=dims)


def _lse(prog, i, ins, fwd, jets):
    _, lse = _lse_parts(prog, i, ins, fwd, jets)
    dims, keep = ins.params["dims"], ins.params["keepdim"]
    out = [(fwd.values[i], fwd.errs[i])]
    for c in lse[1:]:
        out.append((c[0] if keep else np.squeeze(c[0], axis=dims),
                    np.broadcast_to(c[1], np.shape(c[0])) if keep else
                    np.squeeze(np.broadcast_to(c[1], np.shape(c[0])), axis=dims)) if _nonzero(c) else ZERO)
    return out


def _lse_back(prog, i, ins, fwd, jets, g):
    q, _ = _lse_parts(prog, i, ins, fwd, jets)
    dims, keep = ins.params["dims"], ins.params["keepdim"]
    shape = prog.slots[ins.args[0]].shape
    ge = [(structured._expand(c[0], shape, dims, keep), structured._expand(c[1], shape, dims, keep))
          if _nonzero(c) else ZERO for c in g]
    yield ins.args[0], multiply(ge, q)


# ---- the passes ----
def forward(prog, fwd, directions: list[dict]) -> list:
    """The jet of every slot at the point of ``fwd`` (a reference forward with derivatives and errors) along
    ``directions`` (one or two dicts var -> array)."""
    n = 2 ** len(directions)
    jets: list = [None] * len(prog.slots)
    with np.errstate(all="ignore"):
        for i, slot in enumerate(prog.slots):
            jets[i] = _forward_slot(prog, fwd, i, slot, jets, directions, n)
    return jets


def _forward_slot(prog, fwd, i, slot, jets, directions, n):
    """The jet of slot ``i``."""
    base = (fwd.values[i], fwd.errs[i])
    jet = [base] + [ZERO] * (n - 1)
    if slot.kind == "var" and slot.active:
        for b, d in zip((1, 2), directions):
            jet[b] = (np.asarray(d[slot.name], float), 0.0)
    elif slot.kind == "instr" and slot.active:
        ins = slot.instr
        if i in fwd.kinks and np.any(fwd.kinks[i]):
            raise Unavailable(f"an entry of {ins.op} sits on a kink: its second derivative is not defined "
                              "there")
        if ins.op in OPS and OPS[ins.op].kind == "elementwise":
            jet = _elementwise(prog, i, ins, fwd, jets, n)
        elif ins.op in LINEAR:
            jet = [base] + [_linear(prog, i, ins, fwd, [jets[a][m] for a in ins.args])
                            if any(_nonzero(jets[a][m]) for a in ins.args) else ZERO for m in range(1, n)]
        elif ins.op in ("matmul", "einsum"):
            jet = [base, *_multilinear(prog, i, ins, jets)[1:]]
        elif ins.op == "lse":
            jet = _lse(prog, i, ins, fwd, jets)
        else:
            raise Unavailable(f"no higher-order rule for {ins.op} in the symbolic engine")
    return jet


def vjp(prog, fwd, jets: list, cotangent) -> dict[str, list]:
    """The reverse pass on jets: per grad var, [gradient, H v] (or [gradient, H v, H w, D3[c, v, w]]), each
    component (value, err in units of u)."""
    n = len(jets[prog.out])
    adj = {prog.out: [(np.broadcast_to(np.asarray(cotangent, float), prog.out_shape), 0.0)] + [ZERO] * (n - 1)}
    with np.errstate(all="ignore"):
        for i in range(len(prog.slots) - 1, -1, -1):
            slot = prog.slots[i]
            if slot.kind != "instr" or i not in adj or not slot.active:
                continue
            g = adj.pop(i)
            ins = slot.instr
            if ins.op in OPS and OPS[ins.op].kind == "elementwise":
                contribs = _elementwise_back(prog, i, ins, fwd, jets, g, n)
            elif ins.op in LINEAR:
                contribs = _linear_back(prog, i, ins, fwd, g)
            elif ins.op in ("matmul", "einsum"):
                contribs = _multilinear_back(prog, i, ins, fwd, jets, g)
            else:  # lse (forward refused everything else)
                contribs = _lse_back(prog, i, ins, fwd, jets, g)
            for arg, jet in contribs:
                if not prog.slots[arg].active:
                    continue
                adj[arg] = add(adj[arg], jet) if arg in adj else jet
    out = {}
    for name in prog.grad_vars:
        s = prog.var_slots.get(name)
        shape = prog.slots[s].shape if s is not None else ()
        jet = adj.get(s, [ZERO] * n) if s is not None else [ZERO] * n
        out[name] = [(np.array(np.broadcast_to(v, shape), float), np.array(np.broadcast_to(e, shape), float))
                     for v, e in jet]
    return out


def _linear_back(prog, i, ins: Instr, fwd, g: list):
    """A linear step's adjoint does not depend on its input: its first-order rule, once per component."""
    shapes = [prog.slots[a].shape for a in ins.args]
    vals = [fwd.values[a] for a in ins.args]
    per_arg: dict[int, list] = {}
    for m, c in enumerate(g):
        if not _nonzero(c):
            continue
        for j, (arg, ga) in enumerate(structured.back(prog, i, ins, fwd, vals, shapes, np.broadcast_to(c[0], ins.shape),
                                                      c[1], True, 0)):
            per_arg.setdefault(j, (arg, [ZERO] * len(g)))[1][m] = ga
    yield from per_arg.values()


def derivatives(prog, fwd, cotangent, directions: list[dict]) -> dict[str, list]:
    """Gradient, H v (and H w, D3[c, v, w]) of <cotangent, f> per grad var, with budgets (units of u). Raises
    ``Unavailable`` with the reason where the program has a step without a higher-order rule or a kink.
    ``PEAK.value`` is then the largest magnitude any factor reached."""
    PEAK.value = 0.0
    return vjp(prog, fwd, forward(prog, fwd, directions), cotangent)
