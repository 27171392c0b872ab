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

The forward values, budgets and adjoints of the non-elementwise steps (reductions, scans, index maps, einsum,
matmul) are in ``structured``; losses and nn layers written as IR over primitive ops are in ``rewrites``.

Why it is over 400 lines: ``Program`` is one class whose lowering (every IR op to primitive steps, ~170 lines),
elementwise forward with its error budget and kink marks, and reverse pass with one-sided derivatives share the
slot list and each other's bookkeeping; splitting the class would scatter that state across modules.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np
import sympy as sp

from ..errors import ExpressionError
from ..expr.ir import Call, Const, Node, Var
from ..expr.ops import OPS
from ..expr.shapes import SHAPE_OPS, apply_shape_op, infer, normalize_dims, reduced_shape
from . import structured, sympy_eval
from .rewrites import _LOSS_REWRITES, _NN_REWRITES, _patch_map
from .structured import KINK_SAFETY, Instr, _count, _unbroadcast


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


@functools.cache
def _undefined_everywhere(op_name: str, params: tuple) -> bool:
    """Whether sympy's formula or a derivative of ``op_name`` with these parameters is undefined for every input
    (``zoo``, ``nan``, an infinity): asked at every lowering, answered once (sympy's ``has`` walks the tree)."""
    rules = local_rules(op_name, params)
    return any(e.has(sp.zoo, sp.nan, sp.oo, -sp.oo) for e in (rules.value, *rules.grads))


