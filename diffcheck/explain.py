"""``diffcheck explain``: the computation graph of a gradient case as the symbolic engine lowered it, with the chain
rule written on every edge, as the tutorials draw it (``W`` and ``X`` into MUL giving ``y``, ``dz/dW = dz/dy *
dy/dW``).

Read from ``engines.symbolic``: the program's slots are the nodes (constants fold into the op that uses them), the
forward gives each node's value and each elementwise edge's local derivative (the sympy formula and its value), and
a reverse pass over the same ``_back`` rules as ``Program.vjp`` records the adjoint at every node and the product
flowing along every edge. Beside each input's symbolic gradient stand autograd's (or the impl's) and finite
differences' values. The output's cotangent is all ones: a non-scalar output is summed, as ``expect.grad`` means.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np

from .errors import CaseError

MAX_FD_ENTRIES = 64  # inputs up to this many entries get entrywise finite differences


@dataclass
class Node:
    slot: int
    name: str  # a var's name, t1, t2, ... for intermediates
    op: str  # "input", "constant input" or the op with its folded constants ("mul 3", "sum")
    shape: tuple
    value: np.ndarray
    adjoint: np.ndarray | None  # d out / d node (None: not differentiated)
    inputs: list[int] = field(default_factory=list)  # slots of the nodes this one reads
    args: list[str] = field(default_factory=list)  # its arguments as written: node names and folded constants
    # for an input: the gradient by each engine ("symbolic", "autograd" or "impl", "finite differences")
    grads: dict[str, np.ndarray] = field(default_factory=dict)
    departs: str = ""  # why the impl's gradient of this input departs from the chain rule
    impl_adjoint: np.ndarray | None = None  # an intermediate matched in the impl: the adjoint its backward gave
    impl_says: str = ""  # where that (or an input's gradient) disagrees with the chain rule


@dataclass
class Edge:
    src: int  # slots
    dst: int
    arg: int  # which argument of dst
    local: str  # the local derivative d dst / d src, as a formula ("x", "3", "1/n", "g @ B^T")
    local_value: np.ndarray | None  # its value where it is elementwise
    contribution: np.ndarray | None  # the adjoint flowing back along this edge: d out / d dst * local
    departs: str = ""  # the impl's backward first departs from the chain rule on this edge (explain_steps)
    mark: str = ""  # that, in a few words for the picture

    @property
    def active(self) -> bool:
        return self.contribution is not None


@dataclass
class Graph:
    case: str
    expr: str
    nodes: dict[int, Node]
    edges: list[Edge]
    out: int
    point: dict[str, np.ndarray]
    engine: str  # "autograd" or "impl": who the graph's inputs are compared with
    departures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    localisation: str = ""  # for a failing impl: "per step" (edges marked) or "per input"

    def node(self, name: str) -> Node:
        return next(n for n in self.nodes.values() if n.name == name)

    def edge(self, src: str, dst: str) -> Edge:
        s, d = self.node(src).slot, self.node(dst).slot
        return next(e for e in self.edges if e.src == s and e.dst == d)


def parse_at(items, case) -> dict[str, np.ndarray]:
    """``--at var=value``: a number, or a JSON list of numbers of the var's shape (data, never code)."""
    out = {}
    for item in items:
        name, sep, text = item.partition("=")
        name = name.strip()
        if not sep or name not in case.vars:
            known = ", ".join(case.vars)
            raise CaseError(f"--at {item!r}: expected var=value with var one of {known}", case.path, case.name, "vars")
        try:
            value = np.asarray(json.loads(text), dtype=float)
        except (ValueError, TypeError):
            raise CaseError(f"--at {item!r}: the value must be a number or a JSON list of numbers", case.path,
                            case.name, f"vars.{name}") from None
        shape = tuple(case.vars[name].shape)
        if value.shape != shape:
            try:
                value = np.broadcast_to(value, shape).copy()
            except ValueError:
                raise CaseError(f"--at {item!r}: shape {list(value.shape)} where {list(shape)} is declared",
                                case.path, case.name, f"vars.{name}") from None
        if not np.all(np.isfinite(value)):
            raise CaseError(f"--at {item!r}: values must be finite", case.path, case.name, f"vars.{name}")
        out[name] = value
    return out


