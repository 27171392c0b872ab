"""The ``aliasing`` transform: two grad vars of one shape passed the very same tensor; the gradient of that leaf
must be the sum of the partials at the aliased point. The wrong-on-purpose corpus is caught only aliased and its
twins pass, in float64 and float32; kinks at the aliased point, domains and cases with nothing to alias are
skips or passes, never false alarms; with ``compile`` also requested the aliased check runs compiled too."""

import json

import pytest
from click.testing import CliRunner

from diffcheck.cli import main
from diffcheck.runner import Options, run_case

from .conftest import ROOT, corpus

pytest_plugins = ["pytester"]

CORPUS = ROOT / "benchmarks" / "transform_corpus" / "aliasing.toml"
BUGS, TWINS = corpus(CORPUS)
BOTH = Options(devices=("cpu",), dtypes=("float64", "float32"))


def run(*args):
    result = CliRunner().invoke(main, ["run", *map(str, args)])
    return result.exit_code, result.output


def test_corpus_has_a_twin_for_every_bug():
    assert len(BUGS) >= 2 and sorted(c.name[4:] for c in BUGS) == sorted(c.name[3:] for c in TWINS)


@pytest.mark.parametrize("case", BUGS, ids=lambda c: c.name)
def test_every_bug_fails_aliased_only_in_each_dtype(case):
    result = run_case(case, BOTH)
    assert result.status == "fail"
    assert "passes the eager checks but is wrong under the aliasing transform" in result.message
    assert "a and b passed the very same tensor: the gradient of that tensor is the sum of the partials" \
        in result.message
    for dtype in ("float64", "float32"):
        assert any(c.kind == "aliasing" and c.var == "a" and c.status == "fail" and c.dtype == dtype
                   for c in result.checks)
    eager = [c for c in result.checks if c.kind != "aliasing"]
    assert eager and not any(c.status == "fail" for c in eager), "the bug must be invisible with distinct inputs"


@pytest.mark.parametrize("case", TWINS, ids=lambda c: c.name)
def test_every_twin_passes_aliased_in_each_dtype(case):
    result = run_case(case, BOTH)
    assert result.status == "pass", [(c.label, c.message) for c in result.checks if c.status == "fail"]
    assert {c.dtype for c in result.checks if c.kind == "aliasing" and c.var and c.status == "pass"} == \
        {"float64", "float32"}


def case_text(expr: str, vars_: str, name: str = "c") -> str:
    return f'name = "{name}"\nexpr = "{expr}"\ndevices = ["cpu"]\ndtypes = ["float64", "float32"]\n{vars_}'


SAME = 'vars.x = { shape = [3, 4] }\nvars.y = { shape = [3, 4] }\n'


@pytest.mark.parametrize("expr", ["sum(sin(x) * y**2)", "x - y", "maximum(x, y)", "abs(x - y) + x * y",
                                  "sum(x @ transpose(y))"])
def test_autograd_with_aliased_inputs_passes(write_case, tmp_path, expr):
    """torch is right here: kinks at the aliased point (maximum(x, x), |x - x|) stay within the hull."""
    code, out = run(write_case(case_text(expr, SAME)), "--transform", "aliasing", "-v", "--json", tmp_path / "r.json")
    assert code == 0, out
    checks = [c for r in json.loads((tmp_path / "r.json").read_text())["cases"] for c in r["checks"]
              if c["kind"] == "aliasing"]
    assert {(c["var"], c["dtype"]) for c in checks} == {(v, d) for v in (None, "x") for d in ("float64", "float32")}
    assert all(c["status"] in ("pass", "warn") for c in checks), checks  # warn: entries on the kink, in the hull
    assert "x and y passed the very same tensor: the gradient of that tensor is the sum of the partials" in out


def test_a_third_var_keeps_its_own_gradient_at_the_aliased_point(write_case):
    text = case_text("sum(x * y * z)", 'vars.x = { shape = [4] }\nvars.y = { shape = [4] }\nvars.z = { shape = [] }\n')
    code, out = run(write_case(text), "--transform", "aliasing", "-v")
    assert code == 0, out
    assert "PASS aliasing z [float32 cpu]" in out and "PASS aliasing x [float32 cpu]" in out


def test_nothing_to_alias_is_a_skip_with_the_reason(write_case):
    text = case_text("sum(x) * y", 'vars.x = { shape = [3] }\nvars.y = { shape = [] }\n')
    code, out = run(write_case(text), "--transform", "aliasing", "-v")
    assert code == 0, out
    assert "SKIP aliasing [float64 cpu]" in out and "no two grad vars share a shape (grad vars: x, y)" in out


def test_domains_without_a_common_value_are_a_skip(write_case):
    text = case_text("x * log(y)", 'vars.x = { shape = [3], domain = [-2.0, -1.0] }\n'
                                   'vars.y = { shape = [3], domain = [1.0, 2.0] }\n')
    code, out = run(write_case(text), "--transform", "aliasing", "-v")
    assert code == 0, out
    assert "SKIP aliasing [float64 cpu]" in out and "cannot take one value" in out


def test_a_common_domain_value_is_found(write_case):
    text = case_text("x * log(y)", 'vars.x = { shape = [3], domain = [-2.0, 2.0] }\n'
                                   'vars.y = { shape = [3], domain = [0.5, 1.5] }\n')
    code, out = run(write_case(text), "--transform", "aliasing", "-v")
    assert code == 0, out
    assert "PASS aliasing x [float64 cpu]" in out


def test_with_compile_requested_the_aliased_check_runs_compiled_too(write_case, tmp_path):
    text = case_text("sum(sin(x) * y)", SAME).replace('["float64", "float32"]', '["float64"]')
    code, out = run(write_case(text), "--transform", "compile", "--transform", "aliasing", "-v",
                    "--json", tmp_path / "r.json")
    assert code == 0, out
    assert "under torch.compile, x and y passed the very same tensor: the gradient of that tensor is the sum" in out
    checks = [c for r in json.loads((tmp_path / "r.json").read_text())["cases"] for c in r["checks"]
              if c["kind"] == "aliasing" and c["device"] == "cpu"]
    assert sorted((c["var"] or "", c["details"]["compiled"], c["status"]) for c in checks) == \
        [("", False, "pass"), ("", True, "pass"), ("x", False, "pass"), ("x", True, "pass")]
    assert all(c["details"]["compile_s"] > 0 for c in checks if c["details"]["compiled"])


def test_shipped_seed_and_op_cases_pass_aliased():
    code, out = run(ROOT / "cases" / "seeds.toml", ROOT / "cases" / "ops" / "binary_broadcast.toml",
                    "--transform", "aliasing", "--device", "cpu", "-q")
    assert code == 0, out


def test_pytest_items_of_the_transform(pytester):
    pytester.makefile(".toml", case=case_text("sum(x * y)", SAME, "pair") + 'transforms = ["aliasing"]\n')
    result = pytester.runpytest_subprocess("-v", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=5)  # the reference, two dtypes, and the transform in each dtype
    result.stdout.fnmatch_lines(["*case.toml::pair?aliasing-float64-cpu? PASSED*",
                                 "*case.toml::pair?aliasing-float32-cpu? PASSED*"])
