"""Case files: every mistake is an error naming the file, the case and the key; good cases still load."""

import pytest

from diffcheck.casefile import Case, load_data, load_file
from diffcheck.errors import CaseError


def one(data):
    [item] = load_data(data, "f.toml")
    return item


def base(**extra):
    return {"name": "c", "expr": "sum(x)", "vars": {"x": {"shape": [2]}}, **extra}


@pytest.mark.parametrize("data, key, needle", [
    (base(vars={"x": {"shpe": [2]}}), "vars.x.shpe", "unknown key 'shpe' in vars.x (did you mean 'shape'?)"),
    (base(exprr="x"), "exprr", "unknown key 'exprr' (did you mean 'expr'?)"),
    # an integer beyond float64 was an OverflowError traceback; a ragged list was "must hold numbers only"
    (base(vars={"x": {"shape": [2], "value": [10**400, 1]}}), "vars.x.value", "must hold finite numbers"),
    (base(vars={"x": {"shape": [2], "value": 10**400}}), "vars.x.value", "must hold finite numbers"),
    (base(vars={"x": {"shape": [2, 2], "value": [[1, 2], [3]]}}), "vars.x.value", "is a ragged nested list"),
    ({"expr": "x", "vars": {"x": {}}}, "name", "missing required key 'name'"),
    ({"name": "c", "vars": {"x": {}}}, "expr", "missing required key 'expr'"),
    (base(vars={"x": {"shape": [2], "value": [1.0, 2.0, 3.0]}}), "vars.x.value", "has shape [3] but the shape is [2]"),
    (base(vars={"x": {"shape": [2], "value": [1.0, "a"]}}), "vars.x.value", "numbers only"),
    (base(vars={"x": {"shape": [2, 2], "value": [[1.0], [1.0, 2.0]]}}), "vars.x.value", "vars.x.value"),
    (base(vars={"x": {"shape": [2], "domain": [1.0, 0.0]}}), "vars.x.domain", "lo < hi"),
    (base(vars={"x": {"shape": [0]}}), "vars.x.shape", "below 1"),
    (base(vars={"x": {"shape": [100000, 100000]}}), "vars.x.shape", "the limit is"),
    (base(vars={"x": {"shape": "2"}}), "vars.x.shape", "valid list"),
    (base(vars={"x": {"shape": [2]}, "y": {"shape": [2]}}), "vars.y", "declared but not used"),
    (base(expr="sum(x + z)"), "expr", "unknown name 'z'"),
    (base(expr="x @ w", vars={"x": {"shape": [2, 3]}, "w": {"shape": [4, 5]}}), "expr",
     "shapes [2, 3] and [4, 5] cannot be multiplied"),
    (base(expr="x + w", vars={"x": {"shape": [2, 3]}, "w": {"shape": [4]}}), "expr", "cannot be broadcast"),
    (base(expr="sum(x, dim=3)"), "expr", "dim 3 is out of range"),
    (base(expr="sum(softmax(x, dim=(0,)))"), "expr", "softmax() takes one integer dim"),
    (base(dtypes=["float8"]), "dtypes.0", "Input should be"),
    (base(dtypes=[]), "dtypes", "at least one"),
    (base(devices=["tpu"]), "devices.0", "Input should be"),
    (base(tolerance={"atol": 1e-3}), "tolerance.reason", "missing required key 'reason'"),
    (base(tolerance={"reason": "x"}), "tolerance", "needs atol or rtol"),
    (base(tolerance={"reason": "x", "atol": -1.0}), "tolerance.atol", ">= 0"),
    (base(expect={"grad": {"y": 1.0}}), "expect.grad.y", "not a declared var"),
    (base(expect={"grad": {"x": [1.0]}}), "expect.grad.x", "has shape [1]"),
    (base(vars={"x": {"shape": [2], "requires_grad": False}}), "vars", "nothing to differentiate"),
    (base(expr="2 + 3", vars={}), "expr", "uses no variables"),
    (base(expr="__import__('os')"), "expr", "unknown function '__import__'"),
    (base(expr="x.__class__"), "expr", "attribute '.__class__' is not allowed"),
])
def test_bad_case_names_file_case_and_key(data, key, needle):
    err = one(data)
    assert isinstance(err, CaseError)
    assert err.key == key
    assert needle in str(err)
    assert str(err).startswith("f.toml: case ")


def test_expression_error_points_at_the_offending_construct():
    err = one(base(expr="sum(x) + x.grad"))
    assert "attribute '.grad'" in str(err)
    expr_line, caret_line = str(err).splitlines()[-2:]
    assert expr_line == "    sum(x) + x.grad"
    assert caret_line == " " * expr_line.index("x.grad") + "^"  # under the attribute access, not anywhere


def test_good_case_loads_with_defaults():
    case = one(base())
    assert isinstance(case, Case)
    assert case.dtypes == ("float64", "float32") and case.devices == ("cpu", "cuda")
    assert case.vars["x"].domain == (-1.0, 1.0) and case.vars["x"].requires_grad
    assert case.out_shape == ()


def test_multi_case_file_shares_top_level_defaults_and_keeps_good_cases(write_case):
    path = write_case('''
dtypes = ["float64"]

[[case]]
name = "good"
expr = "sum(x)"
vars.x = { shape = [2] }

[[case]]
name = "typo"
expr = "sum(x)"
vars.x = { shpe = [2] }
''')
    good, bad = load_file(path)
    assert isinstance(good, Case) and good.dtypes == ("float64",)
    assert isinstance(bad, CaseError) and "case 'typo'" in str(bad)


def test_invalid_toml_is_a_file_error(write_case):
    [err] = load_file(write_case("name = \n"))
    assert isinstance(err, CaseError) and "invalid TOML" in str(err)


def test_an_integer_beyond_float64_in_a_case_file_is_an_error_and_the_good_case_runs(write_case):
    from click.testing import CliRunner

    from diffcheck.cli import main

    path = write_case(f'[[case]]\nname = "big"\nexpr = "sum(x)"\nvars.x = {{ shape = [2], value = {10**400} }}\n'
                      '[[case]]\nname = "good"\nexpr = "sum(x**2)"\nvars.x = { shape = [2] }\n')
    result = CliRunner().invoke(main, ["run", str(path), "--device", "cpu"])
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert "case 'big': vars.x.value must hold finite numbers" in result.output
    assert "PASS" in result.output and "::good" in result.output
