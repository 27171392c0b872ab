"""Each engine against known answers, and the comparison's power: no false alarms, real errors caught."""

import math

import numpy as np
import pytest
from hypothesis import given, settings

from diffcheck import tolerance as tol
from diffcheck.casefile import build_case
from diffcheck.compare import Check, compare
from diffcheck.engines import autograd, finite
from diffcheck.engines.symbolic import Program
from diffcheck.expr.parse import parse
from diffcheck.runner import Options, run_case
from diffcheck.strategies import cases, structured_cases


def reference(expr, **values):
    values = {k: np.asarray(v, dtype=float) for k, v in values.items()}
    program = Program(parse(expr), {k: v.shape for k, v in values.items()}, list(values))
    fwd = program.forward(values, kink_u=2.0**-24)
    return program, fwd, program.gradient(fwd, 1.0)


@pytest.mark.parametrize("expr, values, want", [
    ("sum(2*w**2)", {"w": [10.0, 20.0]}, {"w": [40.0, 80.0]}),
    ("w**2 + 20", {"w": 10.0}, {"w": 20.0}),
    ("3*(a + b*c)", {"a": 1.0, "b": 4.0, "c": 2.0}, {"a": 3.0, "b": 6.0, "c": 12.0}),
    ("mean(3*(x+2)*(x+2))", {"x": [[1.0, 2.0], [3.0, 4.0]]}, {"x": [[4.5, 6.0], [7.5, 9.0]]}),
    ("sum(softmax(x, dim=0) * y)", {"x": [0.0, 0.0], "y": [1.0, 0.0]}, {"x": [0.25, -0.25], "y": [0.5, 0.5]}),
    ("logsumexp(x)", {"x": [1000.0, 1000.0]}, {"x": [0.5, 0.5]}),
    ("sum(x @ w)", {"x": [[1.0, 2.0]], "w": [[3.0], [4.0]]}, {"x": [[3.0, 4.0]], "w": [[1.0], [2.0]]}),
    ("erf(x)", {"x": 10.0}, {"x": 2 / math.sqrt(math.pi) * math.exp(-100.0)}),
    ("tanh(x)", {"x": 1000.0}, {"x": 0.0}),
    ("silu(x)", {"x": -700.0}, {"x": -6.8919139040880798e-302}),  # needs the high-precision repair
    ("sigmoid(x)", {"x": -800.0}, {"x": 0.0}),
    ("atan2(y, x)", {"y": 1.0, "x": 1.0}, {"y": 0.5, "x": -0.5}),
    ("binary_cross_entropy(p, y)", {"p": [0.25], "y": [1.0]}, {"p": [-4.0], "y": [math.log(3)]}),
])
def test_symbolic_engine_known_answers(expr, values, want):
    _, _, grads = reference(expr, **values)
    for name, value in want.items():
        np.testing.assert_allclose(grads[name].value, value, rtol=1e-12, atol=0)


def test_kink_gives_the_hull_of_one_sided_derivatives():
    _, _fwd, grads = reference("sum(relu(x) + abs(x))", x=[0.0, 2.0])
    g = grads["x"]
    assert g.ambiguous.tolist() == [True, False]
    assert (g.lo[0], g.hi[0]) == (-1.0, 2.0)  # relu' in [0, 1] plus abs' in [-1, 1]
    assert g.value[1] == 2.0


def test_finite_differences_know_their_error():
    f = lambda p: (float(np.sum(np.sin(p["x"]) * np.exp(p["x"]))), [])
    x = np.array([0.3, -1.2, 2.0])
    v = np.array([1.0, -2.0, 0.5])
    est = finite.directional(f, {"x": x}, {"x": v}, noise=1e-16)
    exact = float(np.sum((np.cos(x) + np.sin(x)) * np.exp(x) * v))
    assert abs(est.value - exact) <= 4 * est.error
    assert est.error < 1e-8


