"""order = 2 / 3: torch's Hessian-vector products (reverse-over-reverse, forward-over-reverse) and third
derivatives against the symbolic engine's exact ones (jets) with a derived budget; the wrong-on-purpose corpus
(a double backward that uses an intermediate saved detached on ctx) against its correct twins."""

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from diffcheck.cli import main
from diffcheck.engines import jets
from diffcheck.engines.symbolic import Program
from diffcheck.expr.parse import parse

from .conftest import ROOT

CORPUS = ROOT / "benchmarks" / "transform_corpus"
HIGHER = ("hvp", "hvp_fwd", "d3")


def run_json(tmp_path, path, *args):
    out = tmp_path / "out.json"
    result = CliRunner().invoke(main, ["run", str(path), "--json", str(out), *map(str, args)])
    return result.exit_code, result.output, {c["name"]: c for c in json.loads(out.read_text())["cases"]}


def exact(expr, values, directions, cotangent=1.0):
    shapes = {n: np.shape(v) for n, v in values.items()}
    program = Program(parse(expr, set(values)), shapes, list(values))
    fwd = program.forward({n: np.asarray(v, float) for n, v in values.items()}, kink_u=2.0**-24)
    return jets.derivatives(program, fwd, cotangent, directions)


def test_known_higher_derivatives_of_x_cubed():
    x, v, w = np.array([2.0, -0.5]), np.array([1.0, 3.0]), np.array([0.5, -2.0])
    out = exact("sum(x**3)", {"x": x}, [{"x": v}, {"x": w}])["x"]
    np.testing.assert_allclose(out[0][0], 3 * x**2, rtol=1e-15)
    np.testing.assert_allclose(out[1][0], 6 * x * v, rtol=1e-15)  # H v
    np.testing.assert_allclose(out[2][0], 6 * x * w, rtol=1e-15)  # H w
    np.testing.assert_allclose(out[3][0], 6 * v * w, rtol=1e-15)  # D3[1, v, w]
    assert all(np.all(e > 0) for _, e in out[:3])  # every component carries a rounding budget


def test_known_higher_derivatives_of_sin_x_times_y():
    x, y = 0.5, 2.0
    out = exact("sin(x) * y", {"x": np.array(x), "y": np.array(y)},
                [{"x": np.array(1.0), "y": np.array(0.0)}, {"x": np.array(0.0), "y": np.array(1.0)}], 1.5)
    assert out["x"][1][0] == pytest.approx(1.5 * -np.sin(x) * y, rel=1e-15)  # c f_xx v_x
    assert out["y"][1][0] == pytest.approx(1.5 * np.cos(x), rel=1e-15)  # c f_yx v_x
    assert out["x"][3][0] == pytest.approx(1.5 * -np.sin(x), rel=1e-15)  # c f_xxy
    assert out["y"][3][0] == 0.0  # f_yxy = 0


def test_known_higher_derivatives_of_sum_exp_w_x():
    rng = np.random.default_rng(3)
    W, x = rng.standard_normal((2, 3)), rng.standard_normal(3)
    vW, vx = rng.standard_normal((2, 3)), rng.standard_normal(3)
    wW, wx = rng.standard_normal((2, 3)), rng.standard_normal(3)
    out = exact("sum(exp(W @ x))", {"W": W, "x": x}, [{"W": vW, "x": vx}, {"W": wW, "x": wx}])
    e, dz, ez = np.exp(W @ x), vW @ x + W @ vx, wW @ x + W @ wx
    # d/dt of grad_x = W^T e along v: vW^T e + W^T (e * dz); grad_W = outer(e, x): outer(e dz, x) + outer(e, vx)
    np.testing.assert_allclose(out["x"][1][0], vW.T @ e + W.T @ (e * dz), rtol=1e-13)
    np.testing.assert_allclose(out["W"][1][0], np.outer(e * dz, x) + np.outer(e, vx), rtol=1e-13)
    dzz = vW @ wx + wW @ vx  # the mixed second derivative of z = W x along v and w
    third_x = wW.T @ (e * dz) + vW.T @ (e * ez) + W.T @ (e * (ez * dz + dzz))
    np.testing.assert_allclose(out["x"][3][0], third_x, rtol=1e-12)


def test_logsumexp_and_softmax_higher_derivatives_match_their_closed_forms():
    x, v = np.array([0.3, -1.0, 2.0]), np.array([1.0, 0.5, -0.25])
    out = exact("logsumexp(x, dim=0)", {"x": x}, [{"x": v}])["x"]
    p = np.exp(x) / np.exp(x).sum()
    np.testing.assert_allclose(out[1][0], p * v - p * (p @ v), rtol=1e-14)  # (diag p - p p^T) v


