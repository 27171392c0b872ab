"""What the CLI reads and prints: directory walks, odd files, typos, default vars, forged output, report paths,
the end of a run and ``-k`` expressions. Real files in ``tmp_path``, run through the CLI or the API."""

import json
import os
import tomllib
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

import diffcheck
from diffcheck.casefile import Case, load_data, load_file
from diffcheck.cli import main
from diffcheck.errors import CaseError, UsageError
from diffcheck.pattern import matches

from .conftest import ROOT

GOOD = 'name = "{name}"\nexpr = "sum(x**2)"\ndtypes = ["float64"]\ndevices = ["cpu"]\nvars.x = {{ shape = [3] }}\n'
ESC = "\x1b"


def good(name="ok"):
    return GOOD.format(name=name)


def run(*args, env=None):
    result = CliRunner().invoke(main, ["run", *map(str, args)], env=env)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.output


# 1. directory walks and odd files

def test_a_walk_skips_pyproject_but_naming_it_says_why(tmp_path):
    (tmp_path / "pyproject.toml").write_text((ROOT / "pyproject.toml").read_text())
    (tmp_path / "ok.toml").write_text(good())
    code, out = run(tmp_path)
    assert code == 0, out
    assert "1 passed, 0 failed, 0 skipped, 0 errors in 1 cases" in out and "pyproject.toml" not in out
    code, out = run(tmp_path / "pyproject.toml")
    assert code == 2
    assert "pyproject.toml: not a case file: none of its top-level keys (build-system, project, tool)" in out


def test_a_walk_still_reports_a_case_file_with_a_typo_in_its_only_case_key(tmp_path):
    (tmp_path / "typo.toml").write_text('name = "t"\nexrp = "sum(x)"\n')
    code, out = run(tmp_path)
    assert code == 2 and "unknown key 'exrp' (did you mean 'expr'?)" in out  # expr is optional (reference, impl)


def test_the_same_file_reached_twice_is_loaded_once(tmp_path, monkeypatch):
    (tmp_path / "a.toml").write_text(good("a"))
    monkeypatch.chdir(tmp_path)
    code, out = run("a.toml", ".", tmp_path / "a.toml")
    assert code == 0, out
    assert "already used" not in out and "1 passed" in out


def test_broken_and_looping_links_are_reported_not_skipped(tmp_path):
    (tmp_path / "ok.toml").write_text(good())
    (tmp_path / "broken.toml").symlink_to(tmp_path / "nowhere.toml")
    (tmp_path / "loop1.toml").symlink_to(tmp_path / "loop2.toml")
    (tmp_path / "loop2.toml").symlink_to(tmp_path / "loop1.toml")
    code, out = run(tmp_path)
    assert code == 2
    assert f"ERROR {tmp_path / 'broken.toml'}: cannot read: a broken symbolic link" in out
    assert f"ERROR {tmp_path / 'loop1.toml'}: cannot read: a symbolic link that loops" in out
    assert "PASS  " in out and "ok.toml::ok" in out


def test_an_unreadable_folder_in_a_walk_is_reported(tmp_path, monkeypatch):
    (tmp_path / "ok.toml").write_text(good())
    locked = tmp_path / "locked"
    locked.mkdir()
    (locked / "hidden.toml").write_text(good("hidden"))
    real_scandir = os.scandir

    def scandir(path="."):  # chmod 000 does not stop root, so the refusal is the one the kernel would give
        if os.fspath(path) == str(locked):
            raise PermissionError(13, "Permission denied", str(locked))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    code, out = run(tmp_path)
    assert code == 2
    assert f"ERROR {locked}: cannot read the directory: Permission denied" in out
    assert "ok.toml::ok" in out and "1 passed" in out


def test_an_unreadable_path_on_the_command_line_does_not_stop_the_good_cases(tmp_path, monkeypatch):
    ok = tmp_path / "ok.toml"
    ok.write_text(good())
    locked = tmp_path / "locked"
    real_stat = Path.stat

    def stat(self, **kwargs):
        if self == locked:
            raise PermissionError(13, "Permission denied", str(self))
        return real_stat(self, **kwargs)

    monkeypatch.setattr(Path, "stat", stat)
    code, out = run(locked, ok)
    assert code == 2
    assert f"ERROR {locked}: cannot read: Permission denied" in out and "1 passed" in out