def impl_fn(case, impl_path=(), impl_sys_path=False, no_impl=False):
    """The case's impl behind the same boundary and guard as ``run`` (None: compare with autograd)."""
    if not case.impl or no_impl or case.ir is None:  # no expr: build says why there is no graph
        return None
    from .engines import impl

    fn = impl.load(case.impl, case.base_dir, list(case.vars), case.impl_args, case.path, case.name, impl_path,
                   impl_sys_path)
    return impl.guard(fn, case.out_shape)


def sample_point(case, seed: int) -> dict[str, np.ndarray]:
    """The point ``diffcheck run`` checks under the same seed: the same sampler, the same RNG."""
    from . import tolerance
    from .checks.point import sample

    return sample(case, np.random.default_rng(seed), tolerance.lowest(case.dtypes))


def build(case, at: dict | None = None, seed: int = 0, fn=None) -> Graph:
    """The explanation graph of ``case`` at its sample point (or ``at``). ``fn``: the impl under test (a guarded
    callable of tensors); None compares with torch autograd of the expression."""
    from .engines.symbolic import Program
    from .model import case_seed
    from .training.schema import TrainCase

    if isinstance(case, TrainCase):
        raise CaseError("explain draws gradient cases; this is a training case", case.path, case.name, "kind")
    if case.ir is None:
        raise CaseError("explain draws an expression's graph; this case has no expr (a Python reference or the "
                        "impl alone)", case.path, case.name, "expr")
    program = Program(case.ir, {n: v.shape for n, v in case.vars.items()}, case.grad_vars)
    point = sample_point(case, case_seed(case, seed))
    point.update(at or {})
    fwd = program.forward(point, kink_u=2.0**-53)
    if not np.all(np.isfinite(fwd.values[program.out])):
        raise CaseError("the expression is not finite at this point; choose another with --at", case.path,
                        case.name, "vars")
    cot = np.ones(program.out_shape)
    adjoints, contributions = _reverse(program, fwd, cot)
    names = _names(program)
    nodes: dict[int, Node] = {}
    edges: list[Edge] = []
    for i, slot in enumerate(program.slots):
        if slot.kind == "const":
            continue
        value = np.asarray(fwd.values[i], dtype=float)
        if slot.kind == "var":
            op = "input" if slot.active else "constant input"
            nodes[i] = Node(i, names[i], op, tuple(slot.shape), value, adjoints.get(i) if slot.active else None)
            continue
        ins = slot.instr
        nodes[i] = Node(i, names[i], _op_label(ins), tuple(slot.shape), value,
                        adjoints.get(i) if slot.active else None,
                        [a for a in ins.args if program.slots[a].kind != "const"],
                        [names[a] if a in names else _fmt(program.slots[a].value) for a in ins.args])
        formulas = _local_formulas(program, ins, names)
        for k, a in enumerate(ins.args):
            if program.slots[a].kind == "const":
                continue
            local_value = None
            if i in fwd.derivs:
                local_value = np.asarray(fwd.derivs[i][k][0], dtype=float)
            edges.append(Edge(a, i, k, formulas[k], local_value, contributions.get((i, k))))
    from .expr.ir import to_text

    engine = "impl" if fn is not None else "autograd"
    graph = Graph(case.name, to_text(case.ir), nodes, edges, program.out, point, engine)
    _input_gradients(case, program, graph, point, cot, fn)
    return graph


def _reverse(program, fwd, cot):
    """``Program.vjp``'s reverse pass, keeping every node's adjoint and every edge's contribution."""
    adj = {program.out: np.broadcast_to(np.asarray(cot, float), program.out_shape)}
    adjoints, contributions = {}, {}
    with np.errstate(all="ignore"):
        for i in range(len(program.slots) - 1, -1, -1):
            slot = program.slots[i]
            if i not in adj or not slot.active:
                continue
            adjoints[i] = np.asarray(adj[i], dtype=float)
            if slot.kind != "instr":
                continue
            g = adj.pop(i)
            back = list(program._back(i, slot.instr, fwd, g, 0.0, False, 0))
            for k, (arg, (ga, _)) in enumerate(back):
                if not program.slots[arg].active:
                    continue
                contributions[(i, k)] = np.asarray(ga, dtype=float)
                adj[arg] = adj[arg] + ga if arg in adj else ga
    for i, g in adj.items():  # the vars: their adjoints are never popped
        adjoints[i] = np.asarray(g, dtype=float)
    return adjoints, contributions


