"""`diffcheck explain`: the seed tutorials' chain-rule figures, reproduced from the symbolic engine's program."""

import numpy as np
import pytest
from click.testing import CliRunner

from diffcheck import explain
from diffcheck.cli import main
from diffcheck.runner import load

from .conftest import ROOT

SEEDS = ROOT / "cases" / "explain" / "seeds.toml"


def graph_of(name, at=()):
    (case,) = load(SEEDS, name)
    return explain.build(case, explain.parse_at(at, case))


def cli(*args):
    result = CliRunner().invoke(main, ["explain", *map(str, args)])
    return result.exit_code, result.output


def test_J_3_a_plus_bc_has_the_tutorials_chain_rule():
    """seed 004: v = b*c, u = a + v, J = 3u; dJ/da = 3 x 1, dJ/db = 3 x 1 x c, dJ/dc = 3 x 1 x b at a=5, b=3, c=2."""
    g = graph_of("explain_J_3_a_plus_bc")
    assert [g.node(n).op for n in ("t1", "t2", "out")] == ["mul", "add", "mul"]
    assert g.node("out").args == ["3", "t2"] and float(g.node("out").value) == 33.0
    assert float(g.node("out").adjoint) == 1.0
    assert (g.edge("t2", "out").local, float(g.edge("t2", "out").local_value)) == ("3", 3.0)
    assert float(g.node("t2").adjoint) == 3.0 and float(g.node("t1").adjoint) == 3.0  # dJ/du, dJ/dv
    assert (g.edge("b", "t1").local, float(g.edge("b", "t1").local_value)) == ("c", 2.0)
    assert (g.edge("c", "t1").local, float(g.edge("c", "t1").local_value)) == ("b", 3.0)
    assert float(g.edge("a", "t2").contribution) == 3.0
    assert float(g.edge("b", "t1").contribution) == 6.0  # 3 x 1 x c
    assert float(g.edge("c", "t1").contribution) == 9.0  # 3 x 1 x b
    for name, want in (("a", 3.0), ("b", 6.0), ("c", 9.0)):
        grads = g.node(name).grads
        assert set(grads) == {"symbolic", "autograd", "finite differences"}
        assert float(grads["symbolic"]) == want and float(grads["autograd"]) == want
        assert abs(float(grads["finite differences"]) - want) < 1e-8
    assert not g.departures


def test_z_wx_plus_b_figure():
    """seed 000's figure: dz/dW = dz/dy * dy/dW = X, dz/dX = W, dz/db = 1."""
    g = graph_of("explain_z_wx_plus_b")
    assert g.node("t1").args == ["w", "x"] and g.node("out").args == ["t1", "b"]
    assert g.edge("w", "t1").local == "x" and float(g.edge("w", "t1").contribution) == 3.0
    assert g.edge("x", "t1").local == "w" and float(g.edge("x", "t1").contribution) == 0.5
    assert g.edge("b", "out").local == "1" and float(g.node("b").grads["symbolic"]) == 1.0


def test_sum_x_plus_b_gives_ones_and_mean_gives_1_5_x_plus_2():
    g = graph_of("explain_sum_x_plus_b")
    assert np.array_equal(g.node("b").grads["symbolic"], np.ones((3, 4)))
    assert np.array_equal(g.node("b").grads["autograd"], np.ones((3, 4)))
    g = graph_of("explain_mean_3_x_plus_2_squared")
    x = np.array([[1.0, 2.0], [3.0, 4.0]])
    assert np.allclose(g.node("out").value, 64.5)
    assert np.allclose(g.node("t4").adjoint, 0.25)  # d mean / d entry = 1/4
    assert np.allclose(g.node("x").grads["symbolic"], 1.5 * (x + 2), rtol=0, atol=1e-14)
    assert np.allclose(g.node("x").grads["finite differences"], 1.5 * (x + 2), rtol=1e-9)
    # x is used twice: its gradient is the sum of what flows back along both edges
    into_x = [e.contribution for e in g.edges if e.src == g.node("x").slot]
    assert len(into_x) == 2 and np.allclose(sum(into_x), 1.5 * (x + 2))


def test_at_moves_the_point_and_the_cli_prints_the_chain_rule():
    code, out = cli(SEEDS, "-k", "explain_J_3_a_plus_bc", "--at", "a=1", "--at", "b=-2", "--at", "c=4")
    assert code == 0, out
    assert "t1 = mul(b, c) = -8" in out
    assert "dt1/db = c = 4;  d out/dt1 * dt1/db = 3 * 4 = 12" in out
    assert "dt1/dc = b = -2;  d out/dt1 * dt1/dc = 3 * -2 = -6" in out
    assert "symbolic: 12" in out and "autograd: 12" in out


def test_bad_at_is_an_error_naming_the_var():
    code, out = cli(SEEDS, "-k", "explain_J_3_a_plus_bc", "--at", "b=[1, 2]")
    assert code == 2 and "--at 'b=[1, 2]'" in out and "shape [2] where [] is declared" in out
    code, out = cli(SEEDS, "-k", "explain_J_3_a_plus_bc", "--at", "q=1")
    assert code == 2 and "var one of a, b, c" in out
    code, out = cli(SEEDS, "-k", "explain_J_3_a_plus_bc", "--at", "b=__import__('os')")
    assert code == 2 and "a number or a JSON list" in out


