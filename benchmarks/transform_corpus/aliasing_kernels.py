"""Custom autograd Functions that are right for distinct inputs and wrong when both inputs are the very same
tensor, each beside its correct twin (benchmarks/transform_corpus/aliasing.toml)."""

from __future__ import annotations

import torch


def _keyed(distinct_assumed: bool):
    class MulSquare(torch.autograd.Function):
        """a * b**2; d/da = b**2, d/db = 2 a b."""

        @staticmethod
        def forward(ctx, a, b):
            ctx.save_for_backward(a, b)
            return a * b**2

        @staticmethod
        def backward(ctx, g):
            a, b = ctx.saved_tensors
            if distinct_assumed:  # one buffer per input, keyed by the tensor: b's entry overwrites a's when a is b
                grads = {id(a): g * b**2}
                grads[id(b)] = 2 * g * a * b
                return grads[id(a)], grads[id(b)]
            return g * b**2, 2 * g * a * b

    return MulSquare


bug_aliasing_keyed_buffer = _keyed(True)
ok_aliasing_keyed_buffer = _keyed(False)


def _shortcut(distinct_assumed: bool):
    class Mul(torch.autograd.Function):
        """a * b."""

        @staticmethod
        def forward(ctx, a, b):
            ctx.save_for_backward(a, b)
            return a * b

        @staticmethod
        def backward(ctx, g):
            a, b = ctx.saved_tensors
            if a is b:  # x * x: d/dx = 2 x
                if distinct_assumed:  # ... returned for each slot, as if each were its own tensor: autograd adds both
                    return 2 * g * a, 2 * g * b
                return 2 * g * a, None
            return g * b, g * a

    return Mul


bug_aliasing_identity_shortcut = _shortcut(True)
ok_aliasing_identity_shortcut = _shortcut(False)
