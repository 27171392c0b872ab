"""A user's own implementation: every seeded backward bug is caught, every correct twin passes, in float64 and
float32; a wrong forward is blamed on the forward; bad impl names are clear errors."""

import pytest

from diffcheck.casefile import load_data
from diffcheck.runner import Options, run_case

from .conftest import ROOT, corpus

pytest_plugins = ["pytester"]

CORPUS = ROOT / "benchmarks" / "bug_corpus" / "cases.toml"
BUGS, TWINS = corpus(CORPUS)


def test_corpus_is_large_enough():
    assert len(BUGS) >= 15 and len(TWINS) >= len(BUGS)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("case", BUGS, ids=lambda c: c.name)
def test_every_seeded_bug_is_caught_in_each_dtype(case, dtype):
    result = run_case(case, Options(devices=("cpu",), dtypes=(dtype,)))
    assert result.status == "fail"
    assert any(c.status == "fail" and c.dtype == dtype for c in result.checks), \
        "caught only by a check in another dtype"
    assert "backward" in result.message


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("case", TWINS, ids=lambda c: c.name)
def test_every_correct_twin_passes_in_each_dtype(case, dtype):
    result = run_case(case, Options(devices=("cpu",), dtypes=(dtype,)))
    assert result.status == "pass", [(c.label, c.message) for c in result.checks if c.status == "fail"]


def impl_case(tmp_path, source: str, expr: str = "x**2", **extra):
    (tmp_path / "mine.py").write_text(source)
    data = {"name": "mine", "expr": expr, "impl": "mine:f", "devices": ["cpu"],
            "vars": {"x": {"shape": [4], "domain": [0.5, 2.0]}}, **extra}
    [case] = load_data(data, str(tmp_path / "case.toml"))
    return case


def test_a_wrong_forward_is_blamed_on_the_forward(tmp_path):
    case = impl_case(tmp_path, "def f(x):\n    return x**2 + 1e-3\n")
    result = run_case(case, Options(devices=("cpu",)))
    assert result.status == "fail"
    assert "forward is wrong" in result.message and "consistent with its own forward" in result.message


def test_plain_function_impl_passes(tmp_path):
    case = impl_case(tmp_path, "import torch\ndef f(x):\n    return x * x\n")
    assert run_case(case, Options(devices=("cpu",))).status == "pass"


DETACHED_BACKWARD = '''
import torch

class Square(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return 2 * x.detach() * g   # first derivative right, second derivative lost

f = Square
'''


def test_order_2_catches_a_backward_that_is_not_differentiable(tmp_path):
    case = impl_case(tmp_path, DETACHED_BACKWARD, expr="x**2", order=2)
    result = run_case(case, Options(devices=("cpu",)))
    assert result.status == "fail"
    assert any(c.kind == "hvp" and c.status == "fail" for c in result.checks)
    first_order = [c for c in result.checks if c.kind == "grad"]
    assert first_order and all(c.status == "pass" for c in first_order)
    assert result.message.startswith("the impl's first-order gradient is right; its double backward is wrong (")
    numeric = DETACHED_BACKWARD.replace("2 * x.detach() * g", "2 * x.detach() * g + 0 * x")  # Hv = 0, not 2v
    result = run_case(impl_case(tmp_path, numeric, expr="x**2", order=2), Options(devices=("cpu",)))
    assert result.message.startswith("the impl's first-order gradient is right; its double backward is wrong "
                                     "(hvp x [float64 cpu]: "), result.message


def test_order_2_a_double_backward_that_raises_keeps_the_first_order_verdict(tmp_path):
    source = DETACHED_BACKWARD.replace("        (x,) = ctx.saved_tensors\n        return 2 * x.detach() * g",
                                       "        (x,) = ctx.saved_tensors\n        with torch.no_grad():\n"
                                       "            return 2 * x * g")
    assert "no_grad" in source
    result = run_case(impl_case(tmp_path, source, expr="x**2", order=2), Options(devices=("cpu",)))
    assert result.status == "fail"
    assert result.message.startswith("the impl's first-order gradient is right; its double backward is wrong "
                                     "(the first-order gradient cannot be differentiated: it has no graph (its "
                                     "backward ran under torch.no_grad()"), result.message
    assert "does not run" not in result.message
    hvp = [c for c in result.checks if c.kind == "hvp" and c.engine == "impl"]
    assert hvp and all(c.details["impl_failure"]["phase"] == "double backward" for c in hvp)
    twin = DETACHED_BACKWARD.replace("x.detach()", "x")
    assert run_case(impl_case(tmp_path, twin, expr="x**2", order=2), Options(devices=("cpu",))).status == "pass"


