"""Cases with several outputs (issue 14): a tuple expr, impls returning a tuple or a dict, every output checked,
each output alone with the others' gradients undefined, value-only outputs, expect.value per output."""

import json

import pytest
from click.testing import CliRunner

from diffcheck.casefile import load_file
from diffcheck.cli import main
from diffcheck.runner import Options, run_case

from .conftest import ROOT

pytest_plugins = ["pytester"]

CUBES = '''
import torch


class MyCube(torch.autograd.Function):
    """torch's docs example (notes/extending.rst)."""

    @staticmethod
    def forward(x):
        dx = 3 * x ** 2
        result = x ** 3
        return result, dx

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, = inputs
        result, dx = output
        ctx.save_for_backward(x, dx)

    @staticmethod
    def backward(ctx, grad_output, grad_dx):
        x, dx = ctx.saved_tensors
        return grad_output * dx + grad_dx * 6 * x


class IgnoresDx(MyCube):
    @staticmethod
    def backward(ctx, grad_output, grad_dx):
        x, dx = ctx.saved_tensors
        return grad_output * dx


class FailsOnNone(MyCube):
    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(inputs[0], output[1])


class Swapped(MyCube):
    @staticmethod
    def forward(x):
        return 3 * x ** 2, x ** 3

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[0], output[0])

    @staticmethod
    def backward(ctx, grad_dx, grad_output):
        x, dx = ctx.saved_tensors
        return grad_output * dx + grad_dx * 6 * x


class HandlesNone(FailsOnNone):
    """The twin of FailsOnNone: undefined gradients (None) handled."""

    @staticmethod
    def backward(ctx, grad_output, grad_dx):
        x, dx = ctx.saved_tensors
        grad = torch.zeros_like(x)
        if grad_output is not None:
            grad = grad + grad_output * dx
        if grad_dx is not None:
            grad = grad + grad_dx * 6 * x
        return grad


def as_dict(x):
    return {"dx": 3 * x ** 2, "result": x ** 3}


def cube_only(x):
    return x ** 3


def three(x):
    return x ** 3, 3 * x ** 2, x


def list_inside(x):
    return x ** 3, [1.0]


def wrong_shape(x):
    return x ** 3, (3 * x ** 2)[:1]


def cube_and_bucket(x):
    """An integer output: the bucket of each entry, value only."""
    return x ** 3, torch.floor((x + 2) * 2).long()


def bucket_for_a_gradient(x):
    """Wrong: a detached output where the reference is differentiable."""
    return x ** 3, (3 * x ** 2).detach()
'''

CUBE_CASE = '''
name = "{name}"
expr = "(x**3, 3 * x**2)"
impl = "cubes:{impl}"
{outputs}
vars.x = {{ shape = [3], domain = [-2.0, 2.0] }}
devices = ["cpu"]
'''


def cube_case(tmp_path, impl, outputs='outputs = ["result", "dx"]', name=None, expr=None):
    (tmp_path / "cubes.py").write_text(CUBES)
    text = CUBE_CASE.format(name=name or impl, impl=impl, outputs=outputs)
    if expr is not None:
        text = text.replace('"(x**3, 3 * x**2)"', f'"{expr}"')
    path = tmp_path / f"{name or impl}.toml"
    path.write_text(text)
    return path


def run_file(path, **options):
    [case] = load_file(path)
    assert not isinstance(case, Exception), case
    return run_case(case, Options(devices=("cpu",), **options))


@pytest.mark.parametrize("impl", ["MyCube", "HandlesNone", "as_dict"])
def test_correct_multi_output_impls_pass(tmp_path, impl):
    result = run_file(cube_case(tmp_path, impl))
    assert result.status == "pass", result.report_text
    alone = [c for c in result.checks if c.details.get("output")]
    # each output alone, in both dtypes: the undefined-gradient checks ran
    assert {(c.details["output"], c.dtype) for c in alone} == {(o, d) for o in ("result", "dx")
                                                               for d in ("float64", "float32")}
    assert all(c.status == "pass" for c in alone)


