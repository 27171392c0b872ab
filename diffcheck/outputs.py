"""Cases with several outputs: ``expr = "(a * b, a + b)"``, an impl returning a tuple or a dict.

Inside, the reference and the judged function have one flat output, the concatenation of the flattened outputs
(``cat([reshape(o, [-1]), ...])``), so every single-output check applies unchanged; this module holds the one
mapping between that flat output and the named ones: building it, flattening an impl's result into it, naming a
flat index ``name[index]`` in reports and the JSON, and zeroing the cotangent of value-only outputs.

An output is *value only* when no gradient can flow from the vars to it in the reference (a mask such as
``x > 0``, ``floor``, ``detach``, an integer-valued count such as ``sum(x > 0)``): it is compared by value, its
entries get a zero cotangent and it has no gradient check of its own. An impl may return it as an integer or
bool tensor, or as a float tensor it marks with ``ctx.mark_non_differentiable``.

Imports no torch at module level (``casefile`` uses it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .expr.ir import Call, Const, Node, Var
from .expr.ops import OPS


@dataclass(frozen=True)
class Output:
    name: str
    ir: Node
    shape: tuple[int, ...]
    offset: int  # where its entries start in the flat output
    value_only: bool

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    def describe(self) -> str:
        return f"{self.name} {list(self.shape)}" + (" (value only)" if self.value_only else "")


def flat_ir(elements) -> Node:
    """The one flat output the engines see: ``cat([reshape(e, [-1]), ...], dim=0)``."""
    return Call("cat", tuple(Call("reshape", (e,), (("shape", (-1,)),)) for e in elements), (("dim", 0),))


def differentiable(node: Node, grad_vars) -> bool:
    """Whether a gradient can flow from a var of ``grad_vars`` to ``node`` (ops marked ``zero_grad`` block it:
    comparisons, mask logic, floor/round/sign, detach)."""
    if isinstance(node, Var):
        return node.name in grad_vars
    if isinstance(node, Const) or OPS[node.op].zero_grad:
        return False
    return any(differentiable(a, grad_vars) for a in node.args)


def layout(names, elements, shapes, grad_vars) -> tuple[Output, ...]:
    outs, offset = [], 0
    for name, element, shape in zip(names, elements, shapes):
        outs.append(Output(name, element, tuple(shape), offset, not differentiable(element, grad_vars)))
        offset += outs[-1].size
    return tuple(outs)


def default_names(count: int) -> list[str]:
    return [f"out{i}" for i in range(count)]


def locate(outputs, flat: int) -> tuple[Output, list[int]]:
    """The output a flat index falls in, and the index inside it."""
    for o in outputs:
        if flat < o.offset + o.size:
            local = np.unravel_index(flat - o.offset, o.shape) if o.shape else ()
            return o, [int(i) for i in local]
    raise IndexError(flat)


def name_entries(check, outputs, got, ref, allowed, lo=None, hi=None):
    """A check over the flat output (value, expect_value) read per output: each worst entry says its output and
    its index there, the message says which outputs hold the wrong entries, ``details["outputs"]`` gives the
    layout (for the JSON). Returns ``check``."""
    if not outputs:
        return check
    from .compare import diagnose, margins

    for entry in check.worst:
        if len(entry.index) == 1:
            o, entry.index = locate(outputs, entry.index[0])
            entry.output = o.name
    check.details["outputs"] = [{"name": o.name, "shape": list(o.shape), "value_only": o.value_only}
                                for o in outputs]
    got, ref = np.asarray(got, dtype=float).reshape(-1), np.asarray(ref, dtype=float).reshape(-1)
    if check.status == "fail" and got.shape == ref.shape:
        allowed = np.broadcast_to(np.asarray(allowed, dtype=float), ref.shape)
        _, margin, _ = margins(got, ref, allowed, lo, hi)
        wrong = [f"{o.name} ({int(np.sum(margin[o.offset:o.offset + o.size] > 1))} of {o.size})" for o in outputs
                 if np.any(margin[o.offset:o.offset + o.size] > 1)]
        check.message += f"; wrong in output{'s' * (len(wrong) > 1)} {', '.join(wrong)}"
        bad = [o for o in outputs if np.any(margin[o.offset:o.offset + o.size] > 1)]
        check.details["wrong_outputs"] = [o.name for o in bad]
        if len(bad) == 1:  # the pattern within that output, in its own shape (a transpose, one row, one entry)
            o, part = bad[0], slice(bad[0].offset, bad[0].offset + bad[0].size)
            pattern = diagnose(got[part].reshape(o.shape), ref[part].reshape(o.shape),
                               (margin[part] > 1).reshape(o.shape), gradient=False)
            check.diagnosis = f"in output {o.name}: {pattern}"
    elif check.status != "fail" and not check.message:
        check.message = "outputs " + ", ".join(o.describe() for o in outputs)
    return check


def mask_cotangents(cotangents, outputs) -> list[np.ndarray]:
    """Value-only outputs get a zero cotangent: no gradient of theirs is judged."""
    keep = np.ones(sum(o.size for o in outputs))
    for o in outputs:
        if o.value_only:
            keep[o.offset:o.offset + o.size] = 0.0
    return [c * keep for c in cotangents]


def block(outputs, output: Output, values) -> np.ndarray:
    """A flat cotangent that is ``values`` on ``output``'s entries and zero elsewhere."""
    c = np.zeros(sum(o.size for o in outputs))
    c[output.offset:output.offset + output.size] = np.asarray(values, dtype=float).reshape(-1)
    return c


