"""The reference engine: sympy-derived local derivatives composed with exact adjoint rules, in float64.

The IR is lowered once to a straight-line program (composites such as softmax and mse_loss become primitive
steps). Each elementwise op's derivatives are taken with ``sympy.diff`` once per op and parameter set and
cached; matmul, broadcasting and reductions have exact adjoint rules. Every value and adjoint carries a
first-order rounding-error bound in units of the unit roundoff u (see ``sympy_eval``): the same bound,
times a dtype's u, is the tolerance a correct computation in that dtype must meet. Nothing here touches
torch, so the reference is independent of the autograd under test.

Non-differentiable points: each kinked op (relu, abs, maximum, ...) marks the entries of its input that lie
within rounding distance of the kink. ``Program.vjp`` can then be run with the one-sided derivatives
(``side=-1/+1``); a correct autograd result lies in the hull of the three answers.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np
import sympy as sp

from ..errors import ExpressionError
from ..expr.ir import Call, Const, Node, Var
from ..expr.ops import OPS
from ..expr.shapes import SHAPE_OPS, apply_shape_op, infer, matmul_shape, normalize_dims, reduced_shape
from . import sympy_eval

KINK_SAFETY = 16.0  # entries this many rounding bounds from a kink are treated as sitting on it


def rss(*terms):
    """Root-sum-square of error terms: independent rounding errors add in quadrature (hypot: no underflow).
    Used across the many terms of sums and matmuls; the few terms of one elementwise op add worst-case.
    The result has the terms' broadcast shape even when every term is zero."""
    total = np.zeros(np.broadcast_shapes(*(np.shape(t) for t in terms)))
    for t in terms:
        if np.any(t):
            total = np.hypot(total, t)
    return total


def l2(x, axis, keepdims: bool = False):
    """2-norm along ``axis``, scaled so that squares of tiny or huge entries neither underflow nor overflow."""
    x = np.abs(np.asarray(x, dtype=float))
    m = np.max(x, axis=axis, keepdims=True) if x.size else np.zeros(())
    m = np.where((m > 0) & np.isfinite(m), m, 1.0)
    out = np.sqrt(np.sum(np.square(x / m), axis=axis, keepdims=True)) * m
    return out if keepdims else np.squeeze(out, axis=axis)


def l2_matmul(a, b):
    """sqrt(|a|**2 @ |b|**2), the 2-norms of the terms of each entry of a @ b, scaled like ``l2``."""
    sa = float(np.max(np.abs(a), initial=0.0)) or 1.0
    sb = float(np.max(np.abs(b), initial=0.0)) or 1.0
    return np.sqrt(np.matmul(np.square(a / sa), np.square(b / sb))) * (sa * sb)


def accumulation(k: int, norm, total):
    """Rounding of a k-term sum, in units of u, from the sum of squared terms and the sum itself.

    A sequential sum rounds each partial sum S_j once, so its error is about u*sqrt(sum_j S_j**2): for terms
    of random sign that is sqrt(k/2)*||t||_2, for terms of one sign sqrt(k/3)*|sum|. sqrt(k)*hypot(||t||_2,
    sum) bounds both; pairwise and blocked sums (torch, BLAS) stay well below it. ``norm`` is ||t||_2.
    """
    if k <= 1:
        return 0.0
    return np.sqrt(k) * np.hypot(norm, total)


@dataclass(frozen=True)
class Rules:
    """What sympy derived for one elementwise op with fixed parameters."""

    symbols: tuple
    value: sp.Expr
    grads: tuple
    kink: sp.Expr | None
    kink_slope: sp.Expr | None
    grads_alt: tuple = ()  # the same derivatives written as torch evaluates them (for the error budget)
    grads_out: tuple = ()  # the same derivatives computed from the op's output OUT (for the error budget)
    kink_grads: tuple = ()  # d kink / d argument: how far input rounding moves an entry towards a jump


@functools.cache
def local_rules(op_name: str, params: tuple) -> Rules:
    op = OPS[op_name]
    syms = tuple(sp.Symbol(f"a{i}", real=True) for i in range(op.arity))
    kw = dict(params)
    value = op.sympy(*syms, **kw) if op.sympy else sp.Integer(0)
    grads = tuple(sp.diff(value, s) for s in syms) if not op.zero_grad else (sp.Integer(0),) * op.arity
    kink = op.kink(*syms, **kw) if op.kink else None
    slope = sp.diff(kink, syms[0]) if kink is not None else None
    alt = tuple(op.grad_alt(*syms, **kw)) if op.grad_alt else ()
    via_out = tuple(op.grad_out(OUT, *syms, **kw)) if op.grad_out else ()
    kink_grads = tuple(sp.diff(kink, s) for s in syms) if op.jump else ()
    return Rules(syms, value, grads, kink, slope, alt, grads_out=via_out, kink_grads=kink_grads)


OUT = sp.Symbol("out", real=True)  # an op's own output, in derivatives written with it


@dataclass
class Instr:
    op: str
    args: tuple[int, ...]
    params: dict
    shape: tuple[int, ...]


@dataclass
class Slot:
    kind: str  # "var", "const", "instr"
    shape: tuple[int, ...]
    name: str = ""
    value: float = 0.0
    instr: Instr | None = None
    active: bool = False  # depends on a variable we differentiate
    node: object = None  # the IR node of an elementwise step (named in messages)


@dataclass
class Forward:
    """Values and error bounds (units of u) of every slot at one point, plus what the backward pass needs."""

    values: list
    errs: list
    derivs: dict = field(default_factory=dict)  # slot -> [(value, err) per arg]
    kinks: dict = field(default_factory=dict)  # slot -> mask of entries on a kink
    jumps: dict = field(default_factory=dict)  # slot -> (distance of the nearest entry to a jump in u, its index)
    aux: dict = field(default_factory=dict)  # slot -> what a structured step's backward needs (argmax, order)
    peak: float = 0.0  # largest finite magnitude of any intermediate value


@dataclass
class Gradient:
    """One VJP of the reference: per var, the value, its error bound and the hull over one-sided derivatives."""

    value: np.ndarray
    err: np.ndarray  # units of u
    lo: np.ndarray
    hi: np.ndarray

    @property
    def ambiguous(self) -> np.ndarray:
        return self.hi > self.lo