def test_a_backward_that_ignores_the_second_outputs_gradient_fails_naming_it(tmp_path):
    result = run_file(cube_case(tmp_path, "IgnoresDx"))
    assert result.status == "fail"
    assert "grad x (dx alone) [float64 cpu]" in result.message, result.message
    failing = {c.details.get("output") for c in result.checks if c.status == "fail"}
    assert "dx" in failing and "result" not in failing  # result alone is right: its backward ignores only dx


def test_a_backward_that_fails_on_an_undefined_gradient_is_a_finding_naming_the_output(tmp_path):
    result = run_file(cube_case(tmp_path, "FailsOnNone"))
    assert result.status == "fail"
    assert result.message.startswith("with only output result used (the gradients of dx undefined): the impl "
                                     "raised TypeError"), result.message
    assert "(in backward, cubes.py:" in result.message
    # the checks on both outputs at once pass: only the undefined gradient breaks it
    assert all(c.status == "pass" for c in result.checks if c.kind == "grad" and not c.details.get("output"))


def test_swapped_outputs_are_a_wrong_forward_in_both_outputs(tmp_path):
    path = cube_case(tmp_path, "Swapped")
    out = CliRunner().invoke(main, ["run", str(path), "--dtype", "float64"])
    assert out.exit_code == 1, out.output
    assert "the impl's forward is wrong (its value disagrees with the reference in outputs result, dx)" \
        in out.output
    assert "wrong in outputs result (3 of 3), dx (3 of 3)" in out.output
    assert "result[0]" in out.output and "dx[0]" in out.output  # worst entries named name[index]
    assert "worst: basis result[" in out.output or "worst: basis dx[" in out.output  # basis cotangents too


def test_the_json_names_the_outputs(tmp_path):
    path = cube_case(tmp_path, "Swapped")
    report = tmp_path / "out.json"
    page = tmp_path / "out.html"
    CliRunner().invoke(main, ["run", str(path), "--dtype", "float64", "--json", str(report), "--html", str(page)])
    assert "<td>result[0]</td>" in page.read_text()  # the HTML's worst entries are named alike
    [case] = json.loads(report.read_text())["cases"]
    value = next(c for c in case["checks"] if c["kind"] == "value")
    assert value["details"]["outputs"] == [{"name": "result", "shape": [3], "value_only": False},
                                           {"name": "dx", "shape": [3], "value_only": False}]
    assert value["details"]["wrong_outputs"] == ["result", "dx"]
    assert {e["output"] for e in value["worst"]} == {"result", "dx"}
    assert all(len(e["index"]) == 1 and 0 <= e["index"][0] < 3 for e in value["worst"])
    alone = {c["details"]["output"] for c in case["checks"] if c["details"].get("output")}
    assert alone == {"result", "dx"}


def test_outputs_default_to_out0_out1(tmp_path):
    result = run_file(cube_case(tmp_path, "Swapped", outputs="", name="unnamed"), dtypes=("float64",))
    assert result.status == "fail"
    assert "outputs out0, out1" in result.message


@pytest.mark.parametrize("impl, message", [
    ("three", "the impl returned 3 outputs where 2 are expected (result, dx)"),
    ("list_inside", "output dx of the impl is list, not a tensor"),
    ("wrong_shape", "output dx of the impl has shape [1] where [3] is expected"),
    ("as_dict", "the impl returned a dict with keys ['dx', 'result'] where the outputs are ['cube', 'dx']"),
    ("cube_only", "the impl returned Tensor where 2 outputs (result, dx) are expected: a tuple, or a dict"),
    ("MyCube", "the impl returned 2 outputs where 1 is expected (result)"),  # one output named in outputs
])
def test_a_result_that_does_not_fit_the_outputs_is_an_impl_failure(tmp_path, impl, message):
    outputs = 'outputs = ["cube", "dx"]' if impl == "as_dict" else 'outputs = ["result", "dx"]'
    expr = None
    if impl == "MyCube":
        outputs, expr = 'outputs = ["result"]', "x**3"
    result = run_file(cube_case(tmp_path, impl, outputs=outputs, expr=expr))
    assert result.status == "fail"
    assert message in result.message, result.message
    assert all(c.status != "error" for c in result.checks)