def test_ops_without_a_higher_order_rule_or_on_a_kink_say_so():
    with pytest.raises(jets.Unavailable, match="no higher-order rule for prod"):
        exact("prod(x)", {"x": np.array([1.0, 2.0])}, [{"x": np.ones(2)}])
    with pytest.raises(jets.Unavailable, match="relu sits on a kink"):
        exact("sum(relu(x))", {"x": np.array([0.0, 2.0])}, [{"x": np.ones(2)}])


ORDER_CASES = '''
devices = ["cpu"]
dtypes = ["float64", "float32"]
order = {order}

[[case]]
name = "cube"
expr = "sum(x**3)"
vars.x = {{ shape = [4] }}

[[case]]
name = "sin_x_y"
expr = "sin(x) * y"
vars.x = {{}}
vars.y = {{}}

[[case]]
name = "exp_w_x"
expr = "sum(exp(W @ x))"
vars.W = {{ shape = [2, 3] }}
vars.x = {{ shape = [3] }}

[[case]]
name = "linear"
expr = "sum(2 * x)"
vars.x = {{ shape = [3] }}

[[case]]
name = "quadratic"  # a constant H v: torch's graph ends there, the exact D3 is 0 within its rounding
expr = "var(x)"
vars.x = {{ shape = [3, 4] }}
'''


@pytest.mark.parametrize("order", [2, 3])
def test_order_2_and_3_run_every_mode_with_derived_printed_tolerances(tmp_path, order):
    path = tmp_path / "o.toml"
    path.write_text(ORDER_CASES.format(order=order))
    code, out, cases = run_json(tmp_path, path, "-v")
    assert code == 0, out
    for name, case in cases.items():
        assert case["status"] == "pass", (name, out)
        kinds = {(c["kind"], c["engine"], c["dtype"]) for c in case["checks"] if c["status"] == "pass"}
        for dtype in ("float64", "float32"):
            assert ("hvp", "autograd", dtype) in kinds and ("hvp_fwd", "autograd", dtype) in kinds
            assert (("d3", "autograd", dtype) in kinds) == (order == 3)
        assert ("hvp", "symbolic", "float64") in kinds  # the Richardson cross-check of the exact H v
    assert "autograd vs symbolic (exact H v)" in out and "derived: 4 x (u_float32 + u_float64) x error budget" in out
    assert ("d3 x [float32 cpu]: autograd vs symbolic (exact D3[c, v, w])" in out) == (order == 3)