def test_a_fifo_is_refused_not_read(tmp_path):
    fifo = tmp_path / "fifo.toml"
    os.mkfifo(fifo)  # reading it would block forever: nobody writes to it
    (tmp_path / "ok.toml").write_text(good())
    code, out = run(fifo, tmp_path)
    assert code == 2
    assert f"ERROR {fifo}: not a regular file (a FIFO): case files must be regular files" in out
    assert "1 passed" in out


def test_dev_zero_behind_a_link_is_refused_and_big_files_are_capped(tmp_path):
    (tmp_path / "zero.toml").symlink_to("/dev/zero")
    big = tmp_path / "big.toml"
    big.write_text(good() + "# " + "x" * (16 * 2**20) + "\n")
    code, out = run(tmp_path / "zero.toml", big)
    assert code == 2 and "MemoryError" not in out
    assert "zero.toml: not a regular file (a device)" in out
    assert "big.toml: the file is larger than 16 MiB, the limit for a case file" in out


def test_a_utf8_byte_order_mark_is_accepted(tmp_path):
    path = tmp_path / "bom.toml"
    path.write_bytes(b"\xef\xbb\xbf" + good("bom").encode())
    code, out = run(path)
    assert code == 0, out
    assert "bom.toml::bom" in out


@pytest.mark.parametrize("content, needle", [
    (b"\x00\x01\x02 binary", "a binary file (it contains NUL bytes), not a TOML case file"),
    (b'name = "caf\xe9"\nexpr = "x"\n', "not UTF-8 text (byte 0xe9 at offset 11): TOML files must be UTF-8"),
])
def test_binary_and_non_utf8_files_are_clean_errors(tmp_path, content, needle):
    path = tmp_path / "odd.toml"
    path.write_bytes(content)
    code, out = run(tmp_path)
    assert code == 2 and f"ERROR {path}: {needle}" in out


def test_a_huge_unknown_key_is_not_echoed_whole(tmp_path):
    key = "k" * 1_000_000
    path = tmp_path / "long.toml"
    path.write_text(good("long") + f"{key} = 1\n")
    code, out = run(path)
    assert code == 2 and len(out) < 5_000
    assert "unknown key 'kkkk" in out and "... (1000000 characters)" in out


def test_a_deeply_nested_file_is_an_error_naming_it(tmp_path):
    path = tmp_path / "deep.toml"
    path.write_text('name = "d"\nexpr = "x"\nvars.x.value = ' + "[" * 5000 + "]" * 5000 + "\n")
    [err] = load_file(path)
    assert isinstance(err, CaseError) and str(err) == f"{path}: invalid TOML: nested too deeply"
    (tmp_path / "ok.toml").write_text(good())
    code, out = run(tmp_path)
    assert code == 2 and f"ERROR {path}: invalid TOML: nested too deeply" in out and "1 passed" in out


# 2. diffcheck.load takes a path or a list of paths

def test_load_takes_one_path_or_a_list(tmp_path):
    a, b = tmp_path / "a.toml", tmp_path / "b.toml"
    a.write_text(good("a"))
    b.write_text(good("b"))
    [case] = diffcheck.load(str(a))
    assert isinstance(case, Case) and case.name == "a"
    assert [c.name for c in diffcheck.load(a)] == ["a"]
    assert [c.name for c in diffcheck.load([str(a), b])] == ["a", "b"]
    assert [c.name for c in diffcheck.load(tmp_path)] == ["a", "b"]


# 3. typos get a "did you mean"

