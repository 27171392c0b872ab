"""Hypothesis strategies for property tests of gradients: random well-typed expressions and whole cases.

``expressions()`` draws IR trees over the language's elementwise ops and reductions; every argument of a
domain-restricted op is squashed into that op's domain (``c + r*tanh(t)``), so the drawn function is defined
everywhere its variables are sampled. ``cases()`` wraps one into a ready Case with broadcast-compatible shapes.

    from hypothesis import given
    from diffcheck.strategies import cases
    from diffcheck import run_case

    @given(cases())
    def test_autograd_matches(case):
        assert run_case(case).status == "pass"
"""

from __future__ import annotations

import math

from hypothesis import strategies as st

from .expr.ir import Call, Const, Node, Var, to_text, walk
from .expr.ops import OPS

# ops whose arguments are safe anywhere in [-1, 1]-ish ranges produced by the squash below (hardsigmoid is left out:
# torch's float64 gradient of it is float32-accurate, a true finding cases/ops/elementwise.toml documents)
UNARY_OPS = ("exp", "log", "log1p", "expm1", "sqrt", "rsqrt", "abs", "sin", "cos", "tan", "asin", "acos", "atan",
             "sinh", "cosh", "tanh", "asinh", "acosh", "atanh", "erf", "erfc", "erfinv", "sigmoid", "relu", "elu",
             "leaky_relu", "softplus", "silu", "gelu", "sign", "floor", "ceil", "round", "trunc", "detach",
             "square", "reciprocal", "log2", "log10", "exp2", "hardtanh", "relu6", "hardswish", "mish",
             "logsigmoid", "selu", "celu", "softsign")
BINARY_OPS = ("add", "sub", "mul", "div", "pow", "atan2", "maximum", "minimum", "logaddexp", "hypot", "xlogy",
              "clamp")
UNBOUNDED = {"abs", "sin", "cos", "atan", "tanh", "erf", "erfc", "sigmoid", "relu", "leaky_relu", "softplus",
             "silu", "gelu", "elu", "asinh", "add", "sub", "mul", "maximum", "minimum", "sign", "floor", "ceil",
             "round", "trunc", "detach", "square", "hardtanh", "relu6", "hardsigmoid", "hardswish", "mish",
             "logsigmoid", "selu", "celu", "softsign"}


def squash(node: Node, domain: tuple[float, float]) -> Node:
    """Map any value into the open interval ``domain`` smoothly: centre + radius * tanh(node)."""
    lo, hi = domain
    centre, radius = (lo + hi) / 2, (hi - lo) / 2
    t = Call("tanh", (node,))
    scaled = Call("mul", (Const(radius), t)) if radius != 1 else t
    return Call("add", (Const(centre), scaled)) if centre else scaled


def _guard(op: str, index: int, child: Node) -> Node:
    """``child`` as the ``index``-th argument of ``op``, squashed into the op's domain unless surely inside."""
    if op in UNBOUNDED:
        return child
    lo, hi = OPS[op].domain[index]
    if isinstance(child, Var) and lo <= -1 and hi >= 1:
        return child
    if isinstance(child, Const) and lo < child.value < hi:
        return child
    return squash(child, (lo, hi))


def _params(op: str, draw=None) -> tuple:
    """The op's parameters at their defaults; with ``draw``, a string parameter takes any allowed value."""
    return tuple((p.name, draw(st.sampled_from(p.choices)) if draw and p.choices else p.default)
                 for p in OPS[op].params if p.kind != "tensor")


@st.composite
def _unary(draw, children):
    op = draw(st.sampled_from(UNARY_OPS))
    return Call(op, (_guard(op, 0, draw(children)),), _params(op, draw))


@st.composite
def _binary(draw, children):
    op = draw(st.sampled_from(BINARY_OPS))
    a, b = draw(children), draw(children)
    if op == "pow":
        b = Const(draw(st.sampled_from([2.0, 3.0, 0.5, -1.0, 1.5])))
    if op == "clamp":  # a tensor or number bound, the other one a number or absent
        lo, hi = draw(st.sampled_from([(b, Const(math.inf)), (Const(-0.5), b), (Const(-0.5), Const(0.5)),
                                       (Const(-math.inf), Const(0.25))]))
        return Call("clamp", (a, lo, hi))
    return Call(op, (_guard(op, 0, a), _guard(op, 1, b)))


COMPARISONS = ("lt", "le", "gt", "ge", "eq", "ne")


@st.composite
def _masked(draw, children):
    """A mask from a comparison (maybe combined with & | ~), used by where() or as 0/1 in arithmetic."""
    a, b = draw(children), draw(children)
    cond = Call(draw(st.sampled_from(COMPARISONS)), (a, draw(st.sampled_from([Const(0.0), Const(0.5), b]))))
    combine = draw(st.sampled_from(["", "logical_and", "logical_or", "logical_not"]))
    if combine == "logical_not":
        cond = Call("logical_not", (cond,))
    elif combine:
        cond = Call(combine, (cond, Call("gt", (b, Const(-0.5)))))
    if draw(st.booleans()):
        return Call("where", (cond, a, b))
    return Call("mul", (a, cond))


