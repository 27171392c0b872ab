"""The fast paths compute what the slow ones did: finite differences of many probes in one batched pass give the
estimates one pass per probe gives, kinks and domain edges included (timings are measured by benchmarks/speed.py,
never asserted here)."""

import numpy as np
import pytest

from diffcheck.casefile import build_case
from diffcheck.checks.point import build_point
from diffcheck.engines import finite
from diffcheck.engines.autograd import build
from diffcheck.runner import Options


def point_of(expr, vars, seed=0):
    case = build_case({"name": "c", "expr": expr, "vars": vars, "devices": ["cpu"], "seed": seed})
    return build_point(case, Options(devices=("cpu",)), seed, build(case.ir), ["float64", "float32"])


def fields(e: finite.Estimate) -> tuple:
    return repr(float(e.value)), repr(float(e.error)), e.step, e.note  # repr: exact, and nan equals nan


@pytest.mark.parametrize("expr, vars", [
    ("sum(relu(x) * exp(b))", {"x": {"shape": [3, 4], "domain": [-1e-4, 1e-4]}, "b": {"shape": [4]}}),  # kinks
    ("sum(log(x))", {"x": {"shape": [2, 3], "domain": [1e-5, 2e-5]}}),  # every first step leaves the domain
    ("mean(sin(x) * detach(x), dim=0)", {"x": {"shape": [3, 2]}}),
    ("sum(relu(x @ w)) + sum(x @ v)", {"x": {"shape": [5, 3]}, "w": {"shape": [3, 4]}, "v": {"shape": [3]}}),
    ("sum(softmax(x, dim=0))", {"x": {"shape": [3, 2]}}),  # a step the batched pass does not know: one at a time
    ("sum(abs(x - 0.5) + maximum(x, 0.5))", {"x": {"shape": [4], "value": [0.5, 0.25, 0.75, 0.5000001]}}),
])
def test_batched_finite_differences_equal_one_pass_per_probe(expr, vars):
    point = point_of(expr, vars)
    evaluate, noise = point.evaluator(0)

    def one_by_one(inputs):  # the same function without its batched form
        return evaluate(inputs)

    x = point.at("float64")
    for name in point.case.grad_vars:
        n = x[name].size
        fast = finite.entrywise(evaluate, x, name, range(n), noise)
        slow = finite.entrywise(one_by_one, x, name, range(n), noise)
        assert list(map(fields, fast)) == list(map(fields, slow))
        v = finite.random_direction(x[name], np.random.default_rng(1))
        fast, slow = (finite.directional(f, x, {name: v}, noise) for f in (evaluate, one_by_one))
        assert fields(fast) == fields(slow)


def test_the_batched_pass_declines_what_it_cannot_stack():
    point = point_of("sum(softmax(x @ w, dim=0)) + sum(x @ v)",
                     {"x": {"shape": [2, 3]}, "w": {"shape": [3, 2]}, "v": {"shape": [3]}})
    evaluate, _ = point.evaluator(0)
    x = point.at("float64")
    for name in ("x", "w", "v"):  # logsumexp anywhere; v also as a vector operand of matmul
        assert evaluate.many(x, name, np.stack([x[name]] * 2)) is None
    point = point_of("sum(x @ w) + sum(x @ v)", {"x": {"shape": [2, 3]}, "w": {"shape": [3, 2]}, "v": {"shape": [3]}})
    evaluate, _ = point.evaluator(0)
    x = point.at("float64")
    assert evaluate.many(x, "w", np.stack([x["w"]] * 2)) is not None
    assert evaluate.many(x, "v", np.stack([x["v"]] * 2)) is None


# ---- the fast paths of the gradient-case check (issue 17): each gives exactly what the path it replaces gave ----

def test_float32_rounding_by_numpy_is_torchs_bit_for_bit():
    import torch

    from diffcheck.engines.autograd import round_to

    rng = np.random.default_rng(0)
    edges = [0.0, -0.0, np.inf, -np.inf, 3.4028235e38, 3.4028235677973366e38, 1e39, 2.0**-149, 2.0**-150,
             1.5 * 2.0**-149, 1e-46, 1.0 + 2.0**-24, 1.0 + 3 * 2.0**-24]
    for x in [rng.standard_normal(20000) * 10.0 ** rng.uniform(-46, 39, 20000), np.array(edges),
              np.asarray(0.7), rng.standard_normal((5, 7)).T]:
        want = torch.as_tensor(np.array(x, dtype=np.float64)).to(torch.float32).to(torch.float64).numpy()
        with np.errstate(over="raise"):  # a value beyond float32 is inf, silently, as in torch
            got = round_to(x, "float32")
        assert got.shape == want.shape and got.tobytes() == want.tobytes() and got.flags.c_contiguous


