"""The CLI end to end on real case files: exit codes, the report, JSON, bad input beside good input."""

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from diffcheck.cli import main

from .conftest import DATA, ROOT

GOOD = '''
name = "good"
expr = "sum(2*w**2)"
vars.w = { shape = [2], value = [10.0, 20.0] }
expect.grad.w = [40.0, 80.0]
'''


def run(*args):
    result = CliRunner().invoke(main, ["run", *map(str, args)])
    return result.exit_code, result.output


def test_passing_case_exits_0(write_case):
    code, out = run(write_case(GOOD), "--device", "cpu")
    assert code == 0, out
    assert "PASS" in out and "1 passed, 0 failed" in out


def test_wrong_known_answer_fails_with_exit_1():
    code, out = run(DATA / "wrong_expect.toml", "--device", "cpu")
    assert code == 1, out
    assert "FAIL" in out and "expect_grad w" in out
    assert "the known answer in 'expect' disagrees with the engines" in out


def test_invalid_file_beside_a_good_one_exits_2_and_the_good_one_still_runs(write_case, tmp_path):
    write_case(GOOD, "a_good.toml")
    write_case('name = "typo"\nexpr = "x"\nvars.x = { shpe = [2] }\n', "b_typo.toml")
    code, out = run(tmp_path, "--device", "cpu", "--json", tmp_path / "r.json")
    assert code == 2, out
    assert "PASS" in out and "b_typo.toml: case 'typo': unknown key 'shpe' in vars.x (did you mean 'shape'?)" in out
    report = json.loads((tmp_path / "r.json").read_text())
    statuses = {c["name"]: c["status"] for c in report["cases"]}
    assert statuses == {"good": "pass", "typo": "error"}
    assert report["summary"]["errors"] == 1 and report["summary"]["passed"] == 1


def test_json_report_shape(write_case, tmp_path):
    code, _ = run(write_case(GOOD), "--json", tmp_path / "r.json")
    assert code == 0
    report = json.loads((tmp_path / "r.json").read_text())
    case = report["cases"][0]
    assert set(case) >= {"name", "file", "status", "message", "checks"}
    check = next(c for c in case["checks"] if c["kind"] == "grad" and c["device"] == "cpu")
    assert set(check) >= {"kind", "var", "dtype", "device", "status", "max_abs_err", "max_rel_err", "atol", "rtol",
                          "worst", "tolerance"}
    assert "derived" in check["tolerance"]
    assert set(report["environment"]) >= {"torch", "sympy", "devices"}


def test_cuda_checks_are_reported_as_skipped_never_dropped(write_case):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the skip path does not apply")
    code, out = run(write_case(GOOD), "-v")
    assert code == 0
    assert "SKIP grad [float32 cuda]" in out and "CUDA is not available" in out


def test_explicit_cuda_without_cuda_is_a_usage_error(write_case):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    code, out = run(write_case(GOOD), "--device", "cuda")
    assert code == 2 and "--device cuda" in out


def test_selecting_nothing_says_so(write_case):
    code, out = run(write_case(GOOD), "-k", "no_such_case")
    assert code == 2 and "no cases selected" in out


def test_dtype_and_pattern_select(write_case):
    code, out = run(write_case(GOOD), "-k", "goo", "--dtype", "float32", "--device", "cpu", "-v")
    assert code == 0
    assert "grad w [float32 cpu]" in out and "grad w [float64 cpu]" not in out


def test_verbose_shows_the_symbolic_formula(write_case):
    _code, out = run(write_case(GOOD), "-v", "--device", "cpu")
    assert "d/dw sum(2*w**2) = 4*w (per entry)" in out


def test_missing_path_is_an_error(tmp_path):
    code, out = run(tmp_path / "nope.toml")
    assert code == 2 and "no such file" in out


def test_help_documents_every_option():
    result = CliRunner().invoke(main, ["run", "--help"])
    for option in ("--device", "--dtype", "-k", "--json", "--seed", "-v"):
        assert option in result.output