def test_finite_differences_do_not_difference_across_a_kink():
    # relu's kink at 0 lies within the first step (1e-3 of the entry scale) of x = 1e-7, but x is not on it:
    # differencing across it would make the estimate of relu'(1e-7) = 1 wrong and the fd check fail
    case = build_case({"name": "near kink", "expr": "sum(relu(x))", "dtypes": ["float64"], "devices": ["cpu"],
                       "vars": {"x": {"shape": [2], "value": [1e-7, 1.0]}}})
    result = run_case(case, Options(devices=("cpu",)))
    fd = [c for c in result.checks if c.kind == "fd"]
    assert fd and all(c.status == "pass" for c in fd), [(c.label, c.message) for c in fd]
    assert result.status == "pass" and not any(c.status == "warn" for c in result.checks)


def test_autograd_engine_runs_each_dtype():
    fn = autograd.build(parse("sum(2*w**2)"))
    for dtype in ("float64", "float32", "float16", "bfloat16"):
        res = autograd.run(fn, {"w": np.array([10.0, 20.0])}, ["w"], dtype, "cpu", [np.array(1.0)])
        np.testing.assert_allclose(res.vjps[0]["w"], [40.0, 80.0])
        assert not res.problems


def mse_case(dtypes=("float32",)):
    return build_case({"name": "mse", "expr": "mean((x @ w + b - y)**2)", "dtypes": list(dtypes),
                       "devices": ["cpu"], "seed": 3, "vars": {
                           "x": {"shape": [64, 100], "requires_grad": False}, "w": {"shape": [100, 100]},
                           "b": {"shape": [100]}, "y": {"shape": [64, 100], "requires_grad": False}}})


def test_a_correct_float32_gradient_passes_where_gradcheck_would_not():
    result = run_case(mse_case(("float64", "float32", "bfloat16")), Options(devices=("cpu",)))
    assert result.status == "pass", [c.message for c in result.checks if c.status == "fail"]


def mse_impl(off: bool, wrong: list):
    """A hand-written mse backward; with ``off`` one entry of grad w of typical magnitude is 1.001 times too
    large (its index is appended to ``wrong``)."""
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
                wrong.append([int(i) for i in np.unravel_index(typical, gw.shape)])
            return None, gw, r.sum(0), None

    return Mse


@pytest.mark.parametrize("dtype, off", [("float32", False), ("float32", True), ("float64", True)])
def test_one_entry_off_by_a_thousandth_in_a_100x100_gradient_fails(dtype, off):
    import diffcheck

    wrong = []
    result = diffcheck.check("mean((x @ w + b - y)**2)", {
        "x": {"shape": [64, 100], "requires_grad": False}, "w": {"shape": [100, 100]}, "b": {"shape": [100]},
        "y": {"shape": [64, 100], "requires_grad": False}}, impl=mse_impl(off, wrong), dtypes=(dtype,), seed=3)
    grad_w = next(c for c in result.checks if c.kind == "grad" and c.var == "w")
    if not off:  # the same gradient written by hand passes
        assert result.status == "pass", result.message
        return
    assert result.status == "fail" and grad_w.status == "fail" and grad_w.bad == 1
    index = grad_w.worst[0].index
    assert index in wrong
    assert grad_w.diagnosis == f"only entry {index} is wrong"
    assert f"only entry {index} is wrong" in result.message


@pytest.mark.parametrize("transform, needle", [
    (lambda g: -g, "sign flipped"),
    (lambda g: 0.5 * g, "scaled by 0.5"),
    (lambda g: g.T, "transposed"),
    (lambda g: np.zeros_like(g), "all zero"),
])
def test_diagnosis_names_the_pattern(transform, needle):
    ref = np.random.default_rng(0).standard_normal((4, 4))
    t = tol.Tolerance(np.full(ref.shape, 1e-9), None, None, "test")
    check = compare(Check("grad", "autograd", "symbolic", "w"), transform(ref), ref, t)
    assert needle in check.diagnosis


def test_value_beyond_float16_range_is_skipped_with_the_reason():
    case = build_case({"name": "big", "expr": "exp(x)", "dtypes": ["float64", "float16"], "devices": ["cpu"],
                       "vars": {"x": {"shape": [], "value": 20.0}}})
    result = run_case(case, Options(devices=("cpu",)))
    assert result.status == "pass"
    skipped = [c for c in result.checks if c.status == "skip"]
    assert skipped and "beyond float16's largest" in skipped[0].message


