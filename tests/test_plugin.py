"""The pytest plugin at its edges: files that cannot be loaded, repeated ids, failure headers, warnings, xdist.

Each test runs pytest in a subprocess (pytester) on real case files, as a user's ``pytest cases/`` would.
"""

import subprocess
import sys

import pytest

pytest_plugins = ["pytester"]

GOOD = '''
name = "good"
expr = "sum(2*w**2)"
vars.w = { shape = [2], value = [10.0, 20.0] }
expect.grad.w = [40.0, 80.0]
devices = ["cpu"]
'''
# training data that is not rectangular: loading it raised a ValueError, which the plugin turned into INTERNALERROR
RAGGED = '''
kind = "train"
name = "ragged"
data.x = { value = [[1.0], [1.0, 2.0]] }
data.y = "2*x + 1"
model = { type = "linear" }
train = { loss = "mse", optimizer = "sgd", lr = 0.01, steps = 10 }
devices = ["cpu"]
'''
MIXED = '''
[[case]]
name = "fine"
expr = "sum(x**2)"
vars.x = { shape = [2] }
devices = ["cpu"]

[[case]]
name = "typo"
expr = "sum(x**2)"
vars.x = { shpe = [2] }
devices = ["cpu"]
'''


def _no_internal_error(result):
    out = result.stdout.str() + result.stderr.str()
    assert "INTERNALERROR" not in out, out
    return out


def test_files_that_cannot_be_loaded_are_one_error_each_naming_the_file_and_the_rest_runs(pytester):
    pytester.makefile(".toml", good=GOOD, ragged=RAGGED, mixed=MIXED)
    (pytester.path / "binary.toml").write_bytes(b"\xff\xfe\x00name = 1\x80")
    sub = pytester.mkdir("sub")
    (sub / "deep.toml").write_text("a = " + "[" * 3000 + "1" + "]" * 3000 + "\n")
    (sub / "good2.toml").write_text(GOOD.replace('"good"', '"good2"'))
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-rE")
    _no_internal_error(result)
    # good, good2 and mixed's fine case: 3 items each; one error per file that cannot be loaded, one per bad case
    result.assert_outcomes(passed=9, errors=4)
    result.stdout.fnmatch_lines_random([
        "ERROR ragged.toml::ragged*", "ERROR binary.toml::binary.toml*", "ERROR sub/deep.toml::deep.toml*",
        "ERROR mixed.toml::typo*",
        "diffcheck: invalid case*/ragged.toml: *",
        "diffcheck: invalid case file: */binary.toml: a binary file (it contains NUL bytes), not a TOML case file",
        "diffcheck: invalid case file: */sub/deep.toml: invalid TOML: nested too deeply",
        "diffcheck: invalid case: */mixed.toml: case 'typo': unknown key 'shpe' in vars.x (did you mean 'shape'?)",
    ])
    assert "RecursionError" not in result.stdout.str()


def test_repeated_item_ids_are_errors_like_the_clis_duplicate_names(pytester):
    twice = GOOD.replace('name = "good"', '[[case]]\nname = "good"')
    pytester.makefile(".toml", twice=twice + twice + twice, other=GOOD,  # another file: its own ids
                      dtypes=RAGGED.replace("[[1.0], [1.0, 2.0]]", "[[1.0], [2.0]]").replace(
                          'devices = ["cpu"]', 'devices = ["cpu"]\ndtypes = ["float32", "float32"]'))
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-rE")
    _no_internal_error(result)
    result.assert_outcomes(passed=6, errors=3)
    result.stdout.fnmatch_lines_random([
        "ERROR twice.toml::good - *", "ERROR twice.toml::good#2 - *", "ERROR dtypes.toml::ragged - *",
        "diffcheck: invalid case: */twice.toml: case 'good': name is already used by a case in this file",
        "diffcheck: invalid case: */dtypes.toml: case 'ragged': *twice*",
    ])


def test_failure_header_is_the_item_id_and_verbose_lines_keep_dotted_names(pytester):
    pytester.makefile(".toml", wrong=GOOD.replace("80.0]", "81.0]").replace('"good"', '"nn.wrong"'))
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-v")
    result.assert_outcomes(failed=3)
    out = _no_internal_error(result)
    assert "test session _" not in out
    result.stdout.fnmatch_lines_random([
        "*_ [[]diffcheck[]] wrong.toml::nn.wrong[[]float32-cpu[]] _*",
        "*_ [[]diffcheck[]] wrong.toml::nn.wrong[[]reference[]] _*",
        "wrong.toml::nn.wrong[[]float64-cpu[]] FAILED*",
    ])


IMPL_MODULE = "import torch\n\n\ndef sigmoid(x):\n    return torch.sigmoid(x)\n"
IMPL_CASE = 'name = "mine"\nexpr = "sigmoid(x)"\nvars.x = { shape = [3] }\nimpl = "mysig:sigmoid"\ndevices = ["cpu"]\n'


def test_an_impl_case_raises_no_torch_jit_deprecation_warning(pytester):
    pytester.makepyfile(mysig=IMPL_MODULE)
    pytester.makefile(".toml", mine=IMPL_CASE)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=3)
    out = _no_internal_error(result)
    assert "torch.jit" not in out and "warnings summary" not in out, out


