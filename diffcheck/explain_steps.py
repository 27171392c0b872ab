"""Per-step localisation for ``diffcheck explain``: where a failing impl exposes its intermediates, the edge where its
backward first departs from the chain rule.

An impl whose forward is a composition of torch ops (a function or nn.Module, custom Functions inside allowed) has
its intermediates recorded by autograd. Its forward runs under a ``TorchFunctionMode`` that keeps every tensor an
op reads or returns that has a ``grad_fn`` (a custom Function's inside runs under no_grad and is not seen; its
output is seen where the next op reads it); one backward with the explain graph's upstream gradient (ones) then
gives, in each one's ``.grad`` (``retain_grad``: after the tensor's own hooks), the adjoint the impl's backward
delivered there. A recorded tensor stands for a node of the symbolic graph when it has the node's shape and forward
value within the float64 budget at the point and at a second, nearby point (one coincidence of values is not a match);
a node that several recorded tensors match takes the sum of their adjoints, leaving out those that are autograd
ancestors of another (``s.detach() + 3 * (s - s.detach())`` re-creates ``s``: the last one is the node), and a
tensor that matches two nodes matches neither. The adjoints are compared with the chain rule's under the derived
float64 tolerance, and the departing edges are those into each disagreeing node none of whose downstream known
nodes disagree: from the last node (walking back from the output) whose adjoint still agrees to the first whose
adjoint disagrees. Without a matched intermediate (a single custom Function) the localisation stays per input.
"""

from __future__ import annotations

import numpy as np

PERTURB = 2.0**-7  # the second point: each entry moved by this much relative to (1 + |x|)


def localise(program, graph, point: dict, cot, fn, grad_vars) -> None:
    """Mark the departing edges of ``graph`` (``Edge.departs``) and say in ``graph.notes`` how it was localised.
    Only called for an impl whose input gradients depart; anything that goes wrong here leaves it per input."""
    try:
        how = _localise(program, graph, point, cot, fn, grad_vars)
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # user code runs again here: whatever it does, the per-input verdicts stand
        from .engines.impl import Timeout, clean

        if isinstance(exc, Timeout):
            raise
        how = f"per input: recording the impl's intermediates raised {clean(type(exc).__name__, 80)}"
    graph.localisation = how.split(":")[0]
    graph.notes.append(how)


def _localise(program, graph, point, cot, fn, grad_vars) -> str:
    fwd = program.forward(point, kink_u=2.0**-53)
    if any(mask.any() for mask in fwd.kinks.values()):
        return ("per input: an entry sits on a kink here, where the adjoints of the steps are not single values "
                "(choose another point with --at)")
    recs, adjoints = _record(fn, point, grad_vars, cot, backward=True)
    if not recs:
        return ("per input: the impl exposes no intermediates (its forward is one opaque step, e.g. a single custom "
                "Function): its backward is compared with the chain rule at the edges into each input")
    second = _second_point(program, point, fn, grad_vars, recs)
    matched = _match(program, graph, fwd, recs, adjoints, second)
    if not matched:
        return (f"per input: none of the impl's {len(recs)} recorded intermediates has the shape and value of a "
                "node of this graph: its backward is compared with the chain rule at the edges into each input")
    agrees = _verdicts(program, graph, fwd, cot, matched)
    marked = _mark(graph, agrees)
    names = ", ".join(graph.nodes[s].name for s in sorted(matched))
    where = "" if second is not None else " (at this point only: a second point was not usable)"
    if not marked:
        return f"per input: the impl's intermediates {names} were matched{where}, but no departing step was found"
    return (f"per step: the impl's intermediates {names} were matched (same shape and forward value, here "
            f"{'and at a nearby point' if second is not None else 'only: a second point was not usable'}); the "
            "marked edge is where its adjoints stop agreeing with the chain rule")


