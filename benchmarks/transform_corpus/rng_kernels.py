"""Random functions (issue 15): dropout-like impls whose every forward draws a new mask from torch's RNG. Checked
with ``rng = "replay"`` (each evaluation replays the same RNG state, seeded with the case seed), they are judged
like any other function. The case's bool var ``m`` is the mask the replayed RNG draws at the case's seed,
written out so that the reference expression ``x * m / (1 - P)`` can state what the impl computes; the impls
ignore it and draw their own."""

import torch

P = 0.5  # the drop probability


def _mask(x):
    """Keep each entry with probability 1 - P: drawn in float64 on the CPU, so every dtype and device sees the
    same mask for the same RNG state."""
    return (torch.rand(x.shape, dtype=torch.float64) >= P).to(device=x.device, dtype=x.dtype)


def ok_rng_dropout_autograd(x, m):
    """Plain torch: autograd keeps the mask it multiplied by."""
    return x * _mask(x) / (1 - P)


class ok_rng_dropout(torch.autograd.Function):
    """The mask is saved for backward."""

    @staticmethod
    def forward(ctx, x, m):
        mask = _mask(x)
        ctx.save_for_backward(mask)
        return x * mask / (1 - P)

    @staticmethod
    def backward(ctx, g):
        (mask,) = ctx.saved_tensors
        return g * mask / (1 - P), None


class bug_rng_dropout(torch.autograd.Function):
    """Wrong on purpose: backward draws a fresh mask instead of the forward's (right in distribution only)."""

    @staticmethod
    def forward(ctx, x, m):
        return x * _mask(x) / (1 - P)

    @staticmethod
    def backward(ctx, g):
        return g * _mask(g) / (1 - P), None