def expressions(names=("x", "y"), max_leaves: int = 6) -> st.SearchStrategy[Node]:
    """Random elementwise expression trees over ``names``, defined wherever each name lies in [-1, 1]."""
    leaves = st.one_of(st.sampled_from([Var(n) for n in names]),
                       st.sampled_from([Const(c) for c in (0.5, 2.0, 3.0, -1.5)]))
    tree = st.recursive(leaves, lambda children: st.one_of(_unary(children), _binary(children), _masked(children)),
                        max_leaves=max_leaves)
    return tree.filter(lambda n: any(isinstance(m, Var) for m in walk(n)))


SHAPE_PAIRS = [((), ()), ((4,), (4,)), ((3, 4), (4,)), ((3, 1), (1, 4)), ((2, 3, 4), (3, 1)), ((), (3,))]


@st.composite
def structured(draw, node: Node, var_shapes: dict, depth: int = 2):
    """Wrap ``node`` in up to ``depth`` structural ops valid for its shape: matmul with its own transpose,
    softmax/log_softmax/logsumexp/sum/mean over a drawn dim (keepdim too), transpose, mse_loss; an elementwise
    op may sit between them."""
    from .expr.shapes import infer

    for _ in range(draw(st.integers(0, depth))):
        ndim = len(infer(node, var_shapes))
        choices = ["sum", "mean", "logsumexp", "unary", "amax", "amin", "var", "std", "norm", "prod"]
        if ndim >= 1:
            choices += ["softmax", "log_softmax", "mse_loss", "cumsum", "cumprod", "sort"]
        if ndim in (1, 2):  # .T reverses every dim: x @ x.T fits for 1-D and 2-D only
            choices.append("matmul")
        if ndim >= 2:
            choices += ["transpose", "mT", "tril"]
        if ndim >= 1:
            choices += ["reshape", "flip", "index", "cat", "stack", "unsqueeze", "einsum", "layer_norm", "linear"]
        kind = draw(st.sampled_from(choices))
        dim = draw(st.integers(-ndim, ndim - 1)) if ndim else None
        if kind == "unary":
            op = draw(st.sampled_from(UNARY_OPS))
            node = Call(op, (_guard(op, 0, node),), _params(op))
        elif kind in ("sum", "mean", "logsumexp"):
            dims = draw(st.sampled_from([None, dim])) if ndim else None
            inner = squash(node, (-3.0, 3.0)) if kind == "logsumexp" else node
            node = Call(kind, (inner,), (("dim", dims), ("keepdim", draw(st.booleans()))))
        elif kind in ("amax", "amin", "prod"):
            dims = draw(st.sampled_from([None, dim])) if ndim else None
            inner = squash(node, (0.5, 1.5)) if kind == "prod" else node
            node = Call(kind, (inner,), (("dim", dims), ("keepdim", draw(st.booleans()))))
        elif kind in ("var", "std", "norm"):
            dims = draw(st.sampled_from([None, dim])) if ndim else None
            if kind == "norm":
                p = ("p", draw(st.sampled_from([2.0, 1.0, 3.0])))
                node = Call(kind, (node,), (p, ("dim", dims), ("keepdim", draw(st.booleans()))))
            else:  # std at zero spread (a constant row) is singular: the reference says so and the check skips
                spread = node
                shape = infer(node, var_shapes)
                count = math.prod(shape) if dims is None else shape[dims]
                correction = ("correction", draw(st.sampled_from([0.0, 1.0])) if count > 1 else 0.0)
                node = Call(kind, (spread if kind == "std" else node,),
                            (("dim", dims), correction, ("keepdim", draw(st.booleans()))))
        elif kind in ("cumsum", "cumprod"):
            inner = squash(node, (0.5, 1.5)) if kind == "cumprod" else node
            node = Call(kind, (inner,), (("dim", dim),))
        elif kind == "sort":
            node = Call("sort", (node,), (("dim", dim), ("descending", draw(st.booleans()))))
        elif kind == "einsum":
            letters = "abcd"[:ndim]
            node = Call("einsum", (node, Call("tanh", (node,))), (("equation", f"{letters},{letters}->{letters[1:]}"),))
        elif kind == "layer_norm":
            last = infer(node, var_shapes)[-1]
            node = Call(draw(st.sampled_from(["layer_norm", "rms_norm"])), (node, Const(1.0)) +
                        ((Const(0.0),) if draw(st.booleans()) else ()), ())
            node = Call(node.op, node.args + ((Const(0.0),) if node.op == "layer_norm" and len(node.args) == 2
                                              else ()), (("normalized_shape", (last,)), ("eps", 1e-5)))
            if node.op == "rms_norm":
                node = Call("rms_norm", node.args[:2], node.params)
        elif kind == "linear":
            last = infer(node, var_shapes)[-1]
            node = Call("linear", (node, Call("reshape", (Call("tanh", (node,)),), (("shape", (-1, last)),)),
                                   Const(0.0)), ())
        elif kind == "mT":
            node = Call("mT", (node,))
        elif kind == "tril":
            node = Call(draw(st.sampled_from(["tril", "triu"])), (node,), (("diagonal", draw(st.integers(-1, 1))),))
        elif kind == "reshape":
            node = Call("reshape", (node,), (("shape", (-1,)),))
        elif kind == "flip":
            node = Call("flip", (node,), (("dims", (dim,)),))
        elif kind == "index":
            item = draw(st.sampled_from([0, -1, ("slice", None, None, 2), ("slice", 1, None, None)]))
            node = Call("index", (node,), (("index", ("...", item)),))
        elif kind in ("cat", "stack"):
            node = Call(kind, (node, Call("tanh", (node,))), (("dim", dim),))
        elif kind == "unsqueeze":
            node = Call("squeeze", (Call("unsqueeze", (node,), (("dim", dim),)),), (("dim", dim),))
        elif kind in ("softmax", "log_softmax"):
            node = Call(kind, (squash(node, (-3.0, 3.0)),), (("dim", dim),))
        elif kind == "mse_loss":
            node = Call("mse_loss", (node, Call("tanh", (node,))), (("reduction", "mean"),))
        elif kind == "matmul":
            node = Call("matmul", (node, Call("transpose", (node,))))
        else:
            node = Call("transpose", (node,))
    return node