class Program:
    """A lowered expression: build once per case, run at any point."""

    def __init__(self, ir: Node, var_shapes: dict[str, tuple], grad_vars):
        self.slots: list[Slot] = []
        self.var_slots: dict[str, int] = {}
        self.domains: list[tuple[int, float, float, str]] = []  # (slot, lo, hi, what): torch refuses outside
        self.grad_vars = tuple(grad_vars)
        self.out = self._lower(ir, {n: tuple(s) for n, s in var_shapes.items()})
        self.out_shape = self.slots[self.out].shape

    # ---- lowering ----
    def _add(self, slot: Slot) -> int:
        self.slots.append(slot)
        return len(self.slots) - 1

    def _emit(self, op: str, args: tuple[int, ...], shape, **params) -> int:
        active = any(self.slots[a].active for a in args) and not (op in OPS and OPS[op].zero_grad)
        return self._add(Slot("instr", tuple(shape), instr=Instr(op, args, params, tuple(shape)), active=active))

    def _const(self, value: float) -> int:
        return self._add(Slot("const", (), value=float(value)))

    def _lower(self, node: Node, shapes) -> int:
        if isinstance(node, Const):
            return self._const(node.value)
        if isinstance(node, Call) and node.op in _NN_REWRITES:
            rewritten = _NN_REWRITES[node.op](*node.args, **dict(node.params),
                                              shapes=[infer(a, shapes) for a in node.args])
            return self._lower(rewritten, shapes)
        if isinstance(node, Call) and node.op in _LOSS_REWRITES:
            rewritten = _LOSS_REWRITES[node.op](*node.args, **dict(node.params), shape=infer(node.args[0], shapes))
            return self._lower(rewritten, shapes)
        if isinstance(node, Var):
            if node.name not in self.var_slots:
                self.var_slots[node.name] = self._add(
                    Slot("var", shapes[node.name], name=node.name, active=node.name in self.grad_vars))
            return self.var_slots[node.name]
        assert isinstance(node, Call)
        if node.op == "pow" and isinstance(node.args[1], Const):
            base = self._lower(node.args[0], shapes)
            return self._emit("powc", (base,), infer(node, shapes), exponent=node.args[1].value)
        args = tuple(self._lower(a, shapes) for a in node.args)
        arg_shapes = [self.slots[a].shape for a in args]
        shape = infer(node, shapes)
        p = dict(node.params)
        op = OPS[node.op]
        if op.kind == "elementwise":
            rules = local_rules(node.op, tuple(sorted(p.items())))
            if any(e.has(sp.zoo, sp.nan, sp.oo, -sp.oo) for e in (rules.value, *rules.grads)):
                shown = ", ".join(f"{k}={v:g}" for k, v in p.items())
                raise ExpressionError(f"{node.op}({shown}) is undefined for every input (with these parameters "
                                      f"its formula divides by zero)")
            i = self._emit(node.op, args, shape, **p)
            self.slots[i].node = node
            return i
        if node.op in ("sum", "mean", "logsumexp"):
            dims = normalize_dims(p["dim"], len(arg_shapes[0]), "")
            name = "lse" if node.op == "logsumexp" else node.op
            return self._emit(name, args, shape, dims=dims, keepdim=p["keepdim"])
        if node.op in ("amax", "amin", "prod"):
            dims = normalize_dims(p["dim"], len(arg_shapes[0]), "")
            keep = p["keepdim"] and not (node.op == "prod" and p["dim"] is None)
            return self._emit(node.op, args, shape, dims=dims, keepdim=keep)
        if node.op in ("cumsum", "cumprod", "sort"):
            (axis,) = normalize_dims(p["dim"], len(arg_shapes[0]), "") or (None,)
            if axis is None:  # a 0-D input: the op is the identity
                return self._emit("add", (args[0], self._const(0.0)), shape)
            return self._emit(node.op, args, shape, axis=axis, descending=p.get("descending", False))
        if node.op in ("var", "std", "norm"):
            return self._lower_spread(node.op, args[0], arg_shapes[0], shape, p)
        if node.op == "patches":
            m = _patch_map(arg_shapes[0], p)
            return self._emit("gather_map", args, shape, map=m, fill=p["fill"])
        if node.op == "causal_fill":  # torch's is_causal: key j > query i is masked out (-inf before softmax)
            rows, cols = arg_shapes[0][-2:]
            keep = np.tril(np.ones((rows, cols), dtype=bool))
            ids = np.arange(int(np.prod(arg_shapes[0]))).reshape(arg_shapes[0])
            return self._emit("gather_map", args, shape, map=np.where(keep, ids, -1), fill=-np.inf)
        if node.op in SHAPE_OPS:  # one index map into the inputs' entries (-1: a zero, as tril writes)
            offsets = np.cumsum([0] + [int(np.prod(s)) for s in arg_shapes])
            ids = [np.arange(offsets[k], offsets[k + 1]).reshape(s) + 1 for k, s in enumerate(arg_shapes)]
            index_map = np.array(apply_shape_op(node.op, ids, p), dtype=np.int64) - 1
            return self._emit("gather_map", args, shape, map=index_map)
        if node.op == "einsum":
            return self._emit("einsum", args, shape, equation=p["equation"])
        if node.op in ("embedding", "index_var", "index_select", "gather"):
            x, idx = (args[1], args[0]) if node.op == "embedding" else args
            dim = 0 if node.op in ("embedding", "index_var") else p["dim"] % max(len(self.slots[x].shape), 1)
            return self._emit("take", (x, idx), shape, how=node.op, dim=dim)
        if node.op in ("cross_entropy", "nll_loss"):
            return self._lower_class_loss(node.op, args, arg_shapes, p)
        if node.op == "matmul":
            return self._emit("matmul", args, shape)
        if node.op == "transpose":
            return self._emit("transpose", args, shape)
        if node.op in ("softmax", "log_softmax"):
            x = args[0]
            dims = normalize_dims(p["dim"], len(arg_shapes[0]), "")
            lse = self._emit("lse", (x,), reduced_shape(arg_shapes[0], dims, True), dims=dims, keepdim=True)
            centered = self._emit("sub", (x, lse), arg_shapes[0])
            return centered if node.op == "log_softmax" else self._emit("exp", (centered,), arg_shapes[0])
        if node.op == "clamp":  # torch.clamp: max wins where min > max, exactly as minimum(maximum(x, min), max)
            out = args[0]
            for bound, (name, default) in zip(node.args[1:], (("maximum", -np.inf), ("minimum", np.inf))):
                if not (isinstance(bound, Const) and bound.value == default):
                    j = args[1] if name == "maximum" else args[2]
                    out = self._emit(name, (out, j), np.broadcast_shapes(self.slots[out].shape, self.slots[j].shape))
            return out
        if node.op == "mse_loss":
            diff_shape = np.broadcast_shapes(*arg_shapes)
            diff = self._emit("sub", args, diff_shape)
            square = self._emit("pow", (diff, self._const(2.0)), diff_shape)
            return self._reduce(square, diff_shape, p["reduction"])
        if node.op == "binary_cross_entropy":
            p_, y = args
            s = arg_shapes[0]
            self.domains += [(p_, 0.0, 1.0, "binary_cross_entropy input"), (y, 0.0, 1.0, "binary_cross_entropy target")]
            log_p = self._emit("log", (p_,), s)
            log_q = self._emit("log1p", (self._emit("neg", (p_,), s),), s)
            one_minus_y = self._emit("sub", (self._const(1.0), y), s)
            total = self._emit("add", (self._emit("mul", (y, log_p), s),
                                       self._emit("mul", (one_minus_y, log_q), s)), s)
            return self._emit("neg", (self._reduce(total, s, p["reduction"]),), shape)
        raise NotImplementedError(node.op)  # pragma: no cover - every op in OPS is handled above

    def _lower_spread(self, op: str, x: int, x_shape, shape, p) -> int:
        """var/std as torch defines them (sum of squared deviations over n - correction), norm as
        sum(abs(x)**p)**(1/p) (p = 2 without the abs)."""
        dims = normalize_dims(p["dim"], len(x_shape), "")
        keep_shape = reduced_shape(x_shape, dims, True)
        if op == "norm":
            base = x if p["p"] == 2 else self._emit("abs", (x,), x_shape)
            powered = self._emit("powc", (base,), x_shape, exponent=float(p["p"]))
            total = self._emit("sum", (powered,), shape, dims=dims, keepdim=p["keepdim"])
            if p["p"] == 2:
                return self._emit("sqrt", (total,), shape)
            return self._emit("powc", (total,), shape, exponent=1.0 / float(p["p"]))
        mean = self._emit("mean", (x,), keep_shape, dims=dims, keepdim=True)
        centered = self._emit("sub", (x, mean), x_shape)
        square = self._emit("pow", (centered, self._const(2.0)), x_shape)
        total = self._emit("sum", (square,), shape, dims=dims, keepdim=p["keepdim"])
        var = self._emit("div", (total, self._const(_count(x_shape, dims) - p["correction"])), shape)
        return var if op == "var" else self._emit("sqrt", (var,), shape)

    def _reduce(self, loss: int, shape, reduction: str) -> int:
        if reduction == "none":
            return loss
        return self._emit("mean" if reduction == "mean" else "sum", (loss,), (), dims=tuple(range(len(shape))),
                          keepdim=False)

    def _lower_class_loss(self, op: str, args, arg_shapes, p) -> int:
        """cross_entropy as torch: log_softmax over the class dim, minus the target's entry (or the probabilities'
        weighted sum), label smoothing mixing in the mean over classes; then the reduction."""
        x, t = args
        xs, ts = arg_shapes
        cdim = len(xs) - 1
        logp = x
        if op == "cross_entropy":
            lse = self._emit("lse", (x,), reduced_shape(xs, (cdim,), True), dims=(cdim,), keepdim=True)
            logp = self._emit("sub", (x, lse), xs)
        n_shape = xs[:-1]
        eps = p.get("label_smoothing", 0.0)
        if ts == xs:  # class probabilities
            if eps:
                scaled = self._emit("mul", (t, self._const(1.0 - eps)), xs)
                t = self._emit("add", (scaled, self._const(eps / xs[-1])), xs)
            picked = self._emit("sum", (self._emit("mul", (t, logp), xs),), n_shape, dims=(cdim,), keepdim=False)
            loss = self._emit("neg", (picked,), n_shape)
        else:
            picked = self._emit("take", (logp, t), n_shape, how="class", dim=cdim)
            loss = self._emit("neg", (picked,), n_shape)
            if eps:
                smooth = self._emit("neg", (self._emit("mean", (logp,), n_shape, dims=(cdim,), keepdim=False),),
                                    n_shape)
                loss = self._emit("add", (self._emit("mul", (loss, self._const(1.0 - eps)), n_shape),
                                          self._emit("mul", (smooth, self._const(eps)), n_shape)), n_shape)
        if p["reduction"] == "none":
            return loss
        name = "mean" if p["reduction"] == "mean" else "sum"
        return self._emit(name, (loss,), (), dims=tuple(range(len(n_shape))), keepdim=False)

    # ---- forward ----
    def forward(self, inputs: dict[str, np.ndarray], kink_u: float | None = None, with_err: bool = True,
                derivs: bool = True, detached_from: Forward | None = None) -> Forward:
        """Evaluate every slot. ``kink_u`` (the unit roundoff of the least precise dtype under test) sets how
        close to a kink an entry must be to count as on it; None skips kink detection. ``derivs=False`` computes
        values only (what finite differences need); the backward pass needs the local derivatives.
        ``detached_from``: a forward at the base point whose detach() values are held fixed (finite differences
        of the function the gradient is taken of: detached values are constants there)."""
        values: list = [None] * len(self.slots)
        errs: list = [0.0] * len(self.slots)
        fwd = Forward(values, errs)
        peak = 0.0
        with np.errstate(all="ignore"):
            for i, slot in enumerate(self.slots):
                if slot.kind == "var":
                    values[i] = np.asarray(inputs[slot.name], dtype=np.float64)
                elif slot.kind == "const":
                    values[i] = np.float64(slot.value)  # numpy semantics: 1/0 is inf, not an exception
                    errs[i] = sympy_eval._number_err(slot.value)
                elif detached_from is not None and slot.instr.op == "detach":
                    values[i] = detached_from.values[i]
                else:
                    values[i], errs[i] = self._step(i, slot.instr, fwd, kink_u, with_err, derivs)
                if with_err:  # the reference run: how large do intermediates get (a dtype's range)?
                    finite = np.abs(values[i])[np.isfinite(values[i])]
                    if finite.size:
                        peak = max(peak, float(finite.max()))
        fwd.peak = peak
        return fwd

    def outside_domain(self, fwd: Forward) -> str | None:
        """Name the first op argument outside what torch accepts (binary_cross_entropy wants [0, 1])."""
        for slot, lo, hi, what in self.domains:
            v = np.asarray(fwd.values[slot])
            bad = (v < lo) | (v > hi)
            if bad.any():
                return f"{what} must lie in [{lo:g}, {hi:g}], got {float(v[bad].reshape(-1)[0]):.6g}"
        return None

    def kink_signature(self, fwd: Forward) -> list[np.ndarray]:
        """Which side of its kink every kinked entry is on: finite differences must not cross a kink."""
        sig = []
        for i, slot in enumerate(self.slots):
            if slot.kind == "instr" and slot.instr.op in ("amax", "amin", "sort"):  # which entry is the max/order
                sig.append(fwd.aux[i]["order"])
                continue
            if slot.kind == "instr" and OPS.get(slot.instr.op) is not None and OPS[slot.instr.op].kink:
                rules = local_rules(slot.instr.op, tuple(sorted(slot.instr.params.items())))
                env = {s: (fwd.values[a], 0.0) for s, a in zip(rules.symbols, slot.instr.args)}
                k, _ = sympy_eval.evaluate(rules.kink, env, with_err=False)
                sig.append(np.sign(k))
        return sig

    def _step(self, i: int, ins: Instr, fwd: Forward, kink_u, with_err, need_derivs=True):
        vals = [fwd.values[a] for a in ins.args]
        errs = [fwd.errs[a] for a in ins.args]
        if ins.op in OPS and OPS[ins.op].kind == "elementwise":
            op = OPS[ins.op]
            value = np.broadcast_to(op.numpy(*vals, **ins.params), ins.shape).astype(np.float64)
            if op.zero_grad:  # masks, floor, detach: exact (or the input's error), nothing flows back
                if op.jump and kink_u is not None:
                    fwd.jumps[i] = self._jump_distance(ins, vals, errs)
                return value, (np.broadcast_to(errs[0], ins.shape) if ins.op == "detach" else 0.0)
            if not (with_err or need_derivs or kink_u is not None):
                return value, 0.0
            rules = local_rules(ins.op, tuple(sorted(ins.params.items())))
            env = {s: (v, e) for s, v, e in zip(rules.symbols, vals, errs)}
            # only the derivatives someone needs: towards a differentiated input, or an input with rounding error
            needed = [self.slots[a].active or (with_err and bool(np.any(e))) for a, e in zip(ins.args, errs)]
            derivs = [sympy_eval.evaluate(g, env, with_err) if need else (0.0, 0.0)
                      for g, need in zip(rules.grads, needed)]
            for k, alt in enumerate(rules.grads_alt):  # budget: the worse of the two ways of computing it
                if needed[k]:
                    derivs[k] = (derivs[k][0], np.maximum(derivs[k][1], sympy_eval.evaluate(alt, env, with_err)[1]))
            derivs = [(np.broadcast_to(d, ins.shape), np.broadcast_to(e, ins.shape)) for d, e in derivs]
            if self.slots[i].active:
                fwd.derivs[i] = derivs
            if rules.kink is not None and kink_u is not None and self.slots[i].active:
                k, ek = sympy_eval.evaluate(rules.kink, env, True)
                near = np.abs(k) <= KINK_SAFETY * kink_u * np.abs(ek) + 1e-300
                fwd.kinks[i] = np.broadcast_to(near, ins.shape)
            err = sympy_eval.times(op.ulps, np.abs(value))
            if op.formula:
                err = np.maximum(err, sympy_eval.evaluate(rules.value, {s: (v, 0.0) for s, v in
                                                                         zip(rules.symbols, vals)}, True)[1])
            # a few terms: add worst-case (the inputs' errors may be correlated: a*a, or a shared sub-expression);
            # an exact input contributes nothing, even where its derivative is undefined (x**c at x < 0)
            for (d, _), e in zip(derivs, errs):
                if np.any(e):
                    err = err + sympy_eval.times(np.abs(d), e)
            if with_err and rules.grads_out:
                self._budget_from_output(rules, env, value, err, needed, derivs, ins.shape)
            return value, err
        if ins.op in ("sum", "mean"):
            x, e = vals[0], errs[0]
            n = _count(np.shape(x), ins.params["dims"])
            axes, keep = ins.params["dims"], ins.params["keepdim"]
            total = np.sum(x, axis=axes, keepdims=keep)
            err = rss(l2(np.broadcast_to(e, np.shape(x)), axes, keep), accumulation(n, l2(x, axes, keep), total))
            if ins.op == "mean":
                total = total / n
                err = rss(err / n, total)
            return total, err
        if ins.op == "lse":
            x, e = vals[0], errs[0]
            dims, keep = ins.params["dims"], ins.params["keepdim"]
            m = np.max(x, axis=dims, keepdims=True)
            m = np.where(np.isfinite(m), m, 0.0)
            s = np.sum(np.exp(x - m), axis=dims, keepdims=True)
            v = m + np.log(s)
            q = np.exp(x - v)
            n = _count(np.shape(x), dims)
            err = rss(l2(q * e, dims, True), accumulation(n, l2(q, dims, True), 1.0), sympy_eval.FUNCTION_ULPS,
                      m, v)
            if not keep:
                v, err = np.squeeze(v, axis=dims), np.squeeze(err, axis=dims)
            return v, err
        if ins.op == "take":
            x = np.asarray(vals[0], dtype=float)
            m = _take_map(ins.params["how"], ins.params["dim"], x.shape, np.asarray(vals[1]).astype(np.int64))
            fwd.aux[i] = {"map": m}
            e = np.broadcast_to(errs[0], x.shape).reshape(-1) if with_err else None
            return x.reshape(-1)[m], (e[m] if with_err else 0.0)
        if ins.op == "einsum":
            return _einsum_err(ins.params["equation"], [np.asarray(v, float) for v in vals], errs, with_err)
        if ins.op == "gather_map":
            shapes = [self.slots[a].shape for a in ins.args]
            m = ins.params["map"]
            fill = ins.params.get("fill", 0.0)
            flat = np.concatenate([np.broadcast_to(v, sh).reshape(-1) for v, sh in zip(vals, shapes)] + [[fill]])
            if not with_err:
                return flat[m], 0.0
            ferr = np.concatenate([np.broadcast_to(e, sh).reshape(-1) for e, sh in zip(errs, shapes)] + [[0.0]])
            return flat[m], ferr[m]  # index -1 picks the appended 0: an exact zero
        if ins.op in _STRUCTURED:
            return _STRUCTURED[ins.op][0](self, i, ins, vals, errs, fwd, kink_u)
        if ins.op == "matmul":
            (a, b), (ea, eb) = vals, errs
            value = np.matmul(a, b)
            if not with_err:
                return value, 0.0
            k = np.shape(a)[-1]
            err = accumulation(k + 1, l2_matmul(a, b), value)
            if np.any(eb):
                err = rss(err, l2_matmul(a, np.broadcast_to(eb, np.shape(b))))
            if np.any(ea):
                err = rss(err, l2_matmul(np.broadcast_to(ea, np.shape(a)), b))
            return value, err
        if ins.op == "transpose":
            return np.transpose(vals[0]), np.transpose(errs[0]) if np.ndim(errs[0]) else errs[0]
        raise NotImplementedError(ins.op)  # pragma: no cover

    @staticmethod
    def _budget_from_output(rules, env, value, err, needed, derivs, shape):
        """A standard backward may compute the derivative from the op's rounded output (elu's ``out + alpha``,
        expm1's ``out + 1``). Its error is u times the terms it combines, about the output's size, even where the
        exact derivative underflows (e^-120 from -1 + 1 is 0): the budget takes the worse of the two ways."""
        env_out = {**env, OUT: (value, err)}
        for k, via in enumerate(rules.grads_out):
            if needed[k]:
                d, de = derivs[k]
                derivs[k] = (d, np.broadcast_to(np.maximum(de, sympy_eval.evaluate(via, env_out, True)[1]), shape))

    def _jump_distance(self, ins: Instr, vals, errs):
        """How close the nearest entry is to the op's jump, in units of u: |k| over the first-order shift of k
        that the inputs' rounding can cause. An entry whose inputs are exact is never ambiguous, even on the jump
        (every dtype computes the same mask there)."""
        rules = local_rules(ins.op, tuple(sorted(ins.params.items())))
        env = {s: (v, 0.0) for s, v in zip(rules.symbols, vals)}
        k, _ = sympy_eval.evaluate(rules.kink, env, with_err=False)
        shift = np.zeros(ins.shape)
        for g, e in zip(rules.kink_grads, errs):
            if np.any(e):
                shift = shift + np.abs(sympy_eval.evaluate(g, env, with_err=False)[0]) * e
        with np.errstate(divide="ignore", invalid="ignore"):
            dist = np.broadcast_to(np.where(shift > 0, np.abs(k) / shift, np.inf), ins.shape)
        if not dist.size:
            return np.inf, ()
        flat = int(np.argmin(dist))
        return float(dist.reshape(-1)[flat]), np.unravel_index(flat, ins.shape)

    def near_jump(self, fwd: Forward, u: float) -> str | None:
        """Why a dtype with unit roundoff ``u`` may compute another mask (or floor) than the reference, or None:
        an entry lies within rounding distance of a jump, so values and gradients may legitimately differ."""
        for i, (dist, index) in fwd.jumps.items():
            if dist <= KINK_SAFETY * u:
                from ..expr.ir import to_text

                node = self.slots[i].node
                text = to_text(node) if node is not None else self.slots[i].instr.op
                at = f" at {list(map(int, index))}" if index else ""
                return (f"'{text[:60]}'{at} is within rounding distance of its jump ({dist / u:.3g} x its rounding "
                        "bound away): "
                        "this dtype may take either side, so its value and gradient are not compared")
        return None

    # ---- backward ----
    def vjp(self, fwd: Forward, cotangent, with_err: bool = True, sides: dict | None = None) -> dict[str, tuple]:
        """Reverse pass: per grad var, (adjoint, error bound in units of u). ``sides`` maps a kinked step to the
        one-sided derivative it takes at entries on its kink (-1 left, +1 right); others use the op's own rule."""
        sides = sides or {}
        adj: dict[int, np.ndarray] = {self.out: np.broadcast_to(np.asarray(cotangent, float), self.out_shape)}
        aerr: dict[int, np.ndarray] = {self.out: np.zeros(self.out_shape)}
        with np.errstate(all="ignore"):
            for i in range(len(self.slots) - 1, -1, -1):
                slot = self.slots[i]
                if slot.kind != "instr" or i not in adj or not slot.active:
                    continue
                g, ge = adj.pop(i), aerr.pop(i)
                for arg, (ga, gae) in self._back(i, slot.instr, fwd, g, ge, with_err, sides.get(i, 0)):
                    if not self.slots[arg].active:
                        continue
                    if arg in adj:  # a value used twice: its adjoints' errors may be correlated, add them
                        total = adj[arg] + ga
                        aerr[arg] = aerr[arg] + gae + np.abs(total)
                        adj[arg] = total
                    else:
                        adj[arg], aerr[arg] = ga, gae
        out = {}
        for name in self.grad_vars:
            s = self.var_slots.get(name)
            shape = self.slots[s].shape if s is not None else ()
            if s is None or s not in adj:
                out[name] = (np.zeros(shape), np.zeros(shape))
            else:
                out[name] = (np.array(np.broadcast_to(adj[s], shape)), np.array(np.broadcast_to(aerr[s], shape)))
        return out

    def gradient(self, fwd: Forward, cotangent) -> dict[str, Gradient]:
        """VJP with error bounds and, where entries sit on kinks, the hull over one-sided derivatives.

        The gradient is multilinear in the local derivatives chosen at the kinks, so its range over every choice
        (torch's 0.5 at a tie of maximum included) is reached at the vertices: each kinked step takes its left or
        right derivative independently. Up to MAX_KINK_STEPS kinked steps every pattern is tried; beyond that the
        two uniform patterns and KINK_SAMPLES seeded random ones."""
        mid = self.vjp(fwd, cotangent, True)
        variants = {name: [value] for name, (value, _) in mid.items()}
        for pattern in _side_patterns([i for i, mask in fwd.kinks.items() if mask.any()]):
            for name, (value, _) in self.vjp(fwd, cotangent, False, pattern).items():
                variants[name].append(value)
        return {name: Gradient(value, err, np.minimum.reduce(variants[name]), np.maximum.reduce(variants[name]))
                for name, (value, err) in mid.items()}

    def _back(self, i: int, ins: Instr, fwd: Forward, g, ge, with_err, side):
        vals = [fwd.values[a] for a in ins.args]
        shapes = [self.slots[a].shape for a in ins.args]
        if i in fwd.derivs:
            derivs = fwd.derivs[i]
            on_kink = i in fwd.kinks and fwd.kinks[i].any()
            if side and on_kink:
                derivs = self._one_sided(i, ins, fwd, side)
            # On a kink a lower precision may take either side's derivative (a tie in maximum, relu at a rounded
            # zero): the upstream gradient's rounding then flows through the larger one, even where the
            # reference's own derivative is 0.
            reach = [np.abs(d) for d, _ in derivs]
            if with_err and on_kink:
                for s in (-1, 1):
                    reach = [np.maximum(r, np.abs(d)) for r, (d, _) in zip(reach, self._one_sided(i, ins, fwd, s))]
            for arg, shape, (d, de), r in zip(ins.args, shapes, derivs, reach):
                contrib = g * d
                err = (sympy_eval.times(r, ge) + sympy_eval.times(np.abs(g), de) + np.abs(contrib)) if with_err else 0.0
                yield arg, _unbroadcast(contrib, err, shape, with_err)
            return
        if ins.op in ("sum", "mean"):
            x_shape = shapes[0]
            dims, keep = ins.params["dims"], ins.params["keepdim"]
            ga, gae = _expand(g, x_shape, dims, keep), _expand(ge, x_shape, dims, keep)
            if ins.op == "mean":
                n = _count(x_shape, dims)
                ga = ga / n
                gae = rss(gae / n, ga)
            yield ins.args[0], (ga, gae)
            return
        if ins.op == "lse":
            x = vals[0]
            dims, keep = ins.params["dims"], ins.params["keepdim"]
            v = _expand(fwd.values[i], x.shape, dims, keep)
            ve = _expand(fwd.errs[i], x.shape, dims, keep)
            q = np.exp(x - v)
            ga, gae = _expand(g, x.shape, dims, keep), _expand(ge, x.shape, dims, keep)
            contrib = ga * q
            qe = q * rss(np.broadcast_to(fwd.errs[ins.args[0]], x.shape), ve, x, v, sympy_eval.FUNCTION_ULPS)
            yield ins.args[0], (contrib, rss(np.abs(q) * gae, np.abs(ga) * qe, contrib))
            return
        if ins.op == "gather_map":
            yield from _gather_map_back(ins, shapes, g, ge, with_err)
            return
        if ins.op == "take":
            back = Instr("gather_map", ins.args[:1], {"map": fwd.aux[i]["map"]}, ins.shape)
            yield from _gather_map_back(back, shapes[:1], g, ge, with_err)
            return
        if ins.op == "einsum":
            yield from _einsum_back(ins, [np.asarray(v, float) for v in vals], [fwd.errs[a] for a in ins.args],
                                    shapes, g, ge, with_err)
            return
        if ins.op in _STRUCTURED:
            yield ins.args[0], _STRUCTURED[ins.op][1](self, i, ins, vals[0], fwd, g, ge, with_err, side)
            return
        if ins.op == "matmul":
            yield from _matmul_back(ins, vals, [fwd.errs[a] for a in ins.args], shapes, g, ge, with_err)
            return
        if ins.op == "transpose":
            yield ins.args[0], (np.transpose(g), np.transpose(ge) if np.ndim(ge) else ge)
            return
        raise NotImplementedError(ins.op)  # pragma: no cover

    def _one_sided(self, i: int, ins: Instr, fwd: Forward, side: int):
        """Derivatives with each on-kink entry moved just past the kink on ``side``."""
        rules = local_rules(ins.op, tuple(sorted(ins.params.items())))
        vals = [np.broadcast_to(fwd.values[a], ins.shape) for a in ins.args]
        env = {s: (v, 0.0) for s, v in zip(rules.symbols, vals)}
        k, _ = sympy_eval.evaluate(rules.kink, env, with_err=False)
        slope, _ = sympy_eval.evaluate(rules.kink_slope, env, with_err=False)
        a0 = vals[0]
        delta = 1e-9 * (1.0 + np.abs(a0))
        moved = a0 + (side * delta * np.abs(slope) - k) / slope
        shifted = np.where(fwd.kinks[i], moved, a0)
        env[rules.symbols[0]] = (shifted, 0.0)
        out = []
        for (d, de), gexpr in zip(fwd.derivs[i], rules.grads):
            d_side, _ = sympy_eval.evaluate(gexpr, env, with_err=False)
            out.append((np.where(fwd.kinks[i], np.broadcast_to(d_side, ins.shape), d), de))
        return out


