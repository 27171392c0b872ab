"""Hostile and malformed case files: a clear error naming the file (and key), never a crash; good cases still run."""

import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from diffcheck.casefile import Case, load_data
from diffcheck.cli import main
from diffcheck.compare import Check
from diffcheck.errors import CaseError
from diffcheck.training.schema import TrainCase

HOSTILE = {
    "binary.toml": b"\x00\xff\xfe binary",
    "deep.toml": ("a = " + "[" * 5000 + "]" * 5000 + "\n").encode(),
    "bomb.toml": b'name = "bomb"\nexpr = "sum(x + y)"\nvars.x = { shape = [4000000, 1] }\n'
                 b'vars.y = { shape = [1, 4000000] }\n',
    "negseed.toml": b'name = "negseed"\nexpr = "x"\nseed = -3\nvars.x = {}\n',
    "caseint.toml": b"case = 5\n",
    "nameint.toml": b'[[case]]\nname = 3\nexpr = "x"\n',
    "escape.toml": b'name = "escape"\nexpr = "x.__class__.__mro__[1].__subclasses__()"\nvars.x = {}\n',
    "huge.toml": b'name = "huge"\nexpr = "x"\nvars.x = { shape = [100000, 100000] }\n',
    "strval.toml": b'name = "strval"\nexpr = "x"\nvars.x = { shape = [2], value = "[1, 2]" }\n',
    "import.toml": b'name = "imp"\nexpr = "__import__(\'os\').system(\'touch SENTINEL\')"\nvars.x = {}\n',
    "lambda.toml": b'name = "lam"\nexpr = "(lambda: x)()"\nvars.x = {}\n',
    "nan.toml": b'name = "nan"\nexpr = "x"\nvars.x = { value = nan }\n',
    "train_bad.toml": b'kind = "train"\nname = "t"\ndata.x = { rand = [3, 1] }\ndata.y = "x"\n'
                      b'model.expr = "w*x"\nmodel.params.w = { zeros = [1] }\ntrain = { lr = -1.0, steps = 3 }\n',
}
GOOD = b'name = "ok"\nexpr = "sum(x**2)"\nvars.x = { shape = [3] }\n'


def test_every_hostile_file_is_an_error_and_the_good_case_still_passes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name, content in HOSTILE.items():
        (tmp_path / name).write_bytes(content)
    (tmp_path / "ok.toml").write_bytes(GOOD)
    result = CliRunner().invoke(main, ["run", str(tmp_path), "--device", "cpu"])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert result.exit_code == 2
    assert "PASS" in result.output and "ok.toml::ok" in result.output
    for name in HOSTILE:
        assert f"ERROR {tmp_path / name}" in result.output, name
    assert not (tmp_path / "SENTINEL").exists() and "Traceback" not in result.output


toml_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12)
keys = st.sampled_from(["name", "expr", "vars", "dtypes", "devices", "seed", "expect", "tolerance", "impl",
                        "order", "kind", "data", "model", "train", "case", "description"])


@given(st.dictionaries(keys, toml_values, max_size=6))
def test_random_data_gives_cases_or_case_errors(data):
    for item in load_data(data, "fuzz.toml"):
        if isinstance(item, CaseError):  # names the file and the key, never an anonymous error
            assert str(item).startswith("fuzz.toml: ") and item.key, (str(item), item.key)
        else:
            assert isinstance(item, Case | TrainCase), type(item)


@pytest.mark.parametrize("expr", ["x" + " + x" * 3000, "-" * 5000 + "x", "x" + "**x" * 300])
def test_very_long_or_deep_expressions_are_errors_or_cases(expr):
    [item] = load_data({"name": "long", "expr": expr, "vars": {"x": {}}}, "long.toml")
    assert isinstance(item, Case | CaseError)


# ---- wrong answers never pass: non-finite error budgets (issue 11) ----

def run_cli(*args):
    result = CliRunner().invoke(main, ["run", "--device", "cpu", *map(str, args)])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    return result


def status_of(output: str, name: str) -> str:
    line = next(line for line in output.splitlines() if f"::{name} " in line)
    return line.split()[0]