@st.composite
def structured_cases(draw, dtypes=("float64", "float32"), devices=("cpu",)):
    """A Case over every kind of op: an elementwise tree of x and y, wrapped in structural ops."""
    from .casefile import build_case

    sx, sy = draw(st.sampled_from([((3, 4), (4,)), ((2, 3, 4), (3, 1)), ((4,), (4,)), ((3, 4), (3, 4))]))
    shapes = {"x": sx, "y": sy}
    node = draw(structured(draw(expressions()), shapes))
    used = sorted({n.name for n in walk(node) if isinstance(n, Var)})
    seed = draw(st.integers(0, 2**31 - 1))
    raw = {"name": f"structured_{seed}", "expr": to_text(node), "dtypes": list(dtypes), "devices": list(devices),
           "seed": seed, "vars": {n: {"shape": list(shapes[n])} for n in used}}
    return build_case(raw, "<hypothesis>")
@st.composite
def indexed_cases(draw, dtypes=("float64", "float32"), devices=("cpu",)):
    """A Case with an int64 var: embedding, x[t], gather, cross_entropy or nll_loss over a random tree."""
    from .casefile import build_case

    n, c = draw(st.integers(1, 5)), draw(st.integers(2, 4))
    node = draw(expressions(names=("x",)))
    kind = draw(st.sampled_from(["embedding", "index_var", "gather", "cross_entropy", "nll_loss"]))
    t = Var("t")
    if kind == "embedding":
        node, tshape, hi = Call("embedding", (t, node)), [draw(st.integers(1, 6))], n
    elif kind == "index_var":
        node, tshape, hi = Call("index_var", (node, t)), [draw(st.integers(1, 6))], n
    elif kind == "gather":
        node, tshape, hi = Call("gather", (node, t), (("dim", 1),)), [n, draw(st.integers(1, 4))], c
    else:
        reduction = ("reduction", draw(st.sampled_from(["mean", "sum", "none"])))
        if kind == "nll_loss":
            node = Call("nll_loss", (Call("log_softmax", (node,), (("dim", -1),)), t), (reduction,))
        else:
            node = Call("cross_entropy", (node, t), (("label_smoothing", draw(st.sampled_from([0.0, 0.1]))),
                                                     reduction))
        tshape, hi = [n], c
    seed = draw(st.integers(0, 2**31 - 1))
    raw = {"name": f"indexed_{seed}", "expr": to_text(node), "dtypes": list(dtypes), "devices": list(devices),
           "seed": seed, "vars": {"x": {"shape": [n, c]}, "t": {"shape": tshape, "dtype": "int64",
                                                                "domain": [0, hi]}}}
    return build_case(raw, "<hypothesis>")


@st.composite
def cases(draw, dtypes=("float64", "float32"), devices=("cpu",), reduce: bool | None = None):
    """A whole Case: a random expression, broadcast-compatible shapes, optionally an outer sum or mean."""
    from .casefile import build_case

    node = draw(expressions())
    used = sorted({n.name for n in walk(node) if isinstance(n, Var)})
    sx, sy = draw(st.sampled_from(SHAPE_PAIRS))
    shapes = {"x": list(sx), "y": list(sy)}
    outer = draw(st.sampled_from(["", "sum", "mean"])) if reduce is None else ("sum" if reduce else "")
    text = to_text(node)
    if outer:
        text = f"{outer}({text})"
    seed = draw(st.integers(0, 2**31 - 1))
    raw = {"name": f"random_{seed}", "expr": text, "dtypes": list(dtypes), "devices": list(devices),
           "seed": seed, "vars": {n: {"shape": shapes[n]} for n in used}}
    return build_case(raw, "<hypothesis>")