MAX_KINK_STEPS = 8
KINK_SAMPLES = 64


def _side_patterns(steps: list[int]) -> list[dict]:
    """Every left/right choice for each kinked step (or a seeded sample when there are many)."""
    import itertools

    if not steps:
        return []
    if len(steps) <= MAX_KINK_STEPS:
        combos = itertools.product((-1, 1), repeat=len(steps))
    else:
        rng = np.random.default_rng(len(steps))
        combos = [(-1,) * len(steps), (1,) * len(steps)] + [tuple(rng.choice((-1, 1), len(steps)))
                                                            for _ in range(KINK_SAMPLES)]
    return [dict(zip(steps, combo)) for combo in combos]


def _count(shape, dims) -> int:
    return int(np.prod([shape[d] for d in dims])) if dims else 1


def _expand(g, x_shape, dims, keepdim):
    """Broadcast a reduced adjoint back over the reduced dims."""
    g = np.asarray(g, dtype=float)
    if g.ndim == 0:  # a scalar (e.g. the 0.0 error of a pass without error budgets) broadcasts as it is
        return np.broadcast_to(g, x_shape)
    if not keepdim and dims and np.ndim(g) != len(x_shape):
        g = np.expand_dims(g, axis=dims)
    return np.broadcast_to(g, x_shape)


