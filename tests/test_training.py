"""Training cases: the seeds' runs reproduce, the symbolic-gradient loop agrees, slips and wrong answers fail."""

import numpy as np
import pytest

from diffcheck.training import data as training_data
from diffcheck.training import loops, verdicts
from diffcheck.casefile import load_data
from diffcheck.errors import CaseError
from diffcheck.runner import Options, load, run_case

from .conftest import ROOT

SEEDS = {c.name: c for c in load([ROOT / "cases" / "train" / "seeds.toml"])}
CPU = Options(devices=("cpu",))


def test_t2_stop_rule_fires_at_iteration_78_as_in_the_seed():
    result = run_case(SEEDS["T2_stop_at_loss_below_1"], CPU)
    assert result.status == "pass", result.message
    converge = [c for c in result.checks if c.kind == "converge" and c.status != "skip"]  # cuda: skipped
    assert len(converge) == 2 and all("stop rule fired at step 78" in c.message for c in converge)


def test_the_seeds_slip_is_reported_as_leaving_the_correct_trajectory():
    result = run_case(SEEDS["T4_slip_zeroes_weights_not_grads"], CPU)
    assert result.status == "pass"
    trajectory = [c for c in result.checks if c.kind == "trajectory" and c.status != "skip"]
    assert len(trajectory) == 2 and all("diverges from the correct trajectory at step" in c.message for c in trajectory)


def small_case(**changes):
    raw = {"kind": "train", "name": "small", "seed": 3, "devices": ["cpu"],
           "data": {"x": {"rand": [30, 1], "scale": 2.0}, "noise": {"randn": [30, 1]}, "y": "3*x - 1 + 0.1*noise"},
           "model": {"expr": "w*x + b", "params": {"w": {"zeros": [1]}, "b": {"zeros": [1]}}},
           "train": {"loss": "mse", "lr": 0.1, "steps": 600},
           "expect": {"least_squares": True, "atol": 1e-4}}
    for key, value in changes.items():
        raw[key] = {**raw[key], **value} if isinstance(value, dict) else value
    [case] = load_data(raw, "small.toml")
    return case


def test_converges_to_the_least_squares_fit_of_the_noisy_data():
    case = small_case()
    result = run_case(case, CPU)
    assert result.status == "pass", [c.message for c in result.checks]
    data, _ = training_data.draw(case)
    slope, intercept = np.polyfit(data["x"].reshape(-1), data["y"].reshape(-1), 1)
    fit = verdicts.least_squares(case, data)
    assert fit["w"][0] == pytest.approx(slope, rel=1e-10) and fit["b"][0] == pytest.approx(intercept, rel=1e-10)


def test_a_wrong_expected_answer_fails():
    case = small_case(expect={"least_squares": False, "params": {"w": 2.5, "b": -1.0}, "atol": 1e-2})
    result = run_case(case, CPU)
    assert result.status == "fail" and "w reached 3.01717, wanted 2.5 from expect.params (off by 0.517" in result.message


def test_a_run_that_stops_short_does_not_converge():
    result = run_case(small_case(train={"steps": 5}), CPU)
    assert result.status == "fail"


def test_adam_minibatches_and_reproducibility():
    # Adam with a constant step crawls along the w-b valley, then hovers around the fit within about lr
    case = small_case(train={"optimizer": "adam", "lr": 0.05, "steps": None, "epochs": 250, "batch_size": 8},
                      expect={"least_squares": True, "atol": 0.05})
    result = run_case(case, CPU)
    assert result.status == "pass", [c.message for c in result.checks if c.status == "fail"]
    assert all(c.message == "identical" for c in result.checks if c.kind == "reproducible")


def test_plot_is_written(tmp_path):
    result = run_case(SEEDS["T5_short_nn_linear_run"], Options(devices=("cpu",), plot_dir=str(tmp_path)))
    assert result.artifacts and (tmp_path / "T5_short_nn_linear_run.png").stat().st_size > 1000


