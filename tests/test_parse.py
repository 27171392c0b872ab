"""The whitelisting parser: the language is accepted, everything else is a clear ExpressionError."""

import contextlib

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from diffcheck.errors import ExpressionError
from diffcheck.expr.ir import Call, Const, Var, to_text
from diffcheck.expr.parse import parse
from diffcheck.strategies import expressions, indexed_cases, structured

ACCEPTED = [
    ("2*w**2", Call("mul", (Const(2.0), Call("pow", (Var("w"), Const(2.0)))))),
    ("-x", Call("neg", (Var("x"),))),
    ("-3", Const(-3.0)),
    ("x.T", Call("transpose", (Var("x"),))),
    ("x @ w", Call("matmul", (Var("x"), Var("w")))),
    ("sin(pi)", Call("sin", (Const(3.141592653589793),))),
    ("sum(x, dim=1, keepdim=True)", Call("sum", (Var("x"),), (("dim", 1), ("keepdim", True)))),
    ("sum(x, (0, 1))", Call("sum", (Var("x"),), (("dim", (0, 1)), ("keepdim", False)))),
    ("softmax(x, dim=-1)", Call("softmax", (Var("x"),), (("dim", -1),))),
    ("elu(x, alpha=0.5)", Call("elu", (Var("x"),), (("alpha", 0.5),))),
    ("leaky_relu(x, negative_slope=-0.1)", Call("leaky_relu", (Var("x"),), (("negative_slope", -0.1),))),
    ("x < 1", Call("lt", (Var("x"), Const(1.0)))),
    ("(x >= w) & ~(x != 0) | (w == x)", Call("logical_or", (
        Call("logical_and", (Call("ge", (Var("x"), Var("w"))),
                             Call("logical_not", (Call("ne", (Var("x"), Const(0.0))),)))),
        Call("eq", (Var("w"), Var("x")))))),
    ("x * (x <= 0.5)", Call("mul", (Var("x"), Call("le", (Var("x"), Const(0.5)))))),
    ('gelu(x, approximate="tanh")', Call("gelu", (Var("x"),), (("approximate", "tanh"),))),
    ("gelu(x)", Call("gelu", (Var("x"),), (("approximate", "none"),))),
    ("clamp(x, max=w)", Call("clamp", (Var("x"), Const(float("-inf")), Var("w")))),
    ("clamp(x, 0, 1)", Call("clamp", (Var("x"), Const(0.0), Const(1.0)))),
    ("x.detach()", Call("detach", (Var("x"),))),
    ("x[0, 1:3, ..., None, ::2]", Call("index", (Var("x"),), (("index", (0, ("slice", 1, 3, None), "...", None,
                                                                           ("slice", None, None, 2))),))),
    ("transpose(x, 0, 1)", Call("swapdims", (Var("x"),), (("dim0", 0), ("dim1", 1)))),
    ("x.mT", Call("mT", (Var("x"),))),
    ("x[w]", Call("index_var", (Var("x"), Var("w")))),
    ("cat([x, w], dim=1)", Call("cat", (Var("x"), Var("w")), (("dim", 1),))),
    ("reshape(x, [2, -1])", Call("reshape", (Var("x"),), (("shape", (2, -1)),))),
    ('einsum("ij,jk", x, w)', Call("einsum", (Var("x"), Var("w")), (("equation", "ij,jk->ik"),))),
    ("where(x > 0, x, -1)", Call("where", (Call("gt", (Var("x"), Const(0.0))), Var("x"), Const(-1.0)))),
]


@pytest.mark.parametrize("text, tree", ACCEPTED)
def test_accepts_the_language(text, tree):
    assert parse(text, {"x", "w"}) == tree


