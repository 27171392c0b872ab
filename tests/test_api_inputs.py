"""Real tensors and arguments: ``diffcheck.check(inputs=...)`` honours the tensors' dtype and requires_grad;
``impl_args`` carries None, lists and tensors (from the API) and None ({}), lists and strings (from case files);
an impl may take a var the expression does not use when it is declared requires_grad = false."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import diffcheck
from diffcheck.cli import main


def run(*args):
    result = CliRunner().invoke(main, ["run", *map(str, args)])
    return result.exit_code, result.output


LINEAR = '''
def linear(x, w, bias):
    """bias is required: diffcheck must pass None itself"""
    y = x @ w.T
    return y if bias is None else y + bias
'''


def grad_dtypes(result):
    return sorted({c.dtype for c in result.checks if c.kind == "grad"})


# ---- case files ----

def test_case_file_passes_none_as_an_empty_table(tmp_path):
    (tmp_path / "mine.py").write_text(LINEAR)
    case = ('name = "lin"\nexpr = "x @ w.T"\nimpl = "mine:linear"\nimpl_args = {{ bias = {bias} }}\n'
            'devices = ["cpu"]\nvars.x = {{ shape = [3, 4] }}\nvars.w = {{ shape = [2, 4] }}\n')
    (tmp_path / "lin.toml").write_text(case.format(bias="{}"))
    code, out = run(tmp_path / "lin.toml")
    assert code == 0, out
    (tmp_path / "lin.toml").write_text(case.format(bias="0.5"))  # a real bias: the forward is off
    code, out = run(tmp_path / "lin.toml", "--dtype", "float64")
    assert code == 1 and "FAIL value" in out, out


def test_case_file_impl_args_take_lists_and_strings(tmp_path):
    (tmp_path / "mine.py").write_text("import torch\ndef f(x, dims, how):\n"
                                      "    assert isinstance(dims, list) and how == 'sum'\n"
                                      "    return torch.sum(x * x, dim=dims)\n")
    (tmp_path / "c.toml").write_text('name = "c"\nexpr = "sum(x**2, dim=(0, 2))"\nimpl = "mine:f"\n'
                                     'impl_args = { dims = [0, 2], how = "sum" }\ndevices = ["cpu"]\n'
                                     'vars.x = { shape = [2, 3, 2] }\n')
    code, out = run(tmp_path / "c.toml")
    assert code == 0, out


def test_a_non_empty_table_in_impl_args_is_a_case_error(tmp_path, write_case):
    (tmp_path / "mine.py").write_text("def f(x, opts):\n    return x\n")
    code, out = run(write_case('name = "t"\nexpr = "x"\nimpl = "mine:f"\nimpl_args = { opts = { a = 1 } }\n'
                               'vars.x = { shape = [2] }\n'))
    assert code == 2, out
    assert "impl_args.opts: a table is not an impl argument; write {} (an empty table) for None" in out


SCALE = "def f(x, scale):\n    return x * scale\n"


def test_an_unused_requires_grad_false_var_goes_to_the_impl(tmp_path):
    (tmp_path / "mine.py").write_text(SCALE)
    case = ('name = "s"\nexpr = "x * 2"\nimpl = "mine:f"\ndevices = ["cpu"]\nvars.x = {{ shape = [3] }}\n'
            'vars.scale = {{ value = {v}, requires_grad = false }}\n')
    (tmp_path / "s.toml").write_text(case.format(v="2.0"))
    code, out = run(tmp_path / "s.toml", "--json", tmp_path / "r.json")
    assert code == 0, out
    checks = json.loads((tmp_path / "r.json").read_text())["cases"][0]["checks"]
    assert not any(c["var"] == "scale" for c in checks)  # held constant: never differentiated
    (tmp_path / "s.toml").write_text(case.format(v="3.0"))  # the impl really receives it
    code, out = run(tmp_path / "s.toml", "--dtype", "float64")
    assert code == 1 and "FAIL value" in out, out


def test_an_unused_differentiated_var_is_still_an_error(tmp_path, write_case):
    (tmp_path / "mine.py").write_text(SCALE)
    code, out = run(write_case('name = "s"\nexpr = "x * 2"\nimpl = "mine:f"\nvars.x = { shape = [3] }\n'
                               'vars.scale = { value = 2.0 }\n'))
    assert code == 2, out
    assert "var 'scale' is declared but not used in expr (an impl may take one that is declared requires_grad " \
           "= false)" in out
    code, out = run(write_case('name = "s"\nexpr = "x * 2"\nvars.x = { shape = [3] }\n'
                               'vars.scale = { value = 2.0, requires_grad = false }\n', "noimpl.toml"))
    assert code == 2 and "var 'scale' is declared but not used in expr" in out, out


# ---- the API ----

def linear(x, w, bias):
    y = x @ w.T
    return y if bias is None else y + bias


def test_api_passes_bias_none():
    variables = {"x": {"shape": [3, 4]}, "w": {"shape": [2, 4]}}
    diffcheck.check("x @ w.T", variables, impl=linear, impl_args={"bias": None}).assert_ok()
    bias = torch.tensor([0.5, -0.5])
    diffcheck.check("x @ w.T + b", {**variables, "b": {"value": np.array([0.5, -0.5]), "requires_grad": False}},
                    impl=lambda x, w, b, bias: linear(x, w, bias), impl_args={"bias": bias}).assert_ok()
    assert diffcheck.check("x @ w.T", variables, impl=linear, impl_args={"bias": bias}).status == "fail"


def test_api_extra_tensor_argument_follows_the_dtype_under_check():
    seen = []

    def scaled(x, scale, dims):
        seen.append((scale.dtype, x.dtype, scale.requires_grad))
        return torch.sum(x * scale, dim=dims)

    x = {"x": {"shape": [2, 3]}}
    weights = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    result = diffcheck.check("sum(x * w, dim=0)",
                             {**x, "w": {"value": np.array([1.0, 2.0, 3.0]), "requires_grad": False}},
                             impl=lambda x, w, scale, dims: scaled(x, scale, dims),
                             impl_args={"scale": weights, "dims": [0]}, dtypes=("float64", "float32"))
    result.assert_ok()
    assert (torch.float32, torch.float32, False) in seen and (torch.float64, torch.float64, False) in seen
    wrong = diffcheck.check("sum(x * w, dim=0)",
                            {**x, "w": {"value": np.array([1.0, 2.0, 3.0]), "requires_grad": False}},
                            impl=lambda x, w, scale, dims: scaled(x, scale, dims),
                            impl_args={"scale": np.array([1.0, 2.0, 3.001]), "dims": [0]})
    assert wrong.status == "fail"


def test_api_inputs_of_float32_are_checked_in_float32():
    x = torch.randn(3, 4, dtype=torch.float32, requires_grad=True)
    result = diffcheck.check("sum(sigmoid(x))", inputs={"x": x})
    result.assert_ok()
    assert grad_dtypes(result) == ["float32"]
    assert grad_dtypes(diffcheck.check("sum(sigmoid(x))", inputs={"x": x.double()}, vars={
        "x": {"requires_grad": True}})) == ["float64"]
    assert grad_dtypes(diffcheck.check("sum(sigmoid(x))", inputs={"x": x}, dtypes=("float64", "float32"))) == \
        ["float32", "float64"]
    assert grad_dtypes(diffcheck.check("sum(sigmoid(x))", inputs={"x": x.detach().numpy()})) == ["float32"]


def test_api_inputs_checked_at_the_given_values():
    x = torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64, requires_grad=True)
    result = diffcheck.check("sum(x**2)", inputs={"x": x}, expect={"grad": {"x": [2.0, -4.0, 6.0]}})
    result.assert_ok()
    wrong = diffcheck.check("sum(x**2)", inputs={"x": x}, expect={"grad": {"x": [2.0, -4.0, 6.1]}})
    assert wrong.status == "fail"


def test_api_a_requires_grad_false_tensor_is_held_constant():
    class MulBackwardForBoth(torch.autograd.Function):  # a gradient for c would be wrong: c is constant
        @staticmethod
        def forward(ctx, x, c):
            ctx.save_for_backward(x, c)
            return x * c

        @staticmethod
        def backward(ctx, g):
            _, c = ctx.saved_tensors
            return g * c, None

    x = torch.randn(4, dtype=torch.float64, requires_grad=True)
    c = torch.randn(4, dtype=torch.float64)
    result = diffcheck.check("x * c", inputs={"x": x, "c": c}, impl=MulBackwardForBoth)
    result.assert_ok()
    assert {ch.var for ch in result.checks if ch.kind == "grad"} == {"x"}
    # the same tensor overridden to be differentiated: the missing gradient of c is caught
    forced = diffcheck.check("x * c", inputs={"x": x, "c": c}, vars={"c": {"requires_grad": True}},
                             impl=MulBackwardForBoth)
    assert forced.status == "fail" and any(ch.var == "c" and ch.status == "fail" for ch in forced.checks)


def test_api_integer_and_bool_tensors_become_int64_and_bool_vars():
    x = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    t = torch.tensor([4, 0, 0, 2])
    m = torch.tensor([True, False, True])
    result = diffcheck.check("sum(where(m, x[t], 0.0))", inputs={"x": x, "t": t, "m": m})
    result.assert_ok()
    assert grad_dtypes(result) == ["float64"]


def test_api_all_constant_inputs_is_a_case_error():
    with pytest.raises(diffcheck.CaseError, match="no var is differentiated"):
        diffcheck.check("sum(x)", inputs={"x": torch.randn(3)})
    with pytest.raises(TypeError, match="inputs"):
        diffcheck.check("sum(x)")