def test_a_matmul_operand_nothing_is_differentiated_through_changes_no_adjoint():
    vars = {"x": {"shape": [6, 5]}, "w": {"shape": [5, 4]}, "b": {"shape": [4]}}
    expr = "sum(tanh(exp(x) @ w + b) * (x @ w))"  # exp(x): an operand with its own rounding error
    both = point_of(expr, vars)
    vars["x"]["requires_grad"] = False
    one = point_of(expr, vars)
    assert one.at("float64")["x"].tobytes() == both.at("float64")["x"].tobytes()
    _, g_both = both.reference("float64")
    _, g_one = one.reference("float64")
    for ci in range(len(g_one)):
        for name in ("w", "b"):
            for field in ("value", "err", "lo", "hi"):
                a, b = getattr(g_one[ci][name], field), getattr(g_both[ci][name], field)
                assert np.asarray(a).tobytes() == np.asarray(b).tobytes(), (ci, name, field)


def test_rss_is_the_hypot_chain_from_zero():
    from diffcheck.engines.structured import rss

    def chain(*terms):  # the definition: hypot over every nonzero term, from an array of zeros
        total = np.zeros(np.broadcast_shapes(*(np.shape(t) for t in terms)))
        for t in terms:
            if np.any(t):
                total = np.hypot(total, t)
        return total

    rng = np.random.default_rng(2)
    a, b = rng.standard_normal((3, 4)) * 1e200, rng.standard_normal(4) * 1e-200
    weird = np.array([np.nan, -np.inf, -0.0, 3.0])
    for terms in [(a,), (a, b), (0.0, b, 2.0), (0.0, 0.0), (weird, a), (-2.5,), (np.zeros(3), 0.0), (b, a, weird),
                  (b, np.zeros((3, 4))), (2.0, np.zeros(3))]:  # the one nonzero term has the smaller shape
        got, want = rss(*terms), chain(*terms)
        assert np.shape(got) == np.shape(want) and np.asarray(got).tobytes() == np.asarray(want).tobytes()


def test_finite_differences_skip_no_signature_they_need():
    """A program without kinks has the empty signature everywhere; with kinks it is evaluated as before."""
    for expr, kinkless in [("sum(sin(x) * y)", True), ("sum(relu(x) * y)", False)]:
        point = point_of(expr, {"x": {"shape": [2, 3]}, "y": {"shape": [3]}})
        evaluate, noise = point.evaluator(0)
        assert getattr(evaluate, "kinkless", False) is kinkless
        x = point.at("float64")
        calls = []

        def counted(inputs, evaluate=evaluate, calls=calls):  # the same evaluator, unmarked, counting its calls
            calls.append(1)
            return evaluate(inputs)

        counted.many = evaluate.many
        v = finite.random_direction(x["x"], np.random.default_rng(3))
        assert fields(finite.directional(evaluate, x, {"x": v}, noise)) == \
            fields(finite.directional(counted, x, {"x": v}, noise))
        assert list(map(fields, finite.entrywise(evaluate, x, "y", range(3), noise))) == \
            list(map(fields, finite.entrywise(counted, x, "y", range(3), noise)))
        assert calls  # the unmarked evaluator was asked for the signature at the point


@pytest.mark.parametrize("got_error", [None, "nan", "inf"])
def test_compare_with_every_entry_judged_is_the_masked_compare(got_error):
    """compare's shortcut for all-finite data (no judge mask) gives the Check the masked path gives."""
    from diffcheck.compare import compare
    from diffcheck.model import Check
    from diffcheck.tolerance import Tolerance

    rng = np.random.default_rng(4)
    ref = rng.standard_normal((6, 7))
    got = ref * (1 + 1e-9 * rng.standard_normal(ref.shape))
    got[2, 3] *= 1 + 1e-3  # one entry off
    if got_error:
        got[1, 1] = float(got_error)
    lo, hi = ref.copy(), ref.copy()
    tol = Tolerance(1e-9 * np.abs(ref) + 1e-12, None, None, "test")
    for kink in (False, True):
        if kink:
            lo[4, 4], hi[4, 4] = ref[4, 4] - 1e-3, ref[4, 4] + 1e-3
        fast = compare(Check("grad", "autograd", "symbolic", var="x"), got, ref, tol, lo=lo, hi=hi)
        masked = compare(Check("grad", "autograd", "symbolic", var="x"), got, ref, tol, lo=lo, hi=hi,
                         judge=np.ones(ref.shape, bool))
        assert fast.status == "fail" and repr(vars(fast)) == repr(vars(masked))  # repr: nan equals nan