def _names(program) -> dict[int, str]:
    names, k = {}, 0
    for i, slot in enumerate(program.slots):
        if slot.kind == "var":
            names[i] = slot.name
        elif slot.kind == "instr":
            k += 1
            names[i] = f"t{k}"
    names[program.out] = "out"
    return names


def _fmt(x: float) -> str:
    return f"{x:.6g}"


def _op_label(ins) -> str:
    params = {k: v for k, v in ins.params.items() if k not in ("dims", "keepdim")}
    label = ins.op
    if ins.op == "powc":
        return f"pow {_fmt(params['exponent'])}"
    if params:
        label += "(" + ", ".join(f"{k}={_fmt(v) if isinstance(v, float) else v}" for k, v in params.items()) + ")"
    if ins.op in ("sum", "mean", "lse") and ins.params.get("dims") is not None:
        label += f" dims {list(ins.params['dims'])}"
    return label


def _local_formulas(program, ins, names) -> list[str]:
    """d ins / d arg for each argument, as text in the nodes' names."""
    from .engines.symbolic import OPS, local_rules

    args = [names.get(a) or _fmt(program.slots[a].value) for a in ins.args]
    if ins.op in OPS and OPS[ins.op].kind == "elementwise":
        import sympy as sp

        rules = local_rules(ins.op, tuple(sorted(ins.params.items())))
        subs = {}
        for s, a, text in zip(rules.symbols, ins.args, args):
            slot = program.slots[a]
            subs[s] = sp.Float(slot.value) if slot.kind == "const" and slot.value != int(slot.value) else \
                sp.Integer(int(slot.value)) if slot.kind == "const" else sp.Symbol(text, real=True)
        return [sp.sstr(sp.simplify(g.subs(subs)) if sp.count_ops(g) <= 40 else g.subs(subs)) for g in rules.grads]
    if ins.op == "sum":
        return ["1 (broadcast back)"]
    if ins.op == "mean":
        n = int(np.prod([program.slots[ins.args[0]].shape[d] for d in ins.params["dims"]])) if ins.params["dims"] \
            else 1
        return [f"1/{n} (broadcast back)"]
    if ins.op == "lse":
        return [f"exp({args[0]} - out): softmax over the reduced dims"]
    if ins.op == "matmul":
        return [f"g @ {args[1]}^T", f"{args[0]}^T @ g"]
    if ins.op == "transpose":
        return ["g^T"]
    return ["(adjoint rule)"] * len(ins.args)


def _input_gradients(case, program, graph: Graph, point, cot, fn) -> None:
    """Each differentiated input's gradient by the symbolic engine, by autograd (or the impl) in float64 on the
    CPU, and by finite differences; for an impl, the inputs where its backward departs from the chain rule."""
    from . import tolerance as tol
    from .compare import Check, compare
    from .engines.autograd import build as torch_build
    from .engines.autograd import run

    ref = program.gradient(program.forward(point, kink_u=2.0**-53), cot)
    label = graph.engine
    try:
        res = run(fn if fn is not None else torch_build(case.ir), point, case.grad_vars, "float64", "cpu", [cot],
                  semantic=False)
        theirs = res.vjps[0]
    except BaseException as exc:  # user code: a crash is a finding shown on the graph, never a traceback
        if isinstance(exc, KeyboardInterrupt):
            raise
        theirs = {}
        graph.departures.append(f"the {label} raised {type(exc).__name__}: {exc}")
    fd = _finite_differences(program, point, cot, case.grad_vars)
    for name in case.grad_vars:
        slot = program.var_slots.get(name)
        if slot is None or slot not in graph.nodes:
            continue
        node = graph.nodes[slot]
        g = ref[name]
        node.grads["symbolic"] = g.value
        if name in theirs:
            node.grads[label] = theirs[name]
        if name in fd:
            node.grads["finite differences"] = fd[name]
        if name not in theirs:
            continue
        check = compare(Check("grad", label, "symbolic", var=name, dtype="float64", device="cpu"), theirs[name],
                        g.value, tol.derived(g.err, g.value, "float64"), g.lo, g.hi)
        if check.status == "fail":
            w = check.worst[0]
            where = f" at {w.index}" if w.index else ""
            node.departs = (f"{label} gives {w.got:.6g}{where} where the chain rule gives {w.ref:.6g} "
                            f"(margin {check.margin:.3g}{'; ' + check.diagnosis if check.diagnosis else ''})")
            graph.departures.append(f"d out/d {name}: {node.departs}")
    if fn is not None and any(n.departs for n in graph.nodes.values()):
        from .explain_steps import localise

        localise(program, graph, point, cot, fn, case.grad_vars)
    for name, (text, _) in case.surrogate.items():  # the graph shows the true chain rule, never the declared one
        graph.notes.append(f"surrogate.{name} = {text!r} is declared: the impl's gradient of {name} is meant to "
                           "depart from the chain rule here; 'diffcheck run' judges it against the declared rule")