@pytest.mark.parametrize("data, needle", [
    ({"name": "c", "kind": "trian", "expr": "x", "vars": {"x": {}}},
     "unknown kind 'trian': 'grad' (the default) or 'train' (did you mean 'train'?)"),
    ({"name": "c", "exrp": "sum(x)", "vars": {"x": {}}},
     "unknown key 'exrp' (did you mean 'expr'?)"),
    ({"name": "c", "expr": "sum(x)", "vars": {"x": {}}, "dtypes": ["flaot32"]}, "(did you mean 'float32'?)"),
    ({"name": "c", "expr": "sum(x)", "vars": {"x": {}}, "devices": ["cdua"]}, "(did you mean 'cuda'?)"),
    ({"name": "c", "expr": "sum(x)", "vars": {"x": {}}, "tolerance": {"reasn": "r", "atol": 1.0}},
     "missing required key 'reason' in tolerance (did you mean 'reason' for 'reasn'?)"),
])
def test_typos_suggest_the_near_miss(data, needle):
    [err] = load_data(data, "f.toml")
    assert isinstance(err, CaseError) and needle in str(err), str(err)


def test_a_kind_typo_through_the_cli(tmp_path):
    path = tmp_path / "k.toml"
    path.write_text('name = "k"\nkind = "trian"\n')
    code, out = run(path)
    assert code == 2 and "(did you mean 'train'?)" in out


# 4. default vars: inherited one by one, droppable, named in errors

DEFAULTS = '''
dtypes = ["float64"]
devices = ["cpu"]
vars.x = { shape = [3] }
vars.b = { shape = [3] }

[[case]]
name = "both"
expr = "sum(x * b)"

[[case]]
name = "dropped"
expr = "sum(x**2)"
vars.b = false

[[case]]
name = "forgot"
expr = "sum(x**2)"

[[case]]
name = "own"
expr = "sum(x * b)"
vars.b = { shape = [3], value = 2.0 }
'''


def test_a_case_can_drop_a_default_var_and_errors_say_where_a_var_came_from(tmp_path):
    path = tmp_path / "d.toml"
    path.write_text(DEFAULTS)
    both, dropped, forgot, own = load_file(path)
    assert set(both.vars) == {"x", "b"} and set(dropped.vars) == {"x"}
    assert own.vars["b"].value.tolist() == [2.0, 2.0, 2.0] and own.vars["x"].value is None
    assert isinstance(forgot, CaseError)
    assert ("var 'b' is declared but not used in expr (var 'b' comes from the file's default vars; drop it from "
            "this case with vars.b = false)") in str(forgot)
    code, out = run(path)
    assert code == 2 and "3 passed" in out and "comes from the file's default vars" in out


# 5. output that cannot be forged

FORGED = "evil" + ESC + "]0;pwned\x07\r\nPASS  fake.toml::everything_is_fine" + "\u202e"


def _toml_string(text):
    return json.dumps(text)  # a JSON string with \uXXXX escapes is a valid TOML basic string


@pytest.mark.parametrize("field", ["name", "key", "var", "expr", "impl"])
def test_control_characters_from_a_case_file_never_reach_the_terminal(tmp_path, field):
    lines = {"name": f"name = {_toml_string(FORGED)}\nexpr = \"sum(x**2)\"\n",
             "key": f"name = \"k\"\nexpr = \"sum(x**2)\"\n{_toml_string(FORGED)} = 1\n",
             "var": f"name = \"v\"\nexpr = \"sum(x**2)\"\nvars.{_toml_string(FORGED)} = {{}}\n",
             "expr": f"name = \"e\"\nexpr = {_toml_string('sum(x**2) + ' + FORGED)}\n",
             "impl": f"name = \"i\"\nexpr = \"sum(x**2)\"\nimpl = {_toml_string(FORGED + ':f')}\n"}[field]
    path = tmp_path / "forge.toml"
    path.write_text(lines + 'dtypes = ["float64"]\ndevices = ["cpu"]\nvars.x = { shape = [3] }\n')
    code, out = run(path, "-v", "--junit", tmp_path / "r.xml")
    assert code in (0, 1, 2)
    assert ESC not in out and "\r" not in out and "\u202e" not in out and "\x07" not in out
    assert not any(line.startswith("PASS  fake.toml") for line in out.splitlines())
    assert "\\x1b]0;pwned\\x07" in out
    ET.parse(tmp_path / "r.xml")