NAN_BUDGETS = '''
[[case]]
name = "saturated"
expr = "sum(x * exp(-exp(y)))"
vars.x = { shape = [3] }
vars.y = { value = 1000.0 }
expect.value = 5.0
expect.grad.x = [1.0, 2.0, 3.0]

[[case]]
name = "constant"
expr = "sum(x) * exp(-10**10**10)"
vars.x = { shape = [3] }
expect.value = 5.0

[[case]]
name = "huge_slope"
expr = "sum(leaky_relu(x, negative_slope=1e308))"
vars.x = { shape = [3] }
expect.grad.x = [1.0, 1.0, 1.0]

[[case]]
name = "huge_slope_value"
expr = "leaky_relu(x, negative_slope=1e308)"
vars.x = { value = -1.0 }
expect.value = 5.0
'''


@pytest.mark.filterwarnings("error::RuntimeWarning")  # numpy's overflow warnings stay inside diffcheck
def test_a_wrong_expectation_under_a_non_finite_budget_never_passes(write_case):
    result = run_cli(write_case(NAN_BUDGETS), "-v")
    for name in ("saturated", "constant", "huge_slope", "huge_slope_value"):
        assert status_of(result.output, name) in ("FAIL", "SKIP"), (name, result.output)
    assert "margin nan" not in result.output
    assert status_of(result.output, "saturated") == "FAIL" and status_of(result.output, "constant") == "FAIL"
    assert "cannot be judged" in result.output  # huge_slope: the budget overflows float64, said so


def test_an_impl_wrong_in_forward_and_backward_under_a_nan_budget_fails():
    import torch

    import diffcheck

    class Wrong(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, y):
            return (x * torch.exp(-torch.exp(y)) + 1).sum()

        @staticmethod
        def backward(ctx, g):
            return torch.ones(3, dtype=g.dtype) * g * 7, torch.zeros((), dtype=g.dtype)

    result = diffcheck.check("sum(x * exp(-exp(y)))", {"x": {"shape": [3]}, "y": {"value": 1000.0}}, impl=Wrong,
                             dtypes=("float64",))
    assert result.status == "fail", result.message
    assert "both wrong" in result.message


def test_a_case_with_no_checks_is_not_a_pass():
    from diffcheck.casefile import build_case
    from diffcheck.runner import Options, run_case

    case = build_case({"name": "nothing", "expr": "sum(x)", "vars": {"x": {"shape": [2]}}}, "api.toml")
    result = run_case(case, Options(devices=("cpu",), stages=()))
    assert result.status == "skip" and "no checks ran" in result.message


def test_a_case_whose_only_passing_checks_are_metadata_is_a_skip_not_a_pass(write_case):
    """x**400 overflows float64 at this point (x in [5, 6]): every value and gradient check skips, only the
    semantic check (the gradients' dtype and shape, a zero upstream) passes -- nothing
    was judged, so the case says so."""
    result = run_cli(write_case('[[case]]\nname = "overflows"\nexpr = "sum(x**400)"\n'
                                'seed = 1635667730\nvars.x = { shape = [2], domain = [5.0, 6.0] }\n'
                                '[[case]]\nname = "fits"\nexpr = "sum(x**40)"\n'
                                'vars.x = { shape = [2], domain = [5.0, 6.0] }\n'))
    assert status_of(result.output, "overflows") == "SKIP", result.output
    assert "no value or gradient could be judged" in result.output
    assert status_of(result.output, "fits") == "PASS", result.output
    assert result.exit_code == 0


# ---- no traceback, ever (issue 11) ----

def test_inputs_that_used_to_stop_the_run_are_errors_or_skips_and_the_good_case_still_runs(tmp_path):
    exprs = {"beta0": "sum(softplus(x, beta=0))", "divzero": "sum(x/0)", "oneoverzero": "sum(x) + 1/0",
             "zeropow": "sum(x) * 0**-1", "logzero": "sum(x) * log(0)", "bigint": "sum(x) + 10**400",
             "nanconst": "sum(x) * (0/0)", "tinybeta": "sum(softplus(x, beta=1e-320))"}
    text = "".join(f'[[case]]\nname = "{n}"\nexpr = "{e}"\nvars.x = {{ shape = [3] }}\n\n' for n, e in exprs.items())
    text += '[[case]]\nname = "wide"\nexpr = "sum(x)"\nvars.x = { shape = [3], domain = [-1.7e308, 1.7e308] }\n\n'
    text += '[[case]]\nname = "good"\nexpr = "sum(x**2)"\nvars.x = { shape = [3] }\n'
    (tmp_path / "c.toml").write_text(text)
    result = run_cli(tmp_path / "c.toml")
    assert result.exit_code == 2
    assert status_of(result.output, "good") == "PASS"
    for name in [*exprs, "wide"]:
        line = next(line for line in result.output.splitlines() if f"'{name}'" in line or f"::{name} " in line)
        assert line.split()[0] in ("ERROR", "SKIP"), line
    assert "softplus(beta=0, threshold=20) is undefined for every input" in result.output


