"""Shape inference over the IR: numpy/torch broadcasting and matmul rules, with errors that name the op.

Why it is over 400 lines: every op family's shape rule (shape ops, indexing, einsum, conv and pooling windows,
losses) and the size limits that guard them are checked here, before any engine runs; splitting by family would
scatter the one place a shape error is raised.
"""

from __future__ import annotations

import math

from ..errors import ExpressionError
from .ir import Call, Const, Node, Var, to_text

Shape = tuple[int, ...]
MAX_INTERMEDIATE = 20_000_000  # entries: a hostile broadcast ([4e6, 1] + [1, 4e6]) must not exhaust memory
MAX_EINSUM_WORK = 10_000_000_000  # index combinations of one einsum, which numpy loops over (several seconds)
MAX_TOTAL = 50_000_000  # entries of all intermediates together: 190 nested ops over 4M entries must not either
FIXED = "a fixed limit of diffcheck, not configurable: split the case or use smaller shapes"


def broadcast(a: Shape, b: Shape, what: str = "") -> Shape:
    out = []
    for i in range(1, max(len(a), len(b)) + 1):
        da = a[-i] if i <= len(a) else 1
        db = b[-i] if i <= len(b) else 1
        if da != db and da != 1 and db != 1:
            raise ExpressionError(f"{what}shapes {list(a)} and {list(b)} cannot be broadcast together")
        out.append(db if da == 1 else da)  # not max(): a size-1 dim broadcasts to an empty one (0), as numpy
    return tuple(reversed(out))


def normalize_dims(dim, ndim: int, what: str) -> tuple[int, ...]:
    """Turn a ``dim`` parameter (None, int or tuple) into sorted non-negative axes."""
    if dim is None:
        return tuple(range(ndim))
    dims = (dim,) if isinstance(dim, int) else tuple(dim)
    out = []
    for d in dims:
        size = max(ndim, 1)
        if not -size <= d < size:
            raise ExpressionError(f"{what}dim {d} is out of range for a {ndim}-D input")
        out.append(d % size if ndim else 0)
    if len(set(out)) != len(out):
        raise ExpressionError(f"{what}dim {dim} names a dimension twice")
    return tuple(sorted(out)) if ndim else ()


def reduced_shape(shape: Shape, dims: tuple[int, ...], keepdim: bool) -> Shape:
    if keepdim:
        return tuple(1 if i in dims else s for i, s in enumerate(shape))
    return tuple(s for i, s in enumerate(shape) if i not in dims)


def matmul_shape(a: Shape, b: Shape, what: str = "") -> Shape:
    if len(a) == 0 or len(b) == 0:
        raise ExpressionError(f"{what}matmul needs at least 1-D operands, got shapes {list(a)} and {list(b)}")
    a2 = (1, *a) if len(a) == 1 else a
    b2 = (*b, 1) if len(b) == 1 else b
    if a2[-1] != b2[-2]:
        raise ExpressionError(
            f"{what}shapes {list(a)} and {list(b)} cannot be multiplied ({a2[-1]} != {b2[-2]})")
    batch = broadcast(a2[:-2], b2[:-2], what)
    out = (*batch, a2[-2], b2[-1])
    if len(a) == 1:
        out = out[:-2] + out[-1:]
    if len(b) == 1:
        out = out[:-1]
    return out


def infer(node: Node, var_shapes: dict[str, Shape], sizes: dict | None = None) -> Shape:
    """Shape of ``node``'s value; raises ExpressionError naming the sub-expression that does not fit, or one
    whose result would be too large to hold, or when all intermediates together would be (``sizes`` collects
    them from the recursion)."""
    top = sizes is None
    sizes = {} if top else sizes
    shape = _infer(node, var_shapes, sizes)
    size = _size(shape, node)
    sizes[node.name if isinstance(node, Var) else len(sizes)] = size  # each var counts once
    if top and sum(sizes.values()) > MAX_TOTAL:
        raise ExpressionError(f"the expression's intermediates would hold {sum(sizes.values())} entries in total "
                              f"over {len(sizes)} steps; the limit is {MAX_TOTAL} ({FIXED})")
    return shape