OUT = sp.Symbol("out", real=True)  # an op's own output, in derivatives written with it


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
            if _undefined_everywhere(node.op, tuple(sorted(p.items()))):
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
            square = self._emit("powc", (diff,), diff_shape, exponent=2.0)  # not pow: its budget is nan at a 0 base
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
        square = self._emit("powc", (centered,), x_shape, exponent=2.0)
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
                    peak = max(peak, _finite_peak(values[i]))
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
        for i, slot, rules in self._kinked():
            if rules is None:  # which entry is the max/order
                sig.append(fwd.aux[i]["order"])
                continue
            env = {s: (fwd.values[a], 0.0) for s, a in zip(rules.symbols, slot.instr.args)}
            k, _ = sympy_eval.evaluate(rules.kink, env, with_err=False)
            sig.append(np.sign(k))
        return sig

    def _kinked(self) -> list:
        """(slot index, slot, rules) of the steps in a kink signature, in slot order (rules None for amax, amin
        and sort): found once per program, since finite differences ask for the signature at every probe."""
        if getattr(self, "_kinked_steps", None) is None:
            self._kinked_steps = [
                (i, slot, None if slot.instr.op in ("amax", "amin", "sort") else
                 local_rules(slot.instr.op, tuple(sorted(slot.instr.params.items()))))
                for i, slot in enumerate(self.slots) if slot.kind == "instr" and (
                    slot.instr.op in ("amax", "amin", "sort") or
                    (OPS.get(slot.instr.op) is not None and OPS[slot.instr.op].kink))]
        return self._kinked_steps

    def _step(self, i: int, ins: Instr, fwd: Forward, kink_u, with_err, need_derivs=True):
        vals = [fwd.values[a] for a in ins.args]
        errs = [fwd.errs[a] for a in ins.args]
        if ins.op in OPS and OPS[ins.op].kind == "elementwise":
            op = OPS[ins.op]
            value = _fresh(_shaped(op.numpy(*vals, **ins.params), ins.shape), vals)
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
            derivs = [(_shaped(d, ins.shape), _shaped(e, ins.shape)) for d, e in derivs]
            if self.slots[i].active:
                fwd.derivs[i] = derivs
            if rules.kink is not None and kink_u is not None and self.slots[i].active:
                k, ek = sympy_eval.evaluate(rules.kink, env, True)
                near = np.abs(k) <= KINK_SAFETY * kink_u * np.abs(ek) + 1e-300
                fwd.kinks[i] = np.broadcast_to(near, ins.shape)
            if not (with_err or kink_u is not None):  # values and derivatives only: no one reads the budget
                return value, 0.0
            err = sympy_eval.times(op.ulps, np.abs(value))
            if ins.op == "mul":  # a product by an exact 0 or +-1 (a mask, a sign) rounds nothing in any dtype
                err = np.where(_exact_unit(vals[0], errs[0]) | _exact_unit(vals[1], errs[1]), 0.0, err)
            if op.formula:
                err = np.maximum(err, sympy_eval.evaluate(rules.value, {s: (v, 0.0) for s, v in
                                                                         zip(rules.symbols, vals)}, True)[1])
            # a few terms: add worst-case (the inputs' errors may be correlated: a*a, or a shared sub-expression);
            # an exact input contributes nothing, even where its derivative is undefined (x**c at x < 0)
            for (d, _), e in zip(derivs, errs):
                if np.any(e):
                    err = err + sympy_eval.times(np.abs(d), e)
            if kink_u is not None and (ins.op == "square" or (ins.op == "powc" and ins.params["exponent"] == 2.0)):
                # second order: where x cancelled to about 0 (var of equal entries) the first-order 2|x|e is 0 but
                # the error is e**2 (u e)**2 = u (u e**2): in units of u, the lowest dtype's u times e**2
                err = err + kink_u * np.square(errs[0])
            if with_err and rules.grads_out:
                self._budget_from_output(rules, env, value, err, needed, derivs, ins.shape)
            return value, err
        return structured.step(self, i, ins, fwd, vals, errs, kink_u, with_err)

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
        adj: dict[int, np.ndarray] = {self.out: _shaped(np.asarray(cotangent, float), self.out_shape)}
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
                out[name] = (np.array(_shaped(adj[s], shape)), np.array(_shaped(aerr[s], shape)))
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
                if len(variants[name]) > 1 else Gradient(value, err, value, value)  # no kink: the hull is the value
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
            active = [self.slots[a].active for a in ins.args]  # every caller drops the others' adjoints
            reach = [None if not act else np.abs(d) if with_err else True for (d, _), act in zip(derivs, active)]
            if with_err and on_kink:
                for s in (-1, 1):
                    reach = [r if r is None else np.maximum(r, np.abs(d))
                             for r, (d, _) in zip(reach, self._one_sided(i, ins, fwd, s))]
            for arg, shape, (d, de), r in zip(ins.args, shapes, derivs, reach):
                if r is None:  # not differentiated through: a placeholder, never read
                    yield arg, (0.0, 0.0)
                    continue
                contrib = g * d
                err = (sympy_eval.times(r, ge) + sympy_eval.times(np.abs(g), de) + np.abs(contrib)) if with_err else 0.0
                yield arg, _unbroadcast(contrib, err, shape, with_err)
            return
        yield from structured.back(self, i, ins, fwd, vals, shapes, g, ge, with_err, side)

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


def _finite_peak(value) -> float:
    """The largest finite magnitude in ``value`` (0 for none): one plain max where every entry is finite (the max
    is then finite too; a nan or inf makes it not), the masked max otherwise."""
    mag = np.abs(value)
    top = float(np.max(mag, initial=0.0))
    return top if top < np.inf else float(np.max(mag, initial=0.0, where=np.isfinite(value)))


def _exact_unit(value, err) -> np.ndarray:
    """The entries that are exactly 0, 1 or -1 and carry no rounding error."""
    value = np.asarray(value)
    return (np.asarray(err) == 0) & ((value == 0) | (np.abs(value) == 1))


def _fresh(value, inputs) -> np.ndarray:
    """``value.astype(np.float64)``: a float64 array of its own; one numpy has just made (not a view, not an input
    passed through) is that already, so it is not copied again."""
    if type(value) is np.ndarray and value.dtype == np.float64 and value.flags.owndata and \
            all(value is not v for v in inputs):
        return value
    return value.astype(np.float64)


def _shaped(x, shape):
    """``np.broadcast_to(x, shape)``, without its cost where ``x`` is already an array of that shape (nothing
    writes into these arrays)."""
    return x if type(x) is np.ndarray and x.shape == shape else np.broadcast_to(x, shape)


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
