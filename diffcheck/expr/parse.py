"""Whitelisting parser: case-file text -> IR. Nothing is ever evaluated.

``ast.parse(mode="eval")`` only builds a syntax tree; every node type is then checked against a short list of
allowed constructs and turned into IR. Anything else -- attributes other than ``.T`` and ``.detach()``,
subscripts, lambdas, comprehensions, chained comparisons, strings except where an op declares a string parameter,
dunder names, unknown functions -- is an ExpressionError that says what and where.
"""

from __future__ import annotations

import ast
import keyword
import math
import unicodedata

from ..errors import ExpressionError
from .ir import Call, Const, Node, Var
from .ops import ALIASES, CONSTANTS, FUNCTIONS, METHODS, OPS, Param

MAX_LENGTH = 10_000
MAX_DEPTH = 200

_BINOPS = {ast.Add: "add", ast.Sub: "sub", ast.Mult: "mul", ast.Div: "div", ast.Pow: "pow", ast.MatMult: "matmul",
           ast.BitAnd: "logical_and", ast.BitOr: "logical_or"}
_COMPARE = {ast.Lt: "lt", ast.LtE: "le", ast.Gt: "gt", ast.GtE: "ge", ast.Eq: "eq", ast.NotEq: "ne"}

_DESCRIBE = {
    ast.Lambda: "lambdas", ast.IfExp: "conditional expressions",
    ast.BoolOp: "boolean operators", ast.ListComp: "comprehensions",
    ast.SetComp: "comprehensions", ast.DictComp: "comprehensions", ast.GeneratorExp: "generators",
    ast.JoinedStr: "strings", ast.Dict: "dicts", ast.Set: "sets", ast.List: "lists", ast.Tuple: "tuples",
    ast.Starred: "starred arguments", ast.NamedExpr: "assignment expressions", ast.Await: "await",
    ast.Yield: "yield", ast.YieldFrom: "yield", ast.Slice: "slices", ast.FormattedValue: "strings",
}


def parse(text: str, names: set[str] | frozenset[str] | None = None) -> Node:
    """Parse ``text`` into IR. ``names`` are the declared variables; None accepts any plain identifier."""
    if not isinstance(text, str):
        raise ExpressionError("the expression must be a string")
    if len(text) > MAX_LENGTH:
        raise ExpressionError(f"expression is {len(text)} characters long; the limit is {MAX_LENGTH}")
    if not text.strip():
        raise ExpressionError("the expression is empty")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as exc:
        col = (exc.offset - 1) if exc.offset else None
        if "integer string conversion" in exc.msg:  # Python's advice (sys.set_int_max_str_digits) is not the user's
            raise ExpressionError("an integer literal is too long (over 4300 digits)", text, col) from None
        raise ExpressionError(f"syntax error: {exc.msg}", text, col) from None
    except (ValueError, RecursionError, MemoryError, OverflowError) as exc:
        raise ExpressionError(f"cannot parse the expression: {type(exc).__name__}: {exc}", text) from None
    return _Converter(text, names).convert(tree.body, 0)


def parse_outputs(text: str, names: set[str] | frozenset[str] | None = None) -> tuple[Node, ...]:
    """``parse`` for a case's ``expr``, which may also be a tuple of outputs, ``(a * b, a + b)``, at the top level
    only: one IR tree per output (one for a plain expression)."""
    if not isinstance(text, str) or len(text) > MAX_LENGTH or not text.strip():
        return (parse(text, names),)  # parse says what is wrong
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError, OverflowError):
        return (parse(text, names),)
    if not isinstance(tree.body, ast.Tuple):
        return (_Converter(text, names).convert(tree.body, 0),)
    if len(tree.body.elts) < 2:
        raise ExpressionError("a tuple of outputs needs at least two (write one output without the tuple)", text,
                              tree.body.col_offset)
    converter = _Converter(text, names)
    return tuple(converter.convert(element, 1) for element in tree.body.elts)


