"""The vmap transform: batched cotangents, inputs and tangents judged against the symbolic reference. Every
wrong-on-purpose vmap rule is caught (its eager checks pass), every twin passes, in float64 and float32; a
Function torch cannot vmap is skipped with torch's reason; user code failing under vmap is a finding."""

import json

import pytest
from click.testing import CliRunner

from diffcheck.casefile import load_data
from diffcheck.cli import main
from diffcheck.runner import Options, load, run_case

from .conftest import ROOT, corpus

pytest_plugins = ["pytester"]

CORPUS = ROOT / "benchmarks" / "transform_corpus" / "vmap.toml"
BUGS, TWINS = corpus(CORPUS)


def test_the_corpus_has_bugs_and_twins():
    assert len(BUGS) >= 2 and len(TWINS) >= len(BUGS)
    assert all(c.transforms == ("vmap",) for c in BUGS + TWINS)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("case", BUGS, ids=lambda c: c.name)
def test_every_wrong_vmap_rule_is_caught_and_only_by_vmap(case, dtype):
    result = run_case(case, Options(devices=("cpu",), dtypes=(dtype,)))
    assert result.status == "fail"
    caught = [c for c in result.checks if c.status == "fail"]
    assert caught and all(c.kind == "vmap" and c.dtype == dtype for c in caught), [c.label for c in caught]
    assert any("batched inputs" in c.message and "outside tolerance" in c.message for c in caught)
    assert "wrong under the vmap transform" in result.message


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("case", TWINS, ids=lambda c: c.name)
def test_every_correct_twin_passes(case, dtype):
    result = run_case(case, Options(devices=("cpu",), dtypes=(dtype,)))
    assert result.status == "pass", [(c.label, c.message) for c in result.checks if c.status == "fail"]
    judged = {c.details.get("batch") for c in result.checks if c.kind == "vmap" and c.status == "pass"}
    assert {"cotangents", "inputs"} <= judged


def impl_case(tmp_path, source: str, expr: str, **extra):
    (tmp_path / "mine.py").write_text(source)
    data = {"name": "mine", "expr": expr, "impl": "mine:F", "devices": ["cpu"], "transforms": ["vmap"],
            "vars": {"x": {"shape": [3, 4], "domain": [0.5, 2.0]}}, **extra}
    [case] = load_data(data, str(tmp_path / "case.toml"))
    return case


CLASSIC = '''
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


def test_a_classic_function_is_batched_through_its_backward_and_skipped_for_its_forward(tmp_path):
    result = run_case(impl_case(tmp_path, CLASSIC, "exp(x)"), Options(devices=("cpu",)))
    assert result.status == "pass", result.message
    vmap = [c for c in result.checks if c.kind == "vmap"]
    assert any(c.details.get("batch") == "cotangents" and c.status == "pass" for c in vmap)
    inputs = [c for c in vmap if c.details.get("batch") == "inputs"]
    assert inputs and all(c.status == "skip" and "setup_context" in c.message for c in inputs)


RAISING_RULE = '''
import torch
class F(torch.autograd.Function):
    @staticmethod
    def forward(x):
        return x.exp()
    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(output)
    @staticmethod
    def backward(ctx, g):
        (y,) = ctx.saved_tensors
        return g * y
    @staticmethod
    def vmap(info, in_dims, x):
        raise ValueError("my rule is unfinished")
