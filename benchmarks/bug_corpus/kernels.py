"""Custom autograd Functions with the backward mistakes people really make, each beside its correct twin.

Every entry of BUGS is (name, forward, wrong backward, right backward). ``make`` turns a forward and a backward
into a ``torch.autograd.Function``; the module exposes ``bug_<name>`` and ``ok_<name>`` for the case files.
A backward receives (grad_output, *inputs, output) and returns one gradient per input.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def make(name: str, forward, backward):
    """A torch.autograd.Function named ``name`` from a forward and a backward."""

    class Function(torch.autograd.Function):
        @staticmethod
        def forward(ctx, *inputs):
            out = forward(*inputs)
            ctx.save_for_backward(*inputs, out)
            return out

        @staticmethod
        def backward(ctx, grad):
            *inputs, out = ctx.saved_tensors
            grads = backward(grad, *inputs, out)
            return grads if isinstance(grads, tuple) else (grads,)

    Function.__name__ = Function.__qualname__ = name
    return Function


def _softplus2_grad(g, x, out):
    return g * torch.sigmoid(2 * x)


def _gelu_exact_grad(g, x, out):
    cdf = 0.5 * (1 + torch.erf(x / math.sqrt(2)))
    pdf = torch.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)
    return g * (cdf + x * pdf)


def _gelu_tanh_grad(g, x, out):  # the tanh approximation's derivative, used under an exact-erf forward
    k = math.sqrt(2 / math.pi)
    inner = k * (x + 0.044715 * x**3)
    t = torch.tanh(inner)
    return g * (0.5 * (1 + t) + 0.5 * x * (1 - t * t) * k * (1 + 3 * 0.044715 * x * x))


def _one_entry_off(g, x, w, out):
    gw = x.T @ g
    gw[3, 7] = gw[3, 7] * 1.001
    return g @ w.T, gw


def _sort_grad(g, x, out):
    idx = torch.sort(x, dim=-1).indices
    return torch.zeros_like(x).scatter(-1, idx, g)


def _layer_norm(x):
    mu = x.mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(x.var(-1, correction=0, keepdim=True) + 1e-5)


def _layer_norm_grad(g, x, out, with_mean=True):
    rstd = 1 / torch.sqrt(x.var(-1, correction=0, keepdim=True) + 1e-5)
    n = x.shape[-1]
    gx = g - (out * (g * out).sum(-1, keepdim=True)) / n
    if with_mean:
        gx = gx - g.sum(-1, keepdim=True) / n
    return gx * rstd


def _gather_grad(g, x, idx, out, accumulate=True):
    gx = torch.zeros_like(x)
    return (gx.scatter_add(0, idx, g) if accumulate else gx.scatter(0, idx, g)), None


def _conv_grads(g, x, w, out, flip=False):
    gx = torch.nn.grad.conv2d_input(x.shape, w, g)
    gw = torch.nn.grad.conv2d_weight(x, w.shape, g)
    return gx, (gw.flip(-1, -2) if flip else gw)


def _r2(y, x):
    return x * x + y * y


BUGS = [
    ("sigmoid_sign_flip", torch.sigmoid,
     lambda g, x, o: -g * o * (1 - o), lambda g, x, o: g * o * (1 - o)),
    ("square_missing_factor_2", lambda x: x * x,
     lambda g, x, o: g * x, lambda g, x, o: 2 * g * x),
    ("elu_missing_alpha", lambda x: F.elu(x, alpha=0.5),
     lambda g, x, o: torch.where(x > 0, g, g * torch.exp(x)),
     lambda g, x, o: torch.where(x > 0, g, g * 0.5 * torch.exp(x))),
    ("exp_grad_of_wrong_variable", torch.exp,
     lambda g, x, o: g * x, lambda g, x, o: g * o),
    ("cube_wrong_power", lambda x: x**3,
     lambda g, x, o: 3 * g * x, lambda g, x, o: 3 * g * x**2),
    ("log_epsilon_in_denominator", torch.log,
     lambda g, x, o: g / (x + 1e-5), lambda g, x, o: g / x),
    ("relu_leaks_through_dead_side", torch.relu,
     lambda g, x, o: g * torch.where(x > 0, 1.0, 0.01), lambda g, x, o: g * (x > 0)),
    ("linear_weight_grad_transposed", lambda x, w: x @ w,
     lambda g, x, w, o: (g @ w.T, (x.T @ g).T), lambda g, x, w, o: (g @ w.T, x.T @ g)),
    ("bias_grad_from_one_row", lambda x, w, b: x @ w + b,
     lambda g, x, w, b, o: (g @ w.T, x.T @ g, g[0]), lambda g, x, w, b, o: (g @ w.T, x.T @ g, g.sum(0))),
    ("mean_divides_by_n_minus_1", lambda x: x.mean(),
     lambda g, x, o: g.expand_as(x) / (x.numel() - 1), lambda g, x, o: g.expand_as(x) / x.numel()),
    ("one_entry_off_in_100x100_weight_grad", lambda x, w: x @ w,
     _one_entry_off, lambda g, x, w, o: (g @ w.T, x.T @ g)),
    ("tanh_derivative_of_input", torch.tanh,
     lambda g, x, o: g * (1 - x * x), lambda g, x, o: g * (1 - o * o)),
    ("softmax_missing_term", lambda x: torch.softmax(x, dim=-1),
     lambda g, x, o: g * o, lambda g, x, o: o * (g - (g * o).sum(-1, keepdim=True))),
    ("logsumexp_unnormalised", lambda x: torch.logsumexp(x, dim=1),
     lambda g, x, o: g[:, None] * torch.exp(x), lambda g, x, o: g[:, None] * torch.exp(x - o[:, None])),
    ("mse_missing_mean", lambda a, b: F.mse_loss(a, b),
     lambda g, a, b, o: (2 * (a - b) * g, -2 * (a - b) * g),
     lambda g, a, b, o: (2 * (a - b) * g / a.numel(), -2 * (a - b) * g / a.numel())),
    ("matmul_input_grad_untransposed", lambda x, w: x @ w,
     lambda g, x, w, o: (g @ w, x.T @ g), lambda g, x, w, o: (g @ w.T, x.T @ g)),
    ("ignores_upstream_gradient", lambda x: (x * x).sum(),
     lambda g, x, o: 2 * x, lambda g, x, o: 2 * x * g),
    ("softplus_beta_missing", lambda x: F.softplus(x, beta=2.0),
     lambda g, x, o: g * torch.sigmoid(x), _softplus2_grad),
    ("atan2_partials_swapped", torch.atan2,
     lambda g, y, x, o: (-g * y / _r2(y, x), g * x / _r2(y, x)),
     lambda g, y, x, o: (g * x / _r2(y, x), -g * y / _r2(y, x))),
    ("cumsum_backward_not_reversed", lambda x: torch.cumsum(x, 0),
     lambda g, x, o: torch.cumsum(g, 0), lambda g, x, o: torch.cumsum(g.flip(0), 0).flip(0)),
    ("sort_backward_not_permuted", lambda x: torch.sort(x, dim=-1).values,
     lambda g, x, o: g, _sort_grad),
    ("hardtanh_grad_leaks_past_bounds", lambda x: F.hardtanh(x),
     lambda g, x, o: g * (x < 1), lambda g, x, o: g * ((x > -1) & (x < 1))),
    ("floor_straight_through", torch.floor,
     lambda g, x, o: g, lambda g, x, o: torch.zeros_like(g)),
    ("where_grad_to_both_branches", lambda x: torch.where(x > 0, x * x, 3 * x),
     lambda g, x, o: g * (2 * x + 3), lambda g, x, o: g * torch.where(x > 0, 2 * x, torch.full_like(x, 3.0))),
    ("layer_norm_backward_missing_mean_term", _layer_norm,
     lambda g, x, o: _layer_norm_grad(g, x, o, with_mean=False), _layer_norm_grad),
    ("gather_backward_overwrites_repeated_indices", lambda x, idx: torch.gather(x, 0, idx),
     lambda g, x, idx, o: _gather_grad(g, x, idx, o, accumulate=False), _gather_grad),
    ("conv_weight_grad_kernel_flipped", lambda x, w: F.conv2d(x, w),
     lambda g, x, w, o: _conv_grads(g, x, w, o, flip=True), _conv_grads),
    ("gelu_tanh_approximation_in_backward", lambda x: F.gelu(x),
     _gelu_tanh_grad, _gelu_exact_grad),
    # shared weight of a batched matmul: its gradient summed over the batch, not taken from the first member
    ("batched_matmul_weight_grad_from_first_batch", lambda a, w: a @ w,
     lambda g, a, w, o: (g @ w.mT, (a.mT @ g)[0]), lambda g, a, w, o: (g @ w.mT, (a.mT @ g).sum(0))),
    ("softmax_backward_sums_over_wrong_dim", lambda x: torch.softmax(x, dim=1),
     lambda g, x, o: o * (g - (g * o).sum(0, keepdim=True)),
     lambda g, x, o: o * (g - (g * o).sum(1, keepdim=True))),
    # g without [:, None]: on a square input it broadcasts along the wrong dim instead of raising
    ("logsumexp_upstream_not_unsqueezed", lambda x: torch.logsumexp(x, dim=1),
     lambda g, x, o: g * torch.exp(x - o[:, None]), lambda g, x, o: g[:, None] * torch.exp(x - o[:, None])),
    ("cumsum_backward_exclusive", lambda x: torch.cumsum(x, -1),
     lambda g, x, o: g.flip(-1).cumsum(-1).flip(-1) - g, lambda g, x, o: g.flip(-1).cumsum(-1).flip(-1)),
    # right for a batch of one row: the mean of the upstream gradient over the whole batch, not per row
    ("centering_backward_right_only_for_batch_1", lambda x: x - x.mean(-1, keepdim=True),
     lambda g, x, o: g - g.sum() / x.shape[-1], lambda g, x, o: g - g.sum(-1, keepdim=True) / x.shape[-1]),
    ("abs_grad_zero_where_input_negative", torch.abs,
     lambda g, x, o: g * (x > 0), lambda g, x, o: g * torch.sign(x)),
]

for _name, _forward, _wrong, _right in BUGS:
    globals()[f"bug_{_name}"] = make(f"bug_{_name}", _forward, _wrong)
    globals()[f"ok_{_name}"] = make(f"ok_{_name}", _forward, _right)


class Linear(torch.nn.Module):
    """An nn.Module whose forward uses a correct custom Function: the module convention, checked as a twin."""

    def __init__(self, n_in: int = 3, n_out: int = 2):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(n_in, n_out))
        self.bias = torch.nn.Parameter(torch.zeros(n_out))

    def forward(self, x):
        return globals()["ok_bias_grad_from_one_row"].apply(x, self.weight, self.bias)