def _nfkc(name: str) -> str:
    return unicodedata.normalize("NFKC", name)


# Functions people reach for that the language does not have, with what to write instead.
UNSUPPORTED = {
    "max": "use amax(x, dim=...) for the values, or maximum(a, b) elementwise",
    "min": "use amin(x, dim=...) for the values, or minimum(a, b) elementwise",
    "view": "use reshape(x, [sizes])",
    "argmax": "indices have no gradient; use amax for the value",
    "argsort": "indices have no gradient; use sort(x) for the values",
    "clip": "use clamp(x, min=, max=)",
    "abs_": "in-place ops are not part of the language; use abs(x)",
    "cummax": "not supported yet; sort or amax over a dim may express it",
    "scatter": "not supported yet; gather's and index_select's gradients scatter-add",
    "conv3d": "not supported yet; conv1d and conv2d are",
    "einsum_path": "not a torch op; use einsum",
    "dropout": "random: write the mask as a bool var, x * m / (1 - p)",
    "softmin": "use softmax(-x, dim)",
    "relu_": "in-place ops are not part of the language; use relu(x)",
}


# Parameter values torch refuses with an error: a case error about expr before any engine runs, rather than an
# autograd check failing on torch's exception.
_PARAM_RULES = {
    "cross_entropy": ((("label_smoothing",), lambda v: 0 <= v <= 1, "label_smoothing must be between 0 and 1"),),
    "smooth_l1_loss": ((("beta",), lambda v: v >= 0, "beta must be >= 0"),),
    "huber_loss": ((("delta",), lambda v: v > 0, "delta must be > 0"),),
    "celu": ((("alpha",), lambda v: v != 0, "alpha must not be 0"),),
    "cosine_similarity": ((("eps",), lambda v: v >= 0, "eps must be >= 0"),),
    "hardtanh": ((("min_val", "max_val"), lambda lo, hi: lo <= hi, "min_val must not be greater than max_val"),),
}


