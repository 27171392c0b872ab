"""What a case file can make diffcheck do: import a module of the user's under the case file's directory (or an
opted-in root), nothing else. Every reproducer of issue 11 is a clean CaseError naming the file, the case and
`impl`, through the CLI, the pytest plugin and ``diffcheck.check``, and nothing is executed."""

import os
import sys
from pathlib import Path

from click.testing import CliRunner

import diffcheck
from diffcheck.cli import main

pytest_plugins = ["pytester"]

# a module that leaves a trace when it is imported: a case file must not be able to reach it
EVIL = "import pathlib\npathlib.Path({path!r}).write_text('executed')\ndef f(x):\n    return x\n"


def _toml(value) -> str:
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + " }"
    return repr(value)


def reproducers(root: Path) -> dict[str, tuple[str, dict, dict]]:
    """name -> (impl, impl_args, vars) of every way issue 11 found to execute code; ``root/SENTINEL`` (or the
    deletion of ``root/victim``) shows whether one ran. ``root/cases`` holds the case files."""
    sentinel = str(root / "SENTINEL")
    (root / "victim").mkdir(exist_ok=True)
    (root / "victim" / "keep.txt").write_text("keep")
    outside = root / "outside"
    outside.mkdir(exist_ok=True)
    (outside / "evil.py").write_text(EVIL.format(path=sentinel))
    (root / "evil.py").write_text(EVIL.format(path=sentinel))
    cases = root / "cases"
    cases.mkdir(exist_ok=True)
    if not (cases / "link.py").exists():
        (cases / "link.py").symlink_to(outside / "evil.py")
        (cases / "linkdir").symlink_to(outside, target_is_directory=True)
    (cases / "mine.py").write_text("import os\nfrom subprocess import run\nimport torch\n"
                                   "def f(x):\n    return x\n")
    dotted = ".." + str(root / "evil")[1:].replace(os.sep, ".")
    scalar = {"shell": {"value": 1.0}}
    return {
        "subprocess_run": ("subprocess:run", {"args": f"touch {sentinel}"}, scalar),
        "shutil_rmtree": ("shutil:rmtree", {"path": str(root / "victim")}, {"ignore_errors": {"value": 1.0}}),
        "os_system": ("os:system", {"command": f"touch {sentinel}"}, {"x": {}}),
        "builtins_eval": ("builtins:eval", {"source": f"open({sentinel!r}, 'w')"}, {"x": {}}),
        "leading_dots": (dotted + ":f", {}, {"x": {}}),
        "one_leading_dot": (".evil:f", {}, {"x": {}}),
        "dot_dot_path": ("a/../evil:f", {}, {"x": {}}),
        "parent_part": ("cases..evil:f", {}, {"x": {}}),
        "absolute_path": (str(root / "evil") + ":f", {}, {"x": {}}),
        "backslash": ("..\\evil:f", {}, {"x": {}}),
        "symlink_file": ("link:f", {}, {"x": {}}),
        "symlink_dir": ("linkdir.evil:f", {}, {"x": {}}),
        "module_hop": ("mine:os.system", {"command": f"touch {sentinel}"}, {"x": {}}),
        "module_hop_torch": ("mine:torch.sigmoid", {}, {"x": {}}),
        "stdlib_reexport": ("mine:run", {"args": f"touch {sentinel}"}, scalar),
        "dunder": ("mine:f.__globals__", {}, {"x": {}}),
    }


def write_cases(root: Path) -> tuple[Path, dict]:
    repro = reproducers(root)
    text = []
    for name, (impl, args, variables) in repro.items():
        text.append(f'[[case]]\nname = "{name}"\nexpr = "sum({next(iter(variables))})"\nimpl = {_toml(impl)}\n'
                    f'devices = ["cpu"]\ndtypes = ["float64"]\n')
        if args:
            text.append(f"impl_args = {_toml(args)}\n")
        for var, spec in variables.items():
            text.append(f"vars.{var} = {_toml(spec)}\n")
    text.append('[[case]]\nname = "good"\nexpr = "sum(x**2)"\nvars.x = { shape = [3] }\ndevices = ["cpu"]\n')
    path = root / "cases" / "hostile.toml"
    path.write_text("".join(text))
    return path, repro


def nothing_ran(root: Path) -> None:
    assert not (root / "SENTINEL").exists(), "a case file executed code"
    assert (root / "victim" / "keep.txt").exists(), "a case file deleted a directory"