def test_forward_mode_check_runs_under_deprecation_warnings_as_errors():
    # torch.func.jvp's first use scripted functions with the deprecated torch.jit.script: under -W error the
    # warning became an exception and the jvp check was skipped as "forward mode not supported"
    code = ("import torch, diffcheck; r = diffcheck.check('sigmoid(x)', vars={'x': {'shape': [3]}}, "
            "impl=torch.sigmoid, dtypes='float64'); print([c.status for c in r.checks if c.kind == 'jvp'])")
    out = subprocess.run([sys.executable, "-W", "error::DeprecationWarning", "-c", code], capture_output=True,
                         text=True, check=True).stdout
    assert out.split() == ["['pass']"]


def test_plugin_under_xdist_gives_the_same_items_and_errors(pytester):
    pytest.importorskip("xdist")
    pytester.makefile(".toml", good=GOOD, mixed=MIXED, ragged=RAGGED)
    result = pytester.runpytest_subprocess("-n", "2", "-p", "no:cacheprovider", "-rE")
    _no_internal_error(result)
    result.assert_outcomes(passed=6, errors=2)
    result.stdout.fnmatch_lines_random(["ERROR mixed.toml::typo*", "ERROR ragged.toml::ragged*"])


COUNTING_CONFTEST = '''
import diffcheck.engines.symbolic as symbolic
import diffcheck.training.loops as loops

calls = {"reference_passes": 0, "reference_loops": 0}
forward, run_reference = symbolic.Program.forward, loops.run_reference


def counted_forward(self, point, *args, **kwargs):
    if kwargs.get("with_err", True):  # the reference's own pass, with its rounding budget
        calls["reference_passes"] += 1
    return forward(self, point, *args, **kwargs)


def counted_loop(*args, **kwargs):  # the float64 symbolic-gradient loop of a training case
    calls["reference_loops"] += 1
    return run_reference(*args, **kwargs)


symbolic.Program.forward, loops.run_reference = counted_forward, counted_loop


def pytest_sessionfinish(session):
    for name, count in calls.items():
        (session.config.rootpath / f"{name}.txt").write_text(str(count))
'''


def test_the_items_of_one_case_share_its_reference_in_a_process(pytester):
    """A case's reference item and its dtype items compute the float64 reference (forward with its rounding
    budget) once per process, not once per item -- and still pass, and a wrong gradient still fails them."""
    pytester.makeconftest(COUNTING_CONFTEST)
    two_dtypes = GOOD.replace('devices = ["cpu"]', 'devices = ["cpu"]\ndtypes = ["float64", "float32"]')
    wrong = two_dtypes.replace('"good"', '"wrong"').replace("[40.0, 80.0]", "[40.0, 80.1]")
    pytester.makefile(".toml", good=two_dtypes, wrong=wrong)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:xdist")
    _no_internal_error(result)
    result.assert_outcomes(passed=3, failed=3)  # each case: a reference item and 2 dtype items
    assert (pytester.path / "reference_passes.txt").read_text() == "2"  # one per case, not one per item


TRAIN = '''
kind = "train"
name = "line"
data.x = { arange = [0.0, 5.0, 1.0], shape = [5, 1] }
data.y = "2*x + 1"
model = { type = "linear" }
train = { loss = "mse", optimizer = "sgd", lr = 0.05, steps = 300 }
expect = { params = { weight = 2.0, bias = 1.0 }, atol = 0.05 }
devices = ["cpu"]
'''


def test_the_items_of_one_training_case_share_its_reference_loop_in_a_process(pytester):
    """A training case's dtype items run the float64 symbolic-gradient loop once per process, not once per item;
    a wrong expectation still fails each item."""
    pytester.makeconftest(COUNTING_CONFTEST)
    pytester.makefile(".toml", line=TRAIN, wrong=TRAIN.replace('"line"', '"wrong"').replace("bias = 1.0", "bias = 1.5"))
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:xdist")
    _no_internal_error(result)
    result.assert_outcomes(passed=2, failed=2)  # float32 and float64 items of each case
    assert (pytester.path / "reference_loops.txt").read_text() == "2"  # one per case, not one per item


PHASES_CONFTEST = '''
def pytest_runtest_logreport(report):
    with open("phases.txt", "a") as f:
        f.write(f"{report.nodeid.split('::')[-1]} {report.when} {report.outcome}\\n")
'''


def test_an_item_for_a_missing_device_is_skipped_at_setup_with_no_call_phase(pytester):
    """Without CUDA, a CUDA item is skipped with the reason before its call phase: pytest runs and reports only
    its setup and teardown (1717 such items in cases/ on a CPU machine), and the CPU items beside it still run."""
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here: the CUDA item runs instead of being skipped")
    pytester.makeconftest(PHASES_CONFTEST)
    pytester.makefile(".toml", seeds=GOOD.replace('devices = ["cpu"]', 'devices = ["cpu", "cuda"]'))
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:xdist", "-rs", "-k", "float32")
    _no_internal_error(result)
    result.assert_outcomes(passed=1, skipped=1)
    result.stdout.fnmatch_lines(["*CUDA is not available*"])
    phases = (pytester.path / "phases.txt").read_text().splitlines()
    assert [p for p in phases if "cuda" in p] == ["good[float32-cuda] setup skipped",
                                                  "good[float32-cuda] teardown passed"]
    assert "good[float32-cpu] call passed" in phases
