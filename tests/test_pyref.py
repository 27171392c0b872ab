"""A Python reference (``reference = "module:function"``) and the impl alone: the shipped soft-DTW cases pass, their
wrong-on-purpose twins fail with the right verdict (a backward off by one, a float32 buffer inside a float64 run,
a broken reference), the measured tolerances pass correct kernels in float32 and fail a 0.1% error in one entry of
a 100x100 gradient, and bad cases are clear errors naming the key."""

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

import diffcheck
from diffcheck.cli import main

from .conftest import ROOT

SHIPPED = ROOT / "cases" / "pyref"

TWINS = '''
import torch
from softdtw import SoftDTW, softmin


class OffByOne(SoftDTW):
    """The paper's backward with D's padding read one column off in the diagonal term."""

    @staticmethod
    def backward(ctx, grad_output):
        D, R = ctx.saved_tensors
        gamma = ctx.gamma
        n, m = D.shape
        Dp = torch.zeros((n + 2, m + 2), dtype=D.dtype)
        Dp[1:n + 1, 1:m + 1] = D
        E = torch.zeros((n + 2, m + 2), dtype=D.dtype)
        E[n + 1, m + 1] = 1.0
        R = R.clone()
        R[:, m + 1] = -float("inf")
        R[n + 1, :] = -float("inf")
        R[n + 1, m + 1] = R[n, m]
        for j in range(m, 0, -1):
            for i in range(n, 0, -1):
                a = torch.exp((R[i + 1, j] - R[i, j] - Dp[i + 1, j]) / gamma)
                b = torch.exp((R[i, j + 1] - R[i, j] - Dp[i, j + 1]) / gamma)
                c = torch.exp((R[i + 1, j + 1] - R[i, j] - Dp[i + 1, j]) / gamma)
                E[i, j] = E[i + 1, j] * a + E[i, j + 1] * b + E[i + 1, j + 1] * c
        return grad_output * E[1:n + 1, 1:m + 1], None


class Float32Buffer(torch.autograd.Function):
    """Soft-DTW into a float32 buffer whatever D's dtype (torch.FloatTensor in a real implementation)."""

    @staticmethod
    def forward(ctx, D, gamma=1.0):
        n, m = D.shape
        R = torch.full((n + 2, m + 2), float("inf"), dtype=torch.float32)
        R[0, 0] = 0.0
        for i in range(1, n + 1):
            for j in range(1, m + 1):
                R[i, j] = D[i - 1, j - 1] + softmin(R[i - 1, j - 1], R[i - 1, j], R[i, j - 1], gamma)
        ctx.save_for_backward(D, R.to(D.dtype))
        ctx.gamma = gamma
        return R[n, m].to(D.dtype)

    backward = SoftDTW.backward


def broken_reference(D, gamma=1.0):
    """Soft-DTW whose last cell's cost is detached: its gradient there is 0, not 1."""
    n, m = D.shape
    inf = torch.tensor(float("inf"), dtype=D.dtype)
    R = [[inf] * (m + 1) for _ in range(n + 1)]
    R[0][0] = torch.zeros((), dtype=D.dtype)
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            d = D[i - 1, j - 1].detach() if (i, j) == (n, m) else D[i - 1, j - 1]
            R[i][j] = d + softmin(R[i - 1][j - 1], R[i - 1][j], R[i][j - 1], gamma)
    return R[n][m]


def raising_reference(D, gamma=1.0):
    raise ValueError("reference boom")
'''


def case_text(name: str, impl: str, reference: str | None = None, shape=(4, 4)) -> str:
    ref = f'reference = "{reference}"\n' if reference else ""
    return (f'name = "{name}"\n{ref}impl = "{impl}"\nimpl_args = {{ gamma = 0.5 }}\ndevices = ["cpu"]\n'
            f'vars.D = {{ shape = {list(shape)}, domain = [0.0, 2.0] }}\n')