def test_every_reproducer_is_a_case_error_through_the_cli(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path, repro = write_cases(tmp_path)
    result = CliRunner().invoke(main, ["run", str(path), "--device", "cpu"])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = result.output.splitlines()
    for name in repro:
        [line] = [ln for ln in lines if f"case '{name}'" in ln]
        assert line.startswith(f"ERROR {path}: case '{name}': impl "), line
    assert any(ln.startswith("PASS") and "hostile.toml::good" in ln for ln in lines)
    nothing_ran(tmp_path)


def test_opting_in_to_sys_path_still_refuses_the_standard_library_and_the_climbs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path, repro = write_cases(tmp_path)
    result = CliRunner().invoke(main, ["run", str(path), "--device", "cpu", "--allow-sys-path-impl"])
    lines = result.output.splitlines()
    for name in repro:
        [line] = [ln for ln in lines if f"case '{name}'" in ln]
        if name == "module_hop_torch":  # installed code is allowed once opted in, but not through a module hop
            assert line.startswith("ERROR") and "is a module" in line, line
        else:
            assert line.startswith("ERROR"), line
    assert "standard library" in result.output or "standard-library" in result.output
    nothing_ran(tmp_path)


def test_every_reproducer_is_an_error_through_the_api(tmp_path, monkeypatch):
    repro = reproducers(tmp_path)
    monkeypatch.chdir(tmp_path / "cases")  # the API's string impl is looked up under the current directory
    for name, (impl, args, variables) in repro.items():
        expr = f"sum({next(iter(variables))})"
        result = diffcheck.check(expr, variables, impl=impl, impl_args=args, dtypes=("float64",))
        assert result.status == "error", (name, result.status, result.message)
        assert "impl " in result.message and "Traceback" not in result.message
    nothing_ran(tmp_path)


def test_every_reproducer_fails_its_items_through_the_plugin(pytester):
    root = Path(pytester.path)
    path, repro = write_cases(root)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", str(path))
    outcomes = result.parseoutcomes()
    # every hostile case: its [reference] and [float64-cpu] items fail; the good case's items pass
    assert outcomes.get("failed") == 2 * len(repro), result.stdout.str()[-3000:]
    assert outcomes.get("passed") >= 2
    text = result.stdout.str()
    for name in repro:
        assert f"case '{name}': impl " in text, name
    nothing_ran(root)


def test_no_impl_imports_nothing_and_skips_with_the_reason(tmp_path):
    sentinel = tmp_path / "SENTINEL"
    (tmp_path / "mine.py").write_text(EVIL.format(path=str(sentinel)))
    case = tmp_path / "case.toml"
    case.write_text('name = "mine"\nexpr = "x"\nimpl = "mine:f"\nvars.x = { shape = [2] }\ndevices = ["cpu"]\n')
    result = CliRunner().invoke(main, ["run", str(case), "--device", "cpu", "--no-impl"])
    assert result.exit_code == 0, result.output
    assert "SKIP" in result.output and "--no-impl" in result.output
    assert not sentinel.exists()
    ran = CliRunner().invoke(main, ["run", str(case), "--device", "cpu"])  # the same case, trusted: it runs
    assert ran.exit_code == 0, ran.output
    assert sentinel.exists()


def test_no_impl_through_the_plugin(pytester):
    root = Path(pytester.path)
    (root / "mine.py").write_text(EVIL.format(path=str(root / "SENTINEL")))
    (root / "case.toml").write_text('name = "mine"\nexpr = "x"\nimpl = "mine:f"\nvars.x = { shape = [2] }\n'
                                    'devices = ["cpu"]\n')
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-o", "diffcheck_no_impl=true", "-rs")
    assert result.parseoutcomes().get("skipped") == 3
    assert "--no-impl" in result.stdout.str()
    assert not (root / "SENTINEL").exists()


IMPL = "import torch\ndef f(x):\n    return torch.sigmoid(x)\n"
CASE = 'name = "mine"\nexpr = "sigmoid(x)"\nimpl = "{impl}"\nvars.x = {{ shape = [3] }}\ndevices = ["cpu"]\n'


INSTALLED = ('name = "mine"\nexpr = "sigmoid(input)"\nimpl = "torch.nn.functional:sigmoid"\n'
             'vars.input = { shape = [3] }\ndevices = ["cpu"]\n')


def test_impl_path_adds_a_root(tmp_path):
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "kernels.py").write_text(IMPL)
    (tmp_path / "cases").mkdir()
    case = tmp_path / "cases" / "case.toml"
    case.write_text(CASE.format(impl="kernels:f"))
    refused = CliRunner().invoke(main, ["run", str(case), "--device", "cpu"])
    assert refused.exit_code == 2 and "no module 'kernels' under" in refused.output
    found = CliRunner().invoke(main, ["run", str(case), "--device", "cpu", "--impl-path", str(tmp_path / "lib")])
    assert found.exit_code == 0, found.output


def test_installed_packages_only_with_the_opt_in(tmp_path):
    case = tmp_path / "case.toml"
    case.write_text(INSTALLED)
    refused = CliRunner().invoke(main, ["run", str(case), "--device", "cpu"])
    assert refused.exit_code == 2 and "--allow-sys-path-impl" in refused.output
    allowed = CliRunner().invoke(main, ["run", str(case), "--device", "cpu", "--allow-sys-path-impl"])
    assert allowed.exit_code == 0, allowed.output


