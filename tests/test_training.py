"""Training cases: the seeds' runs reproduce, the symbolic-gradient loop agrees, slips and wrong answers fail."""

import numpy as np
import pytest

from diffcheck.casefile import load_data
from diffcheck.errors import CaseError
from diffcheck.runner import Options, load, run_case
from diffcheck.training import loops, verdicts
from diffcheck.training.data import batches, draw

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
    data, _ = draw(case)
    slope, intercept = np.polyfit(data["x"].reshape(-1), data["y"].reshape(-1), 1)
    fit = verdicts.least_squares(case, data)
    assert fit["w"][0] == pytest.approx(slope, rel=1e-10) and fit["b"][0] == pytest.approx(intercept, rel=1e-10)


def test_a_wrong_expected_answer_fails():
    case = small_case(expect={"least_squares": False, "params": {"w": 2.5, "b": -1.0}, "atol": 1e-2})
    result = run_case(case, CPU)
    assert result.status == "fail"
    assert "w reached 3.01717, wanted 2.5 from expect.params (off by 0.517" in result.message


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
    data, init = draw(case)
    return loops.run_torch(case, data, init, "float32", "cpu", batches(case, len(data["y"])))


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


# ---- through the CLI, on case files written into tmp_path ----
TRAIN = {"kind": '"train"', "name": '"t"', "seed": "3", "devices": '["cpu"]', "dtypes": '["float64"]',
         "data.x": "{ rand = [30, 1], scale = 2.0 }", "data.y": '"3*x - 1"', "model.expr": '"w*x + b"',
         "model.params.w": "{ zeros = [1] }", "model.params.b": "{ zeros = [1] }", "train": "{ lr = 0.1, steps = 50 }"}


def train_toml(**changes) -> str:
    """The small training case above as TOML; ``changes`` maps a key (dots as '__') to its TOML text, None drops it.
    Keys keep their order, new keys go last."""
    lines = dict(TRAIN)
    for key, value in changes.items():
        lines[key.replace("__", ".")] = value
    return "".join(f"{k} = {v}\n" for k, v in lines.items() if v is not None)


def cli(path, *args):
    from click.testing import CliRunner

    from diffcheck.cli import main

    result = CliRunner().invoke(main, ["run", str(path), "--device", "cpu", *map(str, args)])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.output


def test_a_correct_run_that_diverges_follows_its_trajectory(write_case):
    # lr 1.5 amplifies every step: the parameters reach 1e39 in 60 steps, and their rounding grows with them
    path = write_case(train_toml(dtypes='["float32", "float64"]', train="{ lr = 1.5, steps = 60 }"))
    code, out = cli(path, "-v")
    assert "PASS trajectory [float64 cpu]" in out and "final loss 1.29e+79 after 60 steps" in out, out
    assert "not finite at step 28" in out and "steps after 28 not judged" in out  # float32 overflows: a fail
    assert code == 1


def test_a_failed_expectation_shows_what_was_reached_and_wanted(write_case):
    code, out = cli(write_case(train_toml(expect="{ params = { w = 2.0, b = -1 } }")))
    assert code == 1
    assert "w reached 2.78621, wanted 2 from expect.params (off by 0.786, atol 0.001)" in out, out


def test_a_parameter_with_several_entries_names_its_worst_entry(write_case):
    text = train_toml(**{"data.x": "{ rand = [30, 2] }", "data.y": None, "model.expr": '"x @ w + b"',
                         "model.params.w": "{ zeros = [2] }", "expect": "{ params = { w = [2, -3], b = 1 } }"})
    code, out = cli(write_case(text + 'data.a = { value = [2.0, -3.0] }\ndata.y = "x @ a + 1"\n'))
    assert code == 1 and "w reached [" in out and "at entry [1], atol 0.001" in out, out


def test_the_converge_tolerance_says_when_there_are_no_parameter_targets(write_case):
    code, out = cli(write_case(train_toml()), "-v")
    assert code == 0 and "no parameter targets (expect.params, expect.least_squares)" in out, out
    assert "against expect.params" not in out


