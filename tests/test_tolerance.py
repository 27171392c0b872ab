"""The tolerance model and what the report says about a comparison, through the CLI on real case files."""

import json
import re

import pytest
from click.testing import CliRunner

from diffcheck.casefile import build_case
from diffcheck.cli import main
from diffcheck.errors import CaseError


def run(*args):
    result = CliRunner().invoke(main, ["run", *map(str, args)])
    return result.exit_code, result.output


def run_json(path, tmp_path, *args):
    out = tmp_path / "report.json"
    code, text = run(path, "--device", "cpu", "--json", out, *args)
    return code, text, json.loads(out.read_text())


def checks_of(report, **match):
    [case] = report["cases"]
    return [c for c in case["checks"] if all(c[k] == v for k, v in match.items())]


def test_a_one_dtype_override_leaves_the_other_dtypes_derived(write_case, tmp_path):
    path = write_case('''
name = "one_dtype_override"
expr = "sum(sin(x) * exp(x))"
vars.x = { shape = [5] }
dtypes = ["float64", "float32"]
tolerance.float32.atol = 1e-3
tolerance.reason = "float32 only, for the test"
''')
    code, out, report = run_json(path, tmp_path)
    assert code == 0, out
    [g64] = checks_of(report, kind="grad", dtype="float64", device="cpu")
    [g32] = checks_of(report, kind="grad", dtype="float32", device="cpu")
    assert g64["status"] == "pass" and g64["tolerance"].startswith("derived")
    assert g64["atol"] is None and g64["rtol"] is None
    assert g32["tolerance"].startswith("case override atol=0.001 rtol=0") and g32["atol"] == 1e-3


def test_a_top_level_override_still_covers_every_dtype(write_case, tmp_path):
    path = write_case('''
name = "all_dtypes_override"
expr = "sum(sin(x))"
vars.x = { shape = [3] }
dtypes = ["float64", "float32"]
tolerance.rtol = 1e-2
tolerance.reason = "for the test"
''')
    code, out, report = run_json(path, tmp_path)
    assert code == 0, out
    for dtype in ("float64", "float32"):
        [g] = checks_of(report, kind="grad", dtype=dtype, device="cpu")
        assert g["tolerance"].startswith("case override atol=0 rtol=0.01")


def test_the_dtype_filter_does_not_move_the_sample_point(write_case, tmp_path):
    """Inputs are rounded to the case's least precise dtype, whatever --dtype selects: the same seed checks the
    same point in the full run and in a --dtype float32 (or pytest [float32-cpu]) run."""
    path = write_case('''
name = "point"
expr = "sin(x)"
vars.x = { shape = [5] }
dtypes = ["float64", "float32", "bfloat16"]
''')
    seen = []
    for extra in ((), ("--dtype", "float32")):
        code, out, report = run_json(path, tmp_path, *extra)
        assert code == 0, out
        [value] = checks_of(report, kind="value", dtype="float32", device="cpu")
        seen.append(sorted((tuple(e["index"]), e["ref"]) for e in value["worst"]))
    assert len(seen[0]) == 5 and seen[0] == seen[1]


def test_a_constant_that_can_never_be_finite_is_a_case_error_at_load(write_case, tmp_path):
    write_case('name = "huge"\nexpr = "sum(x) + 9**9**9**9"\nvars.x = { shape = [3] }\n', "a_huge.toml")
    write_case('name = "fine"\nexpr = "sum(x) * 9**9"\nvars.x = { shape = [3] }\n', "b_fine.toml")
    code, out, report = run_json(tmp_path, tmp_path)
    assert code == 2, out
    assert "a_huge.toml: case 'huge': bad expr: the constant 9.0 ** 9.0 ** 9.0 ** 9.0 (= inf) is not finite" in out
    statuses = {c["name"]: c["status"] for c in report["cases"]}
    assert statuses == {"huge": "error", "fine": "pass"}