def test_order_2_passes_for_torch_ops():
    [case] = load_data({"name": "h", "expr": "sum(tanh(x) * exp(x))", "order": 2, "devices": ["cpu"],
                        "vars": {"x": {"shape": [5]}}})
    result = run_case(case, Options(devices=("cpu",)))
    assert result.status == "pass"
    assert any(c.kind == "hvp" for c in result.checks)


@pytest.mark.parametrize("impl, needle", [
    ("nosuchmodule:f", "no module 'nosuchmodule' under"),
    ("mine:nothing", "has no attribute 'nothing'"),
    ("mine", "must be 'module:attribute'"),
])
def test_bad_impl_is_an_error_naming_the_key(tmp_path, impl, needle):
    (tmp_path / "mine.py").write_text("def f(x):\n    return x\n")
    [case] = load_data({"name": "bad", "expr": "x", "impl": impl, "devices": ["cpu"], "vars": {"x": {}}},
                       str(tmp_path / "case.toml"))
    result = run_case(case, Options(devices=("cpu",)))
    assert result.status == "error" and needle in result.message and "case 'bad'" in result.message


def test_verbose_report_shows_the_error_matrix():
    from click.testing import CliRunner

    from diffcheck.cli import main

    out = CliRunner().invoke(main, ["run", str(CORPUS), "-k", "bug_square_missing_factor_2", "-v",
                                    "--device", "cpu"]).output
    assert "error matrix (impl - symbolic)" in out and "scaled by 0.5" in out


ELU_WITH_ALPHA = '''
import torch

class Elu(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, alpha):
        ctx.save_for_backward(x)
        ctx.alpha = alpha
        return torch.where(x > 0, x, alpha * (torch.exp(x) - 1))

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return torch.where(x > 0, g, g * ctx.alpha * torch.exp(x)), None

f = Elu
'''


def test_function_with_non_tensor_arguments_takes_impl_args(tmp_path):
    case = impl_case(tmp_path, ELU_WITH_ALPHA, expr="elu(x, alpha=0.5)", impl_args={"alpha": 0.5},
                     vars={"x": {"shape": [6], "domain": [-2.0, 2.0]}})
    assert run_case(case, Options(devices=("cpu",))).status == "pass"
    wrong = impl_case(tmp_path, ELU_WITH_ALPHA, expr="elu(x, alpha=0.5)", impl_args={"alpha": 0.7},
                      vars={"x": {"shape": [6], "domain": [-2.0, 2.0]}})
    assert run_case(wrong, Options(devices=("cpu",))).status == "fail"


def test_impl_on_a_kink_everywhere_warns_and_skips_differences_but_never_fails():
    import torch

    import diffcheck

    result = diffcheck.check("relu(x)", vars={"x": {"shape": [3], "value": [0.0, 0.0, 0.0]}}, impl=torch.relu)
    assert result.ok
    assert any(c.kind == "self_fd" and c.status == "skip" and "kink" in c.message for c in result.checks)
    assert any(c.kind == "grad" and c.status == "warn" for c in result.checks)


# ---- an impl that raises or returns nonsense: that case fails with a clear message, the run goes on ----
MISBEHAVING = '''
import torch

class Boom(BaseException):
    pass

def value_error(x):
    raise ValueError("boom")

def key_error(x):
    return {}["missing"]

def system_exit(x):
    raise SystemExit(3)

def base_exception(x):
    raise Boom("not an Exception")

def memory_error(x):
    raise MemoryError("out of memory")

class BackwardRaises(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x * 2

    @staticmethod
    def backward(ctx, g):
        raise ValueError("boom in backward")

def backward_raises(x):
    return BackwardRaises.apply(x)

def scalar_shape(x):
    return (x * 2).sum()

def column_shape(x):
    return (x * 2).reshape(3, 1)

def returns_list(x):
    return [x * 2]

def returns_tuple(x):
    return (x * 2,)

def returns_float32(x):
    return (x * 2).float()

def good(x):
    return x * 2
'''

