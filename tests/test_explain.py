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