def test_inputs_that_leave_the_domain_when_rounded_to_a_dtype_skip_that_dtype():
    """Found by running the op corpus in float16: x = 1e-30 is 0 in float16, and log(0) is not finite."""
    case = build_case({"name": "tiny", "expr": "log(x)", "dtypes": ["float64", "float16"], "devices": ["cpu"],
                       "vars": {"x": {"shape": [], "value": 1e-30}}})
    result = run_case(case, Options(devices=("cpu",)))
    assert result.status == "pass"
    skip = [c for c in result.checks if c.dtype == "float16" and c.status == "skip"]
    assert skip and "rounded to float16 the value is not finite" in skip[0].message


def test_point_outside_the_domain_is_an_error_naming_the_op():
    case = build_case({"name": "dom", "expr": "log(x)", "devices": ["cpu"], "vars": {"x": {"shape": [3]}}})
    result = run_case(case, Options(devices=("cpu",)))
    assert result.status == "error" and "log gives nan" in result.message


def test_binary_cross_entropy_target_outside_0_1_is_an_input_error_not_an_autograd_failure():
    case = build_case({"name": "bce", "expr": "binary_cross_entropy(p, y)", "devices": ["cpu"],
                       "vars": {"p": {"shape": [3], "domain": [0.1, 0.9]}, "y": {"shape": [3], "value": 1.5}}})
    result = run_case(case, Options(devices=("cpu",)))
    assert result.status == "error" and "binary_cross_entropy target must lie in [0, 1]" in result.message


def test_relu_at_zero_warns_and_never_fails():
    case = build_case({"name": "kink", "expr": "relu(x)", "devices": ["cpu"],
                       "vars": {"x": {"shape": [3], "value": [0.0, 1.0, -1.0]}}})
    result = run_case(case, Options(devices=("cpu",)))
    assert result.status == "pass"
    assert any(c.status == "warn" and "non-differentiable" in c.message for c in result.checks)


@settings(max_examples=60)
@given(cases(dtypes=("float64", "float32", "bfloat16")))
def test_all_engines_agree_on_random_compositions(case):
    result = run_case(case, Options(devices=("cpu",)))
    assert result.status == "pass", (case.expr, [(c.label, c.message) for c in result.checks if c.status == "fail"])


@settings(max_examples=60)
@given(structured_cases(dtypes=("float64", "float32", "float16")))
def test_all_engines_agree_on_compositions_with_matmul_softmax_and_reductions(case):
    result = run_case(case, Options(devices=("cpu",)))
    assert result.status == "pass", (case.expr, [(c.label, c.message) for c in result.checks if c.status == "fail"])


@pytest.mark.parametrize("expr, shapes", [
    # found by hypothesis: a 1-D right operand of matmul carrying rounding error (0.1 is not exact)
    ("sum((0.1 * x) @ (0.1 * y))", {"x": [3, 4], "y": [4]}),
    ("sum((0.1 * y) @ (0.1 * x).T)", {"x": [3, 4], "y": [4]}),
    # found by hypothesis: a kink under a reduction over one dim (the one-sided passes carry no error arrays)
    ("mse_loss(mean(maximum(x, sqrt(1.55 + 1.45 * tanh((-1.5)))), dim=1), "
     "tanh(mean(maximum(x, sqrt(1.55 + 1.45 * tanh((-1.5)))), dim=1)))", {"x": [3, 4]}),
    # found by the sweep: two ties at x = 0.5 (torch splits each 0.5/0.5 and gets 0.75): kinks flip independently
    ("sum(sum(minimum(relu(x), minimum(0.5, x)), dim=1))", {"x": [2, 3, 4]}),
    # found by hypothesis: every error term exactly zero, (a - a) @ (a - a).T
    ("erfinv(0.9 * tanh((maximum(0.5, x) - maximum(0.5, x)) @ (maximum(0.5, x) - maximum(0.5, x)).T))",
     {"x": [3, 4]}),
])
def test_pinned_counterexamples(expr, shapes):
    case = build_case({"name": "pinned", "expr": expr, "devices": ["cpu"], "seed": 1,
                       "dtypes": ["float64", "float32", "float16", "bfloat16"],
                       "vars": {n: {"shape": s} for n, s in shapes.items()}})
    result = run_case(case, Options(devices=("cpu",)))
    assert result.status == "pass", [(c.label, c.message) for c in result.checks if c.status == "fail"]


