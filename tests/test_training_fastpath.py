"""The training loops' planned steps compute exactly what the engines compute, and the torch loop's batched
finiteness checks cut a run at the step a check after every step would: the same reports, bit for bit."""

import json
import math

import numpy as np
import pytest
import torch

from diffcheck.engines import autograd
from diffcheck.engines.autograd import build
from diffcheck.engines.symbolic import Program
from diffcheck.expr.parse import parse
from diffcheck.training import fastpath

from .test_training import cli, train_toml

SHAPES = {"x": (8, 3), "w": (3,), "b": (), "y": (8,), "m": (3, 2), "z": (8, 2), "v": (8, 1), "c": (1,)}
EXPRESSIONS = [
    "mean((x @ w + b - y)**2)",
    "mean(0.5 * (v - (c*v + b))**2)",
    "sum(abs(tanh(x @ w) - y))",
    "mean(sigmoid(x @ w + b) * y) + mean(relu(x @ w)) + mean(silu(y * b))",
    "mean(w * w * x) + sum(x @ w * (x @ w))",  # a value used twice: its adjoints add up
    "sum(logsumexp(x @ m, dim=1, keepdim=True)) / 3 + sum(log_softmax(x @ m, dim=0) * z)",
    "mean(maximum(x @ w, y) / (1 + exp(-b))) - amax(x @ m) + prod(w)",
    "mse_loss(x @ w + b, y) + mean(clamp(x @ w, min=-0.5, max=0.5) - y)",
    "sum(x.T @ (x @ w - y)) + var(x @ w) + norm(m)",
    "mean(where(x @ w > 0, x @ w, 0.1 * (x @ w))) + mean((y > 0) * y * b) + sum(detach(w) * w)",
    "mean(reshape(x @ m, [4, 4]) @ reshape(z, [4, 4])) + sum(x[:, 1:3] @ m[1:3]) + sum(cumsum(x @ w, 0) * y)",
    "mean(sum(x, dim=0) * w) + sum(mean(z * (x @ m), dim=1, keepdim=True)) + mean(softplus(x @ w) * sort(y))",
    "mean(log(1 + exp(x @ w * 300)))",  # exp overflows float64: the symbolic rules repair it in high precision
]


def _inputs(seed: int, scale: float = 1.0) -> dict:
    rng = np.random.default_rng(seed)
    return {k: rng.uniform(-2, 2, s) * scale for k, s in SHAPES.items()}


@pytest.mark.parametrize("text", EXPRESSIONS)
def test_the_planned_reference_step_is_the_programs_forward_and_vjp_bit_for_bit(text):
    ir = parse(text, set(SHAPES))
    for grad_vars in (["w", "b"], ["m", "c", "w"]):
        program = Program(ir, SHAPES, grad_vars)
        step = fastpath.ValueAndGrad(program)
        for seed in range(3):
            inputs = _inputs(seed, scale=[1.0, 1e-3, 50.0][seed])
            with np.errstate(all="ignore"):
                fwd = program.forward(inputs, None, with_err=False)
                want = program.vjp(fwd, 1.0, with_err=False)
                loss, grads = step(inputs)
            expected = float(fwd.values[program.out])
            assert loss == expected or (math.isnan(loss) and math.isnan(expected))
            assert list(grads) == grad_vars
            for name in grad_vars:
                got, (value, _) = grads[name], want[name]
                assert got.shape == value.shape and got.dtype == value.dtype
                assert np.array_equal(got, value, equal_nan=True), (text, name, got, value)


TORCH_EXPRESSIONS = [
    *EXPRESSIONS[:-1],
    "2 * 3 * b + x @ w * (1 / 4)",  # a constant sub-expression stays a number, as _eval computes it
    "((x @ w > 0) + (y < 0)) * y",  # masks added: 0/1 in the float dtype, never a boolean or
    "mean(-(x @ w) ** 2 - y / 3) + mean(where(y > 0, 1.0, y))",
    "sum(softmax(x @ m, dim=1) * z) + mean(stack([y, x @ w], dim=0))",
]


