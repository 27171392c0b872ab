"""diffcheck inside users' test suites: the pytest plugin, the Python API, JUnit for CI, the public names."""

import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest
import torch
from click.testing import CliRunner

import diffcheck
from diffcheck.cli import main

pytest_plugins = ["pytester"]

GOOD = '''
[[case]]
name = "square"
expr = "sum(2*w**2)"
vars.w = { shape = [2], value = [10.0, 20.0] }
expect.grad.w = [40.0, 80.0]
devices = ["cpu"]
'''
WRONG = '''
name = "wrong"
expr = "sum(2*w**2)"
vars.w = { shape = [2], value = [10.0, 20.0] }
expect.grad.w = [40.0, 81.0]
devices = ["cpu"]
'''


def test_plugin_collects_one_item_per_case_and_dtype_device(pytester):
    pytester.makefile(".toml", seeds=GOOD)
    pytester.makefile(".toml", pyproject='[project]\nname = "x"\n')  # not a case file: left alone
    result = pytester.runpytest_subprocess("-v", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(["*seeds.toml::square[[]reference[]] PASSED*",
                                 "*seeds.toml::square[[]float32-cpu[]] PASSED*"])


def test_plugin_failure_shows_the_localized_report(pytester):
    pytester.makefile(".toml", wrong=WRONG)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(failed=3)  # a wrong known answer: every engine contradicts it
    result.stdout.fnmatch_lines(["*FAIL expect_grad w*", "*diagnosis: only entry [[]1[]] is wrong*"])


def test_plugin_selects_with_k_and_skips_cuda_with_a_reason(pytester):
    pytester.makefile(".toml", seeds=GOOD.replace('devices = ["cpu"]', 'devices = ["cpu", "cuda"]'))
    result = pytester.runpytest_subprocess("-k", "float32", "-rs", "-p", "no:cacheprovider")
    if torch.cuda.is_available():
        result.assert_outcomes(passed=2)
    else:
        result.assert_outcomes(passed=1, skipped=1)
        result.stdout.fnmatch_lines(["*CUDA is not available*"])


def test_plugin_invalid_file_is_an_error_naming_the_key(pytester):
    pytester.makefile(".toml", typo='name = "typo"\nexpr = "x"\nvars.x = { shpe = [2] }\n')
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    assert result.ret == 1
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*unknown key 'shpe' in vars.x (did you mean 'shape'?)*"])


def test_plugin_junitxml(pytester):
    pytester.makefile(".toml", wrong=WRONG)
    pytester.runpytest_subprocess("--junitxml=out.xml", "-p", "no:cacheprovider")
    suite = ET.parse(pytester.path / "out.xml").getroot().find("testsuite")
    assert suite.get("failures") == "3" and suite.get("tests") == "3"


def test_cli_junit_report(tmp_path):
    (tmp_path / "wrong.toml").write_text(WRONG)
    (tmp_path / "good.toml").write_text(GOOD)
    CliRunner().invoke(main, ["run", str(tmp_path), "--junit", str(tmp_path / "r.xml")])
    suite = ET.parse(tmp_path / "r.xml").getroot().find("testsuite")
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors")) == ("2", "1", "0")
    failure = suite.find("testcase[@name='wrong']/failure")
    assert failure is not None and "only entry [1] is wrong" in failure.text


def test_api_check_passes_and_fails_with_the_report():
    diffcheck.check("sigmoid(x)", vars={"x": {"shape": [3, 4], "domain": [-3, 3]}}, impl=torch.sigmoid).assert_ok()
    wrong = diffcheck.check("sigmoid(x)", vars={"x": {"shape": [3]}}, impl=lambda x: torch.sigmoid(x) * 1.01)
    assert not wrong.ok
    with pytest.raises(AssertionError, match="the impl's forward is wrong"):
        wrong.assert_ok()


def test_api_takes_known_answers_and_expressions_alone():
    result = diffcheck.check("sum(2*w**2)", vars={"w": {"shape": [2], "value": [10.0, 20.0]}},
                             expect={"grad": {"w": [40.0, 80.0]}})
    assert result.ok and any(c.kind == "expect_grad" for c in result.checks)


def test_public_names_are_exactly_all():
    for name in diffcheck.__all__:
        assert getattr(diffcheck, name) is not None
    assert set(dir(diffcheck)) == set(diffcheck.__all__)
    with pytest.raises(AttributeError):
        diffcheck.no_such_name  # noqa: B018


def test_importing_diffcheck_or_asking_for_help_loads_neither_torch_nor_sympy():
    code = ("import sys, diffcheck, diffcheck.cli; from click.testing import CliRunner; "
            "CliRunner().invoke(diffcheck.cli.main, ['run', '--help']); "
            "print('torch' in sys.modules, 'sympy' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_plugin_runs_under_xdist(pytester):
    pytest.importorskip("xdist")
    pytester.makefile(".toml", seeds=GOOD)
    result = pytester.runpytest_subprocess("-n", "2", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=3)
