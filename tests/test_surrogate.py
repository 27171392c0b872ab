"""Declared surrogate gradients (``surrogate.<var>``): the shipped straight-through, gradient-reversal, CompressAI
LowerBound and fairseq LogSumExpMoE impls pass against their rules; each rule broken on purpose, and an impl that
follows the true derivative instead, fails with the usual localized report; bad rules are case errors."""

import json

import pytest
from click.testing import CliRunner

from diffcheck.cli import main

from .conftest import ROOT

SHIPPED = ROOT / "cases" / "surrogate"
IMPLS = (SHIPPED / "surrogates.py").read_text()
CASES = (SHIPPED / "surrogate.toml").read_text()


def run(*args):
    result = CliRunner().invoke(main, ["run", *map(str, args)])
    return result.exit_code, result.output


def shipped(tmp_path, impl_from: str = "", impl_to: str = "", toml_from: str = "", toml_to: str = ""):
    """The shipped cases and impls copied into tmp_path, with one piece of text replaced in each (checked)."""
    impls, cases = IMPLS, CASES
    if impl_from:
        assert impl_from in impls
        impls = impls.replace(impl_from, impl_to)
    if toml_from:
        assert toml_from in cases
        cases = cases.replace(toml_from, toml_to)
    (tmp_path / "surrogates.py").write_text(impls)
    path = tmp_path / "surrogate.toml"
    path.write_text(cases)
    return path


def test_shipped_surrogate_cases_pass_and_the_report_says_surrogate(tmp_path):
    code, out = run(SHIPPED, "--device", "cpu", "--json", tmp_path / "r.json")
    assert code == 0, out
    assert "4 passed, 0 failed" in out
    data = json.loads((tmp_path / "r.json").read_text())
    for case in data["cases"]:
        grads = [c for c in case["checks"] if c["kind"] == "grad"]
        assert grads and all(c["against"] == "surrogate" and c["status"] == "pass" for c in grads), case["name"]
        self_fd = [c for c in case["checks"] if c["kind"] == "self_fd"]
        assert self_fd and all(c["status"] == "skip" and "surrogate" in c["message"] for c in self_fd)
        # the reference's own derivative is still checked against finite differences
        assert any(c["kind"] == "fd" and c["status"] == "pass" for c in case["checks"])


def test_verbose_report_prints_the_declared_rule():
    code, out = run(SHIPPED, "--device", "cpu", "-k", "gradient_reversal", "-v")
    assert code == 0, out
    assert "grad x [float32 cpu]: impl vs surrogate" in out
    assert "surrogate d/dx := -0.5 * g" in out


BROKEN = [
    # (case, impl text, its broken replacement, what the report must say)
    ("straight_through_step", "        return grad\n", "        return grad * 0\n", "all zero"),
    ("gradient_reversal", "return -ctx.alpha * grad, None", "return ctx.alpha * grad, None", "sign flipped"),
    ("compressai_lower_bound", "grad < 0)", "grad > 0)", "grad x"),
    ("compressai_lower_bound", "x >= bound", "x <= bound", "grad x"),
    ("fairseq_logsumexp_moe", "return grad.unsqueeze(ctx.dim) * posterior, None, None",
     "return -grad.unsqueeze(ctx.dim) * posterior, None, None", "sign flipped"),
]


@pytest.mark.parametrize("name, good, bad, said", BROKEN, ids=[f"{b[0]}:{b[2].strip()}" for b in BROKEN])
def test_each_rule_broken_on_purpose_fails_localized(tmp_path, name, good, bad, said):
    path = shipped(tmp_path, good, bad)
    for dtype in ("float64", "float32"):
        code, out = run(path, "--device", "cpu", "-k", name, "--dtype", dtype)
        assert code == 1, out
        assert f"FAIL  {path}::{name}" in out and "vs surrogate" in out and said in out, out
        assert "worst entries" in out or "entries" in out


TRUE_GRADIENT = [
    # an impl whose backward is the true derivative of its forward, under a case that declares a surrogate
    ("straight_through_step", "        return grad\n", "        return torch.zeros_like(grad)\n"),
    ("gradient_reversal", "return -ctx.alpha * grad, None", "return grad, None"),
    ("compressai_lower_bound", "passes = torch.logical_or(x >= bound, grad < 0)", "passes = x >= bound"),
    ("fairseq_logsumexp_moe", "(posterior,) = ctx.saved_tensors", "posterior = torch.softmax(ctx.logp, ctx.dim)"),
]


@pytest.mark.parametrize("name, good, bad", TRUE_GRADIENT, ids=[t[0] for t in TRUE_GRADIENT])
def test_an_impl_that_follows_the_true_gradient_fails_against_the_surrogate(tmp_path, name, good, bad):
    impl_from, impl_to = good, bad
    if name == "fairseq_logsumexp_moe":  # keep logp for the true derivative softmax(logp)
        path = shipped(tmp_path, "        ctx.dim = dim\n", "        ctx.dim = dim\n        ctx.logp = logp\n")
        text = path.with_name("surrogates.py").read_text().replace(impl_from, impl_to)
        path.with_name("surrogates.py").write_text(text)
    else:
        path = shipped(tmp_path, impl_from, impl_to)
    code, out = run(path, "--device", "cpu", "-k", name, "--dtype", "float64")
    assert code == 1, out
    assert "FAIL" in out and "vs surrogate" in out