def test_the_constant_error_names_the_key_expr():
    with pytest.raises(CaseError) as info:
        build_case({"name": "c", "expr": "x + 0 * (1 + 1/0)", "vars": {"x": {}}})
    assert info.value.key == "expr" and "the constant 0.0 * (1.0 + 1.0 / 0.0) (= nan)" in str(info.value)
    build_case({"name": "c", "expr": "x * 9**9 + 2**-1074", "vars": {"x": {}}})  # large, tiny: finite


def test_an_infinite_clamp_bound_is_an_absent_bound_not_a_bad_constant(write_case, tmp_path):
    write_case('name = "one_sided"\nexpr = "sum(clamp(x, min=0)) + sum(clamp(x, max=0.25))"\n'
               'vars.x = { shape = [4] }\n', "clamp.toml")
    code, out, report = run_json(tmp_path, tmp_path)
    assert code == 0, out
    assert [c["status"] for c in report["cases"]] == ["pass"]
    with pytest.raises(CaseError, match="not finite"):  # elsewhere an infinite constant is still an error
        build_case({"name": "c", "expr": "clamp(x + 9**9**9, min=0)", "vars": {"x": {}}})


CANDLE = '''
import torch


class Elu(torch.autograd.Function):
    """candle's fixed ELU backward: e^x as out + 1 for x <= 0 (torch's in-place elu_ does the same)."""

    @staticmethod
    def forward(ctx, x):
        out = torch.where(x > 0, x, torch.expm1(x))
        ctx.save_for_backward(x, out)
        return out

    @staticmethod
    def backward(ctx, grad):
        x, out = ctx.saved_tensors
        return grad * torch.where(x > 0, torch.ones_like(x), out + 1)


class EluOneEntryOff(Elu):
    @staticmethod
    def backward(ctx, grad):
        g = Elu.backward(ctx, grad).clone()
        g[37, 58] *= 1.001
        return g
'''


def candle_case(tmp_path, impl):
    """elu over a 100x100 input whose first row holds e^x's underflowing tail (-120, -30, -700)."""
    import numpy as np

    (tmp_path / "candle.py").write_text(CANDLE)
    x = np.random.default_rng(5).uniform(-3, 3, (100, 100))
    x[0, :4] = [-120.0, -30.0, -700.0, -1e-3]
    x[37, 58] = -0.7  # a typical entry
    rows = ",\n".join("[" + ", ".join(repr(float(v)) for v in row) + "]" for row in x)
    path = tmp_path / f"{impl}.toml"
    path.write_text(f'name = "{impl}"\nexpr = "elu(x)"\nimpl = "candle:{impl}"\ndevices = ["cpu"]\n'
                    f'dtypes = ["float64", "float32"]\nvars.x = {{ shape = [100, 100], value = [\n{rows}] }}\n')
    return path


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_a_backward_computing_e_to_the_x_as_out_plus_1_passes(tmp_path, dtype):
    """At x = -120 out + 1 is 0 where e^x is 1e-52: the error of a formula that adds out (size 1) and 1 is
    u x 1, and the budget allows it."""
    code, out, report = run_json(candle_case(tmp_path, "Elu"), tmp_path, "--dtype", dtype)
    assert code == 0, out
    [grad] = checks_of(report, kind="grad", dtype=dtype)
    assert grad["status"] == "pass" and grad["margin"] < 1


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_the_same_backward_with_one_entry_off_by_a_thousandth_fails(tmp_path, dtype):
    code, out, report = run_json(candle_case(tmp_path, "EluOneEntryOff"), tmp_path, "--dtype", dtype)
    assert code == 1, out
    [grad] = checks_of(report, kind="grad", dtype=dtype)
    assert grad["status"] == "fail" and grad["bad"] == 1
    assert grad["diagnosis"] == "only entry [37, 58] is wrong"


def test_torch_expm1_backward_from_its_result_passes_in_the_tail(write_case):
    """torch's expm1 backward is grad * (result + 1): 0 at -120 in every dtype."""
    path = write_case('name = "expm1_tail"\nexpr = "expm1(x)"\nvars.x = { shape = [3], value = [-120.0, -30.0, 0.5] }'
                      '\ndtypes = ["float64", "float32", "bfloat16"]\n')
    code, out = run(path, "--device", "cpu")
    assert code == 0, out