def test_console_script_runs_the_shipped_seeds():
    proc = subprocess.run([sys.executable, "-m", "diffcheck", "run", str(ROOT / "cases" / "seeds.toml")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 failed" in proc.stdout


def test_devices_excluded_by_the_device_option_are_reported_as_skipped(write_case):
    path = write_case('name = "cudaonly"\nexpr = "sum(x**2)"\ndevices = ["cuda"]\nvars.x = { shape = [3] }\n')
    code, out = run(path, "--device", "cpu", "-v")
    assert code == 0
    assert "SKIP grad [float32 cuda]: autograd vs symbolic -- cuda not requested (--device cpu)" in out


FREEZE_RECORDING_IMPL = """
import gc
from pathlib import Path

import torch


def double(x):  # a correct impl of 2*x that notes how many objects its process has frozen
    with open(Path(__file__).with_name("frozen.txt"), "a") as f:
        f.write(f"{gc.get_freeze_count()}\\n")
    return 2 * x
"""


def test_workers_leave_their_imported_modules_to_the_garbage_collector_and_report_the_same(tmp_path):
    """A -j worker freezes (gc.freeze) what it imported before its first case -- torch, sympy, diffcheck's engines,
    live until it exits -- so that no collection of the run, nor the one at its exit (1.6-1.9 s after a share of
    the corpus), walks them again; the cases' reports are those of -j 1, which runs in this process and freezes
    nothing."""
    (tmp_path / "mine.py").write_text(FREEZE_RECORDING_IMPL)
    (tmp_path / "cases.toml").write_text("".join(
        f'[[case]]\nname = "c{i}"\nexpr = "2*x"\nimpl = "mine:double"\nvars.x = {{ shape = [3] }}\n'
        f'devices = ["cpu"]\n' for i in range(4)))
    reports = {}
    for jobs in ("1", "2"):
        code, out = run(tmp_path / "cases.toml", "-j", jobs, "--json", tmp_path / f"j{jobs}.json")
        assert code == 0 and "4 passed" in out, out
        frozen = [int(n) for n in (tmp_path / "frozen.txt").read_text().split()]
        (tmp_path / "frozen.txt").unlink()
        assert frozen and (all(n > 10000 for n in frozen) if jobs == "2" else set(frozen) == {0}), (jobs, frozen)
        reports[jobs] = [{k: v for k, v in case.items() if k != "seconds"}
                         for case in json.loads((tmp_path / f"j{jobs}.json").read_text())["cases"]]
    assert reports["1"] == reports["2"]


def test_reports_are_built_with_the_garbage_collector_paused_and_it_is_back_after(write_case, tmp_path,
                                                                                   monkeypatch):
    """The --json and --junit reports are built with the collector off (their dicts and lists hold no cycles; its
    full passes over the run's objects were a third of the corpus's report time); it is on again afterwards,
    also when a write fails."""
    import gc

    import diffcheck.report as report

    seen = []

    def recorder(write):
        def recording(path, results, seconds, **kwargs):
            seen.append(gc.isenabled())
            return write(path, results, seconds, **kwargs)

        return recording

    for name in ("write_json", "write_junit"):
        monkeypatch.setattr(report, name, recorder(getattr(report, name)))
    path = write_case(GOOD)
    code, out = run(path, "--device", "cpu", "--json", tmp_path / "r.json", "--junit", tmp_path / "r.xml")
    assert code == 0 and json.loads((tmp_path / "r.json").read_text())["summary"]["passed"] == 1, out
    assert seen == [False, False] and gc.isenabled()
    if sys.platform.startswith("linux"):
        code, out = run(path, "--device", "cpu", "--json", "/dev/full")
        assert code == 2 and "cannot write the report" in out and gc.isenabled()


def test_json_report_with_workers_has_the_environment_and_one_line_per_case(write_case, tmp_path):
    """With -j 2 the environment is found by a worker (this process need not import torch after the run); the
    report is still the environment this machine reports, and each case is one line of it."""
    from diffcheck.report import environment

    write_case(GOOD, "a.toml")
    write_case(GOOD.replace('"good"', '"good2"'), "b.toml")
    code, out = run(tmp_path, "--device", "cpu", "-j", "2", "--json", tmp_path / "r.json")
    assert code == 0, out
    text = (tmp_path / "r.json").read_text()
    report = json.loads(text)
    assert report["environment"] == json.loads(json.dumps(environment()))
    lines = text.splitlines()
    assert lines[0] == '{"cases": [' and [json.loads(line.rstrip(","))["name"] for line in lines[1:3]] == \
        ["good", "good2"]


def test_json_report_is_the_same_bytes_when_only_the_cases_with_nan_or_inf_are_cleaned(write_case, tmp_path):
    """write_json encodes each case as it is and cleans (nan and inf to null) only a case whose encoding met one;
    walking every case's values in Python took longer than encoding them. The bytes are those of cleaning all."""
    import numpy as np

    import diffcheck
    from diffcheck.model import Check, Entry
    from diffcheck.report import _finite, _jsonable, to_json, write_json

    results = [diffcheck.run_case(case) for case in diffcheck.load(write_case(GOOD))] * 2
    results[1] = diffcheck.CaseResult("odd", "odd.toml", "fail", "x", checks=[Check(
        "grad", "autograd", "symbolic", status="fail", max_abs_err=float("inf"),
        worst=[Entry([0], float("nan"), 1.0, float("inf"), 1e-9, fd=np.float64("-inf"))],
        details={"trace": [1.0, float("nan"), [np.float64("inf"), 2]], "n": np.int64(3), "ok": np.float32(0.5)})])
    write_json(tmp_path / "r.json", results, 1.5, env={"python": "3"})
    data = _finite(to_json(results, 1.5, {"python": "3"}))

    def line(value) -> str:
        return json.dumps(value, allow_nan=False, default=_jsonable)

    old = ('{"cases": [\n' + ",\n".join(map(line, data.pop("cases"))) + "\n]"
           + "".join(f",\n{line(key)}: {line(value)}" for key, value in data.items()) + "\n}\n")
    assert (tmp_path / "r.json").read_text() == old
    odd = json.loads(old)["cases"][1]
    assert odd["checks"][0]["worst"][0]["got"] is None and odd["checks"][0]["details"]["trace"][2][0] is None