@pytest.mark.parametrize("outputs, message, key", [
    ('outputs = ["a", "b", "c"]', "outputs names 3 output(s) but expr has 2", "outputs"),
    ('outputs = ["a", "a"]', "outputs names a twice", "outputs"),
    ('outputs = ["a", "b c"]', "outputs.1 = 'b c' must be a plain identifier", "outputs.1"),
    ('outputs = "ab"', "outputs: Input should be a valid list", "outputs"),
    ('outptus = ["a", "b"]', "unknown key 'outptus' (did you mean 'outputs'?)", "outptus"),
])
def test_a_bad_outputs_key_is_a_case_error_naming_it(tmp_path, outputs, message, key):
    path = cube_case(tmp_path, "MyCube", outputs=outputs)
    [error] = load_file(path)
    assert isinstance(error, Exception) and error.key == key, error
    out = CliRunner().invoke(main, ["run", str(path)])
    assert out.exit_code == 2, out.output
    assert message in out.output and "case 'MyCube'" in out.output


def test_value_only_outputs_an_integer_one_and_a_mask(tmp_path):
    bucket = cube_case(tmp_path, "cube_and_bucket", outputs='outputs = ["cube", "bucket"]',
                       expr="(x**3, floor((x + 2) * 2))")
    result = run_file(bucket)
    assert result.status == "pass", result.report_text
    value = next(c for c in result.checks if c.kind == "value")
    assert "bucket [3] (value only)" in value.message
    assert {c.details.get("output") for c in result.checks if c.details.get("output")} == {"cube"}  # no grad check
    # a non-differentiable output where the reference has a gradient is not value only: its gradient is missing
    wrong = run_file(cube_case(tmp_path, "bucket_for_a_gradient", outputs='outputs = ["cube", "dx"]'))
    assert wrong.status == "fail" and "grad x (dx alone)" in wrong.message, wrong.message


def test_shipped_multi_output_cases_pass_and_mark_the_mask_value_only():
    out = CliRunner().invoke(main, ["run", str(ROOT / "cases" / "multi"), "--device", "cpu", "-v"])
    assert out.exit_code == 0, out.output
    assert "5 passed, 0 failed" in out.output
    assert "outputs y [5], mask [5] (value only)" in out.output
    assert "grad x (dx alone) [float64 cpu]" in out.output


def test_expect_value_is_one_value_per_output(write_case, tmp_path):
    (tmp_path / "cubes.py").write_text(CUBES)
    base = ('name = "known"\nexpr = "(x**3, 3 * x**2)"\nimpl = "cubes:MyCube"\nvars.x = { shape = [2], value = '
            '[1.0, -2.0] }\ndevices = ["cpu"]\nexpect.grad.x = [9.0, 0.0]\n')
    good = run_file(write_case(base + "expect.value = [[1.0, -8.0], [3.0, 12.0]]\n"))
    assert good.status == "pass", good.report_text
    assert sum(c.kind.startswith("expect") for c in good.checks) >= 4
    wrong = run_file(write_case(base + "expect.value = [[1.0, -8.0], [3.0, 12.5]]\n"))
    assert wrong.status == "fail" and "wrong in output out1 (1 of 2)" in wrong.report_text, wrong.report_text
    [error] = load_file(write_case(base + "expect.value = [[1.0, -8.0]]\n"))
    assert error.key == "expect.value" and "must be a list of one value per output" in error.message
    [error] = load_file(write_case(base + "expect.value = [[1.0, -8.0], [3.0]]\n"))
    assert error.key == "expect.value.1" and "output's shape is [2]" in error.message


def test_a_tuple_only_at_the_top_level_and_not_every_output_a_mask(write_case):
    [error] = load_file(write_case('name = "n"\nexpr = "(x, (x, x))"\nvars.x = { shape = [2] }\n'))
    assert error.key == "expr" and "tuples are not allowed" in error.message
    [error] = load_file(write_case('name = "m"\nexpr = "(x > 0, floor(x))"\nvars.x = { shape = [2] }\n'))
    assert error.key == "expr" and "no output is differentiable" in error.message


