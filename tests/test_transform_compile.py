"""The ``compile`` transform: the function under torch.compile judged against the symbolic reference. The
wrong-on-purpose corpus is caught only under compile and its twins pass, in float64 and float32; compile time is
reported apart; a function dynamo runs eagerly, a missing C++ compiler and user code raising under compile are a
skip, a skip and a finding. Compiling is slow (seconds per graph): the default run keeps to a few small cases,
the sweep over shipped cases is marked ``slow``."""

import json

import pytest
from click.testing import CliRunner

from diffcheck.cli import main
from diffcheck.runner import Options, run_case

from .conftest import ROOT, corpus

CORPUS = ROOT / "benchmarks" / "transform_corpus" / "compile.toml"
BUGS, TWINS = corpus(CORPUS)
BOTH = Options(devices=("cpu",), dtypes=("float64", "float32"))


def run(*args):
    result = CliRunner().invoke(main, ["run", *map(str, args)])
    return result.exit_code, result.output


def test_corpus_has_a_twin_for_every_bug():
    assert len(BUGS) >= 2 and sorted(c.name[4:] for c in BUGS) == sorted(c.name[3:] for c in TWINS)


@pytest.mark.parametrize("case", BUGS, ids=lambda c: c.name)
def test_every_bug_fails_under_compile_only_in_each_dtype(case):
    result = run_case(case, BOTH)
    assert result.status == "fail"
    assert "passes the eager checks but is wrong under the compile transform" in result.message
    for dtype in ("float64", "float32"):
        assert any(c.kind == "compile" and c.var and c.status == "fail" and c.dtype == dtype for c in result.checks)
    eager = [c for c in result.checks if c.kind != "compile"]
    assert eager and not any(c.status == "fail" for c in eager), "the bug must be invisible without compile"


@pytest.mark.parametrize("case", TWINS, ids=lambda c: c.name)
def test_every_twin_passes_under_compile_in_each_dtype(case):
    result = run_case(case, BOTH)
    assert result.status == "pass", [(c.label, c.message) for c in result.checks if c.status == "fail"]
    assert {c.dtype for c in result.checks if c.kind == "compile" and c.status == "pass"} == {"float64", "float32"}


SMALL = '''
name = "small"
expr = "sum(tanh(x) * w)"
vars.x = { shape = [3, 4] }
vars.w = { shape = [4] }
devices = ["cpu"]
dtypes = ["float32"]
'''


def test_the_flag_adds_compile_checks_with_compile_time_and_the_reassociation_note(write_case, tmp_path):
    code, out = run(write_case(SMALL), "--transform", "compile", "-v", "--json", tmp_path / "r.json")
    assert code == 0, out
    assert "compile x [float32 cpu]" in out and "compile w [float32 cpu]" in out
    assert "compiled in" in out and "reassociation: no widening" in out
    report = json.loads((tmp_path / "r.json").read_text())
    checks = [c for r in report["cases"] for c in r["checks"] if c["kind"] == "compile"]
    assert len(checks) == 3 and all(c["status"] == "pass" for c in checks)
    assert all(c["details"]["graphs"] >= 1 and c["details"]["compile_s"] > 0 for c in checks)


def test_the_plain_run_compiles_nothing(write_case):
    code, out = run(write_case(SMALL), "-v")
    assert code == 0, out
    assert "PASS compile" not in out and "compiled in" not in out and "PASS grad x" in out


def test_a_1e3_error_in_one_entry_under_compile_only_fails(write_case, tmp_path):
    (tmp_path / "mine.py").write_text(
        "import torch\n"
        "class F(torch.autograd.Function):\n"
        "    @staticmethod\n"
        "    def forward(ctx, x):\n"
        "        ctx.save_for_backward(x)\n"
        "        return x * x\n"
        "    @staticmethod\n"
        "    def backward(ctx, g):\n"
        "        (x,) = ctx.saved_tensors\n"
        "        r = 2 * g * x\n"
        "        if torch.compiler.is_compiling():\n"
        "            bump = torch.ones_like(r)\n"
        "            bump[1, 2] = 1 + 1e-3\n"
        "            r = r * bump\n"
        "        return r\n")
    path = write_case('name = "one_entry"\nexpr = "x * x"\nimpl = "mine:F"\ndevices = ["cpu"]\n'
                      'dtypes = ["float64"]\nvars.x = { shape = [10, 10], domain = [0.5, 2.0] }\n')
    code, out = run(path, "--transform", "compile")
    assert code == 1, out
    assert "compile x [float64 cpu]" in out and "1 of 100 entries" in out
    assert "passes the eager checks but is wrong under the compile transform" in out


def test_user_code_misbehaving_under_compile_is_a_finding(write_case, tmp_path):
    (tmp_path / "mine.py").write_text(
        "import torch\n"
        "def f(x):\n"
        "    y = x * x\n"
        "    return y[:2] if torch.compiler.is_compiling() else y\n")
    path = write_case('name = "misbehaves"\nexpr = "x * x"\nimpl = "mine:f"\ndevices = ["cpu"]\n'
                      'dtypes = ["float64"]\nvars.x = { shape = [3] }\n')
    code, out = run(path, "--transform", "compile")
    assert code == 1, out
    assert "FAIL compile [float64 cpu]" in out and "the impl returned shape [2] where [3] is expected" in out
    assert "Traceback" not in out


def test_a_function_dynamo_runs_eagerly_is_a_skip_not_a_pass(write_case, tmp_path):
    (tmp_path / "mine.py").write_text(
        "import torch\n"
        "@torch._dynamo.disable\n"
        "def square(x):\n"
        "    return x * x\n"
        "def f(x):\n"
        "    return square(x)\n")
    path = write_case('name = "eager_only"\nexpr = "x * x"\nimpl = "mine:f"\ndevices = ["cpu"]\n'
                      'dtypes = ["float64"]\nvars.x = { shape = [3] }\n')
    code, out = run(path, "--transform", "compile", "-v")
    assert code == 0, out
    assert "SKIP compile [float64 cpu]" in out and "compiled no graph" in out


def test_no_cpp_compiler_is_a_skip_with_the_reason(write_case, monkeypatch):
    import torch._inductor.cpp_builder as builder

    def missing():
        raise RuntimeError("no C++ compiler found (g++, clang++)")

    monkeypatch.setattr(builder, "get_cpp_compiler", missing)
    code, out = run(write_case(SMALL), "--transform", "compile", "-v")
    assert code == 0, out
    assert "SKIP compile [float32 cpu]" in out and "needs a C++ compiler" in out and "no C++ compiler found" in out


def test_shipped_seed_cases_pass_under_compile():
    code, out = run(ROOT / "cases" / "seeds.toml", "--transform", "compile", "--device", "cpu", "-k",
                    "sum_x_plus_b or two_w_squared_sgd_step")
    assert code == 0, out
    assert "2 passed, 0 failed" in out


@pytest.mark.slow
@pytest.mark.parametrize("path", ["seeds.toml", "ops/reductions.toml", "ops/matmul.toml", "ops/nn.toml"])
def test_shipped_cases_pass_under_compile_slow(path):
    code, out = run(ROOT / "cases" / path, "--transform", "compile", "--device", "cpu", "-q")
    assert code == 0, out
