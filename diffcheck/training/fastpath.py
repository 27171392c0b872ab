"""The training loops' per-step work, planned once instead of dispatched at every step.

``ValueAndGrad`` is ``Program.forward`` followed by ``Program.vjp`` of the loss without their error budget (what
the float64 reference loop runs between budget refreshes): the same numpy and sympy-rule calls on the same arrays
in the same order, so loss and gradient are bit for bit the program's, but with each slot's op, rules and
parameters looked up once per program rather than at every step. ``tests/test_training_fastpath.py`` holds it to
``Program`` over every op family.

The torch loop's model and loss are ``engines.autograd.build`` functions: the expression walked once, into
closures.
"""

from __future__ import annotations

import numpy as np

from ..engines import structured, sympy_eval
from ..engines.symbolic import Forward, Program, _shaped, local_rules
from ..expr.ops import OPS


class ValueAndGrad:
    """Loss value and gradient (float64, one per grad var) of ``program`` at an input, cotangent 1, no budget."""

    def __init__(self, program: Program):
        self.program = program
        self.forward_plan = [self._plan_slot(i, slot) for i, slot in enumerate(program.slots)]
        self.backward_plan = [(i, slot.instr, tuple(program.slots[a].shape for a in slot.instr.args),
                               tuple(program.slots[a].active for a in slot.instr.args),
                               tuple(_summed_axes(slot.shape, program.slots[a].shape) for a in slot.instr.args))
                              for i, slot in reversed(list(enumerate(program.slots)))
                              if slot.kind == "instr" and slot.active]
        self.outputs = [(name, program.var_slots.get(name)) for name in program.grad_vars]
        self.seed = np.broadcast_to(np.asarray(1.0, float), program.out_shape)  # the cotangent; read, never written

    def _plan_slot(self, i: int, slot):
        if slot.kind == "var":
            return "var", slot.name
        if slot.kind == "const":
            return "const", (np.float64(slot.value), sympy_eval._number_err(slot.value))
        ins = slot.instr
        op = OPS.get(ins.op)
        if ins.op in ("sum", "mean"):  # structured.step without budget, the entry count found once
            return "reduce", (ins, structured._count(self.program.slots[ins.args[0]].shape, ins.params["dims"]))
        if op is None or op.kind != "elementwise":
            return "structured", ins
        if op.zero_grad:
            return "zero_grad", (op, ins)
        rules = local_rules(ins.op, tuple(sorted(ins.params.items())))
        needed = tuple(self.program.slots[a].active for a in ins.args)  # Program._step's `needed` without budget
        grads = tuple(_derivative(g, rules.symbols) if need else None for g, need in zip(rules.grads, needed))
        return "elementwise", (op, ins, rules, needed, grads, slot.active)

    def __call__(self, inputs: dict) -> tuple[float, dict[str, np.ndarray]]:
        prog = self.program
        n = len(prog.slots)
        values: list = [None] * n
        errs: list = [0.0] * n
        fwd = Forward(values, errs)
        for i, (kind, plan) in enumerate(self.forward_plan):
            if kind == "var":
                values[i] = np.asarray(inputs[plan], dtype=np.float64)
            elif kind == "const":
                values[i], errs[i] = plan
            elif kind == "elementwise":
                op, ins, rules, needed, grads, active = plan
                vals = [values[a] for a in ins.args]
                values[i] = _shaped(op.numpy(*vals, **ins.params), ins.shape).astype(np.float64)
                env = {s: (v, errs[a]) for s, v, a in zip(rules.symbols, vals, ins.args)}
                derivs = [0.0 if g is None else vals[g] if type(g) is int else g[0] if type(g) is tuple
                          else sympy_eval.evaluate(g, env, False)[0] for g in grads]
                for k, alt in enumerate(rules.grads_alt):  # evaluated as Program does (its repairs count alike)
                    if needed[k]:
                        sympy_eval.evaluate(alt, env, False)
                if active:
                    fwd.derivs[i] = derivs
            elif kind == "zero_grad":
                op, ins = plan
                vals = [values[a] for a in ins.args]
                values[i] = _shaped(op.numpy(*vals, **ins.params), ins.shape).astype(np.float64)
                if ins.op == "detach":
                    errs[i] = np.broadcast_to(errs[ins.args[0]], ins.shape)
            elif kind == "reduce":
                ins, count = plan
                total = np.sum(values[ins.args[0]], axis=ins.params["dims"], keepdims=ins.params["keepdim"])
                values[i] = total / count if ins.op == "mean" else total
            else:
                ins = plan
                values[i], errs[i] = structured.step(prog, i, ins, fwd, [values[a] for a in ins.args],
                                                     [errs[a] for a in ins.args], None, False)
        adj: list = [None] * n
        adj[prog.out] = self.seed
        for i, ins, shapes, active, axes in self.backward_plan:
            g = adj[i]
            if g is None:
                continue
            adj[i] = None
            for arg, ga in self._back(i, ins, fwd, shapes, active, axes, g):
                if not prog.slots[arg].active:
                    continue
                adj[arg] = ga if adj[arg] is None else adj[arg] + ga
        grads = {}
        for name, s in self.outputs:
            shape = prog.slots[s].shape if s is not None else ()
            g = None if s is None else adj[s]
            if g is None:
                grads[name] = np.zeros(shape)
            else:  # a copy, broadcast to the var's shape where the adjoint is not already of it
                grads[name] = np.array(g if type(g) is np.ndarray and g.shape == shape else np.broadcast_to(g, shape))
        return float(values[prog.out]), grads

    def _back(self, i, ins, fwd, shapes, active, axes, g):
        """(input slot, adjoint) of step ``i``: ``Program._back`` without the budget (and without the adjoints of
        inputs that are not differentiated, which ``Program.vjp`` drops)."""
        if i in fwd.derivs:
            for arg, shape, d, needed, summed in zip(ins.args, shapes, fwd.derivs[i], active, axes):
                if not needed:
                    continue
                contrib = g * d
                if type(contrib) is not np.ndarray or contrib.shape != ins.shape:  # not planned for: as Program
                    yield arg, structured._unbroadcast(contrib, 0.0, shape, False)[0]
                else:  # structured._unbroadcast's sum, over the axes found once
                    yield arg, contrib if summed is None else np.sum(contrib, axis=summed).reshape(shape)
            return
        if ins.op in ("sum", "mean"):  # structured.back, less the budget it computes even when unused
            ga = structured._expand(g, shapes[0], ins.params["dims"], ins.params["keepdim"])
            yield ins.args[0], (ga / self.forward_plan[i][1][1] if ins.op == "mean" else ga)
            return
        vals = [fwd.values[a] for a in ins.args]
        for arg, (ga, _) in structured.back(self.program, i, ins, fwd, vals, list(shapes), g, 0.0, False, 0):
            yield arg, ga


def _summed_axes(shape: tuple, arg_shape: tuple) -> tuple | None:
    """The axes ``structured._unbroadcast`` sums an adjoint of ``shape`` over, back to ``arg_shape`` (None: it
    returns the adjoint as it is)."""
    lead = len(shape) - len(arg_shape)
    if shape == tuple(arg_shape) or lead < 0:  # lead < 0: not an elementwise step, whose adjoints are not summed
        return None
    return tuple(range(lead)) + tuple(lead + j for j, s in enumerate(arg_shape) if s == 1 and shape[lead + j] != 1)


def _derivative(expr, symbols):
    """How to get a derivative's value without its error: the index of the argument it is (a symbol is looked
    up, never repaired), ``(number,)`` for a constant that ``sympy_eval`` would not repair, else the sympy
    expression itself, for ``sympy_eval.evaluate``."""
    if expr.is_Symbol and expr in symbols:
        return symbols.index(expr)
    if expr.is_Number:
        number = float(expr)
        if number == 0 or 1 / sympy_eval.EXTREME <= abs(number) <= sympy_eval.EXTREME:
            return (number,)
    return expr