def test_an_entry_on_a_kink_is_judged_by_its_distance_to_the_hull():
    from diffcheck.compare import margins

    ref = np.array([1.0, 2.0, 3.0])
    lo, hi = ref.copy(), ref.copy()
    lo[1], hi[1] = 1.0, 2.5  # entry 1 sits on a kink: anything in [1, 2.5] is right
    for got, want in [([1.0, 1.2, 3.0], [0.0, 0.0, 0.0]), ([1.5, 3.0, 3.0], [0.5, 0.5, 0.0])]:
        err, margin, ambiguous = margins(np.array(got), ref, np.full(3, 0.25), lo, hi)
        assert err.tolist() == want and margin.tolist() == [w / 0.25 for w in want]
        assert ambiguous.tolist() == [False, True, False]
    err, _, ambiguous = margins(np.array([1.5, 3.0, 3.0]), ref, np.full(3, 0.25), ref, ref)  # no kink
    assert err.tolist() == [0.5, 1.0, 0.0] and not ambiguous.any()


def test_stacked_cotangent_ranking_is_worst_margin_per_cotangent():
    from diffcheck.casefile import Tolerance as CaseTolerance
    from diffcheck.checks.autograd import stacked_margins
    from diffcheck.compare import worst_margin
    from diffcheck.engines.symbolic import Gradient
    from diffcheck.tolerance import derived

    rng = np.random.default_rng(5)
    shape = (4, 3)
    grads, vjps = [], []
    for k in range(5):
        value = rng.standard_normal(shape)
        err = np.abs(rng.standard_normal(shape)) * 10 if k != 2 else 3.0  # a scalar budget too
        lo, hi = value.copy(), value.copy()
        if k == 1:
            lo[0, 0] -= 0.5  # an entry on a kink
        grads.append({"x": Gradient(value, err, lo, hi)})
        got = value + 1e-14 * rng.standard_normal(shape) * (k + 1)
        if k == 3:
            got[2, 1] = np.nan
        if k == 4:
            got[0, 1] = np.nan  # where the reference cannot be judged either
        vjps.append({"x": got})
    vjps[0]["x"][3, 2] = np.inf
    grads[4]["x"].value[0, 1] = np.inf  # a reference entry that cannot be judged
    override = CaseTolerance(atol=1e-13, rtol=1e-9, reason="test")
    for tolerance in (None, override):
        want = [worst_margin(v["x"], g["x"].value, derived(g["x"].err, g["x"].value, "float32", tolerance).allowed,
                             g["x"].lo, g["x"].hi) for v, g in zip(vjps, grads)]
        assert list(map(repr, stacked_margins(vjps, grads, "x", "float32", tolerance))) == list(map(repr, want))
    vjps[0]["x"] = np.zeros((3, 4))  # a VJP of the wrong shape: ranked one at a time (worst_margin says inf)
    assert stacked_margins(vjps, grads, "x", "float32", None) is None


