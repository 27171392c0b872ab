"""Backward bugs of real custom Functions that diffcheck used to pass (or report unclearly), each beside its
correct twin, run as a user runs them: a case file and its kernels through the CLI, and through the API."""

import torch
from click.testing import CliRunner

import diffcheck
from diffcheck.cli import main

KERNELS = '''
import torch
from torch.autograd.function import once_differentiable


class ClampInPlace(torch.autograd.Function):
    """Clamps its caller's tensor in place to save memory: the gradient is right, the caller's x is changed."""

    @staticmethod
    def forward(ctx, x):
        x.clamp_(-0.5, 0.5)
        ctx.save_for_backward(x)
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * ((x > -0.5) & (x < 0.5))


class Clamp(ClampInPlace):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.clamp(-0.5, 0.5)


class SinGradInPlace(torch.autograd.Function):
    """Scales grad_output in place and returns it: right alone, wrong where the upstream gradient is shared."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.sin()

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        g.mul_(x.cos())
        return g


class Sin(SinGradInPlace):
    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * x.cos()


class Cube(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x**3

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return 3 * g * x * x


class CubeNegative(Cube):
    """First order right everywhere; where x < 0 one factor is detached, so the double backward is half there."""

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return 3 * g * x * torch.where(x < 0, x.detach(), x)


class Scale(torch.autograd.Function):
    """x * w[:, None], torch.func style; its vmap rule moves each batch dim to the end."""

    @staticmethod
    def forward(x, w):
        return x * w[:, None]

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs)

    @staticmethod
    def backward(ctx, g):
        x, w = ctx.saved_tensors
        return g * w[:, None], (g * x).sum(-1)

    @staticmethod
    def vmap(info, in_dims, x, w):
        x = x.movedim(in_dims[0], -1) if in_dims[0] is not None else x.unsqueeze(-1).expand(*x.shape, info.batch_size)
        w = w.movedim(in_dims[1], -1) if in_dims[1] is not None else w.unsqueeze(-1).expand(*w.shape, info.batch_size)
        return (x * w[:, None]).movedim(-1, 0), 0


class ScaleEveryInputBatched(Scale):
    """The rule assumes every input has a batch dim: per-sample gradients (w shared, in_dims None) break it."""

    @staticmethod
    def vmap(info, in_dims, x, w):
        x, w = x.movedim(in_dims[0], -1), w.movedim(in_dims[1], -1)
        return (x * w[:, None]).movedim(-1, 0), 0


def cube(x):
    return x**3


class CubeHalfSecond(Cube):
    """First order right; one factor detached, so its double backward is half the true one."""

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return 3 * g * x * x.detach()


class CubeOnce(Cube):
    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return 3 * g * x * x
'''


def run_cli(tmp_path, cases: str):
    (tmp_path / "kernels.py").write_text(KERNELS)
    (tmp_path / "cases.toml").write_text('devices = ["cpu"]\n' + cases)
    result = CliRunner().invoke(main, ["run", str(tmp_path / "cases.toml"), "--device", "cpu"])
    assert "Traceback" not in result.output
    return result, {ln.split("::")[1].split()[0]: ln for ln in result.output.splitlines()
                    if ln.startswith(("PASS", "FAIL", "ERROR", "SKIP"))}


def case(name: str, impl: str, expr: str, value: str, extra: str = "") -> str:
    return f'[[case]]\nname = "{name}"\nexpr = "{expr}"\nimpl = "kernels:{impl}"\nvars.x = {{ shape = [4], ' \
           f'value = {value} }}\n{extra}\n'