@settings(max_examples=100)
@given(st.text(max_size=40))
def test_junit_is_valid_xml_for_any_case_name(name):
    import tempfile

    from diffcheck.report import write_junit
    from diffcheck.runner import CaseResult

    results = [CaseResult(name, f"{name}.toml", status, message=f"{name} went wrong\n{name}")
               for status in ("pass", "fail", "error", "skip")]
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder, "r.xml")
        write_junit(path, results, 1.0)
        root = ET.parse(path).getroot()
    assert len(root.findall(".//testcase")) == 4


# 6. report paths, and a worker that raises

def test_a_report_into_a_missing_folder_creates_it(tmp_path):
    ok = tmp_path / "ok.toml"
    ok.write_text(good())
    code, out = run(ok, "--json", tmp_path / "new" / "deep" / "r.json", "--junit", tmp_path / "new" / "r.xml")
    assert code == 0, out
    assert json.loads((tmp_path / "new" / "deep" / "r.json").read_text())["summary"]["passed"] == 1
    ET.parse(tmp_path / "new" / "r.xml")


def test_an_impossible_report_path_is_refused_before_the_run(tmp_path):
    ok = tmp_path / "ok.toml"
    ok.write_text(good())
    (tmp_path / "file").write_text("")
    code, out = run(ok, "--json", tmp_path / "file" / "r.json")
    assert code == 2 and "usage error: --json" in out and "cannot create the folder" in out
    assert "PASS" not in out and "Traceback" not in out
    code, out = run(ok, "--junit", tmp_path)
    assert code == 2 and "is a directory" in out


def test_a_report_that_fails_at_write_time_is_a_clean_error_after_the_summary(tmp_path):
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full on this system")
    ok = tmp_path / "ok.toml"
    ok.write_text(good())
    code, out = run(ok, "--json", "/dev/full")
    assert code == 2
    assert "1 passed" in out and "diffcheck: error: --json /dev/full: cannot write the report: No space left" in out


def test_a_case_whose_worker_raises_is_an_error_and_the_run_goes_on(tmp_path):
    from dataclasses import replace

    from diffcheck.parallel import run_all
    from diffcheck.runner import Options

    (tmp_path / "a.toml").write_text(good("a"))
    (tmp_path / "b.toml").write_text(good("b"))
    a, b = diffcheck.load(tmp_path)
    broken = replace(a, ir=None)  # any bug in the checks: run_case raises in the worker
    results = list(run_all([broken, b], Options(devices=("cpu",)), workers=2))
    assert [r.status for r in results] == ["error", "pass"]
    assert results[0].name == "a" and "case 'a': running it raised " in results[0].message


def test_a_case_that_kills_its_worker_is_named_and_every_other_case_still_runs(tmp_path):
    """SIGKILL in an impl (as a segfault in a native kernel or the OOM killer would; os._exit is now caught as a
    finding) kills the worker and breaks the whole pool: the cases it was running are run again alone, so the
    killer is the one error and the rest pass."""
    from diffcheck.parallel import run_all
    from diffcheck.runner import Options

    (tmp_path / "boom.py").write_text("import os\nimport signal\ndef f(x):\n    os.kill(os.getpid(), signal.SIGKILL)\n")
    (tmp_path / "cases.toml").write_text(
        '[[case]]\nname = "killer"\nexpr = "x * 2"\nimpl = "boom:f"\nvars.x = { shape = [3] }\n'
        + "".join(good(f"after{i}").replace('name = "', '[[case]]\nname = "', 1) for i in range(3)))
    items = diffcheck.load(tmp_path)
    results = list(run_all(items, Options(devices=("cpu",)), workers=2))
    assert [r.name for r in results] == ["killer", "after0", "after1", "after2"]
    assert [r.status for r in results] == ["error", "pass", "pass", "pass"], [r.message for r in results]
    assert "worker process running it died" in results[0].message and "run alone" in results[0].message


# 7. the end of a run

BAD = '''
[[case]]
name = "right"
expr = "sum(2*w**2)"
vars.w = { shape = [2], value = [10.0, 20.0] }
expect.grad.w = [40.0, 80.0]

[[case]]
name = "wrong"
expr = "sum(2*w**2)"
vars.w = { shape = [2], value = [10.0, 20.0] }
expect.grad.w = [40.0, 81.0]

[[case]]
name = "broken"
expr = "sum(w +)"
vars.w = { shape = [2] }
'''