class _Converter:
    """Identifiers compare as Python compares them: after NFKC normalisation (``ast`` already normalises the
    expression's, so a declared ``ｘ`` is the ``x`` written in it); a declared name stays the Var's name."""

    def __init__(self, text: str, names):
        self.text = text
        self.names = None if names is None else frozenset(_nfkc(n) for n in names)
        self.declared = {} if names is None else {_nfkc(n): n for n in sorted(names)}
        if names is not None and len(self.declared) < len(set(names)):
            same = sorted(n for n in names if sum(_nfkc(m) == _nfkc(n) for m in names) > 1)
            raise ExpressionError(f"vars {', '.join(map(repr, same))} are one name after NFKC normalisation "
                                  f"(as Python reads identifiers)")
        for n in sorted(names or ()):
            if keyword.iskeyword(_nfkc(n)):
                raise ExpressionError(f"var {n!r} is the Python keyword {_nfkc(n)!r} (after NFKC normalisation)")

    def fail(self, message: str, node: ast.AST | None = None):
        col = getattr(node, "col_offset", None) if node is not None else None
        raise ExpressionError(message, self.text, col)

    def convert(self, node: ast.AST, depth: int) -> Node:
        if depth > MAX_DEPTH:
            self.fail(f"expression is nested more than {MAX_DEPTH} levels deep (each operator of a chain such as "
                      "a + b + c nests one more level: sum a long chain's terms in groups)", node)
        d = depth + 1
        if isinstance(node, ast.Constant):
            return Const(self.number(node))
        if isinstance(node, ast.Name):
            return self.name(node)
        if isinstance(node, ast.BinOp):
            op = _BINOPS.get(type(node.op))
            if op is None:
                self.fail(f"operator {type(node.op).__name__} is not allowed (use + - * / ** @, & | on masks)", node)
            return Call(op, (self.convert(node.left, d), self.convert(node.right, d)))
        if isinstance(node, ast.UnaryOp):
            if isinstance(node.op, ast.USub):
                operand = self.convert(node.operand, d)
                if isinstance(operand, Const):
                    return Const(-operand.value)
                return Call("neg", (operand,))
            if isinstance(node.op, ast.UAdd):
                return self.convert(node.operand, d)
            if isinstance(node.op, ast.Invert):
                return Call("logical_not", (self.convert(node.operand, d),))
            self.fail(f"unary operator {type(node.op).__name__} is not allowed", node)
        if isinstance(node, ast.Compare):
            op = _COMPARE.get(type(node.ops[0]))
            if len(node.ops) != 1:
                self.fail("chained comparisons are not allowed (write (a < b) & (b < c))", node)
            if op is None:
                self.fail(f"comparison {type(node.ops[0]).__name__} is not allowed (use < <= > >= == !=)", node)
            return Call(op, (self.convert(node.left, d), self.convert(node.comparators[0], d)))
        if isinstance(node, ast.Attribute):
            if node.attr not in ("T", "mT"):
                self.fail(f"attribute '.{node.attr}' is not allowed (only '.T', '.mT' and '.detach()')", node)
            return Call("transpose" if node.attr == "T" else "mT", (self.convert(node.value, d),))
        if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Name):  # x[idx], idx an int64 var
            return Call("index_var", (self.convert(node.value, d), self.name(node.slice)))
        if isinstance(node, ast.Subscript):
            items = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
            index = tuple(self.index_item(item) for item in items)
            return Call("index", (self.convert(node.value, d),), (("index", index),))
        if isinstance(node, ast.Call):
            return self.call(node, d)
        what = _DESCRIBE.get(type(node), f"'{type(node).__name__}' constructs")
        self.fail(f"{what} are not allowed in expressions", node)

    def number(self, node: ast.Constant) -> float:
        value = node.value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            kind = "strings" if isinstance(value, (str, bytes)) else f"{type(value).__name__} literals"
            self.fail(f"{kind} are not allowed (only numbers)", node)
        try:
            number = float(value)
        except OverflowError:
            self.fail("number is too large for float64", node)
        if not math.isfinite(number):
            self.fail("number is too large for float64", node)
        return number

    def name(self, node: ast.Name) -> Node:
        ident = node.id
        if keyword.iskeyword(ident):  # a fullwidth keyword (ｉｆ) reaches here as 'if'
            self.fail(f"name '{ident}' is a Python keyword (after NFKC normalisation)", node)
        if ident.startswith("_"):
            self.fail(f"name '{ident}' is not allowed (names may not start with '_')", node)
        if ident in CONSTANTS and (self.names is None or ident not in self.names):
            return Const(CONSTANTS[ident])
        if self.names is not None and ident not in self.names:
            if ident in OPS:
                self.fail(f"'{ident}' is a function: call it as {ident}(...)", node)
            declared = ", ".join(sorted(self.names)) or "none"
            self.fail(f"unknown name '{ident}' (declared vars: {declared})", node)
        return Var(self.declared.get(ident, ident))

    def call(self, node: ast.Call, depth: int) -> Node:
        if isinstance(node.func, ast.Attribute) and node.func.attr in METHODS:
            if node.args or node.keywords:
                self.fail(f"'.{node.func.attr}()' takes no arguments", node)
            return Call(node.func.attr, (self.convert(node.func.value, depth),))
        if not isinstance(node.func, ast.Name):
            self.fail("only calls of the language's functions by name are allowed", node)
        fname = node.func.id
        if fname in UNSUPPORTED:
            self.fail(f"'{fname}' is not supported: {UNSUPPORTED[fname]}", node)
        if fname not in FUNCTIONS:
            self.fail(f"unknown function '{fname}' (known: {', '.join(FUNCTIONS)})", node)
        fname = ALIASES.get(fname, fname)
        op = OPS[fname]
        positional = list(node.args)
        if fname == "einsum":
            return self.einsum(node, depth)
        if op.tensor_list:  # cat([a, b], dim=0): the one place a list of tensors is taken
            if not positional or not isinstance(positional[0], (ast.List, ast.Tuple)) or not positional[0].elts:
                self.fail(f"{fname}() takes a list of tensors first, as torch.{fname}([a, b], dim=0)", node)
            tensors = positional[0].elts
            node = ast.Call(func=node.func, args=[tensors[0], *positional[1:]], keywords=node.keywords)
            ast.copy_location(node, positional[0])
            positional = list(node.args)
            rest = tuple(self.convert(t, depth) for t in tensors[1:])
        else:
            rest = ()
        for arg in positional:
            if isinstance(arg, ast.Starred):
                self.fail("starred arguments are not allowed", arg)
        for kw in node.keywords:
            if kw.arg is None:
                self.fail("'**' arguments are not allowed", kw.value)
        if len(positional) < op.arity:
            self.fail(f"{fname}() takes {op.arity} tensor argument(s), got {len(positional)}", node)
        args = tuple(self.convert(a, depth) for a in positional[: op.arity])
        extra = positional[op.arity:]
        if len(extra) > len(op.params):
            self.fail(f"{fname}() takes at most {op.arity + len(op.params)} positional arguments", node)
        given: dict[str, object] = {}
        for param, value_node in zip(op.params, extra):
            given[param.name] = self.param_value(fname, param, value_node, depth)
        for kw in node.keywords:
            param = next((p for p in op.params if p.name == kw.arg), None)
            if param is None:
                allowed = ", ".join(op.param_names) or "none"
                self.fail(f"{fname}() has no keyword '{kw.arg}' (allowed: {allowed})", kw.value)
            if kw.arg in given:
                self.fail(f"{fname}() got '{kw.arg}' twice", kw.value)
            given[kw.arg] = self.param_value(fname, param, kw.value, depth)
        tensors = tuple(given.get(p.name, Const(p.default)) for p in op.params if p.kind == "tensor")
        params = tuple((p.name, given.get(p.name, p.default)) for p in op.params if p.kind != "tensor")
        for prm in op.params:
            if prm.default is None and prm.kind in ("ints", "int", "tensor", "number") and given.get(prm.name) is None:
                self.fail(f"{fname}() needs '{prm.name}'", node)
        for names, rule, wanted in _PARAM_RULES.get(fname, ()):
            if not rule(*(dict(params)[n] for n in names)):
                shown = ", ".join(f"{n}={dict(params)[n]}" for n in names)
                self.fail(f"{fname}(): {wanted} (torch raises otherwise), got {shown}", node)
        return Call(fname, args + rest + tensors, params)

    def einsum(self, node: ast.Call, depth: int) -> Node:
        """einsum("ij,jk->ik", a, b): the equation is the one string this op takes, checked character by character."""
        if node.keywords or len(node.args) < 2:
            self.fail('einsum() takes an equation and tensors: einsum("ij,jk->ik", a, b)', node)
        eq = node.args[0]
        if not (isinstance(eq, ast.Constant) and isinstance(eq.value, str)):
            self.fail("einsum()'s first argument must be the equation string", eq)
        text = eq.value.replace(" ", "")
        if "..." in text:
            self.fail("einsum(): '...' is not supported; name every dimension with a letter", eq)
        lhs, arrow, rhs = text.partition("->")
        if not lhs or any(not (ch.isascii() and ch.isalpha()) for ch in lhs.replace(",", "") + rhs) or \
                "->" in rhs:
            self.fail("einsum(): the equation may hold only letters, ',' and one '->'", eq)
        for sub in lhs.split(",") + ([rhs] if arrow else []):
            if len(set(sub)) != len(sub):
                self.fail(f"einsum(): '{sub}' repeats an index (diagonals are not supported)", eq)
        if not arrow:  # torch's implicit output: the letters used once, in alphabetical order
            rhs = "".join(sorted(ch for ch in set(lhs.replace(",", "")) if lhs.count(ch) == 1))
        if not set(rhs) <= set(lhs.replace(",", "")):
            self.fail("einsum(): an output index does not appear in any input", eq)
        tensors = tuple(self.convert(a, depth) for a in node.args[1:])
        if len(lhs.split(",")) != len(tensors):
            self.fail(f"einsum(): the equation names {len(lhs.split(','))} operands, got {len(tensors)}", node)
        return Call("einsum", tensors, (("equation", f"{lhs}->{rhs}"),))

    def index_item(self, node: ast.AST):
        """One subscript item: an integer, a slice of integers with a positive step, ``...`` or None."""
        if isinstance(node, ast.Constant) and node.value is Ellipsis:
            return "..."
        if isinstance(node, ast.Constant) and node.value is None:
            return None
        if isinstance(node, ast.Slice):
            parts = tuple(None if part is None else self.index_int(part) for part in (node.lower, node.upper,
                                                                                        node.step))
            if parts[2] is not None and parts[2] <= 0:
                self.fail("slice steps must be positive, as in torch (use flip(x, [dim]) to reverse)", node)
            return ("slice", *parts)
        return self.index_int(node)

    def index_int(self, node: ast.AST, message: str = "") -> int:
        sign, inner = 1, node
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            sign, inner = -1, node.operand
        if isinstance(inner, ast.Constant) and type(inner.value) is int and abs(inner.value) < 2**31:
            return sign * inner.value
        self.fail(message or "subscripts take integer literals, slices (a:b:c), ... and None, or index by an int64 var "
                  "by name (x[t]); for a computed selection use where() with a mask", node)

    def param_value(self, fname: str, param: Param, node: ast.AST, depth: int = 0):
        if param.kind == "tensor":
            return self.convert(node, depth)
        if param.kind == "int":
            return self.int_value(fname, param, node)
        if param.kind == "ints":  # a shape or a dim list: the one other place a list literal is taken
            size = (f"{fname}(): '{param.name}' takes integer literals (a list of them, or one), each of magnitude "
                    "below 2**31")
            if isinstance(node, (ast.Tuple, ast.List)):
                return tuple(self.index_int(e, size) for e in node.elts)
            return (self.index_int(node, size),)
        if param.kind == "choice":
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in param.choices:
                return node.value
            allowed = ", ".join(f'"{c}"' for c in param.choices)
            self.fail(f"{fname}(): '{param.name}' must be one of {allowed}", node)
        if param.kind == "bool":
            if isinstance(node, ast.Constant) and isinstance(node.value, bool):
                return node.value
            self.fail(f"{fname}(): '{param.name}' must be True or False", node)
        if param.kind == "dims":
            if isinstance(node, ast.Constant) and node.value is None:
                return None
            if isinstance(node, (ast.Tuple, ast.List)):
                dims = tuple(self.int_value(fname, param, e) for e in node.elts)
                if not dims:
                    self.fail(f"{fname}(): '{param.name}' must name at least one dimension", node)
                return dims
            return self.int_value(fname, param, node)
        # a plain number
        sign = 1.0
        inner = node
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            sign = -1.0 if isinstance(node.op, ast.USub) else 1.0
            inner = node.operand
        if isinstance(inner, ast.Constant) and not isinstance(inner.value, bool) and isinstance(
                inner.value, (int, float)):
            return sign * self.number(inner)
        self.fail(f"{fname}(): '{param.name}' must be a number literal", node)

    def int_value(self, fname: str, param: Param, node: ast.AST) -> int:
        sign = 1
        inner = node
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            sign, inner = -1, node.operand
        if isinstance(inner, ast.Constant) and type(inner.value) is int and abs(inner.value) < 64:
            return sign * inner.value
        self.fail(f"{fname}(): '{param.name}' must be an integer dimension or a tuple of them", node)