MISBEHAVIOURS = {
    "value_error": "the impl raised ValueError: boom (in forward, mine.py:",
    "key_error": "the impl raised KeyError: 'missing' (in forward, mine.py:",
    "system_exit": "the impl raised SystemExit: 3 (in forward",
    "base_exception": "the impl raised Boom: not an Exception (in forward",
    "memory_error": "the impl raised MemoryError: out of memory (in forward",
    "backward_raises": "the impl raised ValueError: boom in backward (in backward, mine.py:",
    "scalar_shape": "the impl returned shape [] where [3] is expected",
    "column_shape": "the impl returned shape [3, 1] where [3] is expected",
    "returns_list": "the impl returned list, not a tensor",
    "returns_tuple": "the impl returned tuple, not a tensor",
    "returns_float32": "the impl computes in lower precision than its inputs: its output is float32 in a float64 run",
}


def misbehaving_file(root) -> str:
    (root / "mine.py").write_text(MISBEHAVING)
    text = "".join(f'[[case]]\nname = "{n}"\nexpr = "2*x"\nimpl = "mine:{n}"\nvars.x = {{ shape = [3] }}\n'
                   f'devices = ["cpu"]\n' for n in [*MISBEHAVIOURS, "good"])
    (root / "cases.toml").write_text(text)
    return str(root / "cases.toml")


def test_a_misbehaving_impl_fails_its_case_and_the_run_goes_on_cli(tmp_path):
    from click.testing import CliRunner

    from diffcheck.cli import main

    result = CliRunner().invoke(main, ["run", misbehaving_file(tmp_path), "--device", "cpu"])
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = result.output.splitlines()
    for name, message in MISBEHAVIOURS.items():
        [line] = [ln for ln in lines if ln.endswith(f"::{name}") or f"::{name}  " in ln]
        assert line.startswith("FAIL") and message in line, line
    assert any(ln.startswith("PASS") and "::good  " in ln for ln in lines)
    assert f"1 passed, {len(MISBEHAVIOURS)} failed" in result.output


