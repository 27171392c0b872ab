"""Backward passes that deliberately are not the derivative of their forward, each checked against the rule its
author declares (``surrogate.<var>`` in surrogate.toml). Written for diffcheck after the public originals named
in each docstring; the rules are the originals'."""

import torch


class StraightThroughStep(torch.autograd.Function):
    """Heaviside step forward, identity backward: the straight-through estimator (Bengio et al., 2013)."""

    @staticmethod
    def forward(ctx, x):
        return (x > 0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad):
        return grad


class GradientReversal(torch.autograd.Function):
    """Identity forward, the upstream gradient negated and scaled by ``alpha`` backward (Ganin & Lempitsky's
    domain-adversarial gradient reversal layer)."""

    @staticmethod
    def forward(ctx, x, alpha):
        ctx.alpha = alpha
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return -ctx.alpha * grad, None


class LowerBound(torch.autograd.Function):
    """``max(x, bound)`` whose gradient reaches ``x`` where ``x`` is at or above the bound, or where the
    gradient step would move ``x`` up towards it (CompressAI, compressai/ops/bound_ops.py ``LowerBoundFunction``)."""

    @staticmethod
    def forward(ctx, x, bound):
        ctx.save_for_backward(x, bound)
        return torch.maximum(x, bound)

    @staticmethod
    def backward(ctx, grad):
        x, bound = ctx.saved_tensors
        passes = torch.logical_or(x >= bound, grad < 0)
        return grad * passes, None


class LogSumExpMoE(torch.autograd.Function):
    """logsumexp over ``dim`` forward; backward weights the upstream gradient by a given ``posterior`` instead of
    softmax(logp) (fairseq, fairseq/modules/logsumexp_moe.py; Shen et al., 2019)."""

    @staticmethod
    def forward(ctx, logp, posterior, dim=-1):
        ctx.save_for_backward(posterior)
        ctx.dim = dim
        return torch.logsumexp(logp, dim=dim)

    @staticmethod
    def backward(ctx, grad):
        (posterior,) = ctx.saved_tensors
        return grad.unsqueeze(ctx.dim) * posterior, None, None
