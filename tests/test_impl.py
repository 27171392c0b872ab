"""A user's own implementation: every seeded backward bug is caught, every correct twin passes, in float64 and
float32; a wrong forward is blamed on the forward; bad impl names are clear errors."""

import pytest

from diffcheck.casefile import Case, load_data
from diffcheck.runner import Options, load, run_case

from .conftest import ROOT

CORPUS = ROOT / "benchmarks" / "bug_corpus" / "cases.toml"
CASES = [c for c in load([CORPUS]) if isinstance(c, Case)]
BUGS = [c for c in CASES if c.name.startswith("bug_")]
TWINS = [c for c in CASES if c.name.startswith("ok_")]


def test_corpus_is_large_enough():
    assert len(BUGS) >= 15 and len(TWINS) >= len(BUGS)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("case", BUGS, ids=lambda c: c.name)
def test_every_seeded_bug_is_caught_in_each_dtype(case, dtype):
    result = run_case(case, Options(devices=("cpu",), dtypes=(dtype,)))
    assert result.status == "fail"
    assert any(c.status == "fail" and c.dtype == dtype for c in result.checks), \
        "caught only by a check in another dtype"
    assert "backward" in result.message


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("case", TWINS, ids=lambda c: c.name)
def test_every_correct_twin_passes_in_each_dtype(case, dtype):
    result = run_case(case, Options(devices=("cpu",), dtypes=(dtype,)))
    assert result.status == "pass", [(c.label, c.message) for c in result.checks if c.status == "fail"]


def impl_case(tmp_path, source: str, expr: str = "x**2", **extra):
    (tmp_path / "mine.py").write_text(source)
    data = {"name": "mine", "expr": expr, "impl": "mine:f", "devices": ["cpu"],
            "vars": {"x": {"shape": [4], "domain": [0.5, 2.0]}}, **extra}
    [case] = load_data(data, str(tmp_path / "case.toml"))
    return case


def test_a_wrong_forward_is_blamed_on_the_forward(tmp_path):
    case = impl_case(tmp_path, "def f(x):\n    return x**2 + 1e-3\n")
    result = run_case(case, Options(devices=("cpu",)))
    assert result.status == "fail"
    assert "forward is wrong" in result.message and "consistent with its own forward" in result.message


def test_plain_function_impl_passes(tmp_path):
    case = impl_case(tmp_path, "import torch\ndef f(x):\n    return x * x\n")
    assert run_case(case, Options(devices=("cpu",))).status == "pass"


DETACHED_BACKWARD = '''
import torch

class Square(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return 2 * x.detach() * g   # first derivative right, second derivative lost

f = Square
'''


def test_order_2_catches_a_backward_that_is_not_differentiable(tmp_path):
    case = impl_case(tmp_path, DETACHED_BACKWARD, expr="x**2", order=2)
    result = run_case(case, Options(devices=("cpu",)))
    assert result.status == "fail"
    assert any(c.kind == "hvp" and c.status == "fail" for c in result.checks)
    first_order = [c for c in result.checks if c.kind == "grad"]
    assert first_order and all(c.status == "pass" for c in first_order)


def test_order_2_passes_for_torch_ops():
    [case] = load_data({"name": "h", "expr": "sum(tanh(x) * exp(x))", "order": 2, "devices": ["cpu"],
                        "vars": {"x": {"shape": [5]}}})
    result = run_case(case, Options(devices=("cpu",)))
    assert result.status == "pass"
    assert any(c.kind == "hvp" for c in result.checks)


@pytest.mark.parametrize("impl, needle", [
    ("nosuchmodule:f", "no module 'nosuchmodule' under"),
    ("mine:nothing", "has no attribute 'nothing'"),
    ("mine", "must be 'module:attribute'"),
])
def test_bad_impl_is_an_error_naming_the_key(tmp_path, impl, needle):
    (tmp_path / "mine.py").write_text("def f(x):\n    return x\n")
    [case] = load_data({"name": "bad", "expr": "x", "impl": impl, "devices": ["cpu"], "vars": {"x": {}}},
                       str(tmp_path / "case.toml"))
    result = run_case(case, Options(devices=("cpu",)))
    assert result.status == "error" and needle in result.message and "case 'bad'" in result.message


def test_verbose_report_shows_the_error_matrix():
    from click.testing import CliRunner

    from diffcheck.cli import main

    out = CliRunner().invoke(main, ["run", str(CORPUS), "-k", "bug_square_missing_factor_2", "-v",
                                    "--device", "cpu"]).output
    assert "error matrix (impl - symbolic)" in out and "scaled by 0.5" in out


ELU_WITH_ALPHA = '''
import torch

class Elu(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, alpha):
        ctx.save_for_backward(x)
        ctx.alpha = alpha
        return torch.where(x > 0, x, alpha * (torch.exp(x) - 1))

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return torch.where(x > 0, g, g * ctx.alpha * torch.exp(x)), None

f = Elu
'''


def test_function_with_non_tensor_arguments_takes_impl_args(tmp_path):
    case = impl_case(tmp_path, ELU_WITH_ALPHA, expr="elu(x, alpha=0.5)", impl_args={"alpha": 0.5},
                     vars={"x": {"shape": [6], "domain": [-2.0, 2.0]}})
    assert run_case(case, Options(devices=("cpu",))).status == "pass"
    wrong = impl_case(tmp_path, ELU_WITH_ALPHA, expr="elu(x, alpha=0.5)", impl_args={"alpha": 0.7},
                      vars={"x": {"shape": [6], "domain": [-2.0, 2.0]}})
    assert run_case(wrong, Options(devices=("cpu",))).status == "fail"


def test_impl_on_a_kink_everywhere_warns_and_skips_differences_but_never_fails():
    import torch

    import diffcheck

    result = diffcheck.check("relu(x)", vars={"x": {"shape": [3], "value": [0.0, 0.0, 0.0]}}, impl=torch.relu)
    assert result.ok
    assert any(c.kind == "self_fd" and c.status == "skip" and "kink" in c.message for c in result.checks)
    assert any(c.kind == "grad" and c.status == "warn" for c in result.checks)