MINE = '''
import torch


class PassThrough(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return torch.sin(x)

    @staticmethod
    def backward(ctx, grad):
        return grad


class SlightlyScaled(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * 2 * x * (1 - 3e-7)


class ScalarForwardOff(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return (x * x).sum() + 0.5

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * 2 * x


class LeakyRelu(torch.autograd.Function):
    """relu whose backward leaks a slope of 0.01 through the dead side: the exact reference there is 0."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.relu(x)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * torch.where(x > 0, torch.ones_like(x), torch.full_like(x, 0.01))


def square(x):
    return x * x


def square_off(x):
    return x * x * 1.5
'''

REPORTED = '''
devices = ["cpu"]

[[case]]
name = "pass_through"
expr = "sin(x)"
impl = "mine:PassThrough"
vars.x = { shape = [20], domain = [0.5, 2.0] }

[[case]]
name = "slightly_scaled"
expr = "x**2"
impl = "mine:SlightlyScaled"
vars.x = { shape = [6], domain = [0.5, 2.0] }

[[case]]
name = "scalar_forward_off"
expr = "sum(x**2)"
impl = "mine:ScalarForwardOff"
vars.x = { shape = [3] }

[[case]]
name = "leaky_relu"
expr = "relu(x)"
impl = "mine:LeakyRelu"
vars.x = { shape = [8] }
seed = 1

[[case]]
name = "kink"
expr = "relu(x)"
vars.x = { shape = [3], value = [0.0, 1.0, -1.0] }

[[case]]
name = "function_off"
expr = "x**2"
impl = "mine:square_off"
vars.x = { shape = [4] }

[[case]]
name = "correct"
expr = "x**2"
impl = "mine:square"
vars.x = { shape = [4] }
'''


@pytest.fixture(scope="module")
def reported(tmp_path_factory):
    """The cases above run once through the CLI with -v: (output by case name, JSON cases by name)."""
    root = tmp_path_factory.mktemp("reported")
    (root / "mine.py").write_text(MINE)
    (root / "cases.toml").write_text(REPORTED)
    code, out = run(root / "cases.toml", "--device", "cpu", "-v", "--json", root / "r.json")
    assert code == 1, out
    text, name = {}, None
    for line in out.splitlines():
        if line[:4] in ("PASS", "FAIL", "SKIP", "ERRO"):
            name = line.split("::")[1].split()[0] if "::" in line else None
        if name:
            text[name] = text.get(name, "") + line + "\n"
    cases = {c["name"]: c for c in json.loads((root / "r.json").read_text())["cases"]}
    return text, cases


def test_the_random_direction_probe_is_labelled_as_one_and_names_no_entry(reported):
    text, cases = reported
    out = text["pass_through"]
    assert "FAIL self_fd x (random direction) [float64 cpu]" in out
    assert "<gradient, v> along a random direction v is off" in out and "<g, v1>" in out
    assert "a directional probe" in out and "only entry [0]" not in out
    probes = [c for c in cases["pass_through"]["checks"] if c["details"].get("probe") == "random direction"]
    assert {c["kind"] for c in probes} == {"fd", "self_fd", "jvp"}
    failed = [c for c in probes if c["status"] == "fail"]
    assert failed and all(c["kind"] == "self_fd" and c["error_matrix"] is None and "entry" not in c["diagnosis"]
                          for c in failed)


def test_forward_mode_probes_are_labelled_as_probes(reported):
    text, cases = reported
    assert "FAIL jvp (random direction) [float64 cpu]" in text["function_off"] and "<c1, J v>" in text["function_off"]
    [jvp] = [c for c in cases["function_off"]["checks"] if c["kind"] == "jvp"]
    assert jvp["error_matrix"] is None and "directional probe" in jvp["diagnosis"] and "entry" not in jvp["diagnosis"]