# ---- bounds (issue 11) ----

def test_verbose_formula_is_bounded(tmp_path):
    import subprocess
    import sys

    nested = "x"
    for f in ("gelu", "silu", "softplus", "log1p", "exp", "sigmoid", "tanh", "cos", "sin", "exp"):
        nested = f"{f}({nested})"  # ten nested functions: sympy.simplify of the derivative ran for minutes
    (tmp_path / "f.toml").write_text(
        '[[case]]\nname = "tower"\nexpr = "sum(x) * exp(-10**10**10)"\nvars.x = { shape = [2] }\n'
        'dtypes = ["float64"]\n'
        f'[[case]]\nname = "nested"\nexpr = "sum({nested})"\nvars.x = {{ shape = [2] }}\ndtypes = ["float64"]\n')
    done = subprocess.run([sys.executable, "-m", "diffcheck", "run", str(tmp_path / "f.toml"), "-v",
                           "--device", "cpu"], capture_output=True, text=True, timeout=60)
    assert "Traceback" not in done.stderr and "::nested" in done.stdout and "::tower" in done.stdout


def test_size_limits_cover_broadcasting_in_losses_and_the_total(tmp_path):
    nested = "x"
    for _ in range(190):
        nested = f"sin({nested})"
    (tmp_path / "s.toml").write_text(
        '[[case]]\nname = "mse_bomb"\nexpr = "mse_loss(x, y)"\nvars.x = { shape = [4000000, 1] }\n'
        'vars.y = { shape = [1, 4000000] }\n'
        f'[[case]]\nname = "deep_big"\nexpr = "sum({nested})"\nvars.x = {{ shape = [4000000] }}\n')
    result = run_cli(tmp_path / "s.toml")
    assert result.exit_code == 2
    assert "'mse_loss(x, y, reduction=\"mean\")' would have 16000000000000 entries" in result.output
    assert "in total" in result.output and "the limit is 50000000" in result.output
    assert "not configurable" in result.output


def test_the_high_precision_repair_is_bounded_and_skips_with_the_reason(monkeypatch):
    import diffcheck
    from diffcheck.engines import sympy_eval

    monkeypatch.setattr(sympy_eval, "REPAIR_LIMIT", 50)
    result = diffcheck.check("sum(sigmoid(800*x) + sigmoid(800*x + 1))", {"x": {"shape": [200]}},
                             dtypes=("float64",))
    assert result.status == "skip" and "high-precision (mpmath) repair" in result.message
    assert "the limit is 50 entries per case" in result.message


# ---- verdicts that blame the right party (issue 11) ----

def test_sqrt_at_zero_does_not_blame_autograd(write_case):
    result = run_cli(write_case('name = "sq"\nexpr = "sum(sqrt(x))"\nvars.x = { shape = [3], value = [0.0, 1.0, 2.0] }'
                                '\n'), "-v")
    assert status_of(result.output, "sq") in ("PASS", "SKIP") and "autograd is off" not in result.output
    assert "not finite at this point" in result.output


def test_blame_never_claims_finite_differences_agreed_when_they_were_skipped():
    from diffcheck.runner import blame

    checks = [Check("fd", "symbolic", "finite differences", status="skip", message="every entry sits on a kink"),
              Check("grad", "autograd", "symbolic", var="x", dtype="float32", status="fail")]
    message = blame(checks)
    assert "differences agree" not in message and "could not confirm" in message and "kink" in message