@pytest.fixture
def twins(tmp_path):
    """The shipped soft-DTW module and the wrong-on-purpose twins beside case files in tmp_path."""
    shutil.copy(SHIPPED / "softdtw.py", tmp_path / "softdtw.py")
    (tmp_path / "twins.py").write_text(TWINS)

    def run(text: str):
        path = tmp_path / "case.toml"
        path.write_text(text)
        out = tmp_path / "out.json"
        result = CliRunner().invoke(main, ["run", str(path), "--device", "cpu", "--json", str(out)])
        return result, json.loads(out.read_text())["cases"][0] if out.exists() else None

    return run


def test_the_shipped_python_reference_cases_pass():
    result = CliRunner().invoke(main, ["run", str(SHIPPED), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "3 passed" in result.output


def test_the_reference_is_verified_against_finite_differences_and_named(twins):
    result, case = twins(case_text("ok", "softdtw:SoftDTW", "softdtw:soft_dtw"))
    assert result.exit_code == 0, result.output
    fd = [c for c in case["checks"] if c["kind"] == "fd"]
    assert fd and all(c["engine"] == "reference" and c["status"] == "pass" for c in fd)
    grads = [c for c in case["checks"] if c["kind"] == "grad" and c["status"] == "pass"]
    assert {c["dtype"] for c in grads} == {"float64", "float32"}
    assert all(c["against"] == "reference" and "measured rounding budget" in c["tolerance"] for c in grads)


@pytest.mark.parametrize("reference", ["softdtw:soft_dtw", None])
def test_an_off_by_one_backward_fails_as_the_backward(twins, reference):
    result, case = twins(case_text("off", "twins:OffByOne", reference))
    assert result.exit_code == 1
    assert case["message"].startswith("the impl's backward is wrong"), case["message"]
    assert any(c["kind"] == "self_fd" and c["status"] == "fail" for c in case["checks"])


@pytest.mark.parametrize("reference", ["softdtw:soft_dtw", None])
def test_a_float32_buffer_in_a_float64_run_is_reported_as_exactly_that(twins, reference):
    result, case = twins(case_text("f32", "twins:Float32Buffer", reference))
    assert result.exit_code == 1
    if reference is None:  # only its own rounding noise can tell
        assert case["message"].startswith("the impl computes in float32 internally"), case["message"]
    else:  # measured against the reference as well
        assert case["message"].startswith("the impl computes in lower precision than its inputs: in float64"), \
            case["message"]
    assert "float32" in case["message"] and "both wrong" not in case["message"]
    [precision] = [c for c in case["checks"] if c["kind"] == "precision"]
    assert precision["status"] == "fail" and precision["details"]["internal_precision"]["dtype"] == "float32"


def test_a_correct_impl_measures_float64_rounding_noise(twins):
    result, case = twins(case_text("ok", "softdtw:SoftDTW"))
    assert result.exit_code == 0, result.output
    [precision] = [c for c in case["checks"] if c["kind"] == "precision"]
    assert precision["status"] == "pass" and precision["details"]["noise"] < 1e-12


def test_a_broken_reference_is_reported_as_the_reference_being_wrong(twins):
    result, case = twins(case_text("broken", "softdtw:SoftDTW", "twins:broken_reference"))
    assert result.exit_code == 1
    assert case["message"].startswith("the reference is wrong: its own float64 gradient disagrees"), case["message"]
    assert "the impl's backward" not in case["message"]


def test_a_reference_that_raises_is_a_finding_about_the_reference(twins):
    result, case = twins(case_text("raises", "softdtw:SoftDTW", "twins:raising_reference"))
    assert result.exit_code == 1
    assert case["message"].startswith("the reference is wrong: the reference raised ValueError: reference boom")


def test_the_impl_alone_checks_its_lower_dtypes_against_its_float64_run(twins):
    result, case = twins(case_text("alone", "softdtw:SoftDTW", shape=(3, 5)))
    assert result.exit_code == 0, result.output
    kinds = {(c["kind"], c["engine"], c["dtype"]) for c in case["checks"] if c["status"] == "pass"}
    assert ("self_fd", "impl", "float64") in kinds and ("grad", "impl", "float32") in kinds
    assert not any(c["engine"] in ("symbolic", "reference") for c in case["checks"])


# ---- the measured tolerance model ----

def mse_function(off: bool, wrong: list | None = None):
    """mean((x @ w + b - y)**2) with a hand-written backward (the standard formula 2 r / n, not autograd's); with
    ``off`` one entry of grad w of typical magnitude is 1.001 times too large (its index appended to ``wrong``)."""
    import torch

    class Mse(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, w, b, y):
            ctx.save_for_backward(x, w, b, y)
            return torch.mean((x @ w + b - y) ** 2)

        @staticmethod
        def backward(ctx, g):
            x, w, b, y = ctx.saved_tensors
            r = x @ w + b - y
            r = 2 * g * r / r.numel()
            gw = x.T @ r
            if off:
                a = gw.abs().reshape(-1)
                typical = int(torch.argmin((a - a.median()).abs()))
                gw.view(-1)[typical] *= 1.001
                if wrong is not None:
                    wrong.append([int(i) for i in np.unravel_index(typical, gw.shape)])
            return None, gw, r.sum(0), None

    return Mse


def mse_reference(x, w, b, y):
    return ((x @ w + b - y) ** 2).mean()


MSE_VARS = {"x": {"shape": [64, 100], "requires_grad": False}, "w": {"shape": [100, 100]}, "b": {"shape": [100]},
            "y": {"shape": [64, 100], "requires_grad": False}}


@pytest.mark.parametrize("reference", [mse_reference, None], ids=["reference", "alone"])
@pytest.mark.parametrize("off", [False, True])
def test_one_entry_off_by_a_thousandth_of_a_100x100_gradient_fails_in_float32(reference, off):
    wrong = []
    result = diffcheck.check(None, MSE_VARS, impl=mse_function(off, wrong), reference=reference,
                             dtypes=("float32",), seed=3)
    if not off:  # a correct kernel by another formula passes in float32
        assert result.status == "pass", result.message
        return
    assert result.status == "fail", result.message
    grad_w = [c for c in result.checks if c.var == "w" and c.status == "fail"]
    if reference is not None:  # against the verified reference: localized in float32 itself
        [f32] = [c for c in grad_w if c.kind == "grad" and c.dtype == "float32"]
        assert f32.bad == 1 and f32.worst[0].index in wrong and "only entry" in f32.diagnosis
    else:  # the impl's own float64 backward against finite differences of its forward, bisected to the entry
        localized = next(c for c in grad_w if c.kind == "self_fd" and c.details.get("probe") == "localized")
        assert localized.bad == 1 and localized.worst[0].index in wrong
        assert result.message.startswith("the impl's backward is wrong (self_fd w (localized)")
        assert f"only entry {localized.worst[0].index} is wrong" in result.message


def test_float32_budgets_are_measured_not_zero():
    """The reference is run in float32 and its deviation from its float64 self sets the budget: a float32 impl
    identical to the reference sits well inside, the float64 tolerance well below the float32 one."""
    import torch

    result = diffcheck.check(None, {"x": {"shape": [5, 7]}}, impl=lambda x: torch.softmax(x, 1).log().sum(1),
                             reference=lambda x: torch.log_softmax(x, 1).sum(1))
    assert result.status == "pass", result.message
    g32 = next(c for c in result.checks if c.kind == "grad" and c.dtype == "float32" and c.device == "cpu")
    assert 0 < g32.margin < 1 and "measured rounding budget" in g32.tolerance


# ---- the Python API and the case keys ----

def test_api_takes_a_reference_string_beside_the_case_directory(tmp_path, monkeypatch):
    shutil.copy(SHIPPED / "softdtw.py", tmp_path / "softdtw.py")
    monkeypatch.chdir(tmp_path)
    result = diffcheck.check(vars={"D": {"shape": [3, 3], "domain": [0.0, 1.0]}}, impl="softdtw:SoftDTW",
                             reference="softdtw:soft_dtw", impl_args={"gamma": 0.5})
    assert result.status == "pass", result.message


def test_a_constant_var_the_reference_does_not_take_is_allowed():
    import torch

    def impl(x, scale):
        return (x * scale).sum()

    ok = diffcheck.check(None, {"x": {"shape": [3]}, "scale": {"value": 1.0, "requires_grad": False}}, impl=impl,
                         reference=lambda x: x.sum())
    assert ok.status == "pass", ok.message
    bad = diffcheck.check(None, {"x": {"shape": [3]}, "scale": {"value": 1.0}}, impl=impl,
                          reference=lambda x: x.sum())
    assert bad.status == "error"
    assert "does not take var(s) scale" in bad.message and "requires_grad = false" in bad.message
    assert torch  # the lambdas above are plain torch functions


@pytest.mark.parametrize("text, key, needle", [
    ('name = "c"\nexpr = "x"\nreference = "m:f"\nimpl = "m:g"\nvars.x = {}\n', "reference", "not both"),
    ('name = "c"\nreference = "m:f"\nvars.x = {}\n', "impl", "needs an impl"),
    ('name = "c"\nvars.x = {}\n', "expr", "missing required key 'expr'"),
    ('name = "c"\nimpl = "m:g"\n', "vars", "must declare its vars"),
])
def test_bad_reference_cases_are_errors_naming_the_key(write_case, text, key, needle):
    result = CliRunner().invoke(main, ["run", str(write_case(text)), "--device", "cpu"])
    assert result.exit_code == 2
    assert f"'{key}'" in result.output or f"key {key}" in result.output or needle in result.output
    assert needle in result.output


def test_expect_value_of_the_wrong_shape_is_an_error_once_the_reference_ran():
    result = diffcheck.check(None, {"x": {"shape": [3]}}, impl=lambda x: x.sum(), reference=lambda x: x.sum(),
                             expect={"value": [1.0, 2.0]})
    assert result.status == "error"
    assert "expect.value has shape [2] but the reference returns shape []" in result.message


def test_known_answers_are_judged_without_expr():
    x = np.array([1.0, 2.0, 3.0])
    result = diffcheck.check(None, {"x": {"value": x.tolist(), "shape": [3]}}, impl=lambda x: (x * x).sum(),
                             reference=lambda x: (x ** 2).sum(), expect={"value": 14.0, "grad": {"x": [2, 4, 6]}})
    assert result.status == "pass", result.message
    assert any(c.kind == "expect_grad" and c.engine == "reference" for c in result.checks)


def test_no_impl_imports_no_reference_either(tmp_path):
    (tmp_path / "ref.py").write_text(f"open({str(tmp_path / 'imported')!r}, 'w').close()\ndef f(x):\n    return x\n")
    (tmp_path / "case.toml").write_text('name = "c"\nreference = "ref:f"\nimpl = "ref:f"\nvars.x = { shape = [2] }\n')
    result = CliRunner().invoke(main, ["run", str(tmp_path / "case.toml"), "--device", "cpu", "--no-impl"])
    assert result.exit_code == 0 and "SKIP" in result.output, result.output
    assert not (tmp_path / "imported").exists()


@pytest.mark.parametrize("reference, needle", [
    ("os:getcwd", "never an impl: it must be your own code"),
    ("ref:missing", "has no attribute 'missing'"),
    ("ref", "must be 'module:attribute'"),
])
def test_a_reference_goes_through_the_impl_boundary(tmp_path, reference, needle):
    (tmp_path / "ref.py").write_text("def f(x):\n    return x\n")
    (tmp_path / "case.toml").write_text(f'name = "c"\nreference = "{reference}"\nimpl = "ref:f"\n'
                                        'devices = ["cpu"]\nvars.x = {{ shape = [2] }}\n'.replace("{{", "{")
                                        .replace("}}", "}"))
    result = CliRunner().invoke(main, ["run", str(tmp_path / "case.toml"), "--device", "cpu"])
    assert result.exit_code == 2, result.output
    assert "reference" in result.output and needle in result.output