def test_a_misbehaving_impl_fails_its_case_through_the_api(tmp_path):
    import importlib.util

    import diffcheck

    misbehaving_file(tmp_path)
    spec = importlib.util.spec_from_file_location("mine_api", tmp_path / "mine.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for name, message in MISBEHAVIOURS.items():
        result = diffcheck.check("2*x", {"x": {"shape": [3]}}, impl=getattr(module, name))
        assert result.status == "fail" and message.split(" (in")[0] in result.message, (name, result.message)
        crashed = [c for c in result.checks if "impl_failure" in c.details]
        assert name == "returns_float32" or crashed, name
    assert diffcheck.check("2*x", {"x": {"shape": [3]}}, impl=module.good).ok


def test_a_misbehaving_impl_fails_its_items_through_the_plugin(pytester):
    misbehaving_file(pytester.path)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    outcomes = result.parseoutcomes()
    # good's three items pass, and returns_float32's [float32-cpu] item (float32 is right there)
    assert outcomes.get("passed") == 4 and outcomes.get("failed") == 3 * len(MISBEHAVIOURS) - 1, outcomes
    text = result.stdout.str()
    assert "INTERNALERROR" not in text and "Traceback" not in text
    for message in MISBEHAVIOURS.values():
        assert message in text, message


def test_an_impl_that_never_returns_times_out_and_the_run_goes_on(tmp_path):
    from click.testing import CliRunner

    from diffcheck.cli import main

    (tmp_path / "mine.py").write_text("import time\ndef forever(x):\n    while True:\n        time.sleep(0.05)\n"
                                      "def good(x):\n    return x * 2\n")
    (tmp_path / "cases.toml").write_text("".join(
        f'[[case]]\nname = "{n}"\nexpr = "2*x"\nimpl = "mine:{n}"\nvars.x = {{ shape = [3] }}\ndevices = ["cpu"]\n'
        for n in ("forever", "good")))
    result = CliRunner().invoke(main, ["run", str(tmp_path / "cases.toml"), "--device", "cpu", "--timeout", "1"])
    assert result.exit_code == 1, result.output
    assert "timed out after 1 s (in the impl's forward)" in result.output
    assert "1 passed, 1 failed" in result.output


def test_an_impl_that_swallows_the_timeout_still_stops():
    """The watchdog fires again every second, so code that catches BaseException a few times is still stopped."""
    import diffcheck

    count = {"n": 0}

    def swallows_twice(x):
        while True:
            try:
                while True:
                    pass
            except BaseException:
                count["n"] += 1
                if count["n"] > 2:
                    raise

    result = diffcheck.check("2*x", {"x": {"shape": [3]}}, impl=swallows_twice, timeout=2)
    assert result.status == "fail" and "timed out after 2 s (in the impl's forward)" in result.message
    assert count["n"] == 3


def test_the_timeout_covers_the_backward_too(tmp_path):
    import diffcheck

    source = '''
import torch

class Hangs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x * 2

    @staticmethod
    def backward(ctx, g):
        while True:
            pass
'''
    (tmp_path / "hangs.py").write_text(source)
    import importlib.util

    spec = importlib.util.spec_from_file_location("hangs_mod", tmp_path / "hangs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    result = diffcheck.check("2*x", {"x": {"shape": [3]}}, impl=module.Hangs, timeout=1)
    assert result.status == "fail" and "timed out after 1 s (in the impl's backward)" in result.message


# ---- the API takes a class with impl_args ----
def _module_from(tmp_path, source: str, name: str):
    import importlib.util

    (tmp_path / f"{name}.py").write_text(source)
    spec = importlib.util.spec_from_file_location(name, tmp_path / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_api_takes_a_function_class_with_impl_args(tmp_path):
    import diffcheck

    elu = _module_from(tmp_path, ELU_WITH_ALPHA, "elu_api").Elu
    variables = {"x": {"shape": [6], "domain": [-2.0, 2.0]}}
    assert diffcheck.check("elu(x, alpha=0.5)", variables, impl=elu, impl_args={"alpha": 0.5}).ok
    wrong = diffcheck.check("elu(x, alpha=0.5)", variables, impl=elu, impl_args={"alpha": 0.7})
    assert wrong.status == "fail"


SCALED = '''
import torch

class Scale(torch.nn.Module):
    def __init__(self, factor):
        super().__init__()
        self.factor = factor

    def forward(self, x):
        return self.factor * x
'''


def test_api_takes_a_module_class_with_impl_args(tmp_path):
    import diffcheck

    scale = _module_from(tmp_path, SCALED, "scale_api").Scale
    assert diffcheck.check("3*x", {"x": {"shape": [4]}}, impl=scale, impl_args={"factor": 3.0}).ok
    assert diffcheck.check("3*x", {"x": {"shape": [4]}}, impl=scale, impl_args={"factor": 2.0}).status == "fail"
    with pytest.raises(diffcheck.CaseError, match="impl_args names a var"):
        diffcheck.check("3*x", {"x": {"shape": [4]}}, impl=scale, impl_args={"x": 3.0})


# ---- a backward that changes, on a later call, the tensor it returned (CoinCheung's Swish/Mish pattern) ----
SWISH = '''
import torch

class SwishInPlace(torch.autograd.Function):
    """Wrong on purpose: the derivative kept on ctx is scaled in place and returned, so every further backward
    on the same graph multiplies the previous grad_output in."""

    @staticmethod
    def forward(ctx, x):
        s = torch.sigmoid(x)
        ctx.grad = s * (1 + x * (1 - s))
        return x * s

    @staticmethod
    def backward(ctx, grad_output):
        grad = ctx.grad
        grad *= grad_output
        return grad

class Swish(torch.autograd.Function):
    """The correct twin: a new tensor per backward."""

    @staticmethod
    def forward(ctx, x):
        s = torch.sigmoid(x)
        ctx.grad = s * (1 + x * (1 - s))
        return x * s

    @staticmethod
    def backward(ctx, grad_output):
        return ctx.grad * grad_output
'''


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_a_backward_that_is_not_reentrant_is_reported_as_such(tmp_path, dtype):
    case = impl_case(tmp_path, SWISH.replace("class SwishInPlace", "class f"), expr="silu(x)",
                     vars={"x": {"shape": [5], "domain": [-3.0, 3.0]}})
    result = run_case(case, Options(devices=("cpu",), dtypes=(dtype,)))
    assert result.status == "fail"
    assert result.message.startswith("the impl's backward is not reentrant / not deterministic"), result.message
    assert "never reached" not in result.message
    semantic = [c for c in result.checks if c.kind == "semantic" and c.dtype == dtype]
    assert semantic and semantic[0].details["nondeterministic"] == ["x"]


def test_the_reentrant_twin_passes(tmp_path):
    case = impl_case(tmp_path, SWISH.replace("class Swish(", "class f("), expr="silu(x)",
                     vars={"x": {"shape": [5], "domain": [-3.0, 3.0]}})
    result = run_case(case, Options(devices=("cpu",)))
    assert result.status == "pass", result.message


# ---- an impl that computes in float32 inside a float64 run ----
LOW_PRECISION = '''
import torch

def f(x, w):
    """Wrong on purpose: rounds to float32 inside, returns the inputs' dtype."""
    return torch.tanh(x.float() @ w.float()).to(x.dtype)

def twin(x, w):
    return torch.tanh(x @ w)
'''


def test_an_impl_computing_in_float32_inside_is_said_to_lose_precision(tmp_path):
    variables = {"x": {"shape": [3, 4]}, "w": {"shape": [4, 2]}}
    case = impl_case(tmp_path, LOW_PRECISION, expr="tanh(x @ w)", vars=variables)
    result = run_case(case, Options(devices=("cpu",)))
    assert result.status == "fail"
    assert result.message.startswith("the impl computes in lower precision than its inputs: in float64"), \
        result.message
    assert "within float32's rounding budget" in result.message
    assert not any(c.status == "fail" for c in result.checks if c.dtype == "float32")
    marked = [c for c in result.checks if "lower_precision" in c.details]
    assert marked and all(c.details["lower_precision"]["margin"] <= 1 for c in marked)
    twin = impl_case(tmp_path, LOW_PRECISION.replace("def f(", "def g(").replace("def twin(", "def f("),
                     expr="tanh(x @ w)", vars=variables)
    assert run_case(twin, Options(devices=("cpu",))).status == "pass"


def test_a_real_backward_bug_is_not_called_lower_precision(tmp_path):
    source = "import torch\ndef f(x):\n    return x * x + (x * 1e-3).detach() * 0\n" \
             "class F(torch.autograd.Function):\n    @staticmethod\n    def forward(ctx, x):\n" \
             "        ctx.save_for_backward(x)\n        return x * x\n    @staticmethod\n" \
             "    def backward(ctx, g):\n        (x,) = ctx.saved_tensors\n        return g * 2 * x * (1 + 1e-6)\n"
    case = impl_case(tmp_path, source.replace("def f(", "def unused(").replace("class F(", "class f("))
    result = run_case(case, Options(devices=("cpu",)))
    assert result.status == "fail" and "backward is wrong" in result.message
    assert "lower precision" not in result.message


def test_the_timeout_through_the_plugin_ini_option(pytester):
    (pytester.path / "mine.py").write_text("def forever(x):\n    while True:\n        pass\n")
    (pytester.path / "case.toml").write_text('name = "forever"\nexpr = "2*x"\nimpl = "mine:forever"\n'
                                             'vars.x = { shape = [3] }\ndevices = ["cpu"]\n')
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-o", "diffcheck_timeout=1")
    assert result.parseoutcomes().get("failed") == 3
    assert "timed out after 1 s (in the impl's forward)" in result.stdout.str()
    bad = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-o", "diffcheck_timeout=soon")
    assert bad.ret == 4 and "diffcheck_timeout takes seconds" in bad.stderr.str()


def test_the_timeout_is_said_to_be_off_outside_the_main_thread():
    import threading

    import diffcheck

    results = []
    thread = threading.Thread(target=lambda: results.append(diffcheck.check("2*x", {"x": {"shape": [3]}},
                                                                             impl=lambda x: 2 * x, timeout=5)))
    thread.start()
    thread.join()
    [result] = results
    assert result.ok
    assert any(c.kind == "timeout" and c.status == "skip" and "not enforced off the main thread" in c.message
               for c in result.checks)


def test_a_nan_timeout_is_a_usage_error(tmp_path):
    from click.testing import CliRunner

    from diffcheck.cli import main

    (tmp_path / "case.toml").write_text('name = "c"\nexpr = "x"\nvars.x = {}\n')
    result = CliRunner().invoke(main, ["run", str(tmp_path / "case.toml"), "--timeout", "nan"])
    assert result.exit_code == 2 and "--timeout takes seconds" in result.output


def test_order_2_with_a_wrong_first_order_gives_the_first_order_verdict_first(tmp_path):
    source = DETACHED_BACKWARD.replace("2 * x.detach() * g", "3 * x.detach() * g + 0 * x")
    result = run_case(impl_case(tmp_path, source, expr="x**2", order=2), Options(devices=("cpu",)))
    assert result.message.startswith("the impl's backward is wrong (grad x"), result.message
    assert result.message.endswith("; its double backward fails too")