def _size(shape: Shape, node: Node) -> int:
    size = 1
    for d in shape:
        size *= d
    if size > MAX_INTERMEDIATE:
        raise ExpressionError(f"'{to_text(node)[:60]}' would have {size} entries (shape {list(shape)}); "
                              f"the limit is {MAX_INTERMEDIATE} ({FIXED})")
    return size


class VarShapes(dict):
    """Var name -> shape, plus which vars are bool masks and which are integers (with the range of their values):
    what the case file declared, so that masks and indices can be checked before any engine runs."""

    def __init__(self, specs: dict):
        super().__init__({n: tuple(s.shape) for n, s in specs.items()})
        self.masks = frozenset(n for n, s in specs.items() if getattr(s, "dtype", None) == "bool")
        self.ints = {}
        for n, s in specs.items():
            if getattr(s, "dtype", None) == "int64":
                if s.value is not None and s.value.size:
                    self.ints[n] = (int(s.value.min()), int(s.value.max()) + 1)
                else:
                    self.ints[n] = (int(s.domain[0]), int(s.domain[1]))


SHAPE_OPS = {"reshape", "flatten", "permute", "swapdims", "mT", "unsqueeze", "squeeze", "expand", "flip", "tril",
             "triu", "cat", "stack", "index"}


def reshape_target(shape: Shape, sizes, what: str = "") -> Shape:
    total = 1
    for d in shape:
        total *= d
    if sum(1 for s in sizes if s == -1) > 1 or any(s < -1 for s in sizes):
        raise ExpressionError(f"{what}reshape() takes sizes >= 0 and at most one -1, got {list(sizes)}")
    known = 1
    for s in sizes:
        known *= s if s != -1 else 1
    if known == 0 and -1 in sizes:  # as torch: any size would do
        raise ExpressionError(f"{what}reshape(): a -1 cannot be inferred beside a size 0, got {list(sizes)}")
    out = tuple(total // known if s == -1 else s for s in sizes)
    size = 1
    for s in out:
        size *= s
    if size != total:
        raise ExpressionError(f"{what}shape {list(sizes)} is invalid for an input of shape {list(shape)} "
                              f"({total} entries)")
    return out


def apply_shape_op(op: str, xs: list, p: dict, what: str = ""):
    """A shape op on numpy arrays with torch's semantics (also used to build the reference's index maps)."""
    import numpy as np

    x = xs[0]
    try:
        if op == "reshape":
            return np.reshape(x, reshape_target(x.shape, p["shape"], what))
        if op == "flatten":
            if x.ndim == 0:
                return np.reshape(x, (1,))
            start, end = (normalize_dims(p[k], x.ndim, what)[0] for k in ("start_dim", "end_dim"))
            if start > end:
                raise ExpressionError(f"{what}flatten(): start_dim comes after end_dim")
            merged = int(np.prod(x.shape[start:end + 1]))  # not -1: numpy cannot infer it for an empty array
            return np.reshape(x, (*x.shape[:start], merged, *x.shape[end + 1:]))
        if op == "permute":
            dims = normalize_dims(p["dims"], x.ndim, what) if len(p["dims"]) == x.ndim else None
            if dims is None or sorted(dims) != list(range(x.ndim)):
                raise ExpressionError(f"{what}permute() needs a permutation of all {x.ndim} dims, "
                                      f"got {list(p['dims'])}")
            return np.transpose(x, [d % x.ndim for d in p["dims"]])
        if op in ("swapdims", "mT"):
            if op == "mT" and x.ndim < 2:
                raise ExpressionError(f"{what}.mT needs at least 2 dims, got a {x.ndim}-D input")
            d0, d1 = (-2, -1) if op == "mT" else (p["dim0"], p["dim1"])
            normalize_dims((d0,), x.ndim, what), normalize_dims((d1,), x.ndim, what)
            return np.swapaxes(x, d0, d1) if x.ndim else x
        if op == "unsqueeze":
            if not -x.ndim - 1 <= p["dim"] <= x.ndim:
                raise ExpressionError(f"{what}unsqueeze(): dim {p['dim']} is out of range for a {x.ndim}-D input")
            return np.expand_dims(x, p["dim"])
        if op == "squeeze":
            dims = normalize_dims(p["dim"], x.ndim, what)
            return np.squeeze(x, axis=tuple(d for d in dims if x.shape[d] == 1))
        if op == "expand":
            sizes = list(p["size"])
            lead = len(sizes) - x.ndim
            if lead < 0:
                raise ExpressionError(f"{what}expand() needs at least {x.ndim} sizes, got {sizes}")
            target = [x.shape[i - lead] if s == -1 and i >= lead else s for i, s in enumerate(sizes)]
            if any(s < 0 for s in target):  # 0 is torch's too: a size-1 dim expanded to an empty one
                raise ExpressionError(f"{what}expand(): sizes must be >= 0 (or -1 to keep one), got {sizes}")
            return np.broadcast_to(x, target)
        if op == "flip":
            return np.flip(x, axis=normalize_dims(p["dims"], x.ndim, what)) if x.ndim else x
        if op in ("tril", "triu"):
            if x.ndim < 2:
                raise ExpressionError(f"{what}{op}() needs at least 2 dims, got a {x.ndim}-D input")
            return getattr(np, op)(x, p["diagonal"])
        if op in ("cat", "stack"):
            return getattr(np, "concatenate" if op == "cat" else "stack")(xs, axis=p["dim"])
        if op == "index":
            return x[tuple(slice(*i[1:]) if isinstance(i, tuple) else (Ellipsis if i == "..." else i)
                           for i in p["index"])]
    except (ValueError, IndexError, TypeError, np.exceptions.AxisError) as exc:
        raise ExpressionError(f"{what}{op}(): {exc}") from None
    raise AssertionError(op)  # pragma: no cover


def _shape_op_shape(op: str, shapes: list, p: dict, what: str) -> Shape:
    """The result shape, computed on zero-strided stand-ins (no memory) or by counting where a copy would be made."""
    import numpy as np

    if op == "reshape":
        return reshape_target(shapes[0], p["shape"], what)
    if op in ("cat", "stack"):
        if len({len(s) for s in shapes}) != 1:
            raise ExpressionError(f"{what}{op}() needs tensors of one rank, got shapes {[list(s) for s in shapes]}")
        nd = len(shapes[0]) + (op == "stack")
        if not -nd <= p["dim"] < nd or nd == 0:
            raise ExpressionError(f"{what}{op}(): dim {p['dim']} is out of range")
        d = p["dim"] % nd
        if op == "stack":
            if len(set(shapes)) != 1:
                raise ExpressionError(f"{what}stack() needs tensors of one shape, got {[list(s) for s in shapes]}")
            return (*shapes[0][:d], len(shapes), *shapes[0][d:])
        rest = {s[:d] + s[d + 1:] for s in shapes}
        if len(rest) != 1:
            raise ExpressionError(f"{what}cat() needs equal sizes except in dim {p['dim']}, got "
                                  f"{[list(s) for s in shapes]}")
        return (*shapes[0][:d], sum(s[d] for s in shapes), *shapes[0][d + 1:])
    dummy = np.lib.stride_tricks.as_strided(np.zeros(1), shapes[0], [0] * len(shapes[0]))
    if op in ("tril", "triu"):
        if len(shapes[0]) < 2:
            raise ExpressionError(f"{what}{op}() needs at least 2 dims, got a {len(shapes[0])}-D input")
        return shapes[0]
    if op == "flatten":
        shape = shapes[0]
        if not shape:
            return (1,)
        start, end = (normalize_dims(p[k], len(shape), what)[0] for k in ("start_dim", "end_dim"))
        if start > end:
            raise ExpressionError(f"{what}flatten(): start_dim comes after end_dim")
        n = 1
        for s in shape[start:end + 1]:
            n *= s
        return (*shape[:start], n, *shape[end + 1:])
    return tuple(apply_shape_op(op, [dummy], p, what).shape)


def einsum_shape(equation: str, shapes: list, what: str = "") -> Shape:
    lhs, rhs = equation.split("->")
    sizes: dict[str, int] = {}
    for sub, shape in zip(lhs.split(","), shapes):
        if len(sub) != len(shape):
            raise ExpressionError(f"{what}einsum(): '{sub}' names {len(sub)} dims, the operand has shape {list(shape)}")
        for ch, n in zip(sub, shape):
            if sizes.setdefault(ch, n) != n:
                raise ExpressionError(f"{what}einsum(): index '{ch}' has sizes {sizes[ch]} and {n}")
    work = math.prod(sizes.values())
    if work > MAX_EINSUM_WORK:  # a small output may still sum over a huge space: 'i,j->' of two 2e6 vectors
        raise ExpressionError(f"{what}einsum(): the reference loops over {work} index combinations (the sizes of "
                              f"all its indices multiplied; conv is such an einsum in the reference); the limit is "
                              f"{MAX_EINSUM_WORK} ({FIXED})")
    return tuple(sizes[ch] for ch in rhs)


def nd(values, d: int) -> tuple[int, ...]:
    """A conv/pool size given as one int or d ints, as d ints."""
    values = tuple(values)
    return values * d if len(values) == 1 else values


def conv_out(spatial, kernel, stride, padding, dilation, what: str = "", op: str = "conv") -> tuple[int, ...]:
    d = len(spatial)
    kernel, stride, padding, dilation = (nd(v, d) for v in (kernel, stride, padding, dilation))
    if any(len(v) != d for v in (kernel, stride, padding, dilation)):
        raise ExpressionError(f"{what}{op}(): kernel, stride, padding and dilation need 1 or {d} values")
    if min(stride) < 1 or min(dilation) < 1 or min(padding) < 0 or min(kernel) < 1:
        raise ExpressionError(f"{what}{op}(): stride, dilation and kernel must be positive, padding >= 0")
    out = tuple((s + 2 * p - dl * (k - 1) - 1) // st + 1 for s, k, st, p, dl in
                zip(spatial, kernel, stride, padding, dilation))
    if min(out) < 1:
        raise ExpressionError(f"{what}{op}(): the kernel {list(kernel)} does not fit the input {list(spatial)}")
    return out


def _nn_shape(op: str, shapes, p, what: str):
    x = shapes[0]
    if op == "patches":
        d = len(x) - 2
        out = conv_out(x[2:], p["kernel"], p["stride"], p["padding"], p["dilation"], what)
        k = 1
        for v in nd(p["kernel"], d):
            k *= v
        n = 1
        for v in out:
            n *= v
        return (x[0], p["groups"], n, x[1] // p["groups"] * k)
    d = 1 if op == "conv1d" else 2
    if len(x) != d + 2:
        raise ExpressionError(f"{what}{op}() needs a batched {d + 2}-D input (N, C, ...), got shape {list(x)}")
    out = _nn_shape_checked(op, shapes, p, what, d)
    kernel = nd(p["kernel_size"], d) if op in ("avg_pool2d", "max_pool2d") else shapes[1][2:]
    windows = out[0] * x[1]
    for v in (*out[2:], *kernel):
        windows *= v
    if windows > MAX_INTERMEDIATE:  # the reference unfolds every window
        raise ExpressionError(f"{what}{op}() would unfold {windows} window entries in the reference; the limit is "
                              f"{MAX_INTERMEDIATE}")
    return out


def _nn_shape_checked(op: str, shapes, p, what: str, d: int):
    x = shapes[0]
    if op in ("avg_pool2d", "max_pool2d"):
        stride = p["stride"] or p["kernel_size"]
        kernel, padding = nd(p["kernel_size"], d), nd(p["padding"], d)
        if len(padding) == len(kernel) and any(2 * pd > k for pd, k in zip(padding, kernel)):
            raise ExpressionError(f"{what}{op}(): padding {list(padding)} is more than half the kernel "
                                  f"{list(kernel)} (torch raises otherwise)")
        return x[:2] + conv_out(x[2:], p["kernel_size"], stride, p["padding"], (1,), what, op)
    w, b = shapes[1], shapes[2]
    g = p["groups"]
    if len(w) != d + 2 or g < 1 or x[1] % g or w[0] % g or w[1] * g != x[1]:
        raise ExpressionError(f"{what}{op}(): weight {list(w)} does not fit input {list(x)} with groups={g} "
                              f"(weight is (out_channels, in_channels / groups, *kernel))")
    if b not in ((), (w[0],)):
        raise ExpressionError(f"{what}{op}(): bias must have shape [{w[0]}], got {list(b)}")
    return (x[0], w[0], *conv_out(x[2:], w[2:], p["stride"], p["padding"], p["dilation"], what, op))


def is_mask(node: Node, mask_vars=frozenset()) -> bool:
    """Whether ``node`` is a boolean mask: a comparison, a combination of masks, or a bool var."""
    from .ops import OPS

    if isinstance(node, Var):
        return node.name in mask_vars
    if not isinstance(node, Call):
        return False
    if node.op == "detach":
        return is_mask(node.args[0], mask_vars)
    return OPS[node.op].mask


_MASK_ARGS = {"logical_and": "&", "logical_or": "|", "logical_not": "~"}


def _check_masks(node: Call, what: str, mask_vars) -> None:
    if node.op in _MASK_ARGS and not all(is_mask(a, mask_vars) for a in node.args):
        raise ExpressionError(f"{what}'{_MASK_ARGS[node.op]}' combines masks (comparisons such as x > 0), not "
                              f"numbers; for arithmetic use * + -")
    if node.op == "where" and not is_mask(node.args[0], mask_vars):
        raise ExpressionError(f"{what}where()'s condition must be a mask (a comparison such as x > 0); "
                              "to blend by a number use c * a + (1 - c) * b")


INDEX_ARGS = {"embedding": (0, 1, 0), "index_var": (1, 0, 0), "index_select": (1, 0, "dim"), "gather": (1, 0, "dim"),
              "cross_entropy": (1, 0, 1), "nll_loss": (1, 0, 1)}  # op -> (index arg, indexed arg, its dim)


def _check_indices(node: Call, shapes, var_shapes: VarShapes) -> None:
    """Integer args must be int64 vars whose every value indexes inside the dim they index; float args of an
    index position are an error too."""
    if node.op not in INDEX_ARGS:
        if node.op != "where":
            for a in node.args:
                if isinstance(a, Var) and a.name in var_shapes.ints and node.op not in ("lt", "le", "gt", "ge", "eq",
                                                                                      "ne", "mul", "add", "sub"):
                    raise ExpressionError(f"int64 var '{a.name}' can only index (embedding, index_select, gather, "
                                          f"x[{a.name}], cross_entropy, nll_loss targets), not feed {node.op}()")
        return
    k, j, dim = INDEX_ARGS[node.op]
    idx = node.args[k]
    if node.op in ("cross_entropy",) and not (isinstance(idx, Var) and idx.name in var_shapes.ints):
        if shapes[1] != shapes[0]:
            raise ExpressionError("cross_entropy(): class indices must be an int64 var (declare dtype = \"int64\"); "
                                  "class probabilities have the input's shape")
        return  # class probabilities: a float target
    if not (isinstance(idx, Var) and idx.name in var_shapes.ints):
        where = "x[idx]" if node.op == "index_var" else f"{node.op}()"
        raise ExpressionError(f"{where}: the indices must be an int64 var (declare dtype = \"int64\")")
    shape = shapes[j]
    d = node.param(dim) if isinstance(dim, str) else dim
    if node.op in ("cross_entropy", "nll_loss") and len(shape) == 1:
        d = 0
    if not shape or not -len(shape) <= d < len(shape):
        raise ExpressionError(f"{node.op}(): dim {d} is out of range for a {len(shape)}-D input")
    lo, hi = var_shapes.ints[idx.name]
    n = shape[d]
    if lo < 0 or hi > n:
        where = "x[idx]" if node.op == "index_var" else f"{node.op}()"
        raise ExpressionError(f"{where}: int64 var '{idx.name}' takes values in [{lo}, {hi - 1}], outside "
                              f"[0, {n - 1}] of the dim it indexes (size {n})")


class _Where:
    """The "in '<sub-expression>': " prefix of a shape error, printed only when an error is: printing every node
    of a tree at every inference (each lowering step infers its subtree again) cost more than the inference."""

    def __init__(self, node: Call):
        self.node = node

    def __format__(self, spec: str) -> str:
        text = to_text(self.node)
        return format(f"in '{text}': " if len(text) < 80 else f"in {self.node.op}(): ", spec)

    __str__ = __repr__ = lambda self: format(self)


def _infer(node: Node, var_shapes: dict[str, Shape], sizes: dict) -> Shape:
    if isinstance(node, Const):
        return ()
    if isinstance(node, Var):
        return tuple(var_shapes[node.name])
    assert isinstance(node, Call)
    shapes = [infer(a, var_shapes, sizes) for a in node.args]
    what = _Where(node)
    op = node.op
    if isinstance(var_shapes, VarShapes):  # the case file's declarations: check masks and index ranges
        _check_masks(node, what, var_shapes.masks)
        _check_indices(node, shapes, var_shapes)
    if op == "detach":
        return shapes[0]
    if op in SHAPE_OPS:
        return _shape_op_shape(op, shapes, dict(node.params), what)
    if op == "einsum":
        return einsum_shape(node.param("equation"), shapes, what)
    if op == "linear":
        x, w, b = shapes
        if len(w) not in (1, 2):
            raise ExpressionError(f"{what}linear() needs a 1-D or 2-D weight, got shape {list(w)}")
        out = matmul_shape(x, tuple(reversed(w)), what)
        return broadcast(out, b, what)
    if op in ("layer_norm", "rms_norm"):
        x, norm = shapes[0], tuple(node.param("normalized_shape"))
        if x[len(x) - len(norm):] != norm or len(norm) > len(x):
            raise ExpressionError(f"{what}{op}(): normalized_shape {list(norm)} is not the end of the input's "
                                  f"shape {list(x)}")
        for extra in shapes[1:]:
            if extra not in ((), norm):
                raise ExpressionError(f"{what}{op}(): weight and bias must have shape {list(norm)}, got {list(extra)}")
        return x
    if op == "scaled_dot_product_attention":
        q, k, v = shapes
        if min(len(q), len(k), len(v)) < 2 or q[-1] != k[-1] or k[-2] != v[-2]:
            raise ExpressionError(f"{what}scaled_dot_product_attention() needs q (..., L, E), k (..., S, E), "
                                  f"v (..., S, Ev); got {list(q)}, {list(k)}, {list(v)}")
        batch = broadcast(broadcast(q[:-2], k[:-2], what), v[:-2], what)
        return (*batch, q[-2], v[-1])
    if op == "causal_fill":
        return shapes[0]
    if op in ("patches", "conv1d", "conv2d", "avg_pool2d", "max_pool2d"):
        return _nn_shape(op, shapes, dict(node.params), what)
    if op in ("embedding", "index_var"):
        idx, x = (shapes[0], shapes[1]) if op == "embedding" else (shapes[1], shapes[0])
        if op == "embedding" and len(x) != 2:
            raise ExpressionError(f"{what}embedding() needs a 2-D weight, got shape {list(x)}")
        if not x:
            raise ExpressionError(f"{what}cannot index a 0-D tensor")
        return idx + x[1:]
    if op == "index_select":
        if len(shapes[1]) != 1:
            raise ExpressionError(f"{what}index_select() needs a 1-D index, got shape {list(shapes[1])}")
        (d,) = normalize_dims(node.param("dim"), len(shapes[0]), what) or (0,)
        return shapes[0][:d] + shapes[1] + shapes[0][d + 1:]
    if op == "gather":
        x, idx = shapes
        (d,) = normalize_dims(node.param("dim"), len(x), what) or (0,)
        if len(idx) != len(x) or any(i > n for k, (i, n) in enumerate(zip(idx, x)) if k != d):
            raise ExpressionError(f"{what}gather() needs an index of the input's rank, no larger outside dim {d}; "
                                  f"got shapes {list(x)} and {list(idx)}")
        return idx
    if op in ("cross_entropy", "nll_loss"):
        x, t = shapes
        if len(x) not in (1, 2):
            raise ExpressionError(f"{what}{op}() takes (C,) or (N, C) inputs here, got shape {list(x)}")
        if t != x[:-1] and t != x:
            raise ExpressionError(f"{what}{op}(): target shape {list(t)} fits neither class indices "
                                  f"{list(x[:-1])} nor class probabilities {list(x)}")
        if op == "nll_loss" and t == x:
            raise ExpressionError(f"{what}nll_loss() takes class indices (an int64 var of shape {list(x[:-1])})")
        return x[:-1] if node.param("reduction") == "none" else ()
    if op == "matmul":
        return matmul_shape(shapes[0], shapes[1], what)
    if op == "transpose":
        return tuple(reversed(shapes[0]))
    if op in ("cumsum", "cumprod", "sort"):
        if not isinstance(node.param("dim"), int):
            raise ExpressionError(f"{what}{op}() takes one integer dim (as torch.{op}), got {node.param('dim')!r}")
        normalize_dims(node.param("dim"), len(shapes[0]), what)
        return shapes[0]
    if op == "prod" and isinstance(node.param("dim"), tuple):
        raise ExpressionError(f"{what}prod() takes one integer dim or none (as torch.prod), got {node.param('dim')!r}")
    if op == "norm" and not node.param("p") > 0:
        raise ExpressionError(f"{what}norm() supports p > 0 (torch.linalg.vector_norm), got p={node.param('p')}; "
                              "for the largest magnitude use amax(abs(x))")
    if op == "prod" and node.param("dim") is None:  # torch.prod(x) has no keepdim: always 0-D
        return ()
    if op in ("sum", "mean", "logsumexp", "amax", "amin", "prod", "var", "std", "norm"):
        dims = normalize_dims(node.param("dim"), len(shapes[0]), what)
        empty = [d for d in dims if shapes[0][d] == 0]
        if op in ("amax", "amin", "logsumexp") and empty:  # torch raises for amax/amin; logsumexp is -inf
            raise ExpressionError(f"{what}{op}() over dim {empty[0]}, which is empty (size 0) in {list(shapes[0])}: "
                                  + ("it is -inf everywhere" if op == "logsumexp" else
                                     "torch has no maximum or minimum of no entries"))
        return reduced_shape(shapes[0], dims, node.param("keepdim"))
    if op in ("softmax", "log_softmax"):
        if not isinstance(node.param("dim"), int):
            raise ExpressionError(f"{what}{op}() takes one integer dim, got {node.param('dim')!r}")
        normalize_dims(node.param("dim"), len(shapes[0]), what)
        return shapes[0]
    if op in ("mse_loss", "l1_loss", "smooth_l1_loss", "huber_loss", "kl_div"):
        out = broadcast(shapes[0], shapes[1], what)
        sizes[len(sizes)] = _size(out, node)  # the difference is an intermediate of the broadcast shape
        return out if node.param("reduction") == "none" else ()
    if op in ("binary_cross_entropy", "binary_cross_entropy_with_logits"):
        if shapes[0] != shapes[1]:
            raise ExpressionError(f"{what}input and target must have the same shape, got "
                                  f"{list(shapes[0])} and {list(shapes[1])}")
        return shapes[0] if node.param("reduction") == "none" else ()
    if op in ("cosine_similarity", "normalize"):
        out = broadcast(shapes[0], shapes[1], what) if op == "cosine_similarity" else shapes[0]
        (d,) = normalize_dims(node.param("dim"), len(out), what) or (None,)
        if d is None:
            raise ExpressionError(f"{what}{op}() needs at least a 1-D input")
        return out[:d] + out[d + 1:] if op == "cosine_similarity" else out
    out: Shape = ()
    for s in shapes:
        out = broadcast(out, s, what)
    return out