def _record(fn, point, grad_vars, cot, backward: bool):
    """The impl's recorded intermediates (tensors, in the order first seen) and, with ``backward``, their adjoints."""
    import torch
    from torch.overrides import TorchFunctionMode
    from torch.utils._pytree import tree_leaves

    from .engines.autograd import input_tensor, to_numpy

    seen: dict[int, tuple] = {}

    def keep(t):
        if isinstance(t, torch.Tensor) and t.grad_fn is not None and t.is_floating_point():
            if id(t) in seen and seen[id(t)][1] == t._version:
                return
            seen.pop(id(t), None)  # changed in place: the tensor now stands for its new value
            seen[id(t)] = (t, t._version, to_numpy(t.detach()).copy())

    class Recorder(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in tree_leaves((args, kwargs or {}, out)):
                keep(t)
            return out

    tensors = {n: input_tensor(v, "float64", "cpu", n in grad_vars, None) for n, v in point.items()}
    with Recorder():
        out = fn(**tensors)
    keep(out)
    recs = [(t, value) for t, version, value in seen.values() if t._version == version and t is not out]
    if not backward:
        return recs, None
    for t, _ in recs:  # .grad of a non-leaf holds what its hooks made of its adjoint (autograd.grad's capture
        t.retain_grad()  # would hold what reached it before them)
    torch.autograd.backward(out, torch.as_tensor(cot, dtype=out.dtype))
    adjoints = [np.zeros(v.shape) if t.grad is None else to_numpy(t.grad).reshape(v.shape) for t, v in recs]
    return recs, adjoints


def _second_point(program, point, fn, grad_vars, recs):
    """(symbolic forward, recorded values) at a nearby point where the impl records the same sequence; else None."""
    rng = np.random.default_rng(20261201)
    other = {n: np.asarray(v, float) + (PERTURB * (1 + np.abs(v)) * rng.uniform(0.5, 1.0, np.shape(v))
                                        if n in grad_vars else 0.0) for n, v in point.items()}
    fwd = program.forward(other, kink_u=2.0**-53)
    if not all(np.all(np.isfinite(v)) for v in fwd.values if v is not None):
        return None
    try:
        recs2, _ = _record(fn, other, grad_vars, None, backward=False)
    except Exception:
        return None
    if [v.shape for _, v in recs2] != [v.shape for _, v in recs]:
        return None
    return fwd, [v for _, v in recs2]


def _close(got, ref, err) -> bool:
    from . import tolerance

    got, ref = np.asarray(got, float), np.asarray(ref, float)
    if got.shape != ref.shape or not np.all(np.isfinite(got)) or not np.all(np.isfinite(ref)):
        return False
    return bool(np.all(np.abs(got - ref) <= tolerance.derived(err, ref, "float64").allowed))


def _match(program, graph, fwd, recs, adjoints, second) -> dict[int, np.ndarray]:
    """slot -> the impl's adjoint there, for the intermediate nodes a recorded tensor unambiguously stands for."""
    cands: dict[int, list[int]] = {}
    for slot, node in graph.nodes.items():
        if slot == graph.out or not node.inputs or node.adjoint is None:
            continue
        found = [k for k, (_, value) in enumerate(recs) if _close(value, fwd.values[slot], fwd.errs[slot]) and
                 (second is None or _close(second[1][k], second[0].values[slot], second[0].errs[slot]))]
        if found:
            cands[slot] = found
    claimed: dict[int, int] = {}
    for found in cands.values():
        for k in found:
            claimed[k] = claimed.get(k, 0) + 1
    matched = {}
    for slot, found in cands.items():
        if any(claimed[k] > 1 for k in found):
            continue  # one tensor, two nodes of equal value: which one it stands for is unknown
        tops = [k for k in found if not any(_ancestor(recs[k][0], recs[j][0]) for j in found if j != k)]
        matched[slot] = sum(adjoints[k] for k in tops)
    return matched


def _ancestor(a, b) -> bool:
    """Whether tensor ``a`` is on the autograd path of tensor ``b`` (``b`` was computed from ``a``)."""
    target, stack, visited = a.grad_fn, [b.grad_fn], set()
    while stack:
        f = stack.pop()
        if f is None or id(f) in visited:
            continue
        if f is target:
            return True
        visited.add(id(f))
        stack.extend(g for g, _ in f.next_functions)
    return False


def _reverse_errs(program, fwd, cot) -> dict[int, tuple]:
    """``Program.vjp`` keeping every slot's adjoint and its error bound (units of u)."""
    adj = {program.out: np.broadcast_to(np.asarray(cot, float), program.out_shape)}
    aerr = {program.out: np.zeros(program.out_shape)}
    out = {}
    with np.errstate(all="ignore"):
        for i in range(len(program.slots) - 1, -1, -1):
            slot = program.slots[i]
            if i not in adj or not slot.active:
                continue
            out[i] = (np.asarray(adj[i], float), np.asarray(aerr[i], float))
            if slot.kind != "instr":
                continue
            g, ge = adj.pop(i), aerr.pop(i)
            for arg, (ga, gae) in program._back(i, slot.instr, fwd, g, ge, True, 0):
                if not program.slots[arg].active:
                    continue
                if arg in adj:
                    total = adj[arg] + ga
                    aerr[arg], adj[arg] = aerr[arg] + gae + np.abs(total), total
                else:
                    adj[arg], aerr[arg] = ga, gae
    return out


def _verdicts(program, graph, fwd, cot, matched) -> dict[int, bool]:
    """slot -> whether the impl's adjoint there agrees with the chain rule: the output (its upstream gradient is
    given), the matched intermediates, and the differentiated inputs (judged already)."""
    from . import tolerance
    from .compare import Check, compare

    ref = _reverse_errs(program, fwd, cot)
    agrees = {graph.out: True}
    for slot, got in matched.items():
        node = graph.nodes[slot]
        value, err = ref[slot]
        check = compare(Check("grad", "impl", "symbolic", var=node.name, dtype="float64", device="cpu"), got, value,
                        tolerance.derived(err, value, "float64"))
        node.impl_adjoint = got
        agrees[slot] = check.status != "fail"
        if not agrees[slot]:
            w = check.worst[0]
            at = f" at {w.index}" if w.index else ""
            node.impl_says = f"the impl's d out/d {node.name} is {w.got:.6g}{at} where the chain rule gives {w.ref:.6g}"
    for slot, node in graph.nodes.items():
        if "impl" in node.grads:
            agrees[slot] = not node.departs
            node.impl_says = node.departs and f"d out/d {node.name}: {node.departs}"
    return agrees


def _mark(graph, agrees: dict[int, bool]) -> list:
    """Mark the edges into each first disagreeing node (no known node downstream of it disagrees)."""
    readers: dict[int, list[int]] = {}
    for e in graph.edges:
        if e.active:
            readers.setdefault(e.src, []).append(e.dst)

    def downstream(slot):
        seen, stack = set(), list(readers.get(slot, []))
        while stack:
            s = stack.pop()
            if s not in seen:
                seen.add(s)
                stack.extend(readers.get(s, []))
        return seen

    marked = []
    for slot, ok in agrees.items():
        if ok or any(agrees.get(s) is False for s in downstream(slot)):
            continue
        node = graph.nodes[slot]
        for e in graph.edges:
            if e.src != slot or not e.active:
                continue
            dst = graph.nodes[e.dst]
            if e.dst in agrees:
                agree = _brief(dst.impl_adjoint if dst.impl_adjoint is not None else dst.adjoint)
                e.departs = (f"the backward of {dst.name} = {dst.op}({', '.join(dst.args)}): d out/d {dst.name} "
                             f"agrees ({agree}), {node.impl_says}")
                e.mark = f"d out/d {dst.name} agrees,\nd out/d {node.name} does not"
            else:
                hidden, near = _hidden(e.dst, readers, agrees)
                names = ", ".join(graph.nodes[s].name for s in sorted(hidden))
                e.departs = (f"between {', '.join(graph.nodes[s].name for s in near)} (agrees) and {node.name}, "
                             f"through {names} (not matched: inside an opaque step, such as a custom Function), "
                             f"{node.impl_says}")
                e.mark = f"between {', '.join(graph.nodes[s].name for s in near)} (agrees)\nand {node.name}; " \
                    f"{names} unmatched"
            marked.append(e)
    return marked


def _brief(x) -> str:
    """A value in a message (explain.show's job; this module must not import explain: explain imports it)."""
    x = np.asarray(x, dtype=float)
    return f"{float(x):.6g}" if x.ndim == 0 else np.array2string(x, precision=4, threshold=6, separator=", ")


def _hidden(start: int, readers: dict, agrees: dict) -> tuple[list[int], list[int]]:
    """The unmatched nodes reachable from ``start`` before a known one, and the known nodes where that stops."""
    hidden, near, stack = set(), set(), [start]
    while stack:
        s = stack.pop()
        if s in agrees:
            near.add(s)
        elif s not in hidden:
            hidden.add(s)
            stack.extend(readers.get(s, []))
    return sorted(hidden), sorted(near)