def test_pictures_are_written(tmp_path):
    svg, png = tmp_path / "g.svg", tmp_path / "g.png"
    code, out = cli(SEEDS, "-k", "explain_J_3_a_plus_bc", "--svg", svg, "--png", png)
    assert code == 0, out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = svg.read_text()
    assert text.lstrip().startswith("<?xml") and "<svg" in text
    code, out = cli(SEEDS, "--svg", svg)  # four cases selected: a picture needs one
    assert code == 2 and "choose one with -k" in out


IMPL = '''
import torch

class Mul(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, y):
        ctx.save_for_backward(x, y)
        return x * y

    @staticmethod
    def backward(ctx, g):
        x, y = ctx.saved_tensors
        return g * y, g * y  # the gradient of y should be g * x
'''


def test_failing_impl_marks_the_input_where_its_backward_departs(tmp_path):
    (tmp_path / "kern.py").write_text(IMPL)
    path = tmp_path / "case.toml"
    path.write_text('name = "mul"\nexpr = "x*y"\nimpl = "kern:Mul"\nvars.x = { shape = [], value = 2.0 }\n'
                    'vars.y = { shape = [], value = 5.0 }\n')
    code, out = cli(path)
    assert code == 1, out
    (case,) = load(path)
    from diffcheck.explain import impl_fn

    g = explain.build(case, fn=impl_fn(case))
    assert g.node("x").departs == "" and float(g.node("x").grads["impl"]) == 5.0
    assert g.node("y").departs.startswith("impl gives 5 where the chain rule gives 2")
    assert "DEPARTS from the chain rule: impl gives 5 where the chain rule gives 2" in out
    assert "per input" in out
    code, out = cli(path, "--no-impl")  # nothing imported: the reference against autograd
    assert code == 0 and "--no-impl" in out


@pytest.mark.parametrize("name", ["explain_z_wx_plus_b", "explain_J_3_a_plus_bc", "explain_sum_x_plus_b",
                                  "explain_mean_3_x_plus_2_squared"])
def test_the_explain_cases_pass_as_gradient_cases(name):
    result = CliRunner().invoke(main, ["run", str(SEEDS), "-k", name, "--device", "cpu"])
    assert result.exit_code == 0, result.output


STEPS_IMPL = '''
import torch


class Exp(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h):
        e = h.exp()
        ctx.save_for_backward(e)
        return e

    @staticmethod
    def backward(ctx, g):
        (e,) = ctx.saved_tensors
        return WRONG * g * e


class ExpMul(torch.autograd.Function):
    """exp(x*y) in one opaque step; its gradient of y is wrong."""

    @staticmethod
    def forward(ctx, x, y):
        e = torch.exp(x * y)
        ctx.save_for_backward(x, y, e)
        return e

    @staticmethod
    def backward(ctx, g):
        x, y, e = ctx.saved_tensors
        return g * e * y, g * e * (y if WRONG != 1 else x)


class Whole(torch.autograd.Function):
    """3*exp(x*y) + z as a single custom Function: nothing inside is exposed."""

    @staticmethod
    def forward(ctx, x, y, z):
        ctx.save_for_backward(x, y)
        return 3 * torch.exp(x * y) + z

    @staticmethod
    def backward(ctx, g):
        x, y = ctx.saved_tensors
        e = torch.exp(x * y)
        return 3 * g * e * y, 3 * g * e * (y if WRONG != 1 else x), g


def mid(x, y, z):
    return 3 * Exp.apply(x * y) + z


def opaque(x, y, z):
    return 3 * ExpMul.apply(x, y) + z


def detach(x, y, z):
    s = torch.sin(x * y)
    s = s.detach() + WRONG * (s - s.detach())  # the same value; the gradient through sin is scaled
    return 3 * torch.exp(s) + z


def hook(x, y, z):
    h = x * y
    h.register_hook(lambda g: WRONG * g)  # scales the gradient leaving h
    return 3 * torch.exp(torch.sin(h)) + z


def twice(x, y, z):
    """sin(x*y) computed twice and squared as a product: another formula, same gradient, but for exp(z)."""
    a = torch.sin(x * y)
    b = torch.sin(x * y)
    return 3 * torch.exp(a * b) * Exp.apply(z)
'''

STEPS_CASE = '''
name = "{name}"
expr = "{expr}"
impl = "kern:{name}"
vars.x = {{ shape = [], value = 0.5 }}
vars.y = {{ shape = [], value = 1.5 }}
vars.z = {{ shape = [], value = 0.3 }}
'''
EXP = "3*exp(x*y) + z"
SIN = "3*exp(sin(x*y)) + z"