def test_without_the_declared_surrogate_the_same_impl_is_flagged(tmp_path):
    path = shipped(tmp_path, toml_from='surrogate.x = "-0.5 * g"\n', toml_to="")
    code, out = run(path, "--device", "cpu", "-k", "gradient_reversal", "--dtype", "float64")
    assert code == 1, out
    assert "impl vs symbolic" in out


def test_the_forward_is_still_checked_against_expr(tmp_path):
    path = shipped(tmp_path, "return torch.maximum(x, bound)", "return torch.maximum(x, bound + 1e-3)")
    code, out = run(path, "--device", "cpu", "-k", "compressai_lower_bound", "--dtype", "float64")
    assert code == 1, out
    assert "FAIL value [float64 cpu]" in out


def test_expect_grad_of_a_surrogate_var_is_the_rule_s_answer(tmp_path):
    (tmp_path / "surrogates.py").write_text(IMPLS)
    case = '''
name = "grl"
expr = "x"
impl = "surrogates:GradientReversal"
impl_args = {{ alpha = 0.5 }}
devices = ["cpu"]
vars.x = {{ shape = [2], value = [1.0, 2.0] }}
surrogate.x = "-0.5 * g"
expect.grad.x = {want}
'''
    (tmp_path / "good.toml").write_text(case.format(want="[-0.5, -0.5]"))
    code, out = run(tmp_path / "good.toml")
    assert code == 0, out
    (tmp_path / "good.toml").write_text(case.format(want="[1.0, 1.0]"))  # the true derivative is not expected
    code, out = run(tmp_path / "good.toml")
    assert code == 1 and "expect_grad x" in out, out


BAD_RULES = [
    # (expr, extra keys, the key named, what the error says)
    ("x + g", 'vars.g = { shape = [2] }\nsurrogate.x = "g"', "surrogate.x", "a var is named 'g'"),
    ("x", 'surrogate.x = "sum(g) * ones"', "surrogate.x", "ones"),
    ("x", 'surrogate.x = "unsqueeze(g, 0)"', "surrogate.x", "does not broadcast to var 'x''s shape [2]"),
    ("x", 'surrogate.y = "g"', "surrogate.y", "not a declared var"),
    ("x", 'surrogate.x = "__import__(g)"', "surrogate.x", "bad surrogate"),
    ("x + b", 'vars.b = { shape = [2], requires_grad = false }\nsurrogate.b = "g"', "surrogate.b",
     "requires_grad = false"),
]


@pytest.mark.parametrize("expr, extra, key, said", BAD_RULES, ids=[b[2] + ":" + b[3][:12] for b in BAD_RULES])
def test_bad_surrogate_rules_are_case_errors_naming_the_key(tmp_path, expr, extra, key, said):
    (tmp_path / "mine.py").write_text("def f(x, **kw):\n    return x * 1.0\n")
    (tmp_path / "good.toml").write_text('name = "good"\nexpr = "x"\nimpl = "mine:f"\ndevices = ["cpu"]\n'
                                        'vars.x = { shape = [2] }\n')
    (tmp_path / "bad.toml").write_text(f'name = "bad"\nexpr = "{expr}"\nimpl = "mine:f"\nvars.x = {{ shape = [2] }}\n'
                                       f'{extra}\n')
    code, out = run(tmp_path)
    assert code == 2, out
    assert "case 'bad': " in out and key in out and said in out, out
    assert "1 passed" in out


def test_surrogate_needs_an_impl(write_case):
    code, out = run(write_case('name = "s"\nexpr = "x"\nvars.x = { shape = [2] }\nsurrogate.x = "g"\n'))
    assert code == 2 and "surrogate needs impl" in out, out


def test_explain_says_the_departure_is_declared():
    result = CliRunner().invoke(main, ["explain", str(SHIPPED / "surrogate.toml"), "-k", "gradient_reversal"])
    assert "DEPARTS" in result.output
    assert "surrogate.x = '-0.5 * g' is declared" in result.output


def test_api_takes_surrogate():
    import torch

    import diffcheck

    class Reverse(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x.clone()

        @staticmethod
        def backward(ctx, g):
            return -g

    x = {"x": {"shape": [3]}}
    result = diffcheck.check("x", x, impl=Reverse, surrogate={"x": "-g"})
    result.assert_ok()
    assert {c.against for c in result.checks if c.kind == "grad"} == {"surrogate"}
    assert diffcheck.check("x", x, impl=Reverse, surrogate={"x": "g"}).status == "fail"
    with pytest.raises(diffcheck.CaseError, match=r"surrogate\.x"):
        diffcheck.check("x", x, impl=Reverse, surrogate={"x": "unsqueeze(g, 0)"})


def test_under_transforms_the_declared_rule_is_what_the_backward_is_judged_against(tmp_path):
    """vmap and layouts judge the impl's VJPs at the case's point against the surrogate (Point.expected), not the
    true derivative (they were judged against the true derivative before, and failed every shipped case)."""
    code, out = run(SHIPPED, "--device", "cpu", "--transform", "vmap", "--transform", "layouts", "--json",
                    tmp_path / "r.json")
    assert code == 0, out
    checks = [c for case in json.loads((tmp_path / "r.json").read_text())["cases"] for c in case["checks"]]
    assert any(c["kind"] == "vmap" and c["status"] == "pass" and c["var"] for c in checks)
    assert any(c["kind"] == "layouts" and c["status"] == "pass" and c["var"] for c in checks)
