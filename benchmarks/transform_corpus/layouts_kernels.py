"""Custom autograd Functions that are right for contiguous tensors and wrong for others, each beside its correct
twin (the layouts transform's part of the wrong-on-purpose corpus): a backward that reads its saved input through
contiguous strides, and one that reads its upstream gradient so."""

from __future__ import annotations

import torch


def _contiguous_strides(shape) -> tuple[int, ...]:
    strides, step = [], 1
    for size in reversed(shape):
        strides.append(step)
        step *= size
    return tuple(reversed(strides))


class _Cube(torch.autograd.Function):
    """x**3."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x * x

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return 3 * g * x**2


class bug_layouts_contiguous_input(_Cube):
    """Reads x as if its storage were contiguous (what a hand-written kernel taking data_ptr() does)."""

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return 3 * g * x.as_strided(x.shape, _contiguous_strides(x.shape)) ** 2


class ok_layouts_contiguous_input(_Cube):
    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return 3 * g * x.contiguous() ** 2


class bug_layouts_contiguous_grad(_Cube):
    """Reads the upstream gradient as one flat run of storage."""

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        flat = g.as_strided((g.numel(),), (1,))
        return 3 * flat.reshape(g.shape) * x**2


class ok_layouts_contiguous_grad(_Cube):
    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        flat = g.contiguous().view(-1)
        return 3 * flat.view(g.shape) * x**2