def test_pinned_tie_in_bfloat16_where_the_reference_adjoint_is_exactly_zero():
    """Found by the calibration sweep: minimum(y, f(x)) ties in bfloat16 where float64 takes y's side and the
    softmax above it makes the exact adjoint 0; bfloat16's rounding of that adjoint reaches x through the tie."""
    expr = "log_softmax(3.0 * tanh(minimum(y, atan2(tanh((-1.5)), 1.25 + 0.75 * tanh(x)))), dim=2)"
    case = build_case({"name": "tie", "expr": expr, "seed": 3580489, "devices": ["cpu"],
                       "dtypes": ["float64", "float32", "float16", "bfloat16"],
                       "vars": {"x": {"shape": [2, 3, 4]}, "y": {"shape": [3, 1]}}})
    result = run_case(case, Options(devices=("cpu",)))
    assert result.status == "pass", [(c.label, c.message) for c in result.checks if c.status == "fail"]


@pytest.mark.parametrize("expr", [
    # a clamp with one bound: the other is inf, which every dtype represents (it was skipped as "not representable")
    "sum(clamp(x, min=-0.3))", "sum(clamp(x, max=0.3))",
    # an exact zero under mse_loss's or var's square: the budget of pow with an exponent operand was nan at 0
    "mse_loss(relu(x - 5.0), 0.0 * x)", "var(0.0 * x + 0.5)",
    # found by hypothesis: a constant's variance
    "var(clamp(0.5, min=clamp(x, min=0.2, max=0.3)))",
    # a product by an exact 0/1 mask rounds nothing: compared with its input it is exactly equal, not near a jump
    "mean(x * (x > 0.5) * ~(x * (x > 0.5) != x))",
])
def test_every_engine_judges_where_nothing_is_singular(expr):
    """No skipped engine where the function is smooth and finite: every grad, fd and value check runs and passes
    in every dtype."""
    case = build_case({"name": "judged", "expr": expr, "seed": 1, "devices": ["cpu"],
                       "dtypes": ["float64", "float32", "float16", "bfloat16"], "vars": {"x": {"shape": [3, 4]}}})
    result = run_case(case, Options(devices=("cpu",)))
    judged = [c for c in result.checks if c.kind in ("grad", "fd", "value")]
    assert len([c for c in judged if c.kind == "grad"]) == 4
    assert all(c.status in ("pass", "warn") for c in judged), [(c.label, c.status, c.message) for c in judged]


# ---- a non-finite tolerance, reference or value never passes (issue 11) ----

def produced_kinds():
    """Every check kind the gradient-case code creates, read from its source, so a new kind cannot be missed."""
    import re
    from pathlib import Path

    import diffcheck.checks

    sources = Path(diffcheck.checks.__file__).parent.glob("*.py")
    return {kind for f in sources for kind in re.findall(r'Check\(\s*"(\w+)"', f.read_text())}


def test_the_kinds_under_test_are_all_the_kinds_produced():
    from diffcheck.model import HIGHER_KINDS

    assert produced_kinds() == {"value", "grad", "fd", "self_fd", "expect_value", "expect_grad", "semantic",
                                "jvp", "precision", "rng"}
    assert {"hvp", "hvp_fwd", "d3"} == set(HIGHER_KINDS)  # checks/higher.py builds these from variables


@pytest.mark.parametrize("kind", sorted((produced_kinds() | {"hvp", "hvp_fwd", "d3"}) - {"semantic", "rng"}))
@pytest.mark.parametrize("got, ref, allowed", [
    ([1.0, 2.0], [1.0, 3.0], [1e-9, np.nan]),      # nan tolerance where the entry is wrong
    ([1.0, 2.0], [1.0, 3.0], [1e-9, np.inf]),      # infinite tolerance
    ([1.0, 2.0], [1.0, 2.0], np.nan),              # nan tolerance everywhere, even where equal
    ([1.0, np.nan], [1.0, 2.0], [1e-9, 1e-9]),     # nan value
    ([1.0, np.nan], [1.0, 2.0], [1e-9, np.inf]),   # nan value under an infinite tolerance
    ([1.0, np.inf], [1.0, 2.0], [1e-9, np.nan]),   # inf value under a nan tolerance
    ([1.0, 2.0], [1.0, np.nan], [1e-9, 1e-9]),     # nan reference
    ([1.0, np.inf], [1.0, np.inf], [1e-9, 1e-9]),  # both infinite: nothing to judge
])
def test_no_comparison_with_a_non_finite_number_passes(kind, got, ref, allowed):
    check = compare(Check(kind, "autograd", "symbolic"), np.array(got), np.array(ref),
                    tol.Tolerance(np.broadcast_to(allowed, (2,)), None, None, "test"))
    assert check.status in ("fail", "skip"), (check.status, check.message)
    if check.status == "skip":
        assert "cannot be judged" in check.message
    if not np.isfinite(got).all() and np.isfinite(ref).all():
        assert check.status == "fail"