def test_a_backward_right_only_for_the_ones_cotangent_fails_on_the_random_one():
    """A cotangent-dependent bug: the backward treats grad_output as all ones (sum of it times the derivative's
    mean), right for the ones cotangent only; the ranking of the cotangents reports a random one as the worst."""
    import torch

    import diffcheck

    class Off(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return torch.sin(x)

        @staticmethod
        def backward(ctx, g):
            (x,) = ctx.saved_tensors
            return torch.cos(x) * g.mean()

    result = diffcheck.check("sin(x)", vars={"x": {"shape": [4, 5]}}, impl=Off)
    assert result.status == "fail"
    grads = [c for c in result.checks if c.kind == "grad" and c.engine == "impl"]
    assert grads and all(c.status == "fail" and "worst: random #" in c.message for c in grads)


def test_a_checks_json_is_its_fields_as_asdict_gives_them():
    """``Check.to_json`` copies its fields shallowly (``asdict``'s deep copy cost seconds on the corpus); the JSON
    written is the same, nested details and worst entries included."""
    import dataclasses
    import json

    from diffcheck.model import Check, Entry
    from diffcheck.report import _finite, _jsonable

    check = Check("grad", "autograd", "symbolic", var="w", dtype="float32", device="cpu", status="fail",
                  message="m", max_abs_err=float("inf"), margin=2.5, entries=4, bad=1,
                  worst=[Entry([1, 0], 1.0, 2.0, 1.0, 0.5, fd=2.0, lo=None, hi=None)], error_matrix=[[0.0, 1.0]],
                  details={"probe": "random", "nested": {"a": [1, 2.0, float("nan")]}})
    expected = dataclasses.asdict(check)
    expected["worst"] = [dict(dataclasses.asdict(e), rel_err=e.rel_err) for e in check.worst]
    expected.update(max_abs_err=None)

    def text(data):
        return json.dumps(_finite(data), indent=1, allow_nan=False, default=_jsonable)

    assert text(check.to_json()) == text(expected)


def test_the_worst_cotangent_is_reported_from_its_ranking_margins(monkeypatch):
    """A var too large for the stacked ranking: each cotangent's margins are computed once (the worst one's are
    reused for its report, not computed again), and the report is the one a fresh compare gives -- a 1e-3
    relative error in one entry of a 100 x 100 gradient fails."""
    import importlib

    from diffcheck import compare as compare_module
    from diffcheck import tolerance as tol
    from diffcheck.engines.autograd import run
    from diffcheck.model import Check

    stage = importlib.import_module("diffcheck.checks.autograd")  # the package's name 'autograd' is the stage's
    point = point_of("sum(sin(x @ w))", {"x": {"shape": [3, 100], "requires_grad": False},
                                         "w": {"shape": [100, 100]}})
    _, grads = point.reference("float32")
    res = run(point.fn, point.at("float32"), point.case.grad_vars, "float32", "cpu", point.cotangents, False)
    res.vjps[1]["w"][7, 3] = grads[1]["w"].value[7, 3] * (1 + 1e-3)
    assert len(point.cotangents) * res.vjps[0]["w"].size > stage.STACKED_ENTRIES
    calls = []
    real = compare_module._margins
    monkeypatch.setattr(compare_module, "_margins", lambda *a, **k: calls.append(1) or real(*a, **k))
    monkeypatch.setattr(stage, "_margins", compare_module._margins)
    check = stage.worst_over_cotangents(point, res, grads, "w", "float32", "cpu")
    assert len(calls) == len(point.cotangents)  # one per cotangent, none again for the report
    g = grads[1]["w"]
    fresh = compare_module.compare(Check("grad", "autograd", "symbolic", var="w", dtype="float32", device="cpu"),
                                   res.vjps[1]["w"], g.value, tol.derived(g.err, g.value, "float32"), lo=g.lo,
                                   hi=g.hi, upstream=point.cotangents[1])
    assert check.status == "fail" and check.bad == 1 and [e.index for e in check.worst[:1]] == [[7, 3]]
    fresh.message += f"; {len(point.cotangents)} cotangents, worst: random #1"
    assert all(e.fd is not None for e in check.worst)  # the failing report's finite differences, added after
    for e in check.worst:
        e.fd = None
    assert repr(vars(check)) == repr(vars(fresh))


def test_a_reference_that_is_not_finite_at_a_kink_is_not_judged_by_the_all_finite_path():
    """|got - ref| finite implies both finite, except where a kink's hull replaces the error: an infinite
    reference there still leaves that entry unjudged, as the masked path says."""
    from diffcheck.compare import compare
    from diffcheck.model import Check
    from diffcheck.tolerance import Tolerance

    ref = np.array([1.0, np.inf, 3.0])
    got = np.array([1.0, 2.0, 3.0])
    lo, hi = ref.copy(), ref.copy()
    lo[1], hi[1] = 1.5, 2.5  # entry 1 on a kink: got lies in its hull, so its error is 0
    tol = Tolerance(np.full(3, 1e-9), None, None, "test")
    fast = compare(Check("grad", "autograd", "symbolic", var="x"), got, ref, tol, lo=lo, hi=hi)
    masked = compare(Check("grad", "autograd", "symbolic", var="x"), got, ref, tol, lo=lo, hi=hi,
                     judge=np.ones(3, bool))
    assert fast.status == "skip" and repr(vars(fast)) == repr(vars(masked))


def test_no_finite_difference_evaluator_for_a_case_without_a_small_var(monkeypatch):
    from diffcheck.checks import point as point_module

    point = point_of("sum(x * y)", {"x": {"shape": [5, 5]}, "y": {"shape": [5, 5]}})
    made = []
    real = point_module.Point.evaluator
    monkeypatch.setattr(point_module.Point, "evaluator", lambda self, *a: made.append(a) or real(self, *a))
    assert point_module.entrywise_fd(point) == {} and made == []


@pytest.mark.parametrize("value", [np.array([1.0, -3.0]), np.array([np.nan, -2.0]), np.array([np.inf, 2.0, -5.0]),
                                   np.array([-np.inf, np.nan]), np.zeros(0), np.float64(-4.0), np.array(np.nan)])
def test_the_forwards_peak_is_the_masked_max(value):
    from diffcheck.engines.symbolic import _finite_peak

    want = float(np.max(np.abs(value), initial=0.0, where=np.isfinite(value)))
    assert repr(_finite_peak(value)) == repr(want)


def test_a_value_passed_through_is_copied_not_shared():
    """An op whose numpy form returns its input (detach) still gives its step an array of its own."""
    point = point_of("sum(detach(x) * x)", {"x": {"shape": [3]}})
    program = point.program
    fwd = program.forward(point.at("float64"))
    step = next(i for i, s in enumerate(program.slots) if s.kind == "instr" and s.instr.op == "detach")
    assert not np.shares_memory(fwd.values[step], fwd.values[program.var_slots["x"]])


def test_float32_tensors_in_and_out_are_torchs_own_conversions_bit_for_bit():
    """Inputs rounded to float32 by numpy's cast and gradients widened by numpy are the tensors and arrays torch's
    own ``.to`` gives: the same bits (nan, inf, -0, subnormals, overflow), shapes and layouts, never a view."""
    import torch

    from diffcheck.engines.autograd import to_numpy, to_tensor

    rng = np.random.default_rng(6)
    x = rng.standard_normal(4000) * 10.0 ** rng.integers(-46, 40, 4000)
    x[:8] = [np.nan, -np.inf, np.inf, -0.0, 3.5e38, 1e-46, 7e-46, -1.4e-45]
    for a in (x, x.reshape(40, 100).T, np.float64(1.5), np.broadcast_to(x[:5], (3, 5)), [0.1, 0.2]):
        want = torch.as_tensor(np.array(a, dtype=np.float64)).to(dtype=torch.float32)
        got = to_tensor(a, "float32", "cpu", requires_grad=True)
        assert got.dtype == torch.float32 and got.requires_grad and got.stride() == want.stride()
        assert torch.equal(got.detach().view(torch.int32), want.view(torch.int32))
    g = torch.from_numpy(x.reshape(40, 100)).to(torch.float32)
    for t in (g, g.T, g[::3, 1::7], g[0].expand(6, 100), torch.tensor(2.5), g.requires_grad_()):
        want = t.detach().to(dtype=torch.float64).numpy().copy()
        got = to_numpy(t)
        assert got.tobytes() == want.tobytes() and got.strides == want.strides
        assert not np.shares_memory(got, t.detach().numpy())


def test_the_gradients_peak_kept_for_a_reference_is_never_another_references():
    """The gradients' peak is found once per reference (both dtypes ask); another reference, even an equal-sized
    one, gets its own."""
    import importlib

    stage = importlib.import_module("diffcheck.checks.autograd")
    point = point_of("sum(x * y)", {"x": {"shape": [3, 4]}, "y": {"shape": [4]}})
    fwd, grads = point.reference("float64")
    assert stage.beyond_range(fwd, grads, "float32") is None and stage._PEAK[0] is grads
    assert stage.beyond_range(fwd, grads, "float64") is None
    gradient = type(grads[0]["x"])
    huge = [{"x": gradient(np.full(2, 1e39), np.zeros(2), np.full(2, 1e39), np.full(2, 1e39))}]
    assert "values reach 1e+39, beyond float32's largest" in stage.beyond_range(fwd, huge, "float32")
    assert stage.beyond_range(fwd, huge, "float64") is None
    assert stage.beyond_range(fwd, grads, "float32") is None
