"""The layouts transform: the same gradients from transposed, strided, expanded and channels-last inputs and from a
non-contiguous upstream gradient, each judged against the reference. A backward that assumes contiguous strides is
caught and the message names the layout; every twin passes; layouts that cannot apply are skipped with the reason."""

import pytest
from click.testing import CliRunner

from diffcheck.casefile import load_data
from diffcheck.cli import main
from diffcheck.runner import Options, load, run_case

from .conftest import ROOT, corpus

CORPUS = ROOT / "benchmarks" / "transform_corpus" / "layouts.toml"
BUGS, TWINS = corpus(CORPUS)
CAUGHT_BY = {"bug_layouts_contiguous_input": {"transposed", "strided", "expanded"},
             "bug_layouts_contiguous_grad": {"upstream"}}


def test_the_corpus_has_bugs_and_twins():
    assert len(BUGS) >= 2 and len(TWINS) >= len(BUGS) and {c.name for c in BUGS} == set(CAUGHT_BY)
    assert all(c.transforms == ("layouts",) for c in BUGS + TWINS)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("case", BUGS, ids=lambda c: c.name)
def test_every_contiguity_assumption_is_caught_under_its_layout(case, dtype):
    result = run_case(case, Options(devices=("cpu",), dtypes=(dtype,)))
    assert result.status == "fail"
    failed = [c for c in result.checks if c.status == "fail"]
    assert failed and all(c.kind == "layouts" and c.dtype == dtype for c in failed), [c.label for c in failed]
    assert {c.details["layout"] for c in failed} == CAUGHT_BY[case.name]
    assert all(f"layout {c.details['layout']}" in c.message for c in failed)
    assert "wrong under the layouts transform" in result.message


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("case", TWINS, ids=lambda c: c.name)
def test_every_correct_twin_passes(case, dtype):
    result = run_case(case, Options(devices=("cpu",), dtypes=(dtype,)))
    assert result.status == "pass", [(c.label, c.message) for c in result.checks if c.status == "fail"]
    passed = {c.details["layout"] for c in result.checks if c.kind == "layouts" and c.status == "pass"}
    assert passed == {"transposed", "strided", "expanded", "upstream"}


VIEW_BACKWARD = '''
import torch
class F(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w):
        ctx.save_for_backward(x, w)
        return x * w
    @staticmethod
    def backward(ctx, g):
        x, w = ctx.saved_tensors
        flat = x.view(-1)  # view() needs contiguous strides
        return g * w, (g * flat.view(x.shape)).sum((0, 2, 3), keepdim=True)
'''


def test_channels_last_inputs_reach_a_backward_that_needs_contiguous_strides(tmp_path):
    (tmp_path / "mine.py").write_text(VIEW_BACKWARD)
    data = {"name": "mine", "expr": "x * w", "impl": "mine:F", "devices": ["cpu"], "transforms": ["layouts"],
            "vars": {"x": {"shape": [2, 3, 4, 5]}, "w": {"shape": [1, 3, 1, 1]}}}
    [case] = load_data(data, str(tmp_path / "case.toml"))
    result = run_case(case, Options(devices=("cpu",), dtypes=("float32",)))
    assert result.status == "fail"
    failed = [c for c in result.checks if c.status == "fail"]
    assert {c.details["layout"] for c in failed} >= {"channels_last"}
    assert all(c.kind == "layouts" and "impl_failure" in c.details and "mine.py" in c.message for c in failed)
    assert any("layout channels_last (x)" in c.message for c in failed)


def test_layouts_a_scalar_cannot_take_are_skipped_with_the_reason():
    [case] = load_data({"name": "s", "expr": "exp(x)", "vars": {"x": {"shape": []}}, "devices": ["cpu"],
                        "transforms": ["layouts"], "dtypes": ["float64"]}, "s.toml")
    result = run_case(case, Options(devices=("cpu",)))
    assert result.status == "pass"
    skips = {c.details["layout"]: c.message for c in result.checks if c.kind == "layouts"}
    assert set(skips) == {"transposed", "strided", "expanded", "channels_last", "upstream"}
    assert "no var is 4-D" in skips["channels_last"] and "single entry" in skips["upstream"]
    assert all(c.status == "skip" for c in result.checks if c.kind == "layouts")


def test_expressions_take_every_layout_including_channels_last(write_case):
    path = write_case('name = "conv"\nexpr = "conv2d(x, w, b)"\nvars.x = { shape = [2, 3, 5, 5] }\n'
                      'vars.w = { shape = [4, 3, 3, 3] }\nvars.b = { shape = [4] }\ndevices = ["cpu"]\n')
    [case] = load([path])
    result = run_case(case, Options(devices=("cpu",), transforms=("layouts",)))
    assert result.status == "pass", result.message
    passed = {(c.details["layout"], c.dtype) for c in result.checks if c.kind == "layouts" and c.status == "pass"}
    assert passed == {(lay, d) for lay in ("transposed", "strided", "expanded", "channels_last", "upstream")
                      for d in ("float64", "float32")}


def test_the_shipped_seed_cases_pass_under_layouts():
    result = CliRunner().invoke(main, ["run", str(ROOT / "cases" / "seeds.toml"), "--device", "cpu",
                                       "--transform", "layouts", "-q"])
    assert result.exit_code == 0, result.output
    assert " 0 failed" in result.output
