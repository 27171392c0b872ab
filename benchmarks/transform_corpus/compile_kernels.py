"""Custom autograd Functions that are right in eager mode and wrong only under ``torch.compile``, each beside its
correct twin (benchmarks/transform_corpus/compile.toml)."""

from __future__ import annotations

import torch


def _x_exp_x(compiled_formula_is_wrong: bool):
    class XExpX(torch.autograd.Function):
        """x * exp(x); d/dx = exp(x) * (1 + x)."""

        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return x * torch.exp(x)

        @staticmethod
        def backward(ctx, g):
            (x,) = ctx.saved_tensors
            if compiled_formula_is_wrong and torch.compiler.is_compiling():  # a "fast path" missing a term
                return g * torch.exp(x)
            return g * torch.exp(x) * (1 + x)

    return XExpX


bug_compile_is_compiling = _x_exp_x(True)
ok_compile_is_compiling = _x_exp_x(False)


def _mul(compiled_halves: bool):
    class Mul(torch.autograd.Function):
        """a * b; receives the same tensor twice from the impl below."""

        @staticmethod
        def forward(ctx, a, b):
            ctx.save_for_backward(a, b)
            return a * b

        @staticmethod
        def backward(ctx, g):
            a, b = ctx.saved_tensors
            if compiled_halves and torch.compiler.is_compiling():
                # written for a compiler that merges the repeated input and sums both slots itself: only the
                # first slot's partial, half of the gradient of x * x (an `a is b` test would make dynamo run
                # the Function eagerly, so the compiled path has none)
                return g * b, torch.zeros_like(a)
            return g * b, g * a

    return Mul


_BUG_MUL, _OK_MUL = _mul(True), _mul(False)


def bug_compile_same_tensor_twice(x, y):
    """x * x + y through a Function that receives x twice: half of d(x*x)/dx under compile. The second is a view
    of x: torch 2.13's dynamo runs a Function given the very same tensor twice eagerly (a graph break), so only
    the same data under two tensors reaches the compiled backward."""
    return _BUG_MUL.apply(x, x.view_as(x)) + y


def ok_compile_same_tensor_twice(x, y):
    return _OK_MUL.apply(x, x.view_as(x)) + y