@pytest.mark.parametrize("changes, key, needle", [
    ({"expect": "{ stop_step = 3 }"}, "expect.stop_step", "expect.stop_step needs a stop rule"),
    ({"expect": "{ atol = nan, params = { w = 100.0 } }"}, "expect.atol", "expect.atol must be a finite number"),
    ({"expect": "{ atol = -1.0 }"}, "expect.atol", "expect.atol must be >= 0"),
    ({"expect": "{ final_loss_below = nan }"}, "expect.final_loss_below", "must be a finite number, got nan"),
    ({"expect": '{ params = { w = "abc" } }'}, "expect.params.w", "must be a number or a nested list"),
    ({"expect": "{ params = { w = [1, 2, 3] } }"}, "expect.params.w", "does not fit the parameter's shape [1]"),
    ({"expect": "{ params = { w = [[1], [2, 3]] } }"}, "expect.params.w", "ragged nested list"),
    ({"expect": "{ params = { w = 3 }, least_squares = true }"}, "expect.least_squares", "not both"),
    ({"data__x": "{ linspace = [nan, inf, 5] }"}, "data.x.linspace", "finite start and stop"),
    ({"data__x": "{ arange = [0, nan, 1] }"}, "data.x.arange", "of finite numbers"),
    ({"data__x": "{ arange = [0, inf, 1] }"}, "data.x.arange", "of finite numbers"),
    ({"data__x": "{ arange = [-1e308, 1e308, 1e-300] }"}, "data.x.arange", "more than 10000000 values"),
    ({"data__x": "{ rand = [30, 1], scale = nan }"}, "data.x.scale", "must be a finite number, got nan"),
    ({"data__x": "{ value = [[1, 2], [3]] }"}, "data.x.value", "ragged nested list"),
    ({"data__x": '{ value = "abc" }'}, "data.x.value", "must be a number or a nested list of numbers, got str"),
    ({"data__x": '{ value = ["a", "b"] }'}, "data.x.value", "must hold numbers only"),
    ({"data__x": "{ value = 3.0 }"}, "data.x", "data.x is a scalar"),
    ({"data__x": "{ rand = [7, 1] }", "data__y": "{ rand = [30, 1] }", "train": "{ lr = 0.1, epochs = 2, "
      "batch_size = 2 }"}, "data.x", "data.x has 7 rows but the target 'y' has 30"),
    ({"data__x": '"y * 2"', "data__y": "{ rand = [30, 1] }"}, "data.x",
     "data.x uses 'y', which [data] does not list above it: entries are computed in the order listed"),
    ({"train": '{ lr = 0.1, steps = 5, stop = "loss < 1e" }'}, "train.stop", "train.stop must read 'loss < NUMBER'"),
    ({"train": '{ lr = 0.1, steps = 5, stop = "loss < ..." }'}, "train.stop", "train.stop must read"),
    ({"train": '{ lr = 0.1, steps = 5, stop = "loss < nan" }'}, "train.stop", "with a finite number"),
    ({"train": "{ lr = 0.1, epochs = 5, batch_size = -3 }"}, "train.batch_size", "must be at least 1, got -3"),
    ({"train": "{ lr = 0.1, epochs = 5, batch_size = 0 }"}, "train.batch_size", "must be at least 1, got 0"),
    ({"train": "{ lr = 0.1, steps = 5, batch_size = 4 }"}, "train.batch_size", "needs train.epochs"),
    ({"train": "{ lr = 0.1, steps = 0 }"}, "train.steps", "train.steps must be at least 1, got 0"),
    ({"train": "{ lr = 0.1, epochs = 0 }"}, "train.epochs", "train.epochs must be at least 1, got 0"),
    ({"model__params__x": "{ zeros = [1] }", "model__expr": '"w*x + b + x"'}, "model.params.x",
     "param 'x' has the name of a [data] entry"),
    ({"model__params__y": "{ zeros = [1] }", "model__expr": '"w*x + b + y"'}, "model.params.y",
     "param 'y' has the name of a [data] entry"),
    ({"dtypes": "[]"}, "dtypes", "'dtypes' must list at least one entry"),
    ({"devices": "[]"}, "devices", "'devices' must list at least one entry"),
    ({"dtypes": '["float64", "float64"]'}, "dtypes", "'dtypes' lists an entry twice"),
    ({"devices": '["cpu", "cpu"]'}, "devices", "'devices' lists an entry twice"),
    ({"model__expr": None, "model__params__w": None, "model__params__b": None, "model": '{ type = "linear", '
      'outputs = -2 }'}, "model.outputs", "model.outputs (nn.Linear's output features) must be from 1 to"),
    ({"model__expr": None, "model__params__w": None, "model__params__b": None, "model": '{ type = "linear", '
      'inputs = -1 }'}, "model.inputs", "must be from 1 to 10000000, got -1"),
    ({"model__expr": '"w*x"', "model__params__b": None, "data__y": '"3*x"', "model__params__w": "{ zeros = [30, 1] }",
      "data__x": "{ rand = [30] }"}, "model", "would broadcast them into each other"),
    ({"name": '""'}, "name", "'name' must not be empty"),
    ({"train": "{ lr = 0.1, steps = 1000000 }"}, "train.steps",
     "1000000 steps x (10000 + 62 entries per step) = 1.01e+10 units of work; the limit is 5e+08"),
    ({"train": "{ lr = 0.1, epochs = 100000, batch_size = 1 }"}, "train.epochs",
     "100000 epochs x 30 batches x (10000 + 4 entries per step)"),
])
def test_nonsense_training_input_is_a_case_error_naming_the_key(write_case, changes, key, needle):
    text = train_toml(**changes)
    code, out = cli(write_case(text))
    assert code == 2 and "case.toml: case '" in out and needle in out, out
    import tomllib

    [err] = load_data(tomllib.loads(text), "case.toml")
    assert isinstance(err, CaseError) and err.key == key, (err, getattr(err, "key", None))


