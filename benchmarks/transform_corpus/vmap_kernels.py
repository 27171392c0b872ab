"""Custom autograd Functions that are right in eager mode and wrong only under ``torch.func.vmap``, each beside its
correct twin (the vmap transform's part of the wrong-on-purpose corpus). Their forward and backward are correct;
the ``vmap`` staticmethod -- what torch.func.vmap runs when a batch of inputs reaches the Function -- is not."""

from __future__ import annotations

import torch


class _Softmax(torch.autograd.Function):
    """softmax over the last dim, written the torch.func way (forward without ctx, setup_context)."""

    @staticmethod
    def forward(x):
        e = torch.exp(x - x.amax(-1, keepdim=True))
        return e / e.sum(-1, keepdim=True)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(output)

    @staticmethod
    def backward(ctx, g):
        (y,) = ctx.saved_tensors
        return y * (g - (g * y).sum(-1, keepdim=True))


class bug_vmap_batch_dim_last(_Softmax):
    """The batch dim moved to the end, where the softmax's own dim is: it normalizes over the batch."""

    @staticmethod
    def vmap(info, in_dims, x):
        x = x.movedim(in_dims[0], -1)
        return _Softmax.apply(x).movedim(-1, 0), 0


class ok_vmap_batch_dim_last(_Softmax):
    """The batch dim moved to the front: softmax over the last dim stays per member."""

    @staticmethod
    def vmap(info, in_dims, x):
        return _Softmax.apply(x.movedim(in_dims[0], 0)), 0


class _Scale(torch.autograd.Function):
    """x * w[:, None] (w scales the rows of x), torch.func style."""

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


class bug_vmap_out_dims(_Scale):
    """Moves both batch dims to the end, but says the result's batch dim is 0: members and rows mix up."""

    @staticmethod
    def vmap(info, in_dims, x, w):
        x = x.movedim(in_dims[0], -1) if in_dims[0] is not None else x.unsqueeze(-1).expand(*x.shape, info.batch_size)
        w = w.movedim(in_dims[1], -1) if in_dims[1] is not None else w.unsqueeze(-1).expand(*w.shape, info.batch_size)
        out = x * w[:, None]  # [rows, cols, batch]
        return out.reshape(info.batch_size, *out.shape[:-1]), 0


class ok_vmap_out_dims(_Scale):
    @staticmethod
    def vmap(info, in_dims, x, w):
        x = x.movedim(in_dims[0], -1) if in_dims[0] is not None else x.unsqueeze(-1).expand(*x.shape, info.batch_size)
        w = w.movedim(in_dims[1], -1) if in_dims[1] is not None else w.unsqueeze(-1).expand(*w.shape, info.batch_size)
        return (x * w[:, None]).movedim(-1, 0), 0


class ok_vmap_generated_rule(_Softmax):
    """No vmap staticmethod: torch makes the rule from forward and backward."""

    generate_vmap_rule = True