def _unbroadcast(contrib, err, shape, with_err):
    """Sum an adjoint over the axes that broadcasting added or stretched, back to ``shape``."""
    contrib = np.asarray(contrib, dtype=float)
    if contrib.shape == tuple(shape):
        return contrib, err
    lead = contrib.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(lead + j for j, s in enumerate(shape) if s == 1 and contrib.shape[lead + j] != 1)
    n = int(np.prod([contrib.shape[a] for a in axes])) if axes else 1
    total = np.sum(contrib, axis=axes).reshape(shape)
    if not with_err:
        return total, 0.0
    err = rss(l2(np.broadcast_to(err, contrib.shape), axes).reshape(shape),
              accumulation(n, l2(contrib, axes).reshape(shape), total))
    return total, err


def _matmul_back(ins: Instr, vals, errs, shapes, g, ge, with_err):
    """Adjoints of numpy-style matmul, 1-D operands and batch broadcasting included."""
    a, b = vals
    ea, eb = errs
    sa, sb = shapes
    a2 = a[None, :] if a.ndim == 1 else a
    b2 = b[:, None] if b.ndim == 1 else b
    out2 = matmul_shape(a2.shape, b2.shape)
    g2 = np.reshape(g, out2)
    ge2 = np.reshape(np.broadcast_to(ge, np.shape(g)), out2) if with_err else 0.0
    bt, at = np.swapaxes(b2, -1, -2), np.swapaxes(a2, -1, -2)
    ga = np.matmul(g2, bt)
    gb = np.matmul(at, g2)
    ea_ = gb_err = 0.0
    if with_err:
        ge_full = np.broadcast_to(ge2, g2.shape)
        m, n = b2.shape[-1], a2.shape[-2]
        ea_ = rss(accumulation(m + 1, l2_matmul(g2, bt), ga), l2_matmul(ge_full, bt))
        gb_err = rss(accumulation(n + 1, l2_matmul(at, g2), gb), l2_matmul(at, ge_full))
        if np.any(eb):  # operand errors in the operands' promoted (2-D) layout
            eb2 = np.reshape(np.broadcast_to(eb, np.shape(b)), np.shape(b2))
            ea_ = rss(ea_, l2_matmul(g2, np.swapaxes(eb2, -1, -2)))
        if np.any(ea):
            ea2 = np.reshape(np.broadcast_to(ea, np.shape(a)), np.shape(a2))
            gb_err = rss(gb_err, l2_matmul(np.swapaxes(ea2, -1, -2), g2))
    ga, ea_ = _unbroadcast(ga, ea_, a2.shape, with_err)
    gb, gb_err = _unbroadcast(gb, gb_err, b2.shape, with_err)
    yield ins.args[0], (ga.reshape(sa), np.reshape(ea_, sa) if with_err else 0.0)
    yield ins.args[1], (gb.reshape(sb), np.reshape(gb_err, sb) if with_err else 0.0)