@pytest.mark.parametrize("changes, needle", [
    ({"dtypes": '["float32"]', "train": "{ lr = 10.0, steps = 200 }"}, "the run is not finite at step 12"),
    ({"train": "{ lr = 1e308, steps = 5 }"}, "the run is not finite at step 0"),
    ({"train": "{ lr = 1.0, steps = 400 }"}, "overflowed float64; a smaller train.lr may help"),
])
def test_a_run_that_overflows_never_passes(write_case, changes, needle):
    code, out = cli(write_case(train_toml(**changes)))
    assert code == 1 and "FAIL converge" in out and needle in out, out


@pytest.mark.parametrize("changes, key, needle", [
    ({"data.y": '"log(x - 5)"'}, "data.y", "data.y is not finite at 30 of 30 entries"),
    ({"data.x": "{ rand = [30, 1], scale = 1e39 }"}, "data.x", "data.x is not finite"),  # overflows float32
    ({"model.params.w": "{ ones = [1], offset = 1e39 }"}, "model.params.w", "model.params.w is not finite"),
    ({"expect": "{ least_squares = true }", "model.expr": '"w*w*x + b"'}, "expect.least_squares",
     "the model is not x @ w + b on this data"),
    ({"expect": "{ least_squares = true }", "model.expr": '"w*exp(x) + b"'}, "expect.least_squares",
     "the model is not x @ w + b on this data"),
    ({"expect": "{ least_squares = true }", "model.expr": '"2*w*x + b"'}, "expect.least_squares",
     "the model is not x @ w + b on this data"),
])
def test_data_that_cannot_be_used_is_a_case_error_when_drawn(write_case, changes, key, needle):
    code, out = cli(write_case(train_toml(**changes)))
    assert code == 2 and "case.toml: case 't': " in out and needle in out, out


def test_least_squares_accepts_an_affine_model_written_another_way(write_case):
    # relu(x) is x on rand data: the model is affine on the data it is fitted to
    code, out = cli(write_case(train_toml(**{"model.expr": '"b + relu(x) * w"', "model.params.w": "{ zeros = [1] }",
                                            "train": "{ lr = 0.3, steps = 300 }",
                                            "expect": "{ least_squares = true, atol = 1e-4 }"})))
    assert code == 0 and "PASS" in out, out


def test_no_dtype_requested_is_a_skip_not_a_pass(write_case):
    code, out = cli(write_case(train_toml()), "--dtype", "float16")
    assert code == 0 and "SKIP" in out and "none of the case's dtypes ['float64'] was requested" in out, out


def test_an_excluded_device_and_a_missing_gpu_skip_the_same_checks(write_case, tmp_path, monkeypatch):
    import json

    from diffcheck.engines import autograd

    path = write_case(train_toml(devices='["cpu", "cuda"]', dtypes='["float32", "float64"]',
                                 train="{ lr = 0.1, steps = 5 }"))

    def skipped(*args):
        cli(path, "--json", tmp_path / "r.json", *args)
        [case] = json.loads((tmp_path / "r.json").read_text())["cases"]
        return sorted((c["kind"], c["dtype"], c["device"]) for c in case["checks"] if c["status"] == "skip")

    want = sorted((k, d, "cuda") for k in ("converge", "trajectory", "reproducible") for d in ("float32", "float64"))
    assert skipped() == want  # --device cpu
    monkeypatch.setattr(autograd, "cuda_status", lambda: (False, "CUDA is not available (test)"))
    from click.testing import CliRunner

    from diffcheck.cli import main

    CliRunner().invoke(main, ["run", str(path), "--json", str(tmp_path / "r.json")])  # --device all, no GPU
    [case] = json.loads((tmp_path / "r.json").read_text())["cases"]
    assert sorted((c["kind"], c["dtype"], c["device"]) for c in case["checks"] if c["status"] == "skip") == want
    assert skipped("--dtype", "float32") == [w for w in want if w[1] == "float32"]


