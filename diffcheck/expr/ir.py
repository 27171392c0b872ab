"""The expression IR shared by every engine: constants, variables and calls of ops from ``ops.OPS``.

Binary operators are calls too (``x + y`` is ``Call("add", (x, y))``), so engines walk one node type.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Const:
    value: float


@dataclass(frozen=True)
class Var:
    name: str


@dataclass(frozen=True)
class Call:
    op: str
    args: tuple[Node, ...]
    params: tuple[tuple[str, object], ...] = ()

    def param(self, name: str):
        return dict(self.params)[name]


Node = Const | Var | Call


def walk(node: Node):
    """Yield every node of the tree, parents before children."""
    yield node
    if isinstance(node, Call):
        for arg in node.args:
            yield from walk(arg)


def variables(node: Node) -> set[str]:
    return {n.name for n in walk(node) if isinstance(n, Var)}


_INFIX = {"add": ("+", 1), "sub": ("-", 1), "mul": ("*", 2), "div": ("/", 2), "matmul": ("@", 2), "pow": ("**", 4),
          "logical_or": ("|", 0.25), "logical_and": ("&", 0.5)}
# comparisons bind loosest and do not chain: both operands print with parentheses unless they bind tighter
_COMPARE = {"lt": "<", "le": "<=", "gt": ">", "ge": ">=", "eq": "==", "ne": "!="}


def to_text(node: Node) -> str:
    """Print an IR tree in the case-file language; ``parse(to_text(t))`` gives ``t`` back."""
    return _text(node, 0)


def _text(node: Node, outer: int) -> str:
    if isinstance(node, Const):
        if node.value == float("inf"):
            return "(1e999)"
        text = repr(float(node.value))
        return f"({text})" if node.value < 0 else text
    if isinstance(node, Var):
        return node.name
    if node.op in _INFIX:
        symbol, prec = _INFIX[node.op]
        if node.op == "pow":  # right-associative, binds tighter than unary minus on its left
            left, right = _text(node.args[0], prec + 1), _text(node.args[1], prec)
        else:
            left, right = _text(node.args[0], prec), _text(node.args[1], prec + 1)
        text = f"{left} {symbol} {right}"
        return f"({text})" if prec < outer else text
    if node.op in _COMPARE:
        text = f"{_text(node.args[0], 0.1)} {_COMPARE[node.op]} {_text(node.args[1], 0.1)}"
        return f"({text})" if outer > 0 else text
    if node.op == "logical_not":
        text = f"~{_text(node.args[0], 3)}"
        return f"({text})" if outer > 3 else text
    if node.op == "neg":
        text = f"-{_text(node.args[0], 3)}"
        return f"({text})" if outer > 3 else text
    if node.op == "transpose":
        return f"{_text(node.args[0], 5)}.T"
    if node.op == "index_var":
        return f"{_text(node.args[0], 5)}[{_text(node.args[1], 0)}]"
    if node.op == "mT":
        return f"{_text(node.args[0], 5)}.mT"
    if node.op == "index":
        return f"{_text(node.args[0], 5)}[{', '.join(_index_text(i) for i in node.param('index'))}]"
    from .ops import OPS

    op = OPS[node.op]
    if node.op == "einsum":
        return f'einsum("{node.param("equation")}", ' + ", ".join(_text(a, 0) for a in node.args) + ")"
    if op.tensor_list:
        tensors = "[" + ", ".join(_text(a, 0) for a in node.args) + "]"
        return f"{node.op}({tensors}, {', '.join(f'{k}={_param_text(v)}' for k, v in node.params)})"
    tensor_params = [p for p in op.params if p.kind == "tensor"]
    args = [_text(a, 0) for a in node.args[: len(node.args) - len(tensor_params)]]
    for p, a in zip(tensor_params, node.args[len(node.args) - len(tensor_params):]):
        if not (isinstance(a, Const) and a.value == p.default):
            args.append(f"{p.name}={_text(a, 0)}")
    args += [f"{k}={_param_text(v)}" for k, v in node.params]
    return f"{node.op}({', '.join(args)})"


def _index_text(item) -> str:
    if item is None:
        return "None"
    if item == "...":
        return "..."
    if isinstance(item, tuple):  # ("slice", start, stop, step)
        start, stop, step = ("" if v is None else str(v) for v in item[1:])
        return f"{start}:{stop}" + (f":{step}" if step else "")
    return str(item)


def _param_text(value) -> str:
    if isinstance(value, tuple):
        return "(" + ", ".join(str(v) for v in value) + ("," if len(value) == 1 else "") + ")"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):  # a "choice" parameter: one of a few plain words
        return f'"{value}"'
    return str(value)