# ---- reductions and scans with exact adjoints: amax/amin (ties share equally, as torch), prod, cumsum, cumprod,
# sort (a permutation; tied values may go either way). Each is (forward, backward) over one input. ----
def _near_ties(v, x, e, ev, kink_u):
    """Entries within rounding distance of ``v`` (broadcast), or exactly equal to it."""
    if kink_u is None:
        return x == v
    return (np.abs(v - x) <= KINK_SAFETY * kink_u * (np.abs(e) + np.abs(ev)) + 1e-300) | (x == v)


def _amax_fwd(prog, i, ins, vals, errs, fwd, kink_u):
    x = np.asarray(vals[0], dtype=float)
    e = np.broadcast_to(errs[0], x.shape)
    dims, keep = ins.params["dims"], ins.params["keepdim"]
    sgn = 1.0 if ins.op == "amax" else -1.0
    if not dims:
        fwd.aux[i] = {"d": np.ones(x.shape), "near": np.zeros(x.shape, bool), "order": np.zeros(x.shape)}
        return x, e
    v = sgn * np.max(sgn * x, axis=dims, keepdims=True)
    exact = x == v
    d = exact / np.sum(exact, axis=dims, keepdims=True)
    ev = np.max(np.where(exact, e, 0.0), axis=dims, keepdims=True)
    near = _near_ties(v, x, e, ev, kink_u)
    near = near & (np.sum(near, axis=dims, keepdims=True) > 1)  # a tie needs two
    err = np.max(np.where(near | exact, e, 0.0), axis=dims, keepdims=True)
    fwd.aux[i] = {"d": d, "near": near, "order": exact}
    if near.any() and prog.slots[i].active:
        fwd.kinks[i] = near
    if not keep:
        v, err = np.squeeze(v, axis=dims), np.squeeze(err, axis=dims)
    return v, err