def test_a_gradient_passed_straight_through_is_named(reported):
    text, cases = reported
    grads = [c for c in cases["pass_through"]["checks"] if c["kind"] == "grad"]
    assert grads and all(c["diagnosis"] == "the backward passes the upstream gradient straight through "
                                           "(d/dx treated as 1)" for c in grads)
    assert "no single pattern" not in text["pass_through"]


def test_a_factor_next_to_1_is_a_small_relative_error_not_a_scaling(reported):
    text, _ = reported
    out = text["slightly_scaled"]
    assert "scaled by 1" not in out
    assert "diagnosis: a small relative error of -3e-07 in every wrong entry" in out


def test_a_wrong_scalar_is_described_as_a_scalar(reported):
    text, _ = reported
    out = text["scalar_forward_off"]
    assert "only entry []" not in out
    assert "diagnosis: the scalar is wrong: " in out and "x the reference)" in out


def test_the_finite_difference_column_is_not_printed_twice(reported):
    text, _ = reported
    headers = [line for line in text["slightly_scaled"].splitlines() if line.strip().startswith("index")]
    assert headers and all(line.count("finite diff") == 1 for line in headers)


def test_an_exact_zero_reference_reports_the_error_not_an_astronomical_margin(reported):
    text, cases = reported
    out = text["leaky_relu"]
    assert "allowed 0" in out and "worst abs err" in out
    assert not re.search(r"e\+(2\d\d|3\d\d)", out), out
    assert "nonzero only where the reference is exactly 0" in out
    grad = next(c for c in cases["leaky_relu"]["checks"] if c["kind"] == "grad" and c["status"] == "fail")
    assert grad["margin"] > 1e100  # the JSON keeps the number


def test_a_passing_kink_case_never_prints_a_nan_margin(reported):
    text, _ = reported
    out = text["kink"]
    assert out.startswith("PASS") and "nan" not in out
    assert re.search(r"worst margin \d", out.splitlines()[0])


def test_passing_semantic_checks_show_with_verbose(reported):
    text, cases = reported
    assert re.search(r"PASS semantic \[float64 cpu\]: impl vs input metadata -- .*a zero upstream gradient gives "
                     r"zero; backward run twice gives the same gradient", text["correct"])
    semantic = [c for c in cases["kink"]["checks"] if c["kind"] == "semantic"]
    assert semantic and all(c["status"] == "pass" for c in semantic)


def test_the_jvp_skip_reason_is_shown_whole(reported):
    import torch

    class Square(torch.autograd.Function):  # like SlightlyScaled: no setup_context, so no forward mode
        @staticmethod
        def forward(ctx, x):
            return x * x

        @staticmethod
        def backward(ctx, grad):
            return grad

    with pytest.raises(Exception) as info:
        torch.func.jvp(Square.apply, (torch.ones(2, dtype=torch.float64),), (torch.ones(2, dtype=torch.float64),))
    whole = " ".join(str(info.value).split())
    assert len(whole) > 160
    text, _ = reported
    assert f"SKIP jvp (random direction) [float64 cpu]: impl vs symbolic (forward mode vs reverse mode) -- " \
           f"forward mode not supported by the impl: {type(info.value).__name__}: {whole}\n" in text["slightly_scaled"]


def test_a_wrong_known_value_of_zero_is_not_called_a_gradient_that_never_arrived(write_case, tmp_path):
    # exp(-exp(1000)) is exactly 0: a wrong expect.value = 5 is a wrong value, not a detached gradient
    write_case('name = "zero_value"\nexpr = "sum(x * exp(-exp(y)))"\nvars.x = { shape = [3] }\n'
               'vars.y = { shape = [3], value = [1000.0, 1000.0, 1000.0], requires_grad = false }\n'
               'expect.value = 5.0\n')
    code, out, _report = run_json(tmp_path, tmp_path)
    assert code == 1, out
    assert "gradient never reached" not in out
    assert "diagnosis: the scalar is wrong: 0 where the reference is 5" in out
