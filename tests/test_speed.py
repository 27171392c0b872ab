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
