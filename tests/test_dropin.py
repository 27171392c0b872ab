"""diffcheck.gradcheck / gradgradcheck as drop-ins for torch's: a gradcheck-style test suite rewritten, the
bugs it must catch (also in float32, where torch's gradcheck cannot be used) and the correct twins it must pass."""

from __future__ import annotations

import pytest
import torch

import diffcheck


class MyExp(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        y = x.exp()
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, g):
        (y,) = ctx.saved_tensors
        return g * y


class OneEntryOff(MyExp):
    """Right everywhere but entry [0, 3], off by 0.1%."""

    @staticmethod
    def backward(ctx, g):
        (y,) = ctx.saved_tensors
        grad = (g * y).clone()
        grad[0, 3] *= 1.001
        return grad


class Cube(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x**3

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * 3 * x**2


class CubeDetached(Cube):
    """First order right; second order wrong: the saved input is detached, so double backward loses a term."""

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * 3 * x.detach() ** 2


def _x(*shape, dtype=torch.float64):
    return torch.randn(*shape, dtype=dtype, generator=torch.Generator().manual_seed(0)).requires_grad_(True)


def test_a_gradcheck_test_rewritten_side_by_side():
    x = _x(4, 5)
    assert torch.autograd.gradcheck(MyExp.apply, (x,))  # before
    assert diffcheck.gradcheck(MyExp.apply, (x,))  # after: same call, same answer for a correct Function


def test_a_wrong_entry_raises_a_runtime_error_with_the_localized_report():
    with pytest.raises(RuntimeError) as info:
        diffcheck.gradcheck(OneEntryOff.apply, (_x(4, 5),))
    assert isinstance(info.value, diffcheck.GradcheckError)
    assert "only entry [0, 3] is wrong" in str(info.value)
    assert info.value.result.status == "fail"


def test_raise_exception_false_returns_false():
    assert diffcheck.gradcheck(OneEntryOff.apply, (_x(4, 5),), raise_exception=False) is False
    assert diffcheck.gradcheck(MyExp.apply, (_x(4, 5),), raise_exception=False) is True


def test_float32_without_false_alarms_and_with_the_bug_caught():
    x = _x(6, 6, dtype=torch.float32)

    def f(a):
        return (a @ a).tanh()

    with pytest.warns(UserWarning):  # torch itself warns that float32 "will likely fail"
        assert not torch.autograd.gradcheck(f, (x,), raise_exception=False)  # its false alarm
    assert diffcheck.gradcheck(f, (x,))
    assert not diffcheck.gradcheck(OneEntryOff.apply, (_x(4, 5, dtype=torch.float32),), raise_exception=False)


def test_every_requested_dtype_is_checked():
    result = None
    try:
        diffcheck.gradcheck(OneEntryOff.apply, (_x(4, 5),), dtypes=["float64", "float32"])
    except diffcheck.GradcheckError as exc:
        result = exc.result
    assert result is not None
    assert {c.dtype for c in result.checks if c.status != "skip"} >= {"float64", "float32"}
    # without a reference float32 is judged against the impl's own verified float64 backward, so the float64
    # self-consistency check is where the bug shows
    assert any(c.status == "fail" and c.dtype == "float64" and c.kind == "self_fd" for c in result.checks)


def test_non_tensor_and_integer_arguments_pass_through():
    def pick(a, index, scale, bias=None):
        return (a[index] * scale).sum(0) if bias is None else a

    assert diffcheck.gradcheck(pick, (_x(4, 5), torch.tensor([0, 2, 2]), 2.5, None))


def test_tuple_outputs_are_judged_together():
    a, b = _x(4, 5), _x(5)
    assert diffcheck.gradcheck(lambda p, q: (p.sin() * q, p.cos().sum(), p.argmax()), (a, b))

    class HalfWrong(torch.autograd.Function):
        @staticmethod
        def forward(ctx, p):
            ctx.save_for_backward(p)
            return p.sin(), p.cos()

        @staticmethod
        def backward(ctx, g1, g2):
            (p,) = ctx.saved_tensors
            return g1 * p.cos() + g2 * p.sin()  # the sign of d cos is lost

    assert not diffcheck.gradcheck(HalfWrong.apply, (a,), raise_exception=False)


def test_reference_function():
    x = _x(3, 4)
    assert diffcheck.gradcheck(MyExp.apply, (x,), reference=torch.exp)
    assert not diffcheck.gradcheck(OneEntryOff.apply, (x,), reference=torch.exp, raise_exception=False)


def test_no_input_requires_grad_is_an_error_as_in_torch():
    with pytest.raises(ValueError, match="requires_grad"):
        diffcheck.gradcheck(torch.sin, (torch.randn(3, dtype=torch.float64),))


def test_gradgradcheck_catches_a_detached_saved_input_and_passes_its_twin():
    x = _x(5)
    assert diffcheck.gradcheck(CubeDetached.apply, (x,))  # first order cannot see it
    assert not diffcheck.gradgradcheck(CubeDetached.apply, (x,), raise_exception=False)
    assert diffcheck.gradgradcheck(Cube.apply, (x,))
    assert diffcheck.gradgradcheck(torch.sin, (_x(3, 2),), dtypes=["float64", "float32"])


def test_the_api_takes_outputs_rng_and_transforms():
    class TwoOut(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return {"cube": x**3, "square": x**2}["cube"], x**2

        @staticmethod
        def backward(ctx, g1, g2):
            (x,) = ctx.saved_tensors
            return g1 * 3 * x**2 + g2 * 2 * x

    x = {"x": {"shape": [3]}}
    result = diffcheck.check("(x**3, x**2)", x, impl=TwoOut, outputs=["cube", "square"], transforms=["vmap"])
    assert result.ok, result.message
    assert any(c.kind == "vmap" for c in result.checks)

    def dropout(x):  # draws in float64 whatever x's dtype: the same mask in every dtype under replay
        return x * (torch.rand(x.shape, dtype=torch.float64) > 0.5).to(x.dtype)

    wide = {"x": {"shape": [64]}}  # two draws of 64 coin flips coincide with probability 2**-64
    assert "rng" in diffcheck.check(None, wide, impl=dropout).message
    assert diffcheck.check(None, wide, impl=dropout, rng="replay").ok
    with pytest.raises(diffcheck.CaseError, match="rng"):
        diffcheck.check(None, x, impl=dropout, rng="again")


@pytest.mark.parametrize("returned, name", [(None, "NoneType"), ({"s": 1}, "dict"), (3, "int")])
def test_a_function_returning_no_tensor_is_said_plainly(returned, name):
    x = torch.randn(3, dtype=torch.float64, requires_grad=True)
    with pytest.raises(diffcheck.GradcheckError) as error:
        diffcheck.gradcheck(lambda a: returned, (x,))
    assert error.value.result.message == f"the impl returned {name}, not a tensor"  # not "raised TypeError: ..."