def flat_expect(value, outputs, fail) -> np.ndarray:
    """``expect.value`` of a case with several outputs: a list with one value per output, each a number or a
    nested list of that output's shape; flattened into the flat output."""
    from .validate import numbers

    if not isinstance(value, list) or len(value) != len(outputs):
        fail(f"expect.value of a case with {len(outputs)} outputs ({', '.join(o.name for o in outputs)}) must be a "
             "list of one value per output", "expect.value")
    parts = []
    for i, (o, v) in enumerate(zip(outputs, value)):
        key = f"expect.value.{i}"
        arr = numbers(_bools(v) if o.value_only else v, key, fail)  # a mask's known value may be true/false
        if arr.ndim == 0:
            arr = np.full(o.shape, float(arr))
        if arr.shape != o.shape:
            fail(f"{key} (output {o.name}) has shape {list(arr.shape)} but the output's shape is {list(o.shape)}",
                 key)
        parts.append(arr.reshape(-1))
    return np.concatenate(parts)


class Mismatch(Exception):
    """An impl's result does not fit the case's outputs; ``what`` is "returned" or "shape" (as ImplFailure's)."""

    def __init__(self, what: str, message: str):
        super().__init__(message)
        self.what, self.message = what, message


def _bools(value):
    if isinstance(value, list):
        return [_bools(v) for v in value]
    return float(value) if isinstance(value, bool) else value


def flatten_result(out, outputs, clean):
    """An impl's tuple or dict result as the list of its outputs in the case's order, checked against the case's
    count, names and shapes; raises Mismatch naming the output at fault."""
    import torch

    names = [o.name for o in outputs]
    if isinstance(out, dict):
        keys = list(out)
        if sorted(map(str, keys)) != sorted(names):
            raise Mismatch("returned", f"the impl returned a dict with keys {clean(keys)} where the outputs are "
                                         f"{names} (the case's 'outputs')")
        parts = [out[n] for n in names]
    elif isinstance(out, (tuple, list)):
        if len(out) != len(outputs):
            raise Mismatch("returned", f"the impl returned {len(out)} outputs where {len(outputs)} "
                                         f"{'is' if len(outputs) == 1 else 'are'} expected ({', '.join(names)})")
        parts = list(out)
    elif isinstance(out, torch.Tensor) and len(outputs) == 1:
        parts = [out]
    else:
        raise Mismatch("returned", f"the impl returned {clean(type(out).__name__)} where {len(outputs)} outputs "
                                     f"({', '.join(names)}) are expected: a tuple, or a dict keyed by 'outputs'")
    for o, part in zip(outputs, parts):
        if not isinstance(part, torch.Tensor):
            raise Mismatch("returned", f"output {o.name} of the impl is {clean(type(part).__name__)}, not a tensor")
        if tuple(part.shape) != o.shape:
            raise Mismatch("shape", f"output {o.name} of the impl has shape {list(part.shape)} where "
                                      f"{list(o.shape)} is expected")
    return parts


def concatenate(parts):
    """The flat output: integer and bool outputs (value only) in the float dtype of the others."""
    import torch

    floats = [p.dtype for p in parts if p.is_floating_point()]
    dtype = floats[0] if floats else torch.float64
    return torch.cat([(p if p.is_floating_point() else p.to(dtype)).reshape(-1) for p in parts])