def test_a_wrong_tuple_expression_output_is_caught_without_an_impl(write_case):
    """torch's own ops on a tuple expr: a correct one passes (shipped); here the reference itself is checked
    against finite differences on every output, so a tuple with an expect that is wrong in one output fails."""
    path = write_case('name = "t"\nexpr = "(a * b, sum(a + b))"\nvars.a = { shape = [2], value = [1.0, 2.0] }\n'
                      'vars.b = { shape = [2], value = [3.0, 4.0] }\ndevices = ["cpu"]\n'
                      'expect.value = [[3.0, 8.0], 10.0]\nexpect.grad.a = [4.0, 5.0]\nexpect.grad.b = [2.0, 3.0]\n')
    assert run_file(path).status == "pass"
    wrong = run_file(write_case(path.read_text().replace("10.0", "11.0")))
    assert wrong.status == "fail" and "wrong in output out1 (1 of 1)" in wrong.report_text
    assert "diagnosis: in output out1: the scalar is wrong: 10 where the reference is 11" in wrong.report_text


def test_plugin_items_of_a_multi_output_case(pytester):
    (pytester.path / "cubes.py").write_text(CUBES)
    (pytester.path / "cubes_case.toml").write_text(
        CUBE_CASE.format(name="good", impl="MyCube", outputs='outputs = ["result", "dx"]') + "\n")
    (pytester.path / "bad_case.toml").write_text(
        CUBE_CASE.format(name="bad", impl="IgnoresDx", outputs='outputs = ["result", "dx"]') + "\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    outcomes = result.parseoutcomes()
    assert outcomes.get("passed") == 3 and outcomes.get("failed") == 3, outcomes  # reference + 2 dtypes
    assert "grad x (dx alone)" in result.stdout.str()


def test_a_tuple_returned_for_a_single_output_expr_says_how_to_declare_several(tmp_path):
    result = run_file(cube_case(tmp_path, "MyCube", outputs="", expr="x**3"))
    assert result.status == "fail"
    assert "the impl returned tuple, not a tensor (several outputs: write expr as a tuple, '(a, b)')" \
        in result.message


def test_the_api_takes_a_tuple_expr_and_an_impl_returning_a_tuple():
    import torch

    import diffcheck

    def cube(x):
        return x ** 3, 3 * x ** 2

    assert diffcheck.check("(x**3, 3 * x**2)", {"x": {"shape": [4]}}, impl=cube).ok
    wrong = diffcheck.check("(x**3, 3 * x**2)", {"x": {"shape": [4]}}, impl=lambda x: (x ** 3, torch.sin(x)))
    assert wrong.status == "fail" and "in output out1" in wrong.message


def test_double_backward_of_mycube(tmp_path):
    path = cube_case(tmp_path, "MyCube")
    path.write_text(path.read_text() + "order = 2\n")
    result = run_file(path)
    assert result.status == "pass", result.report_text
    assert any(c.kind == "hvp" and c.status == "pass" for c in result.checks)


@pytest.mark.parametrize("impl", ["cube_only", "cube_dict"])
def test_outputs_can_name_the_one_output_of_a_plain_expr(tmp_path, impl):
    (tmp_path / "one.py").write_text("def cube_only(x):\n    return x ** 3\n\n\n"
                                     "def cube_dict(x):\n    return {'result': x ** 3}\n")
    path = tmp_path / "one.toml"
    path.write_text(f'name = "one"\nexpr = "x**3"\nimpl = "one:{impl}"\noutputs = ["result"]\ndevices = ["cpu"]\n'
                    'vars.x = { shape = [2], value = [1.0, 2.0] }\nexpect.value = [[1.0, 8.0]]\n')
    result = run_file(path)
    assert result.status == "pass", result.report_text
    assert "outputs result [2]" in next(c for c in result.checks if c.kind == "value").message