def test_literals_and_parameters_beyond_a_dtype_skip_that_dtype_with_the_reason(write_case):
    result = run_cli(write_case('[[case]]\nname = "pow"\nexpr = "sum(x**1e300)"\nvars.x = { shape = [3] }\n'
                                '[[case]]\nname = "thr"\nexpr = "sum(softplus(x, threshold=-1e308))"\n'
                                'vars.x = { shape = [3] }\n'), "-v")
    assert result.exit_code == 0, result.output
    assert "the literal 1e+300 is not representable in float32" in result.output
    assert "softplus() parameter threshold = -1e+308 is not representable in float32" in result.output


def test_identifiers_are_nfkc_normalised_like_python(write_case):
    result = run_cli(write_case(
        '[[case]]\nname = "fullwidth_decl"\nexpr = "sum(x**2)"\nvars."ｘ" = { shape = [3] }\n'
        '[[case]]\nname = "fullwidth_use"\nexpr = "sum(ｘ**2)"\nvars.x = { shape = [3] }\n'
        '[[case]]\nname = "kw"\nexpr = "sum(ｉｆ**2)"\nvars."ｉｆ" = { shape = [3] }\n'
        '[[case]]\nname = "twice"\nexpr = "sum(x*ｘ)"\nvars.x = { shape = [3] }\nvars."ｘ" = { shape = [3] }\n'))
    assert status_of(result.output, "fullwidth_decl") == "PASS" and status_of(result.output, "fullwidth_use") == "PASS"
    assert "is the Python keyword 'if'" in result.output
    assert "are one name after NFKC normalisation" in result.output


def test_a_var_named_like_a_sympy_builtin_keeps_its_formula_readable(write_case):
    result = run_cli(write_case('name = "n"\nexpr = "mean(N**2)"\nvars.N = { shape = [3] }\n'), "-v")
    assert "d/dN mean(N**2) = 2*N/N_entries (per entry), N_entries = number of entries" in result.output


def test_the_verbose_formulas_deadline_leaves_the_cases_timeout_running():
    # -v's simplify deadline runs inside the case's --timeout: it must hand the case's timer back, not cancel it
    import signal

    from diffcheck.checks.formula import _within
    from diffcheck.engines.impl import time_limit

    with time_limit(50):
        assert _within(2.0, lambda x: x + 1, 1) == 2
        left, _ = signal.getitimer(signal.ITIMER_REAL)
    assert 40 < left <= 50


# ---- hostile inputs, round h5 ----

def test_op_parameters_torch_refuses_are_case_errors_about_expr_not_autograd_failures(write_case):
    # each used to reach torch, which raised, and the case FAILed "autograd is off" (hardtanh: "running it raised")
    bad = {"ce": "cross_entropy(x, y, label_smoothing=5)", "sl1": "smooth_l1_loss(x, y, beta=-1)",
           "huber": "huber_loss(x, y, delta=0)", "celu": "sum(celu(x, alpha=0))",
           "cos": "cosine_similarity(x, y, dim=0, eps=-1)", "ht": "sum(hardtanh(x, min_val=1, max_val=-1))"}
    text = "".join(f'[[case]]\nname = "{n}"\nexpr = "{e}"\nvars.x = {{ shape = [3] }}\n'
                   + ('vars.y = { shape = [3] }\n' if "y" in e else "") for n, e in bad.items())
    text += ('[[case]]\nname = "pool"\nexpr = "sum(avg_pool2d(x, 2, padding=2))"\nvars.x = { shape = [1, 1, 4, 4] }\n'
             '[[case]]\nname = "good"\nexpr = "sum(hardtanh(x, min_val=1, max_val=1) + celu(x, alpha=0.5))"\n'
             'vars.x = { shape = [3] }\n')
    result = run_cli(write_case(text))
    assert result.exit_code == 2 and status_of(result.output, "good") == "PASS", result.output
    for name in [*bad, "pool"]:
        assert f"case '{name}': " in result.output and "(torch raises otherwise)" in result.output, name
    assert "label_smoothing must be between 0 and 1 (torch raises otherwise), got label_smoothing=5.0" in result.output
    assert "padding [2, 2] is more than half the kernel [2, 2]" in result.output
    assert "autograd is off" not in result.output and "running it raised" not in result.output