def steps_graph(tmp_path, name, expr, wrong):
    """The impl ``name`` (WRONG = 2: a wrong step; WRONG = 1: its correct twin) through the CLI and as a graph."""
    (tmp_path / "kern.py").write_text(f"WRONG = {wrong}\n" + STEPS_IMPL)
    path = tmp_path / "case.toml"
    path.write_text(STEPS_CASE.format(name=name, expr=expr))
    code, out = cli(path)
    (case,) = load(path)
    g = explain.build(case, fn=explain.impl_fn(case))
    marked = [(g.nodes[e.src].name, g.nodes[e.dst].name, g.nodes[e.dst].op) for e in g.edges if e.departs]
    return code, out, g, marked


@pytest.mark.parametrize("name, expr, want", [
    ("mid", EXP, ("t1", "t2", "exp")),  # a custom Function with a wrong backward in the middle of torch ops
    ("detach", SIN, ("t1", "t2", "sin")),  # s.detach() + 2 * (s - s.detach()): the value of sin, twice its gradient
    ("hook", SIN, ("t1", "t2", "sin")),  # a hook doubling the gradient of x*y: it leaves sin's backward wrong
])
def test_a_wrong_step_inside_an_impl_of_torch_ops_is_marked_on_that_edge(tmp_path, name, expr, want):
    code, out, g, marked = steps_graph(tmp_path, name, expr, wrong=2)
    assert code == 1, out
    assert marked == [want]  # the step, not the edges into x and y
    assert g.localisation == "per step" and g.node("x").departs and g.node("y").departs
    assert not g.edge("x", "t1").departs and not g.edge("y", "t1").departs
    assert float(g.node("t1").impl_adjoint) == pytest.approx(2 * float(g.node("t1").adjoint), rel=1e-12)
    assert float(g.node("t2").impl_adjoint) == pytest.approx(float(g.node("t2").adjoint), rel=1e-12)
    src, dst, op = want
    assert f"DEPARTS from the chain rule on this edge: the backward of {dst} = {op}({src}): d out/d {dst} agrees" \
        in out
    assert "per step: the impl's intermediates t1, t2, t3" in out
    assert "wrong (from the step marked above): impl gives" in out


@pytest.mark.parametrize("name, expr", [("mid", EXP), ("detach", SIN), ("hook", SIN), ("opaque", EXP),
                                        ("Whole", EXP)])
def test_the_correct_twins_mark_nothing(tmp_path, name, expr):
    code, out, g, marked = steps_graph(tmp_path, name, expr, wrong=1)
    assert code == 0, out
    assert marked == [] and g.localisation == "" and "DEPARTS" not in out and "per step" not in out


def test_a_departure_inside_an_opaque_custom_function_is_marked_on_the_edges_into_its_inputs(tmp_path):
    """exp(x*y) as one custom Function: t1 = x*y is inside it, unseen; t2 (its output) still agrees."""
    code, out, _, marked = steps_graph(tmp_path, "opaque", EXP, wrong=2)
    assert code == 1, out
    assert marked == [("y", "t1", "mul")]  # y's gradient is wrong, x's is right
    assert "between t2 (agrees) and y, through t1 (not matched: inside an opaque step" in out
    assert "per step: the impl's intermediates t2, t3 were matched" in out


def test_a_single_custom_function_is_localised_per_input_and_says_so(tmp_path):
    code, out, g, marked = steps_graph(tmp_path, "Whole", EXP, wrong=2)
    assert code == 1, out
    assert marked == [] and g.localisation == "per input"
    assert g.node("y").departs and not g.node("x").departs
    assert "per input: the impl exposes no intermediates" in out
    assert "DEPARTS from the chain rule: impl gives" in out


def test_another_formula_with_repeated_intermediates_does_not_move_the_mark(tmp_path):
    """sin(x*y) computed twice: each node's adjoint is the sum over its copies, so the x, y side agrees and only
    the wrong exp(z) step is marked."""
    code, out, g, marked = steps_graph(tmp_path, "twice", "3*exp(sin(x*y)**2) * exp(z)", wrong=2)
    assert code == 1, out
    assert marked == [("z", "t6", "exp")]
    assert not g.node("x").departs and not g.node("y").departs
    assert float(g.node("t2").impl_adjoint) == pytest.approx(float(g.node("t2").adjoint), rel=1e-12)


def test_the_marked_step_is_drawn_and_in_the_html_report(tmp_path):
    (tmp_path / "kern.py").write_text("WRONG = 2\n" + STEPS_IMPL)
    path = tmp_path / "case.toml"
    path.write_text(STEPS_CASE.format(name="mid", expr=EXP))
    svg = tmp_path / "g.svg"
    code, out = cli(path, "--svg", svg, "--png", tmp_path / "g.png")
    assert code == 1, out
    text = svg.read_text()
    assert "DEPARTS here:" in text and "stroke-dasharray" in text
    page = tmp_path / "report.html"
    result = CliRunner().invoke(main, ["run", str(path), "--device", "cpu", "--html", str(page)])
    assert result.exit_code == 1, result.output
    html = page.read_text()
    assert "DEPARTS here:" in html and "d out/d t2 agrees," in html and "d out/d t1 does not" in html