def _amax_back(prog, i, ins, x, fwd, g, ge, with_err, side):
    dims, keep = ins.params["dims"], ins.params["keepdim"]
    aux = fwd.aux[i]
    ga, gae = _expand(g, np.shape(x), dims, keep), _expand(ge, np.shape(x), dims, keep)
    d = aux["d"]
    if side:  # a lower precision may pick any of the tied entries: each gets nothing or everything
        d = np.where(aux["near"], 1.0 if side > 0 else 0.0, d)
    contrib = ga * d
    if not with_err:
        return contrib, 0.0
    reach = np.where(aux["near"], 1.0, d)
    return contrib, gae * reach + np.abs(contrib)


def _prod_fwd(prog, i, ins, vals, errs, fwd, kink_u):
    x = np.asarray(vals[0], dtype=float)
    e = np.broadcast_to(errs[0], x.shape)
    dims, keep = ins.params["dims"], ins.params["keepdim"]
    v = np.prod(x, axis=dims, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.sum(e / np.abs(x), axis=dims, keepdims=True) + (_count(x.shape, dims) - 1)
    err = np.abs(v) * rel
    fwd.aux[i] = {"v": v, "rel": rel}
    if not keep:
        v, err = np.squeeze(v, axis=dims), np.squeeze(err, axis=dims)
    return v, err


def _prod_back(prog, i, ins, x, fwd, g, ge, with_err, side):
    """torch's rule without zeros: grad * prod / x (an input with a zero makes the reference non-finite: skipped)."""
    dims, keep = ins.params["dims"], ins.params["keepdim"]
    aux = fwd.aux[i]
    ga, gae = _expand(g, np.shape(x), dims, keep), _expand(ge, np.shape(x), dims, keep)
    ratio = aux["v"] / x
    contrib = ga * ratio
    if not with_err:
        return contrib, 0.0
    e = np.broadcast_to(fwd.errs[ins.args[0]], np.shape(x))
    return contrib, np.abs(contrib) * (aux["rel"] + e / np.abs(x) + 2) + gae * np.abs(ratio)


def _scan_err(terms, errs, axis, reverse=False):
    """Rounding of every prefix sum (or suffix sum) along ``axis``, as ``accumulation`` charges a k-term sum."""
    flip = (lambda a: np.flip(a, axis)) if reverse else (lambda a: a)
    t, e = flip(np.asarray(terms, float)), flip(np.broadcast_to(errs, np.shape(terms)))
    total = np.cumsum(t, axis=axis)
    k = np.arange(1, t.shape[axis] + 1).reshape([-1 if d == axis % t.ndim else 1 for d in range(t.ndim)])
    acc = np.where(k > 1, np.sqrt(k) * np.hypot(np.sqrt(np.cumsum(t * t, axis=axis)), total), 0.0)
    return flip(total), flip(rss(np.sqrt(np.cumsum(e * e, axis=axis)), acc))


def _cumsum_fwd(prog, i, ins, vals, errs, fwd, kink_u):
    return _scan_err(vals[0], errs[0], ins.params["axis"])


def _cumsum_back(prog, i, ins, x, fwd, g, ge, with_err, side):
    """The adjoint of a prefix sum is the suffix sum of the upstream gradient."""
    g = np.broadcast_to(g, np.shape(x))
    total, err = _scan_err(g, ge if with_err else 0.0, ins.params["axis"], reverse=True)
    return total, (err if with_err else 0.0)


def _cumprod_fwd(prog, i, ins, vals, errs, fwd, kink_u):
    x = np.asarray(vals[0], dtype=float)
    axis = ins.params["axis"]
    e = np.broadcast_to(errs[0], x.shape)
    v = np.cumprod(x, axis=axis)
    k = np.arange(1, x.shape[axis] + 1).reshape([-1 if d == axis else 1 for d in range(x.ndim)])
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.cumsum(e / np.abs(x), axis=axis) + (k - 1)
    fwd.aux[i] = {"v": v, "rel": rel}
    return v, np.abs(v) * rel


def _cumprod_back(prog, i, ins, x, fwd, g, ge, with_err, side):
    """torch's rule without zeros: suffix sums of grad * output, over x."""
    axis, aux = ins.params["axis"], fwd.aux[i]
    g = np.broadcast_to(g, np.shape(x))
    terms = g * aux["v"]
    term_err = (np.abs(terms) * (aux["rel"] + 1) + np.broadcast_to(ge, np.shape(x)) * np.abs(aux["v"])) \
        if with_err else 0.0
    total, err = _scan_err(terms, term_err, axis, reverse=True)
    contrib = total / x
    if not with_err:
        return contrib, 0.0
    e = np.broadcast_to(fwd.errs[ins.args[0]], np.shape(x))
    return contrib, err / np.abs(x) + np.abs(contrib) * (e / np.abs(x) + 1)


def _sort_fwd(prog, i, ins, vals, errs, fwd, kink_u):
    x = np.asarray(vals[0], dtype=float)
    axis = ins.params["axis"]
    e = np.broadcast_to(errs[0], x.shape)
    idx = np.argsort(-x if ins.params["descending"] else x, axis=axis, kind="stable")
    v, ev = np.take_along_axis(x, idx, axis), np.take_along_axis(e, idx, axis)
    # tie groups along the sorted axis: a new group starts where neighbours are further apart than rounding
    gap = np.abs(np.diff(v, axis=axis))
    tol = KINK_SAFETY * (kink_u or 0.0) * (np.take(ev, range(1, v.shape[axis]), axis) +
                                           np.take(ev, range(v.shape[axis] - 1), axis))
    tied = (gap <= tol + 1e-300) | (gap == 0)
    starts = np.concatenate([np.ones_like(np.take(tied, [0], axis)), ~tied], axis=axis) if v.shape[axis] > 1 \
        else np.ones(v.shape, bool)
    group = np.cumsum(starts, axis=axis)
    fwd.aux[i] = {"idx": idx, "group": group, "order": idx}
    near = np.zeros(x.shape, bool)
    if v.shape[axis] > 1:
        in_tie = np.concatenate([np.zeros_like(np.take(tied, [0], axis)), tied], axis=axis) | \
            np.concatenate([tied, np.zeros_like(np.take(tied, [0], axis))], axis=axis)
        np.put_along_axis(near, idx, in_tie, axis)
    if near.any() and prog.slots[i].active:
        fwd.kinks[i] = near
    return v, ev


def _group_extreme(g, group, axis, side):
    """Within each tie group along ``axis``, every entry replaced by the group's min (side < 0) or max."""
    gm, grp = np.moveaxis(np.array(g, dtype=float), axis, -1), np.moveaxis(group, axis, -1)
    out = gm.copy()
    for row in np.ndindex(gm.shape[:-1]):
        for k in np.unique(grp[row]):
            sel = grp[row] == k
            if sel.sum() > 1:
                out[row][sel] = gm[row][sel].max() if side > 0 else gm[row][sel].min()
    return np.moveaxis(out, -1, axis)


def _sort_back(prog, i, ins, x, fwd, g, ge, with_err, side):
    """Sorting is a permutation: each input gets the gradient of the position it was sorted to. Tied inputs may
    be sorted either way, so each may get any of its tie group's gradients."""
    axis, aux = ins.params["axis"], fwd.aux[i]
    g = np.broadcast_to(g, np.shape(x))
    if side:
        g = _group_extreme(g, aux["group"], axis, side)
    out = np.zeros(np.shape(x))
    np.put_along_axis(out, aux["idx"], g, axis)
    if not with_err:
        return out, 0.0
    ge = np.broadcast_to(ge, np.shape(x))
    if i in fwd.kinks:  # a tied entry may receive any of its group's gradients and their errors
        ge = np.maximum(ge, _group_extreme(ge, aux["group"], axis, 1))
    err = np.zeros(np.shape(x))
    np.put_along_axis(err, aux["idx"], ge, axis)
    return out, err


_STRUCTURED = {"amax": (_amax_fwd, _amax_back), "amin": (_amax_fwd, _amax_back), "prod": (_prod_fwd, _prod_back),
               "cumsum": (_cumsum_fwd, _cumsum_back), "cumprod": (_cumprod_fwd, _cumprod_back),
               "sort": (_sort_fwd, _sort_back)}


def _gather_map_back(ins: Instr, shapes, g, ge, with_err):
    """Scatter-add the adjoint back through an index map: entries used twice (expand) accumulate; a k-fold sum
    is charged its rounding as ``accumulation`` does."""
    m = ins.params["map"].reshape(-1)
    keep = m >= 0
    total = int(sum(int(np.prod(s)) for s in shapes))
    g = np.broadcast_to(g, ins.shape).reshape(-1)
    out = np.zeros(total)
    np.add.at(out, m[keep], g[keep])
    err = 0.0
    if with_err:
        ge = np.broadcast_to(ge, ins.shape).reshape(-1)
        err = np.zeros(total)
        np.add.at(err, m[keep], ge[keep])
        count = np.bincount(m[keep], minlength=total)
        if count.max(initial=0) > 1:
            absg = np.zeros(total)
            np.add.at(absg, m[keep], np.abs(g[keep]))
            err = err + np.where(count > 1, np.sqrt(count) * absg, 0.0)
    start = 0
    for arg, s in zip(ins.args, shapes):
        n = int(np.prod(s))
        yield arg, (out[start:start + n].reshape(s), err[start:start + n].reshape(s) if with_err else 0.0)
        start += n


def _einsum_err(equation: str, arrays: list, errs: list, with_err: bool, out_shape=None):
    """np.einsum with the matmul-style budget: each output entry is a sum of k products of n factors, charged
    ``accumulation(k + n - 1)`` over the terms' 2-norm, plus each operand's error through the others."""
    lhs, rhs = equation.split("->")
    value = np.einsum(equation, *arrays)
    if not with_err:
        return value, 0.0
    subs = lhs.split(",")
    sizes = {ch: n for sub, a in zip(subs, arrays) for ch, n in zip(sub, np.shape(a))}
    k = int(np.prod([sizes[ch] for ch in sizes if ch not in rhs])) if any(ch not in rhs for ch in sizes) else 1
    scales = [float(np.max(np.abs(a), initial=0.0)) or 1.0 for a in arrays]
    sq = [np.square(a / s) for a, s in zip(arrays, scales)]
    norm = np.sqrt(np.einsum(equation, *sq)) * float(np.prod(scales))
    err = accumulation(k + len(arrays) - 1, norm, value) if k + len(arrays) > 2 else np.abs(value) * 0.0
    for j, e in enumerate(errs):
        if np.any(e):
            es = np.broadcast_to(e, np.shape(arrays[j]))
            parts = [np.square(es) if i == j else np.square(a) for i, a in enumerate(arrays)]
            err = rss(err, np.sqrt(np.einsum(equation, *parts)))
    return value, err


def _einsum_back(ins: Instr, arrays, errs, shapes, g, ge, with_err):
    """The adjoint of operand j is an einsum of the upstream gradient with the other operands; an index only
    operand j has (summed away) comes back through a ones vector of its size."""
    lhs, rhs = ins.params["equation"].split("->")
    subs = lhs.split(",")
    sizes = {ch: n for sub, a in zip(subs, arrays) for ch, n in zip(sub, np.shape(a))}
    g = np.broadcast_to(np.asarray(g, float), ins.shape)
    ge = np.broadcast_to(ge, ins.shape) if with_err else 0.0
    for j, sub in enumerate(subs):
        others = [(s, a, e) for i, (s, a, e) in enumerate(zip(subs, arrays, errs)) if i != j]
        seen = set(rhs) | {ch for s, _, _ in others for ch in s}
        extra = [(ch, np.ones(sizes[ch]), 0.0) for ch in sub if ch not in seen]
        ops = [(rhs, g, ge)] + others + extra
        eq = ",".join(s for s, _, _ in ops) + "->" + sub
        value, err = _einsum_err(eq, [a for _, a, _ in ops], [e for _, _, e in ops], with_err)
        yield ins.args[j], (np.reshape(value, shapes[j]), np.reshape(err, shapes[j]) if with_err else 0.0)


def _take_map(how: str, dim: int, x_shape, idx):
    """Flat indices into x of what embedding / x[idx] / index_select / gather / a class pick read."""
    ids = np.arange(int(np.prod(x_shape))).reshape(x_shape)
    if how in ("embedding", "index_var"):
        return ids[idx]
    if how == "index_select":
        return np.take(ids, idx, axis=dim)
    if how == "gather":
        grid = list(np.indices(idx.shape))
        grid[dim] = idx
        return ids[tuple(grid)]
    # "class": x[..., t] for each leading position (cross_entropy, nll_loss)
    grid = list(np.indices(idx.shape)) + [idx]
    return ids[tuple(grid)]


# ---- losses written as IR over primitive ops (torch's formulas), then lowered like any expression ----
def _c(name, *args, **params):
    return Call(name, tuple(args), tuple(params.items()))


def _reduced(loss, reduction: str, shape=()):
    if reduction == "none":
        return loss
    if reduction == "batchmean":  # kl_div: sum over all entries / size of dim 0 (torch's recommended form)
        return _c("div", _c("sum", loss, dim=None, keepdim=False), Const(float(shape[0] if shape else 1)))
    return _c("mean" if reduction == "mean" else "sum", loss, dim=None, keepdim=False)


def _kl_div(x, t, reduction, log_target, shape):
    pointwise = _c("mul", _c("exp", t), _c("sub", t, x)) if log_target else \
        _c("sub", _c("xlogy", t, t), _c("mul", t, x))
    return _reduced(pointwise, reduction, shape)


def _norm_keep(x, p, dim):
    return _c("norm", x, p=float(p), dim=dim, keepdim=True)


def _unit(x, p, dim, eps):
    """x over its norm clamped at eps: F.normalize, and both halves of F.cosine_similarity."""
    return _c("div", x, _c("maximum", _norm_keep(x, p, dim), Const(eps)))


_LOSS_REWRITES = {
    "l1_loss": lambda a, b, reduction, shape: _reduced(_c("abs", _c("sub", a, b)), reduction),
    "smooth_l1_loss": lambda a, b, reduction, beta, shape: _reduced(_c("smooth_l1_piece", _c("sub", a, b), beta=beta),
                                                             reduction) if beta > 0 else
    _reduced(_c("abs", _c("sub", a, b)), reduction),
    "huber_loss": lambda a, b, reduction, delta, shape: _reduced(_c("huber_piece", _c("sub", a, b), delta=delta),
                                                                 reduction),
    "binary_cross_entropy_with_logits": lambda x, y, reduction, shape: _reduced(
        _c("sub", _c("logaddexp", Const(0.0), x), _c("mul", x, y)), reduction),
    "kl_div": _kl_div,
    "cosine_similarity": lambda a, b, dim, eps, shape: _c(
        "sum", _c("mul", _unit(a, 2, dim, eps), _unit(b, 2, dim, eps)), dim=dim, keepdim=False),
    "normalize": lambda x, p, dim, eps, shape: _unit(x, p, dim, eps),
}


def _layer_norm(x, normalized_shape, weight, bias, eps, shapes, rms=False):
    dims = tuple(range(-len(normalized_shape), 0))
    if rms:
        scale = _c("rsqrt", _c("add", _c("mean", _c("pow", x, Const(2.0)), dim=dims, keepdim=True), Const(eps)))
        out = _c("mul", x, scale)
    else:
        mean = _c("mean", x, dim=dims, keepdim=True)
        var = _c("var", x, dim=dims, correction=0.0, keepdim=True)
        out = _c("mul", _c("sub", x, mean), _c("rsqrt", _c("add", var, Const(eps))))
    if not (isinstance(weight, Const) and weight.value == 1.0):
        out = _c("mul", out, weight)
    if bias is not None and not (isinstance(bias, Const) and bias.value == 0.0):
        out = _c("add", out, bias)
    return out


def _sdpa(q, k, v, is_causal, scale, shapes):
    s = _c("matmul", q, _c("mT", k))
    s = _c("mul", s, Const(scale or 1.0 / float(np.sqrt(shapes[0][-1]))))
    if is_causal:
        s = _c("causal_fill", s)
    return _c("matmul", _c("softmax", s, dim=-1), v)


_NN_REWRITES = {
    "linear": lambda x, w, b, shapes: (lambda y: y if isinstance(b, Const) and b.value == 0.0 else _c("add", y, b))(
        _c("matmul", x, _c("mT", w) if len(shapes[1]) == 2 else w)),
    "layer_norm": lambda x, weight, bias, normalized_shape, eps, shapes: _layer_norm(x, normalized_shape, weight, bias,
                                                                                    eps, shapes),
    "rms_norm": lambda x, weight, normalized_shape, eps, shapes: _layer_norm(x, normalized_shape, weight, None, eps,
                                                                            shapes, rms=True),
    "scaled_dot_product_attention": _sdpa,
}


def _patch_map(x_shape, p):
    """Flat indices of every window entry of a conv/pool (-1 in the padding), as (N, G, positions, Cg * K)."""
    from ..expr.shapes import conv_out, nd

    d = len(x_shape) - 2
    kernel, stride, padding, dilation = (nd(p[k], d) for k in ("kernel", "stride", "padding", "dilation"))
    out = conv_out(x_shape[2:], kernel, stride, padding, dilation)
    ids = np.arange(int(np.prod(x_shape))).reshape(x_shape)
    ids = np.pad(ids, [(0, 0), (0, 0)] + [(q, q) for q in padding], constant_values=-1)
    axes = [np.arange(o)[:, None] * st + np.arange(k)[None, :] * dl for o, k, st, dl in
            zip(out, kernel, stride, dilation)]  # (out, kernel) per spatial dim
    if d == 1:
        win = ids[:, :, axes[0]]  # N, C, O, K
    else:
        win = ids[:, :, axes[0][:, None, :, None], axes[1][None, :, None, :]]  # N, C, Ho, Wo, kh, kw
    n, c = x_shape[:2]
    g = p["groups"]
    win = win.reshape(n, g, c // g, int(np.prod(out)), int(np.prod(kernel)))
    return np.transpose(win, (0, 1, 3, 2, 4)).reshape(n, g, int(np.prod(out)), -1)


def _conv(x, w, b, stride, padding, dilation, groups, shapes, d):
    from ..expr.shapes import conv_out

    (n, c), (o, cg) = shapes[0][:2], shapes[1][:2]
    kernel = shapes[1][2:]
    out = conv_out(shapes[0][2:], kernel, stride, padding, dilation)
    patches = _c("patches", x, kernel=tuple(kernel), stride=stride, padding=padding, dilation=dilation,
                 groups=groups, fill=0.0)
    weight = _c("reshape", w, shape=(groups, o // groups, -1))
    y = _c("einsum", patches, weight, equation="ngld,god->ngol")
    y = _c("reshape", y, shape=(n, o, *out))
    if isinstance(b, Const) and b.value == 0.0:
        return y
    return _c("add", y, _c("reshape", b, shape=(o,) + (1,) * d))


def _pool(x, kernel_size, stride, padding, shapes, how):
    from ..expr.shapes import conv_out

    n, c = shapes[0][:2]
    stride = stride or kernel_size
    out = conv_out(shapes[0][2:], kernel_size, stride, padding, (1,))
    fill = -np.inf if how == "amax" else 0.0
    patches = _c("patches", x, kernel=tuple(kernel_size), stride=tuple(stride), padding=tuple(padding),
                 dilation=(1,), groups=c, fill=fill)
    pooled = _c(how, patches, dim=-1, keepdim=False)
    return _c("reshape", pooled, shape=(n, c, *out))


_NN_REWRITES.update({
    "conv1d": lambda x, w, b, stride, padding, dilation, groups, shapes: _conv(x, w, b, stride, padding, dilation,
                                                                               groups, shapes, 1),
    "conv2d": lambda x, w, b, stride, padding, dilation, groups, shapes: _conv(x, w, b, stride, padding, dilation,
                                                                               groups, shapes, 2),
    "avg_pool2d": lambda x, kernel_size, stride, padding, shapes: _pool(x, kernel_size, stride, padding, shapes,
                                                                        "mean"),
    "max_pool2d": lambda x, kernel_size, stride, padding, shapes: _pool(x, kernel_size, stride, padding, shapes,
                                                                        "amax"),
})