'''


def test_a_vmap_rule_that_raises_is_a_finding(tmp_path):
    result = run_case(impl_case(tmp_path, RAISING_RULE, "exp(x)"), Options(devices=("cpu",)))
    assert result.status == "fail"
    [check] = [c for c in result.checks if c.status == "fail" and c.dtype == "float64"]
    assert check.kind == "vmap" and "impl_failure" in check.details
    assert "my rule is unfinished" in check.message and "mine.py" in check.message


BACKWARD_ITEM = '''
import torch
class F(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.exp()
    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g.new_tensor(g.tolist()) * x.exp()  # leaves the batch: fine eagerly, not under vmap
'''


def test_a_backward_that_cannot_be_batched_is_a_finding(tmp_path):
    result = run_case(impl_case(tmp_path, BACKWARD_ITEM, "exp(x)"), Options(devices=("cpu",), dtypes=("float64",)))
    assert result.status == "fail"
    failed = [c for c in result.checks if c.status == "fail"]
    assert failed and all(c.kind == "vmap" and c.details.get("impl_failure") for c in failed)
    assert all(c.status != "fail" for c in result.checks if c.kind != "vmap")


def test_the_cli_flag_checks_expressions_under_vmap(write_case):
    path = write_case('[[case]]\nname = "mm"\nexpr = "softmax(x @ w, dim=-1)"\nvars.x = { shape = [3, 4] }\n'
                      'vars.w = { shape = [4, 5] }\ndevices = ["cpu"]\n')
    out = path.with_suffix(".json")
    result = CliRunner().invoke(main, ["run", str(path), "--transform", "vmap", "--json", str(out)])
    assert result.exit_code == 0, result.output
    checks = json.loads(out.read_text())["cases"][0]["checks"]
    batches = {(c["details"].get("batch"), c["dtype"]) for c in checks if c["kind"] == "vmap" and c["status"] == "pass"}
    assert batches == {(b, d) for b in ("cotangents", "inputs", "tangents") for d in ("float64", "float32")}


def test_the_shipped_seed_cases_pass_under_vmap():
    result = CliRunner().invoke(main, ["run", str(ROOT / "cases" / "seeds.toml"), "--device", "cpu",
                                       "--transform", "vmap", "-q"])
    assert result.exit_code == 0, result.output
    assert " 0 failed" in result.output


def test_a_pytest_item_per_transform_dtype_and_device(pytester):
    pytester.makefile(".toml", vm='name = "vm"\nexpr = "sum(tanh(x), dim=1)"\nvars.x = { shape = [3, 2] }\n'
                                  'devices = ["cpu"]\ntransforms = ["vmap"]\n')
    result = pytester.runpytest("-v", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=5)
    result.stdout.fnmatch_lines(["*vm.toml::vm?vmap-float32-cpu? PASSED*"])


@pytest.mark.parametrize("name", ["binary_broadcast.toml::minimum_3x4_4", "binary_broadcast.toml::minimum_2x3x4_3x1",
                                  "reductions.toml::transpose_3d"])
def test_shipped_op_cases_that_once_failed_under_vmap_pass(name):
    """minimum's forward-mode formula (other_t + (self_t - other_t) * mask) rounds at the scale of a tangent whose
    derivative is 0: the budget covers it; an exact output (x.T) has a scalar error budget per member."""
    path, case_name = name.split("::")
    [case] = [c for c in load([ROOT / "cases" / "ops" / path]) if c.name == case_name]
    result = run_case(case, Options(devices=("cpu",), transforms=("vmap",)))
    assert result.status == "pass", result.message
    assert any(c.kind == "vmap" and c.status in ("pass", "warn") for c in result.checks)


NO_BATCHING_RULE = '''
import torch
def F(x):
    counted = torch.bincount((x > 0).long().flatten()).sum()  # no batching rule: torch runs it in a loop
    return x + (counted - x.numel())  # + 0, exactly
'''


def test_an_op_without_a_batching_rule_runs_in_a_loop_and_is_named(tmp_path):
    result = run_case(impl_case(tmp_path, NO_BATCHING_RULE, "x"), Options(devices=("cpu",), dtypes=("float64",)))
    assert result.status == "pass", result.message
    [inputs] = [c for c in result.checks if c.kind == "vmap" and c.details.get("batch") == "inputs" and c.var]
    assert inputs.status == "pass" and "torch ran aten::bincount in a loop" in inputs.message