def test_plot_names_are_unique_and_stay_in_the_plot_directory(tmp_path):
    names = ["a/b", "a_b", "n" * 300, "../../escape", ".hidden"]
    text = "".join("[[case]]\n" + train_toml(name=f'"{n}"', train="{ lr = 0.1, steps = 3 }") for n in names)
    (tmp_path / "cases.toml").write_text(text)
    code, out = cli(tmp_path / "cases.toml", "--plot", tmp_path / "plots")
    assert code == 0, out
    written = sorted(p.name for p in (tmp_path / "plots").iterdir())
    assert len(written) == 5 and "a_b.png" in written and all(len(n) < 100 for n in written), written
    assert not list(tmp_path.glob("*.png")) and not list(tmp_path.parent.glob("*.png"))
    assert all(f"plot: {tmp_path / 'plots'}" in line for line in out.splitlines() if "plot:" in line)


def test_a_plot_directory_that_cannot_be_made_is_an_error_before_the_run(tmp_path, write_case):
    (tmp_path / "file").write_text("")
    code, out = cli(write_case(train_toml()), "--plot", tmp_path / "file" / "plots")
    assert code == 2 and "case.toml: case 't': --plot: cannot create" in out, out


def test_the_work_limit_is_raised_by_the_environment_not_the_case(monkeypatch):
    import tomllib

    text = train_toml(train="{ lr = 0.1, steps = 1000000 }")
    [err] = load_data(tomllib.loads(text), "case.toml")
    assert isinstance(err, CaseError) and "DIFFCHECK_MAX_TRAIN_WORK raises it" in str(err)
    monkeypatch.setenv("DIFFCHECK_MAX_TRAIN_WORK", "1e11")
    [case] = load_data(tomllib.loads(text), "case.toml")
    assert case.total_steps == 1_000_000


def test_the_schema_loads_neither_torch_nor_matplotlib():
    import subprocess
    import sys

    code = ("import sys, tomllib; from diffcheck.casefile import load_data; "
            f"[c] = load_data(tomllib.loads({train_toml()!r})); assert type(c).__name__ == 'TrainCase', c; "
            "print(sorted(m for m in ('torch', 'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]", out.stderr


def test_a_learning_rate_beyond_a_dtype_skips_that_dtype_with_the_reason(write_case):
    """torch.optim refuses lr = 1e308 with float32 params ("cannot be converted ... without overflow"): that
    dtype's checks skip with the reason, float64 runs (and diverges: a finding), and nothing is an error."""
    path = write_case(train_toml(dtypes='["float32", "float64"]', train='{ lr = 1e308, steps = 5, optimizer = "sgd" }'))
    code, out = cli(path, "-v")
    assert "ERROR" not in out and code == 1, out
    assert out.count("train.lr = 1e+308 is not representable in float32 (its largest is 3.4e+38)") == 3, out
    assert "FAIL converge [float64 cpu]" in out and "not finite at step 0" in out, out


def test_torch_raising_in_the_loop_is_a_failure_of_that_dtype_not_a_crash(write_case, monkeypatch):
    """Whatever torch raises in the loop under test fails that dtype's three checks with its message; the other
    dtype still runs and passes."""
    from diffcheck.training import loops

    run_torch = loops.run_torch

    def refusing(case, data, init, dtype, *args):
        if dtype == "float32":
            raise RuntimeError("no kernel for this shape\nmore text")
        return run_torch(case, data, init, dtype, *args)

    monkeypatch.setattr(loops, "run_torch", refusing)
    code, out = cli(write_case(train_toml(dtypes='["float32", "float64"]')), "-v")
    assert code == 1 and "ERROR" not in out, out
    for kind in ("converge", "trajectory", "reproducible"):
        assert f"FAIL {kind} [float32 cpu]" in out, out
    assert "-- the training loop raised RuntimeError: no kernel for this shape\n" in out, out
    assert "PASS converge [float64 cpu]" in out, out