@pytest.mark.parametrize("text", TORCH_EXPRESSIONS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_closure_built_torch_function_is_the_node_by_node_walk_bit_for_bit(text, dtype):
    """``autograd.build`` walks the expression once into closures; ``autograd._eval`` walks it at every call."""
    ir = parse(text, set(SHAPES))
    values = {k: torch.tensor(v, dtype=dtype) for k, v in _inputs(0).items()}

    def walked(ir):
        def fn(**tensors):
            env = dict(tensors, **{autograd._DTYPE: dtype})
            return autograd._as_float(autograd._eval(ir, env), env)
        return fn

    results = []
    for make in (walked, build):
        tensors = {k: v.clone().requires_grad_() for k, v in values.items()}
        out = make(ir)(**tensors)
        out.sum().backward()
        results.append((out.detach(), {k: t.grad for k, t in tensors.items()}))
    (a, grads_a), (b, grads_b) = results
    assert a.dtype == b.dtype == dtype and torch.equal(a, b)
    for k in SHAPES:
        ga, gb = grads_a[k], grads_b[k]
        assert (ga is None) == (gb is None) and (ga is None or torch.equal(ga, gb)), k


# ---- the loops, through the CLI: blowups and stop rules fall on the step of a plain loop checking every step ----
def _plain_loop(lr: float, steps: int, dtype, loss_text: str = "mse", stop: float | None = None, w0=0.0):
    """The small case of test_training written out in plain torch, checking loss and params after every step."""
    torch.manual_seed(3)
    x = (torch.rand(30, 1) * 2.0).to(dtype)
    y = 3 * x - 1
    w = torch.full((1,), w0, dtype=dtype, requires_grad=True)
    b = torch.zeros(1, dtype=dtype, requires_grad=True)
    opt = torch.optim.SGD([w, b], lr=lr)
    for step in range(steps):
        opt.zero_grad()
        p = w * x + b
        loss = torch.nn.functional.mse_loss(p, y) if loss_text == "mse" else torch.mean(p - y)
        loss.backward()
        opt.step()
        if not (math.isfinite(loss.item()) and torch.isfinite(w).all() and torch.isfinite(b).all()):
            return "blowup", step
        if stop is not None and loss.item() < stop:
            return "stop", step
    return "end", steps


@pytest.mark.parametrize("dtype, lr, steps", [
    ("float64", 1.0, 400),  # blows up at step 349: in the middle of a window of checks
    ("float32", 1.0, 400),  # at step 42
    ("float32", 10.0, 31),  # at step 12, and the run ends before the first window is full
    ("float64", 1.0, 352),  # 349 is in the last, partial window
])
def test_a_diverging_run_reports_the_step_a_check_after_every_step_finds(write_case, dtype, lr, steps):
    kind, step = _plain_loop(lr, steps, getattr(torch, dtype))
    assert kind == "blowup"
    text = train_toml(dtypes=f'["{dtype}"]', train=f"{{ lr = {lr}, steps = {steps} }}")
    code, out = cli(write_case(text), "-v")
    assert code == 1 and f"the run is not finite at step {step} " in out, out
    assert f"steps after {step} not judged" in out or f"from step {step}" in out, out


def test_a_loss_of_minus_inf_at_the_step_a_stop_rule_would_fire_is_a_blowup_not_a_stop(write_case):
    # loss mean(p - y) falls without bound: at step 1 it is -inf, below the stop threshold, and not finite
    kind, step = _plain_loop(1e308, 40, torch.float64, "mean", stop=-1e300, w0=1.0)
    assert (kind, step) == ("blowup", 1)
    text = train_toml(**{"model.params.w": "{ ones = [1] }", "train":
                         '{ lr = 1e308, steps = 40, loss = "mean(p - y)", stop = "loss < -1e300" }'})
    path = write_case(text)
    code, out = cli(path, "-v", "--json", path.with_suffix(".json"))
    assert code == 1 and "the run is not finite at step 1 " in out, out
    [converge] = [c for c in json.loads(path.with_suffix(".json").read_text())["cases"][0]["checks"]
                  if c["kind"] == "converge"]
    assert (converge["details"]["blowup_step"], converge["details"]["stop_step"]) == (1, None)
    assert converge["details"]["steps"] == 1


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_a_stop_rule_fires_at_the_step_of_a_plain_loop(write_case, dtype):
    kind, step = _plain_loop(0.1, 600, getattr(torch, dtype), stop=1e-3)
    assert kind == "stop" and step > 32  # past the first window of finiteness checks
    text = train_toml(dtypes=f'["{dtype}"]', train='{ lr = 0.1, steps = 600, stop = "loss < 1e-3" }',
                      expect=f"{{ stop_step = {step} }}")
    code, out = cli(write_case(text), "-v")
    assert code == 0 and f"stop rule fired at step {step}" in out and f"after {step + 1} steps" in out, out


@pytest.mark.parametrize("lr", [0.1, 3.0])  # converging, and blowing up (in float32 first)
def test_parameters_stacked_a_few_steps_at_a_time_give_the_same_run(monkeypatch, lr):
    from diffcheck.training import loops
    from diffcheck.training.data import batches, draw

    from .test_training import small_case

    case = small_case(train={"lr": lr, "steps": 200})
    data, init = draw(case)
    steps = batches(case, len(data["y"]))
    for dtype in ("float32", "float64"):
        whole = loops.run_torch(case, data, init, dtype, "cpu", steps)
        monkeypatch.setattr(loops, "CHUNK_ENTRIES", 1)  # one step per stack: a large parameter's path
        chunked = loops.run_torch(case, data, init, dtype, "cpu", steps)
        monkeypatch.undo()
        assert (whole.blowup, whole.stop_step, whole.losses) == (chunked.blowup, chunked.stop_step, chunked.losses)
        assert len(whole.params) == len(chunked.params) > 1
        for a, b in zip(whole.params, chunked.params):
            assert all(np.array_equal(a[k], b[k]) and a[k].dtype == b[k].dtype == np.float64 for k in a)
    assert (whole.blowup is None) == (lr == 0.1)