def test_unclear_or_misattributed_case_file_messages_now_name_the_key_plainly(write_case):
    result = run_cli(write_case(
        '[[case]]\nname = "typo"\nexpt = "sum(x)"\nvars.x = { shape = [3] }\n'
        '[[case]]\nname = "size"\nexpr = "sum(reshape(x, [-1, 99999999999999999999]))"\nvars.x = { shape = [3] }\n'
        f'[[case]]\nname = "digits"\nexpr = "sum(x) + {"9" * 5000}"\nvars.x = {{ shape = [3] }}\n'
        '[[case]]\nname = "index"\nexpr = "sum(embedding(t, w))"\nvars.w = { shape = [5, 2] }\n'
        'vars.t = { shape = [2], dtype = "int64", value = [0, 99999999999999999999] }\n'
        '[[case]]\nname = "space"\nexpr = "sum(x)"\nvars.x = { shape = [3] }\nvars."a b" = { shape = [3] }\n'
        '[[case]]\nname = "table"\nexpr = "sum(x)"\nvars.x = 5\n'
        '[[case]]\nname = "good"\nexpr = "sum(x**2)"\nvars.x = { shape = [3] }\n'))
    assert result.exit_code == 2 and status_of(result.output, "good") == "PASS", result.output
    out = result.output
    assert "case 'typo': unknown key 'expt' (did you mean 'expr'?)" in out  # was 'expect'
    assert "reshape(): 'shape' takes integer literals" in out and "subscripts" not in out
    assert "an integer literal is too long (over 4300 digits)" in out and "set_int_max_str_digits" not in out
    assert "vars.t.value of an int64 var must hold integers of magnitude below 2**31" in out  # was: domain, got None
    assert "var 'a b' is not an identifier" in out
    assert "vars.x: Input should be a valid dictionary (a TOML table) (got 5)" in out and "VarModel" not in out


TRAIN = ('[[case]]\nkind = "train"\nname = "{name}"\ndata.x = {x}\ndata.y = "2*x + 1"\nmodel.expr = "w*x + b"\n'
         'model.params.w = {{ zeros = [1] }}\nmodel.params.b = {{ zeros = [1] }}\ntrain = {{ lr = 0.5, steps = 300 }}\n'
         'expect.least_squares = true\n')


def test_least_squares_on_data_without_a_unique_fit_is_a_case_error_not_a_failure(write_case):
    # all-equal x (or one sample) leaves w*x + b = y with many solutions: the run found another one and FAILed
    text = TRAIN.format(name="equal", x="{ ones = [20, 1] }") + TRAIN.format(name="one", x="{ rand = [1, 1] }")
    text += TRAIN.format(name="fine", x="{ rand = [20, 1] }")
    text += ('[[case]]\nkind = "train"\nname = "gen"\ndata.x = 5\ndata.y = "2*x"\nmodel.expr = "w*x"\n'
             'model.params.w = { zeros = [1] }\ntrain = { lr = 0.5, steps = 3 }\n')
    result = run_cli(write_case(text))
    assert result.exit_code == 2 and status_of(result.output, "fine") == "PASS", result.output
    assert "case 'equal': least_squares has no unique fit on this data: [x, 1] (20 samples, 1 feature(s) and the " \
           "bias) has rank 1, under 2" in result.output
    assert "case 'one': least_squares has no unique fit" in result.output
    assert "case 'gen': data.x: must be a table or a string (got 5)" in result.output  # was data.x.DrawModel


