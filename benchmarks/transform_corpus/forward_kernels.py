"""Custom autograd Functions whose forward and backward are right and whose ``jvp`` staticmethod (forward mode)
is not, each beside its correct twin (the forward transform's part of the wrong-on-purpose corpus)."""

from __future__ import annotations

import torch


class _Sin(torch.autograd.Function):
    """sin(x), classic style (forward takes ctx): forward mode runs through torch.autograd.forward_ad."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        ctx.save_for_forward(x)
        return torch.sin(x)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * torch.cos(x)


class bug_forward_sin_jvp_sign(_Sin):
    @staticmethod
    def jvp(ctx, t):
        (x,) = ctx.saved_tensors
        return -t * torch.cos(x)


class ok_forward_sin_jvp_sign(_Sin):
    @staticmethod
    def jvp(ctx, t):
        (x,) = ctx.saved_tensors
        return t * torch.cos(x)


class _Matmul(torch.autograd.Function):
    """x @ w, torch.func style (setup_context): forward mode runs through torch.func.jvp."""

    @staticmethod
    def forward(x, w):
        return x @ w

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs)
        ctx.save_for_forward(*inputs)

    @staticmethod
    def backward(ctx, g):
        x, w = ctx.saved_tensors
        return g @ w.mT, x.mT @ g


class bug_forward_matmul_jvp_sign(_Matmul):
    """The product rule with a minus: d(x w) = dx w - x dw."""

    @staticmethod
    def jvp(ctx, tx, tw):
        x, w = ctx.saved_tensors
        return tx @ w - x @ tw


class ok_forward_matmul_jvp_sign(_Matmul):
    @staticmethod
    def jvp(ctx, tx, tw):
        x, w = ctx.saved_tensors
        return tx @ w + x @ tw
