"""Wrong on purpose for ``order = 2``: custom Functions whose first derivative is right and whose double backward
is silently wrong, because the backward uses an intermediate of the forward saved *detached* on ctx (autograd
cannot differentiate through it), each with its correct twin (it saves the inputs, or the output through
``save_for_backward``, both of which autograd can differentiate through)."""

import torch


class bug_higher_detached_tanh(torch.autograd.Function):
    """x * tanh(x)."""

    @staticmethod
    def forward(ctx, x):
        t = torch.tanh(x)
        ctx.save_for_backward(x)
        ctx.t = t.detach()  # the intermediate, cut from the graph: d/dx of the backward loses d t / d x
        return x * t

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        t = ctx.t
        return g * (t + x * (1 - t**2))


class ok_higher_detached_tanh(torch.autograd.Function):
    """x * tanh(x), tanh recomputed from the saved input in backward."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * torch.tanh(x)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        t = torch.tanh(x)
        return g * (t + x * (1 - t**2))


class bug_higher_saved_exp(torch.autograd.Function):
    """sum(exp(W @ x)), backward from the exponentials kept detached on ctx."""

    @staticmethod
    def forward(ctx, W, x):
        e = torch.exp(W @ x)
        ctx.save_for_backward(W, x)
        ctx.e = e.detach()
        return e.sum()

    @staticmethod
    def backward(ctx, g):
        W, x = ctx.saved_tensors
        gz = g * ctx.e
        return torch.outer(gz, x), W.T @ gz


class ok_higher_saved_exp(torch.autograd.Function):
    """The same, recomputing the exponentials from the saved inputs in backward."""

    @staticmethod
    def forward(ctx, W, x):
        ctx.save_for_backward(W, x)
        return torch.exp(W @ x).sum()

    @staticmethod
    def backward(ctx, g):
        W, x = ctx.saved_tensors
        gz = g * torch.exp(W @ x)
        return torch.outer(gz, x), W.T @ gz