def test_user_code_calling_os_exit_is_a_finding_about_its_case_and_the_run_goes_on(tmp_path):
    """With one process (the default under 40 cases) os._exit in an impl module ended the whole run: no report,
    no JSON, the user's exit status (os._exit(0): exit 0, a CI pass)."""
    import json
    import subprocess
    import sys

    (tmp_path / "quits.py").write_text("import os\nos._exit(0)\n")
    (tmp_path / "mine.py").write_text("import os\nlimit = 5\ndef f(x):\n    os._exit(0)\n")
    impl = '[[case]]\nname = "{0}"\nexpr = "sum(x**2)"\nvars.x = {{ shape = [3] }}\nimpl = "{1}"\n'
    (tmp_path / "c.toml").write_text(impl.format("at_import", "quits:f") + impl.format("in_forward", "mine:f")
                                     + impl.format("value", "mine:limit")
                                     + '[[case]]\nname = "good"\nexpr = "sum(x**2)"\nvars.x = { shape = [3] }\n')
    done = subprocess.run([sys.executable, "-m", "diffcheck", "run", str(tmp_path / "c.toml"), "--device", "cpu",
                           "-j", "1", "--json", str(tmp_path / "r.json")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stdout + done.stderr
    assert "importing 'quits' (" in done.stdout and "raised SystemExit: os._exit(0) was called" in done.stdout
    assert status_of(done.stdout, "in_forward") == "FAIL" and "os._exit(0) was called (in forward" in done.stdout
    assert "names a value of type int, not a function, class or nn.Module" in done.stdout  # not "standard library"
    assert status_of(done.stdout, "good") == "PASS"
    statuses = {c["name"]: c["status"] for c in json.loads((tmp_path / "r.json").read_text())["cases"]}
    assert statuses == {"at_import": "error", "in_forward": "fail", "value": "error", "good": "pass"}


def test_edge_values_of_cli_options_are_usage_errors_or_work(write_case):
    path = write_case('name = "good"\nexpr = "sum(x**2)"\nvars.x = { shape = [3] }\n')
    for option in ("--json", "--junit", "--html"):
        result = run_cli(path, option, "")  # an unset shell variable: used to run and write no report, exit 0
        assert result.exit_code == 2 and f"usage error: {option} needs a file name, got ''" in result.output
    result = run_cli(path, "--timeout", "1e30")  # setitimer overflowed: the case errored (OverflowError)
    assert result.exit_code == 0 and status_of(result.output, "good") == "PASS", result.output


pytest_plugins = ["pytester"]


def test_the_pytest_plugin_survives_os_exit_in_an_impl_and_escapes_case_names_in_item_ids(pytester):
    """os._exit(0) in an impl module ended the pytest session with status 0 and no report (a green CI run); a case
    name's escape sequence reached the terminal raw in the item ids."""
    pytester.path.joinpath("quit.py").write_text("import os\nos._exit(0)\n")
    pytester.makefile(".toml", cases='[[case]]\nname = "quit"\nexpr = "sum(x**2)"\nvars.x = { shape = [3] }\n'
                      'impl = "quit:f"\ndevices = ["cpu"]\ndtypes = ["float64"]\n'
                      '[[case]]\nname = "red\\u001b[31m"\nexpr = "sum(x**2)"\nvars.x = { shape = [3] }\n'
                      'devices = ["cpu"]\ndtypes = ["float64"]\n')
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-rA")
    out = result.stdout.str() + result.stderr.str()
    assert result.ret == 1, out
    result.assert_outcomes(passed=2, failed=2)
    assert "SystemExit: os._exit(0) was called" in out
    assert "red\\x1b[31m[float64-cpu]" in out and "\x1b[31m" not in out


def test_work_and_length_bounds_a_case_file_cannot_pass(write_case):
    # 'i,j->' of two 2e6 vectors: a scalar output, but np.einsum looped over 4e12 combinations (a hang, --timeout
    # cannot interrupt one native call); a 100,000-character name was printed whole on every report line
    [einsum] = load_data({"name": "einsum", "expr": "einsum('i,j->', x, y)",  # loaded only: the old code hung
                          "vars": {"x": {"shape": [2000000]}, "y": {"shape": [2000000]}}}, "e.toml")
    assert isinstance(einsum, CaseError) and einsum.key == "expr", einsum
    assert "einsum(): the reference loops over 4000000000000 index combinations" in str(einsum)
    result = run_cli(write_case(
        f'[[case]]\nname = "{"n" * 100000}"\nexpr = "sum(x**2)"\nvars.x = {{ shape = [3] }}\n'
        f'[[case]]\nname = "chain"\nexpr = "{" + ".join(["sum(x)"] * 250)}"\nvars.x = {{ shape = [3] }}\n'
        '[[case]]\nname = "good"\nexpr = "einsum(\'i,j->\', x, y)"\nvars.x = { shape = [30] }\n'
        'vars.y = { shape = [20] }\n'), "--timeout", "60")
    assert result.exit_code == 2 and status_of(result.output, "good") == "PASS", result.output
    assert "'name' is 100000 characters long; the limit is 1000" in result.output
    assert "n" * 81 not in result.output and "nnnn...'" in result.output
    assert "(each operator of a chain such as a + b + c nests one more level" in result.output