def _finite_differences(program, point, cot, grad_vars) -> dict[str, np.ndarray]:
    from .engines import finite

    out = program.out

    def evaluate(inputs):
        f = program.forward(inputs, None, with_err=False, derivs=False)
        return float(np.sum(cot * f.values[out])), program.kink_signature(f)

    fwd = program.forward(point, None, with_err=True, derivs=False)
    noise = 2.0**-53 * float(np.sum(np.abs(cot) * (fwd.errs[out] + np.abs(fwd.values[out])))) + 1e-300
    result = {}
    for name in grad_vars:
        x = np.asarray(point[name])
        if x.size > MAX_FD_ENTRIES:
            continue
        ests = finite.entrywise(evaluate, point, name, range(x.size), noise)
        result[name] = np.array([e.value for e in ests]).reshape(x.shape)
    return result


# ---- text ----
def show(x, limit: int = 6) -> str:
    """A value for people: a number, a short list, or the shape with its range."""
    if x is None:
        return "-"
    x = np.asarray(x, dtype=float)
    if x.ndim == 0:
        return _fmt(float(x))
    if x.size <= limit:
        return np.array2string(x, separator=", ", formatter={"float_kind": lambda v: f"{v:.4g}"},
                               max_line_width=10**6).replace("\n", "")
    if np.all(x == x.reshape(-1)[0]):
        return f"{_fmt(float(x.reshape(-1)[0]))} (all entries)"
    return f"{list(x.shape)} in [{_fmt(float(np.min(x)))}, {_fmt(float(np.max(x)))}]"


def text(graph: Graph) -> str:
    """The graph on the terminal: the forward pass in order, then the backward pass edge by edge."""
    from .text import safe

    lines = [f"explain {safe(graph.case)}: {safe(graph.expr)}", "forward:"]
    for n in graph.nodes.values():
        what = f"{n.op}({', '.join(n.args)})" if n.args else n.op
        shape = f" {list(n.shape)}" if n.shape else ""
        lines.append(f"  {n.name:>6s} = {what}{shape} = {show(n.value)}")
    lines.append("backward (d out/d out = 1; every edge: d out/d src = d out/d dst * d dst/d src):")
    for e in sorted(graph.edges, key=lambda e: -e.dst):
        if not e.active:
            continue
        src, dst = graph.nodes[e.src], graph.nodes[e.dst]
        shown = show(e.local_value) if e.local_value is not None else e.local
        local = f" = {shown}" if shown.split(" (")[0] != e.local else ""
        lines.append(f"  {src.name:>6s} <- {dst.name:<6s} d{dst.name}/d{src.name} = {e.local}{local};  "
                     f"d out/d{dst.name} * d{dst.name}/d{src.name} = {show(dst.adjoint)} * "
                     f"{show(e.local_value) if e.local_value is not None else e.local} = {show(e.contribution)}")
        if e.departs:
            lines.append(f"         DEPARTS from the chain rule on this edge: {e.departs}")
    lines.append("gradients of the inputs:")
    for n in graph.nodes.values():
        if not n.grads:
            continue
        lines.append(f"  d out/d {n.name}:")
        for engine, g in n.grads.items():
            lines.append(f"    {engine:>18s}: {show(g, 12)}")
        if n.departs:
            stepped = graph.localisation == "per step" and not any(e.departs for e in graph.edges if e.src == n.slot)
            lines.append(f"    {'wrong (from the step marked above)' if stepped else 'DEPARTS from the chain rule'}: "
                         f"{n.departs}")
    for note in graph.departures:
        if not note.startswith("d out/d"):
            lines.append(f"  {note}")
    lines.extend(f"  note: {n}" for n in graph.notes)
    return "\n".join(lines)
