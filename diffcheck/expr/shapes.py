"""Shape inference over the IR: numpy/torch broadcasting and matmul rules, with errors that name the op."""

from __future__ import annotations

from ..errors import ExpressionError
from .ir import Call, Const, Node, Var, to_text

Shape = tuple[int, ...]
MAX_INTERMEDIATE = 20_000_000  # entries: a hostile broadcast ([4e6, 1] + [1, 4e6]) must not exhaust memory


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


def infer(node: Node, var_shapes: dict[str, Shape]) -> Shape:
    """Shape of ``node``'s value; raises ExpressionError naming the sub-expression that does not fit, or one
    whose result would be too large to hold."""
    shape = _infer(node, var_shapes)
    size = 1
    for d in shape:
        size *= d
    if size > MAX_INTERMEDIATE:
        raise ExpressionError(f"'{to_text(node)[:60]}' would have {size} entries (shape {list(shape)}); "
                              f"the limit is {MAX_INTERMEDIATE}")
    return shape


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


def _infer(node: Node, var_shapes: dict[str, Shape]) -> Shape:
    if isinstance(node, Const):
        return ()
    if isinstance(node, Var):
        return tuple(var_shapes[node.name])
    assert isinstance(node, Call)
    shapes = [infer(a, var_shapes) for a in node.args]
    what = f"in '{to_text(node)}': " if len(to_text(node)) < 80 else f"in {node.op}(): "
    op = node.op
    _check_masks(node, what, frozenset())
    if op == "detach":
        return shapes[0]
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
    if op in ("sum", "mean", "logsumexp", "amax", "amin", "prod", "var", "std", "norm"):
        dims = normalize_dims(node.param("dim"), len(shapes[0]), what)
        return reduced_shape(shapes[0], dims, node.param("keepdim"))
    if op in ("softmax", "log_softmax"):
        if not isinstance(node.param("dim"), int):
            raise ExpressionError(f"{what}{op}() takes one integer dim, got {node.param('dim')!r}")
        normalize_dims(node.param("dim"), len(shapes[0]), what)
        return shapes[0]
    if op == "mse_loss":
        broadcast(shapes[0], shapes[1], what)
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