def test_order_must_be_1_2_or_3(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('name = "a"\nexpr = "sum(x)"\nvars.x = { shape = [2] }\norder = 4\n')
    result = CliRunner().invoke(main, ["run", str(path)])
    assert result.exit_code == 2 and "case 'a'" in result.output and "order must be 1, 2 or 3, got 4" in result.output


def test_a_torch_op_without_a_double_backward_and_a_kink_are_skipped_with_the_reason(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text('devices = ["cpu"]\norder = 2\n[[case]]\nname = "hs"\nexpr = "hardsigmoid(x)"\n'
                    'dtypes = ["float32"]  # its float64 first derivative is float32-accurate (README)\n'
                    'vars.x = { shape = [3], value = [0.5, -1.0, 2.0] }\n'
                    '[[case]]\nname = "kink"\nexpr = "relu(x)"\nvars.x = { shape = [2], value = [0.0, 1.0] }\n')
    code, out, cases = run_json(tmp_path, path)
    assert code == 0, out
    hs = [c for c in cases["hs"]["checks"] if c["kind"] == "hvp" and c["engine"] == "autograd"]
    assert hs and all(c["status"] == "skip" and "derivative for aten::hardsigmoid_backward is not implemented"
                      in c["message"] for c in hs)
    kink = [c for c in cases["kink"]["checks"] if c["kind"] in HIGHER]
    assert kink and all(c["status"] == "skip" and "relu sits on a kink" in c["message"] for c in kink)


@pytest.fixture
def corpus(tmp_path):
    for name in ("higher.toml", "higher_kernels.py"):
        shutil.copy(CORPUS / name, tmp_path / name)
    return tmp_path / "higher.toml"


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_a_double_backward_through_a_detached_ctx_intermediate_is_caught_and_its_twin_passes(tmp_path, corpus,
                                                                                            dtype):
    code, out, cases = run_json(tmp_path, corpus, "--dtype", dtype, "--device", "cpu")
    assert code == 1, out
    bugs = [n for n in cases if n.startswith("bug_higher_")]
    assert len(bugs) == 2
    for name, case in cases.items():
        first_order = [c for c in case["checks"] if c["kind"] in ("grad", "self_fd", "value") and c["status"] != "skip"]
        assert first_order and all(c["status"] == "pass" for c in first_order), (name, out)
        if name.startswith("ok_"):
            assert case["status"] == "pass", (name, out)
            continue
        assert case["status"] == "fail"
        assert case["message"].startswith("the impl's first-order gradient is right; its double backward is "
                                          "wrong (hvp ")
        failed = [c for c in case["checks"] if c["status"] == "fail"]
        assert failed and all(c["kind"] == "hvp" and c["engine"] == "impl" and c["dtype"] == dtype for c in failed)
        assert any(c["worst"] for c in failed)  # localized: the entries are named
        # the exact reference itself agrees with finite differences of the exact gradient
        assert all(c["status"] == "pass" for c in case["checks"] if c["kind"] == "hvp" and c["engine"] == "symbolic")


SHIPPED = [  # expressions of the shipped op corpus (cases/ops), one per family
    ("sum(tanh(x) * exp(x))", {"x": {"shape": [5]}}),
    ("logsumexp(x, dim=1)", {"x": {"shape": [2, 3]}}),
    ("sum(softmax(x, dim=-1) * y)", {"x": {"shape": [2, 4]}, "y": {"shape": [2, 4]}}),
    ("sum((a @ b) ** 2)", {"a": {"shape": [2, 3]}, "b": {"shape": [3, 2]}}),
    ('einsum("ij,jk->ik", a, b)', {"a": {"shape": [2, 3]}, "b": {"shape": [3, 2]}}),
    ("rms_norm(x, [3], eps=1e-5)", {"x": {"shape": [2, 3]}}),  # layer_norm: see the test below
    ("cross_entropy(x, t)", {"x": {"shape": [3, 4]}, "t": {"shape": [3], "dtype": "int64", "domain": [0, 4]}}),
    ("sum(conv2d(x, w) ** 2)", {"x": {"shape": [1, 2, 3, 3]}, "w": {"shape": [1, 2, 2, 2]}}),
    ("sigmoid(x) * cumsum(x, 0) + sort(x)", {"x": {"shape": [4]}}),
    ("var(x, dim=1) + norm(x)", {"x": {"shape": [2, 3]}}),
]


@pytest.mark.parametrize("order", [2, 3])
def test_shipped_op_expressions_pass_at_order_2_and_3(tmp_path, order):
    lines = ['devices = ["cpu"]', 'dtypes = ["float64", "float32"]', f"order = {order}"]
    for i, (expr, vars_) in enumerate(SHIPPED):
        lines += ["[[case]]", f'name = "c{i}"', f"expr = {json.dumps(expr)}"]
        for name, spec in vars_.items():
            lines.append(f"vars.{name} = {{ {', '.join(f'{k} = {json.dumps(v)}' for k, v in spec.items())} }}")
    path = tmp_path / "shipped.toml"
    path.write_text("\n".join(lines) + "\n")
    code, out, cases = run_json(tmp_path, path)
    assert code == 0, out
    for name, case in cases.items():
        ran = [c for c in case["checks"] if c["kind"] in HIGHER and c["status"] == "pass"]
        assert ran, (name, out)


def test_torchs_layer_norm_third_derivative_is_judged_against_the_truth(tmp_path):
    """F.layer_norm's own triple backward (torch 2.13, CPU) disagrees with finite differences of torch's own
    H v: diffcheck's d3 must fail exactly when that is so, while its H v passes."""
    import torch

    x = torch.tensor([[0.3, -1.2, 0.8], [1.5, 0.2, -0.4]], dtype=torch.float64)
    c, v, w = (torch.tensor(np.random.default_rng(k).standard_normal((2, 3))) for k in range(3))

    def hvp(x, create):
        out = torch.nn.functional.layer_norm(x, [3])
        (g,) = torch.autograd.grad(out, x, c, create_graph=True)
        return torch.autograd.grad((g * v).sum(), x, create_graph=create)[0]

    leaf = x.clone().requires_grad_()
    (third,) = torch.autograd.grad((hvp(leaf, True) * w).sum(), leaf)
    fd = (hvp((x + 1e-5 * w).requires_grad_(), False) - hvp((x - 1e-5 * w).requires_grad_(), False)) / 2e-5
    torch_is_wrong = not torch.allclose(third, fd, rtol=1e-6, atol=1e-8)
    path = tmp_path / "ln.toml"
    path.write_text('devices = ["cpu"]\ndtypes = ["float64"]\norder = 3\n[[case]]\nname = "ln"\n'
                    'expr = "layer_norm(x, [3])"\nvars.x = { shape = [2, 3] }\n')
    _, out, cases = run_json(tmp_path, path)
    status = {(c["kind"], c["engine"]): c["status"] for c in cases["ln"]["checks"]}
    assert status[("hvp", "autograd")] == "pass" and status[("hvp", "symbolic")] == "pass", out
    assert status[("d3", "symbolic")] == "pass", out  # the exact D3 agrees with differences of the exact H v
    assert status[("d3", "autograd")] == ("fail" if torch_is_wrong else "pass"), out