def test_installed_packages_with_the_plugin_ini_option(pytester):
    (Path(pytester.path) / "case.toml").write_text(INSTALLED)
    refused = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    assert refused.parseoutcomes().get("failed") == 3
    allowed = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-o", "diffcheck_impl_sys_path=true")
    assert allowed.parseoutcomes().get("passed") == 3


def test_a_function_imported_into_the_users_module_needs_the_opt_in(tmp_path):
    (tmp_path / "mine.py").write_text("from torch import sigmoid as f\n")
    case = tmp_path / "case.toml"
    case.write_text(CASE.format(impl="mine:f"))
    refused = CliRunner().invoke(main, ["run", str(case), "--device", "cpu"])
    assert refused.exit_code == 2 and "defined outside the case file's directory" in refused.output


def test_a_functions_apply_is_the_users_code_a_library_classmethod_is_not(tmp_path):
    (tmp_path / "mine.py").write_text(
        "import fractions\nimport torch\n\n"
        "class Square(torch.autograd.Function):\n    @staticmethod\n    def forward(ctx, x):\n"
        "        ctx.save_for_backward(x)\n        return x * x\n    @staticmethod\n    def backward(ctx, g):\n"
        "        (x,) = ctx.saved_tensors\n        return 2 * x * g\n\n"
        "f = Square.apply\nlib = fractions.Fraction.from_float\n")
    case = tmp_path / "case.toml"
    case.write_text(CASE.format(impl="mine:f").replace("sigmoid(x)", "x * x"))
    result = CliRunner().invoke(main, ["run", str(case), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    case.write_text(CASE.format(impl="mine:lib"))
    refused = CliRunner().invoke(main, ["run", str(case), "--device", "cpu"])
    assert refused.exit_code == 2 and "standard library" in refused.output, refused.output


def test_control_characters_in_a_module_name_are_escaped(tmp_path):
    case = tmp_path / "case.toml"
    case.write_text('name = "esc"\nexpr = "x"\nimpl = "ev\\u001b]0;pwned\\u0007il:f\\nPASS fake"\nvars.x = {}\n'
                    'devices = ["cpu"]\n')
    result = CliRunner().invoke(main, ["run", str(case), "--device", "cpu"])
    assert result.exit_code == 2
    assert "\x1b" not in result.output and "\x07" not in result.output
    assert "\nPASS fake" not in result.output


def test_the_case_files_directory_is_on_the_import_path_only_while_importing(tmp_path):
    (tmp_path / "helper_sibling_mod.py").write_text("import torch\ndef square(x):\n    return x * x\n")
    (tmp_path / "mine.py").write_text("from helper_sibling_mod import square\ndef f(x):\n    return square(x)\n")
    case = tmp_path / "case.toml"
    case.write_text(CASE.format(impl="mine:f").replace("sigmoid(x)", "x**2"))
    before = list(sys.path)
    result = CliRunner().invoke(main, ["run", str(case), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert sys.path == before


def test_a_failing_import_shows_the_real_exception(tmp_path):
    (tmp_path / "mine.py").write_text("import _missing_compiled_ext_of_mine\ndef f(x):\n    return x\n")
    case = tmp_path / "case.toml"
    case.write_text(CASE.format(impl="mine:f"))
    result = CliRunner().invoke(main, ["run", str(case), "--device", "cpu"])
    assert result.exit_code == 2, result.output
    assert "raised ModuleNotFoundError: No module named '_missing_compiled_ext_of_mine'" in result.output
    assert "mine.py:1" in result.output and "looked beside" not in result.output
    (tmp_path / "mine.py").write_text("import sys\nsys.exit(3)\n")  # SystemExit while importing: still an error
    result = CliRunner().invoke(main, ["run", str(case), "--device", "cpu"])
    assert result.exit_code == 2 and "raised SystemExit: 3" in result.output, result.output


def test_impl_path_through_the_plugin_ini_option(pytester):
    root = Path(pytester.path)
    (root / "lib").mkdir()
    (root / "lib" / "kernels.py").write_text(IMPL)
    (root / "cases").mkdir()
    (root / "cases" / "case.toml").write_text(CASE.format(impl="kernels:f"))
    refused = pytester.runpytest_subprocess("-p", "no:cacheprovider", "cases")
    assert refused.parseoutcomes().get("failed") == 3 and "no module 'kernels' under" in refused.stdout.str()
    pytester.makeini("[pytest]\ndiffcheck_impl_path = lib\n")
    found = pytester.runpytest_subprocess("-p", "no:cacheprovider", "cases")
    assert found.parseoutcomes().get("passed") == 3, found.stdout.str()[-2000:]