def raw_case(**changes):
    raw = {"kind": "train", "name": "small", "data": {"x": {"rand": [3, 1]}, "y": "3*x"},
           "model": {"expr": "w*x", "params": {"w": {"zeros": [1]}}}, "train": {"lr": 0.1, "steps": 3}}
    for section, values in changes.items():
        raw[section] = {k: v for k, v in {**raw[section], **values}.items() if v is not None}
    return raw


@pytest.mark.parametrize("changes, key, needle", [
    ({"train": {"lr": None}}, "train.lr", "missing required key 'lr'"),
    ({"train": {"stop": "loss > 3"}}, "train.stop", "loss < NUMBER"),
    ({"train": {"epochs": 3}}, "train", "exactly one of train.steps and train.epochs"),
    ({"train": {"slip": "forget_everything"}}, "train.slip", "unknown slip"),
    ({"train": {"lrr": 0.1}}, "train.lrr", "did you mean 'lr'"),
    ({"data": {"y": "3*x + z"}}, "data.y", "unknown name 'z'"),
    ({"model": {"expr": "w*x + c"}}, "model.expr", "unknown name 'c'"),
    ({"train": {"loss": "__import__('os')"}}, "train.loss", "unknown function '__import__'"),
])
def test_invalid_training_cases_name_the_key(changes, key, needle):
    [err] = load_data(raw_case(**changes), "bad.toml")
    assert isinstance(err, CaseError), err
    assert err.key == key and needle in str(err) and str(err).startswith("bad.toml: case 'small'")


def _diffcheck_run(name: str):
    case = SEEDS[name]
    data, init = training_data.draw(case)
    return loops.run_torch(case, data, init, "float32", "cpu", training_data.batches(case, len(data["y"])))


def test_t1_matches_an_independent_nn_linear_script_bit_for_bit():
    import torch

    torch.manual_seed(0)
    x = torch.arange(0.0, 11.0, 1.0).reshape(11, 1)
    y = 2 * x + 1
    model = torch.nn.Linear(1, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    for _ in range(1000):
        loss = torch.nn.MSELoss()(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    run = _diffcheck_run("T1_linear_2x_plus_1")
    assert run.params[-1]["weight"].item() == model.weight.item()
    assert run.params[-1]["bias"].item() == model.bias.item()
    assert run.losses[-1] == loss.item()


def test_t2_matches_the_seed_script_bit_for_bit():
    import torch

    torch.manual_seed(10)
    x = torch.rand(20, 1) * 10
    y = 2 * x + (5 + torch.randn(20, 1))
    w = torch.randn(1, requires_grad=True)
    b = torch.zeros(1, requires_grad=True)
    for iteration in range(1000):  # noqa: B007 - the stop iteration is the result
        loss = (0.5 * (y - torch.add(torch.mul(w, x), b)) ** 2).mean()
        loss.backward()
        b.data.sub_(0.05 * b.grad)
        w.data.sub_(0.05 * w.grad)
        w.grad.zero_()
        b.grad.zero_()
        if loss.item() < 1:
            break
    run = _diffcheck_run("T2_stop_at_loss_below_1")
    assert (run.stop_step, iteration) == (78, 78)
    assert run.params[-1]["w"].item() == w.item() and run.params[-1]["b"].item() == b.item()


def test_t4_matches_the_seed_script_bit_for_bit():
    import torch

    torch.manual_seed(0)
    x = torch.rand([50, 1])
    y_true = x * 3 + 0.8
    w = torch.rand([1, 1], requires_grad=True)
    b = torch.tensor(0, requires_grad=True, dtype=torch.float32)
    for _ in range(2000):
        loss = (y_true - (torch.matmul(x, w) + b)).pow(2).mean()
        if w.grad is not None:
            w.grad.zero_()
            b.grad.zero_()
        loss.backward()
        w.data = w.data - 0.01 * w.grad
        b.data = b.data - 0.01 * b.grad
    run = _diffcheck_run("T4_3x_plus_0_8_2000_steps")
    assert run.params[-1]["w"].item() == w.item() and run.params[-1]["b"].item() == b.item()