def test_the_run_ends_with_the_failed_cases_and_quiet_shows_only_them(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('dtypes = ["float64"]\ndevices = ["cpu"]\n' + BAD)
    code, out = run(path)
    assert code == 2
    tail = out[out.index("short summary:"):]
    assert f"FAILED {path}::wrong - the known answer in 'expect' disagrees with the engines" in tail
    assert f"ERROR {path}::broken - bad expr:" in tail and "::right" not in tail
    code, out = run(path, "-q")
    assert code == 2
    assert "::right" not in out and f"FAIL  {path}::wrong" in out and "short summary:" in out
    assert "1 passed, 1 failed, 0 skipped, 1 errors" in out and "checks " not in out


def test_status_words_are_coloured_on_a_terminal_only(tmp_path, monkeypatch):
    path = tmp_path / "bad.toml"
    path.write_text('dtypes = ["float64"]\ndevices = ["cpu"]\n' + BAD)
    _code, out = run(path)
    assert ESC not in out  # not a terminal: plain
    import diffcheck.cli

    monkeypatch.setattr(diffcheck.cli, "_fancy", lambda: True)
    result = CliRunner().invoke(main, ["run", str(path), "-k", "right or wrong"], color=True)
    assert "\x1b[32m\x1b[1mPASS\x1b[0m" in result.output and "\x1b[31m\x1b[1mFAILED\x1b[0m" in result.output


def test_no_cases_selected_names_the_paths_and_the_pattern(tmp_path):
    path = tmp_path / "ok.toml"
    path.write_text(good())
    code, out = run(path, "-k", "nothing and not ok")
    assert code == 2 and f"diffcheck: no cases selected in {path} by -k 'nothing and not ok'" in out


def test_k_takes_pytest_expressions(tmp_path):
    path = tmp_path / "many.toml"
    path.write_text('dtypes = ["float64"]\ndevices = ["cpu"]\nvars.x = { shape = [2] }\n' + "".join(
        f'[[case]]\nname = "{n}"\nexpr = "sum(x**2)"\n' for n in ("relu_a", "relu_b", "leaky_relu", "tanh")))
    code, out = run(path, "-k", "relu and not (leaky or b)")
    assert code == 0 and "::relu_a" in out and "1 passed" in out
    code, out = run(path, "-k", "tanh or leaky")
    assert code == 0 and "2 passed" in out
    code, out = run(path, "-k", "relu and")
    assert code == 2 and "usage error: -k 'relu and': expected a name at the end" in out


@pytest.mark.parametrize("pattern, name, expected", [
    ("relu", "leaky_RELU", True), ("relu*", "leaky_relu", False), ("*relu", "leaky_relu", True),
    ("not relu", "tanh", True), ("a and b", "ab", True), ("a and b", "a", False), ("a or b", "b", True),
    ("not (a or b)", "c", True), ("not not a", "a", True), ("(a)", "a", True), ("a or b and c", "a", True),
    ("(a or b) and c", "a", False),
])
def test_k_expression_evaluator(pattern, name, expected):
    assert matches(name, pattern) is expected


@pytest.mark.parametrize("pattern", ["a b", "(a", "a)", "and", "a or", "not", "()"])
def test_malformed_k_expressions_are_usage_errors(pattern):
    with pytest.raises(UsageError):
        matches("a", pattern)


def test_device_cpu_says_the_excluded_cuda_once(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text(good().replace('devices = ["cpu"]\n', ""))  # asks for cpu and cuda
    code, out = run(path, "--device", "cpu", "--json", tmp_path / "r.json")
    assert code == 0, out
    [line] = [line for line in out.splitlines() if line.startswith("PASS")]
    assert "skipped" not in line
    assert "CUDA checks not requested (--device cpu): 1 skipped" in out
    checks = json.loads((tmp_path / "r.json").read_text())["cases"][0]["checks"]
    assert [c["device"] for c in checks if c["status"] == "skip"] == ["cuda"]


# 8. packaging metadata

def test_the_license_is_an_spdx_string_with_a_setuptools_that_reads_it():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert meta["project"]["license"] == "MIT"
    assert "setuptools>=77" in meta["build-system"]["requires"]
