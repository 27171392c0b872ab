"""Many values-only evaluations of a ``symbolic.Program`` in one numpy pass, for finite differences.

Finite differences probe one variable at many points (every entry of a small variable, three steps, both signs);
for a program of elementwise steps, sums, means and matrix products those points stack along a leading axis and
one pass computes them all, with the same numpy functions on the same values as one pass per point (numpy's
stacked matmul multiplies each row's matrices as one product would). Programs with any other step get None and
are evaluated point by point, as before; so are inputs too large for the stacked copies to be worth their memory.
"""

from __future__ import annotations

import numpy as np

from ..expr.ops import OPS
from . import sympy_eval

_REDUCTIONS = ("sum", "mean")


def supported(program, var: str) -> bool:
    """Whether every step is elementwise, a sum, a mean or a matmul whose operands that depend on ``var`` are
    matrices (a batched vector would read as a matrix); found once per program and variable."""
    known = program.__dict__.setdefault("_batchable", {})
    if var not in known:
        depends = set()
        ok = True
        for i, slot in enumerate(program.slots):
            if slot.kind == "var":
                if slot.name == var:
                    depends.add(i)
                continue
            if slot.kind != "instr":
                continue
            ins = slot.instr
            if any(a in depends for a in ins.args):
                depends.add(i)
            if ins.op == "matmul":
                ok &= all(len(program.slots[a].shape) >= 2 for a in ins.args if a in depends)
            else:
                ok &= ins.op in _REDUCTIONS or (ins.op in OPS and OPS[ins.op].kind == "elementwise")
        known[var] = ok
    return known[var]


def evaluate(program, inputs: dict, var: str, stack: np.ndarray, detached_from=None):
    """(output values, kink signature) with ``var`` taking each row of ``stack`` (B, *var's shape), the other
    inputs fixed: the output and each signature entry carry a leading axis of B (broadcast where a step does not
    depend on ``var``)."""
    n = stack.shape[0]
    values: list = [None] * len(program.slots)
    batched = [False] * len(program.slots)
    with np.errstate(all="ignore"):
        for i, slot in enumerate(program.slots):
            if slot.kind == "var":
                batched[i] = slot.name == var
                values[i] = stack if batched[i] else np.asarray(inputs[slot.name], dtype=np.float64)
            elif slot.kind == "const":
                values[i] = np.float64(slot.value)
            elif detached_from is not None and slot.instr.op == "detach":
                values[i] = detached_from.values[i]
            else:
                ins = slot.instr
                batched[i] = any(batched[a] for a in ins.args)
                args = [_aligned(program, a, values, batched, len(ins.shape)) for a in ins.args]
                shape = (n, *ins.shape) if batched[i] else ins.shape
                if ins.op == "matmul":  # numpy's stacked matmul: one product per row, as one at a time
                    values[i] = np.matmul(*args)
                elif ins.op in _REDUCTIONS:
                    dims = tuple(d + 1 for d in ins.params["dims"]) if batched[i] else ins.params["dims"]
                    total = np.sum(args[0], axis=dims, keepdims=ins.params["keepdim"])
                    values[i] = total / _count(program.slots[ins.args[0]].shape, ins.params["dims"]) \
                        if ins.op == "mean" else total
                else:
                    values[i] = _float64(OPS[ins.op].numpy(*args, **ins.params), shape)
        sig = []
        for _, slot, rules in program._kinked():
            ins = slot.instr
            env = {s: (_aligned(program, a, values, batched, len(ins.shape)), 0.0)
                   for s, a in zip(rules.symbols, ins.args)}
            k, _ = sympy_eval.evaluate(rules.kink, env, with_err=False)
            sig.append(np.broadcast_to(np.sign(k), (n, *ins.shape)))
    out = program.out
    return np.broadcast_to(values[out], (n, *program.slots[out].shape)), sig


def _float64(v, shape) -> np.ndarray:
    """``np.broadcast_to(v, shape).astype(np.float64)``, without the copy where ``v`` already is a float64
    C-contiguous array of that shape (the same bits in the same layout; nothing writes into these arrays)."""
    if type(v) is np.ndarray and v.dtype == np.float64 and v.shape == shape and v.flags.c_contiguous:
        return v
    return np.broadcast_to(v, shape).astype(np.float64)


def _aligned(program, a: int, values, batched, ndim: int):
    """A batched argument with its leading axis kept apart from numpy's broadcasting of the rest."""
    v = values[a]
    if not batched[a]:
        return v
    shape = program.slots[a].shape
    return v.reshape((v.shape[0],) + (1,) * (ndim - len(shape)) + tuple(shape))


def _count(shape, dims) -> int:
    return int(np.prod([shape[d] for d in dims])) if dims else 1