def test_a_kink_hull_with_a_nan_tolerance_does_not_pass():
    check = compare(Check("grad", "autograd", "symbolic"), np.array([0.5]), np.array([0.0]),
                    tol.Tolerance(np.array([np.nan]), None, None, "t"), lo=np.array([0.0]), hi=np.array([1.0]))
    assert check.status == "skip"


def test_entries_left_out_by_the_caller_are_not_judged_but_the_rest_are():
    check = compare(Check("fd", "symbolic", "finite differences"), np.array([1.0, 5.0]), np.array([1.0, np.nan]),
                    tol.Tolerance(np.array([1e-9, np.inf]), None, None, "t"), judge=np.array([True, False]))
    assert check.status == "pass" and check.margin == 0
    check = compare(Check("fd", "symbolic", "finite differences"), np.array([2.0, 5.0]), np.array([1.0, np.nan]),
                    tol.Tolerance(np.array([1e-9, np.inf]), None, None, "t"), judge=np.array([True, False]))
    assert check.status == "fail"


def test_the_worst_cotangent_is_never_chosen_by_a_nan_tolerance():
    from diffcheck.compare import worst_margin

    ref = np.array([1.0, 2.0])
    assert worst_margin(np.array([1.0, 3.0]), ref, np.array([1e-9, np.nan]), ref, ref) == 1.0  # above any pass
    assert worst_margin(np.array([1.0, 3.0]), ref, np.array([1e-9, 1e-9]), ref, ref) > 1.0


def test_semantic_checks_take_nan_from_0_times_inf_for_arithmetic_and_nan_twice_as_deterministic():
    import torch

    def fn(x):  # d/dx exp(x) at 1000 is inf; a zero cotangent gives 0 * inf = nan there, as torch computes it
        return torch.exp(x) * 0 + x

    res = autograd.run(fn, {"x": np.array([1000.0, 1.0])}, ["x"], "float64", "cpu", [np.ones(2)])
    assert not any("zero upstream" in p or "deterministic" in p for p in res.problems), res.problems

    def ignores(x):  # a real finding: the gradient is finite and the zero cotangent is ignored
        return IgnoresUpstream.apply(x)

    class IgnoresUpstream(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x * 2

        @staticmethod
        def backward(ctx, g):
            return torch.full_like(g, 2.0)

    res = autograd.run(ignores, {"x": np.array([1.0, 2.0])}, ["x"], "float64", "cpu", [np.ones(2)])
    assert any("zero upstream" in p for p in res.problems)


def test_error_budgets_stay_finite_past_a_saturated_intermediate():
    # exp(1000) is inf in every dtype, exp(-inf) = 0 exactly: the budget downstream is 0, not 0 * inf = nan
    _, fwd, grads = reference("sum(x * exp(-exp(y)))", x=[0.1, 0.2], y=1000.0)
    assert np.all(np.isfinite(fwd.errs[-1])) and np.all(np.isfinite(grads["x"].err))


def test_tf32_is_off_while_user_code_runs_and_the_flags_are_restored_after(tf32_on):
    import torch

    import diffcheck

    from .conftest import mse_vars, tf32_recording_mse

    seen = []
    result = diffcheck.check("mean((x @ w + b - y)**2)", mse_vars(4, 3, 2), impl=tf32_recording_mse(seen),
                             dtypes=("float64", "float32"))
    assert result.status == "pass", result.message
    float32 = {(m, c) for dtype, _, m, c in seen if dtype == "torch.float32"}  # TF32 only touches float32
    assert float32 == {(False, False)}, set(seen)
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == (True, True)