def kernels(tmp_path):
    import importlib.util

    (tmp_path / "kernels.py").write_text(KERNELS)
    spec = importlib.util.spec_from_file_location("real_bug_kernels", tmp_path / "kernels.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_forward_that_modifies_its_input_in_place_fails_naming_the_input(tmp_path):
    x = "[-0.9, -0.2, 0.3, 0.8]"
    result, lines = run_cli(tmp_path, case("bug", "ClampInPlace", "clamp(x, min=-0.5, max=0.5)", x)
                            + case("ok", "Clamp", "clamp(x, min=-0.5, max=0.5)", x))
    assert result.exit_code == 1, result.output
    assert lines["bug"].startswith("FAIL") and "the impl modified its input x in place (in forward)" in lines["bug"]
    assert lines["ok"].startswith("PASS"), lines["ok"]


def test_the_api_reports_an_input_modified_in_place_and_leaves_the_callers_tensor_alone(tmp_path):
    module = kernels(tmp_path)
    x = torch.tensor([-0.9, -0.2, 0.3, 0.8], dtype=torch.float64, requires_grad=True)
    result = diffcheck.check("clamp(x, min=-0.5, max=0.5)", inputs={"x": x}, impl=module.ClampInPlace)
    assert result.status == "fail" and "modified its input x in place" in result.message, result.message
    assert torch.equal(x.detach(), torch.tensor([-0.9, -0.2, 0.3, 0.8], dtype=torch.float64))
    assert diffcheck.check("clamp(x, min=-0.5, max=0.5)", inputs={"x": x}, impl=module.Clamp).ok


def test_a_backward_that_modifies_grad_output_in_place_fails(tmp_path):
    x = "[-0.9, -0.2, 0.3, 0.8]"
    result, lines = run_cli(tmp_path, case("bug", "SinGradInPlace", "sin(x)", x) + case("ok", "Sin", "sin(x)", x))
    assert result.exit_code == 1, result.output
    assert lines["bug"].startswith("FAIL")
    assert "backward modified its upstream gradient (grad_output) in place" in lines["bug"], lines["bug"]
    assert lines["ok"].startswith("PASS"), lines["ok"]
    # why it is a finding: torch hands the one upstream gradient of f(x) + x to both branches
    module = kernels(tmp_path)
    x = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64, requires_grad=True)
    v = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    (module.SinGradInPlace.apply(x) + x).backward(v.clone())
    assert not torch.allclose(x.grad, v * (x.detach().cos() + 1))


def test_order_2_judges_the_double_backward_at_every_output_entry(tmp_path):
    # the last entry (x > 0) is right: an H v of that output entry alone saw nothing wrong
    x = "[-0.5, -1.0, 0.7, 0.3]"
    result, lines = run_cli(tmp_path, case("bug", "CubeNegative", "x**3", x, "order = 2")
                            + case("ok", "Cube", "x**3", x, "order = 2"))
    assert result.exit_code == 1, result.output
    assert lines["bug"].startswith("FAIL"), lines["bug"]
    assert "first-order gradient is right; its double backward is wrong (hvp x [float64 cpu]" in lines["bug"]
    assert lines["ok"].startswith("PASS"), lines["ok"]


def test_order_2_of_a_once_differentiable_backward_says_why(tmp_path):
    result, lines = run_cli(tmp_path, case("once", "CubeOnce", "x**3", "[-0.5, -1.0, 0.7, 0.3]", "order = 2"))
    assert result.exit_code == 1, result.output
    assert lines["once"].startswith("FAIL")
    assert "the first-order gradient cannot be differentiated: it has no graph" in lines["once"], lines["once"]
    assert "does not require grad" not in lines["once"]


def test_vmap_batches_the_first_var_alone_as_per_sample_gradients_do(tmp_path):
    def scale(name, impl):
        return f'[[case]]\nname = "{name}"\nexpr = "x * unsqueeze(w, dim=1)"\nimpl = "kernels:{impl}"\n' \
               'vars.x = { shape = [3, 4] }\nvars.w = { shape = [3] }\ntransforms = ["vmap"]\n'

    result, lines = run_cli(tmp_path, scale("bug", "ScaleEveryInputBatched") + scale("ok", "Scale"))
    assert result.exit_code == 1, result.output
    assert lines["bug"].startswith("FAIL"), lines["bug"]
    assert "wrong under the vmap transform (batched inputs (3 points of x, the other vars shared: in_dims None): " \
           "the impl raised TypeError" in lines["bug"], lines["bug"]
    assert lines["ok"].startswith("PASS"), lines["ok"]


def test_order_2_with_a_python_reference_or_the_impl_alone_runs_and_catches_a_wrong_double_backward(tmp_path):
    def cubes(name, impl, reference):
        ref = f'reference = "kernels:{reference}"\n' if reference else ""
        return f'[[case]]\nname = "{name}"\nimpl = "kernels:{impl}"\n{ref}order = 2\nvars.x = {{ shape = [4] }}\n'

    result, lines = run_cli(tmp_path, cubes("ref_bug", "CubeHalfSecond", "cube") + cubes("ref_ok", "Cube", "cube")
                            + cubes("alone_bug", "CubeHalfSecond", None) + cubes("alone_ok", "Cube", None))
    assert result.exit_code == 1, result.output
    assert "ERROR" not in result.output and "IndexError" not in result.output
    for name in ("ref_bug", "alone_bug"):
        assert lines[name].startswith("FAIL"), lines[name]
        assert "first-order gradient is right; its double backward is wrong (hvp x [float64 cpu]" in lines[name]
    for name in ("ref_ok", "alone_ok"):
        assert lines[name].startswith("PASS"), lines[name]
