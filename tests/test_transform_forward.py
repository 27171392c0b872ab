"""The forward transform: J v by forward mode in every dtype against the symbolic reference's J v. Every jvp
staticmethod with a wrong sign is caught in float64 and float32, every twin passes; a Function without forward
mode is skipped with torch's reason; a 1e-3 relative error in one entry of J v fails and is located."""

import pytest
from click.testing import CliRunner

from diffcheck.casefile import load_data
from diffcheck.cli import main
from diffcheck.runner import Options, run_case

from .conftest import ROOT, corpus

CORPUS = ROOT / "benchmarks" / "transform_corpus" / "forward.toml"
BUGS, TWINS = corpus(CORPUS)


def test_the_corpus_has_bugs_and_twins():
    assert len(BUGS) >= 2 and len(TWINS) >= len(BUGS)
    assert all(c.transforms == ("forward",) for c in BUGS + TWINS)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("case", BUGS, ids=lambda c: c.name)
def test_every_wrong_jvp_is_caught_in_each_dtype(case, dtype):
    result = run_case(case, Options(devices=("cpu",), dtypes=(dtype,)))
    assert result.status == "fail"
    [check] = [c for c in result.checks if c.kind == "forward"]
    assert check.status == "fail" and check.dtype == dtype
    assert "J v" in check.message and "outside tolerance" in check.message
    if case.name == "bug_forward_sin_jvp_sign":
        assert "sign flipped" in check.diagnosis
    if any(c.kind == "jvp" and c.status == "fail" for c in result.checks):  # the eager verdict first
        assert result.message.startswith("the impl fails the jvp check") and "fails under forward too" in result.message
    # the reverse-mode checks pass: only forward mode is wrong (the float64 jvp check is forward mode too)
    assert all(c.status != "fail" for c in result.checks if c.kind not in ("forward", "jvp"))


def test_a_classic_function_runs_its_jvp_through_forward_ad():
    [case] = [c for c in BUGS if c.name == "bug_forward_sin_jvp_sign"]
    result = run_case(case, Options(devices=("cpu",), dtypes=("float32",)))
    [check] = [c for c in result.checks if c.kind == "forward"]
    assert "torch.autograd.forward_ad" in check.message
    assert "wrong under the forward transform" in result.message  # the eager checks cannot see it


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("case", TWINS, ids=lambda c: c.name)
def test_every_correct_twin_passes(case, dtype):
    result = run_case(case, Options(devices=("cpu",), dtypes=(dtype,)))
    assert result.status == "pass", [(c.label, c.message) for c in result.checks if c.status == "fail"]
    assert [c.status for c in result.checks if c.kind == "forward"] == ["pass"]


def impl_case(tmp_path, source: str, expr: str, vars_: dict, **extra):
    (tmp_path / "mine.py").write_text(source)
    data = {"name": "mine", "expr": expr, "impl": "mine:F", "devices": ["cpu"], "transforms": ["forward"],
            "vars": vars_, **extra}
    [case] = load_data(data, str(tmp_path / "case.toml"))
    return case


NO_JVP = '''
import torch
class F(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.exp()
    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * x.exp()
'''


def test_a_function_without_forward_mode_is_skipped_with_torchs_reason(tmp_path):
    case = impl_case(tmp_path, NO_JVP, "exp(x)", {"x": {"shape": [4]}})
    result = run_case(case, Options(devices=("cpu",)))
    assert result.status == "pass"
    checks = [c for c in result.checks if c.kind == "forward"]
    assert len(checks) == 2 and all(c.status == "skip" for c in checks)
    assert all("forward mode not supported" in c.message and "jvp" in c.message for c in checks)


ONE_ENTRY_OFF = '''
import torch
class F(torch.autograd.Function):
    @staticmethod
    def forward(x, w):
        return x @ w
    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs)
        ctx.save_for_forward(*inputs)
    @staticmethod
    def backward(ctx, g):
        x, w = ctx.saved_tensors
        return g @ w.mT, x.mT @ g
    @staticmethod
    def jvp(ctx, tx, tw):
        x, w = ctx.saved_tensors
        out = tx @ w + x @ tw
        scale = torch.ones_like(out)
        scale[2, 5] = 1.001
        return out * scale
'''


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_a_relative_error_of_1e_3_in_one_entry_of_j_v_fails_and_is_located(tmp_path, dtype):
    case = impl_case(tmp_path, ONE_ENTRY_OFF, "x @ w", {"x": {"shape": [6, 7]}, "w": {"shape": [7, 8]}})
    result = run_case(case, Options(devices=("cpu",), dtypes=(dtype,)))
    [check] = [c for c in result.checks if c.kind == "forward"]
    assert check.status == "fail" and check.bad == 1, check.message
    assert check.worst[0].index == [2, 5] and "only entry [2, 5]" in check.diagnosis


RAISING_JVP = NO_JVP + '''
    @staticmethod
    def jvp(ctx, t):
        raise KeyError("tangent")
'''


def test_a_jvp_that_raises_is_a_finding(tmp_path):
    case = impl_case(tmp_path, RAISING_JVP.replace("ctx.save_for_backward(x)", "ctx.save_for_backward(x)\n        "
                                                   "ctx.save_for_forward(x)"), "exp(x)", {"x": {"shape": [4]}})
    result = run_case(case, Options(devices=("cpu",), dtypes=("float64",)))
    [check] = [c for c in result.checks if c.kind == "forward"]
    assert check.status == "fail" and "impl_failure" in check.details and "KeyError" in check.message


def test_the_shipped_seed_cases_pass_under_forward():
    result = CliRunner().invoke(main, ["run", str(ROOT / "cases" / "seeds.toml"), "--device", "cpu",
                                       "--transform", "forward", "-q"])
    assert result.exit_code == 0, result.output
    assert " 0 failed" in result.output
