"""Shape inference over the IR: numpy/torch broadcasting and matmul rules, with errors that name the op."""

from __future__ import annotations

from ..errors import ExpressionError
from .ir import Call, Const, Node, Var, to_text

Shape = tuple[int, ...]
MAX_INTERMEDIATE = 20_000_000  # entries: a hostile broadcast ([4e6, 1] + [1, 4e6]) must not exhaust memory
MAX_TOTAL = 50_000_000  # entries of all intermediates together: 190 nested ops over 4M entries must not either
FIXED = "a fixed limit of diffcheck, not configurable: split the case or use smaller shapes"


def broadcast(a: Shape, b: Shape, what: str = "") -> Shape:
    out = []
    for i in range(1, max(len(a), len(b)) + 1):
        da = a[-i] if i <= len(a) else 1
        db = b[-i] if i <= len(b) else 1
        if da != db and da != 1 and db != 1:
            raise ExpressionError(f"{what}shapes {list(a)} and {list(b)} cannot be broadcast together")
        out.append(max(da, db))
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


def _infer(node: Node, var_shapes: dict[str, Shape], sizes: dict) -> Shape:
    if isinstance(node, Const):
        return ()
    if isinstance(node, Var):
        return tuple(var_shapes[node.name])
    assert isinstance(node, Call)
    shapes = [infer(a, var_shapes, sizes) for a in node.args]
    what = f"in '{to_text(node)}': " if len(to_text(node)) < 80 else f"in {node.op}(): "
    op = node.op
    if op == "matmul":
        return matmul_shape(shapes[0], shapes[1], what)
    if op == "transpose":
        return tuple(reversed(shapes[0]))
    if op in ("sum", "mean", "logsumexp"):
        dims = normalize_dims(node.param("dim"), len(shapes[0]), what)
        return reduced_shape(shapes[0], dims, node.param("keepdim"))
    if op in ("softmax", "log_softmax"):
        if not isinstance(node.param("dim"), int):
            raise ExpressionError(f"{what}{op}() takes one integer dim, got {node.param('dim')!r}")
        normalize_dims(node.param("dim"), len(shapes[0]), what)
        return shapes[0]
    if op == "mse_loss":  # the difference is an intermediate of the broadcast shape
        sizes[len(sizes)] = _size(broadcast(shapes[0], shapes[1], what), node)
        return ()
    if op == "binary_cross_entropy":
        if shapes[0] != shapes[1]:
            raise ExpressionError(f"{what}input and target must have the same shape, got "
                                  f"{list(shapes[0])} and {list(shapes[1])}")
        return ()
    out: Shape = ()
    for s in shapes:
        out = broadcast(out, s, what)
    return out
