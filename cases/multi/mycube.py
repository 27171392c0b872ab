"""torch's own MyCube from its docs (docs/source/notes/extending.rst, "Extending torch.autograd"): it returns
dx = 3 * x ** 2 as a second output so that backward can use it, and its backward adds that output's gradient
contribution (grad_dx * 6 * x)."""

import torch


class MyCube(torch.autograd.Function):
    @staticmethod
    def forward(x):
        # We wish to save dx for backward. In order to do so, it must
        # be returned as an output.
        dx = 3 * x ** 2
        result = x ** 3
        return result, dx

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, = inputs
        _, dx = output
        ctx.save_for_backward(x, dx)

    @staticmethod
    def backward(ctx, grad_output, grad_dx):
        x, dx = ctx.saved_tensors
        # In order for the autograd.Function to work with higher-order
        # gradients, we must add the gradient contribution of `dx`,
        # which is grad_dx * 6 * x.
        result = grad_output * dx + grad_dx * 6 * x
        return result


def moments(x, w):
    """A function returning a dict: the weighted mean and the weighted second moment of each row."""
    total = w.sum(dim=-1, keepdim=True)
    return {"mean": (w * x).sum(dim=-1) / total.squeeze(-1), "second": (w * x * x).sum(dim=-1) / total.squeeze(-1)}


class ReluWithMask(torch.autograd.Function):
    """relu and the mask of its active entries, marked non-differentiable (checked by value only)."""

    @staticmethod
    def forward(ctx, x):
        mask = x > 0
        ctx.save_for_backward(mask)
        ctx.mark_non_differentiable(mask)
        return x * mask, mask

    @staticmethod
    def backward(ctx, grad_out, grad_mask):
        mask, = ctx.saved_tensors
        return grad_out * mask