HOSTILE = [
    ("__import__('os').system('rm -rf /')", "only calls of the language's functions"),
    ("().__class__.__bases__", "attribute '.__bases__'"),
    ("getattr(x, 'grad')", "unknown function 'getattr'"),
    ("x[0].__dict__", "attribute '.__dict__'"),
    ("x[w + 1]", "index by an int64 var by name"),
    ("x[__import__]", "names may not start with '_'"),
    ("x[x.__class__]", "subscripts take integer literals"),
    ("x['a']", "subscripts take integer literals"),
    ("x[::-1]", "slice steps must be positive"),
    ("x[0:1.5]", "subscripts take integer literals"),
    ("x.__class__[0]", "attribute '.__class__'"),
    ("x[0].__dict__[1]", "attribute '.__dict__'"),
    ("exp([x])", "lists are not allowed"),
    ("x + [1, 2]", "lists are not allowed"),
    ("reshape(x, [2, w])", "reshape(): 'shape' takes integer literals"),
    ("cat(x, dim=0)", "takes a list of tensors first"),
    ("reshape(x)", "reshape() needs 'shape'"),
    ("max(x)", "'max' is not supported: use amax"),
    ('einsum("ii->i", x)', "repeats an index"),
    ('einsum("...ij->ij", x)', "'...' is not supported"),
    ('einsum("ij;jk", x, w)', "only letters"),
    ('einsum("ij,jk->ik", x)', "names 2 operands, got 1"),
    ("einsum(x, w)", "first argument must be the equation string"),
    ('einsum("ij->\u0456j", x)', "only letters"),
    ("view(x, [2])", "use reshape"),
    ("globals()", "unknown function 'globals'"),
    ("eval('1')", "unknown function 'eval'"),
    ("lambda: x", "lambdas"),
    ("[i for i in x]", "comprehensions"),
    ("(i for i in x)", "generators"),
    ("x if x else x", "conditional expressions"),
    ("0 < x < 1", "chained comparisons"),
    ('gelu(x, approximate="erf")', "'approximate' must be one of \"none\", \"tanh\""),
    ("gelu(x, approximate=tanh)", "'approximate' must be one of"),
    ('elu(x, alpha="1")', "must be a number literal"),
    ('clamp(x, min="0")', "strings are not allowed"),
    ("x.detach", "attribute '.detach'"),
    ("x in w", "comparison In"),
    ("x is w", "comparison Is"),
    ("x ^ (x > 0)", "operator BitXor"),
    ("where(x > 0, x, 'a')", "strings"),
    ("sum(x, dim='0')", "must be an integer dimension"),
    ("x.__class__()", "only calls of the language's functions"),
    ("x.detach(1)", "takes no arguments"),
    ("x.grad()", "only calls of the language's functions"),
    ("'text'", "strings"),
    ("x.grad", "attribute '.grad'"),
    ("__builtins__", "names may not start with '_'"),
    ("_x", "names may not start with '_'"),
    ("sum(x, dim=__import__('os'))", "must be an integer dimension"),
    ("exp(x, foo=1)", "has no keyword 'foo'"),
    ("exp(*x)", "starred"),
    ("exp(**x)", "'**' arguments"),
    ("1e999 * x", "too large"),
    ("x +", "syntax error"),
    ("x ^ 2", "operator BitXor"),
    ("not x", "unary operator Not"),
    ("y", "unknown name 'y'"),
    ("exp", "is a function"),
    ("True * x", "bool literals"),
    ("1j * x", "complex literals"),
    ("(" * 300 + "x" + ")" * 300, ""),
    ("x\x00", "null bytes"),
    ("", "empty"),
]


@pytest.mark.parametrize("text, needle", HOSTILE)
def test_rejects_everything_else_with_a_clear_error(text, needle):
    with pytest.raises(ExpressionError) as info:
        parse(text, {"x", "w"})
    assert needle in str(info.value)


def test_error_points_at_the_column():
    with pytest.raises(ExpressionError) as info:
        parse("x + foo(x)", {"x"})
    assert info.value.col == 4


@given(expressions())
def test_printing_and_parsing_back_gives_the_same_tree(tree):
    assert parse(to_text(tree)) == tree


@given(st.data())
def test_printing_and_parsing_back_round_trips_structural_ops(data):
    shapes = data.draw(st.sampled_from([{"x": (3, 4), "y": (4,)}, {"x": (2, 3, 4), "y": (3, 1)}]))
    tree = data.draw(structured(data.draw(expressions()), shapes, depth=3))
    assert parse(to_text(tree)) == tree


@given(indexed_cases())
def test_indexed_cases_print_and_parse_back(case):
    assert parse(to_text(case.ir)) == case.ir


@given(st.text(max_size=60))
@example("x.__class__")
@example("__import__")
@example("sum(x, dim=(1,)) ** -x.T")
def test_random_text_gives_a_tree_or_an_expression_error(text):
    with contextlib.suppress(ExpressionError):
        parse(text, {"x", "y"})
