"""Higher derivatives of the function under test (torch ops or a user's impl) by torch: reverse-over-reverse
(double backward) Hessian-vector products, reverse-over-reverse-over-reverse third derivatives, and
forward-over-reverse (``torch.func.jvp`` of ``torch.func.vjp``) Hessian-vector products."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from .autograd import _cotangent, _no_tf32, input_tensor, to_numpy, to_tensor


def reverse(fn: Callable, inputs: dict, grad_vars, cotangent, directions: list[dict], dtype: str, device: str,
            var_dtypes: dict | None = None, zero=(False, False)) -> dict:
    """d/dx <..<<grad <c, fn>, v>, w>..> by repeated backward: H v for one direction, D3[c, v, w] for two.
    ``zero[k]``: the exact k-th derivative (H v, D3) is 0, so where the derivative before it no longer depends
    on the inputs (the gradient of a linear function has no graph) it is 0; otherwise torch's error for it
    propagates (a backward run outside autograd, whose result cannot be differentiated, is a finding)."""
    with _no_tf32():
        tensors = {n: input_tensor(v, dtype, device, n in grad_vars, (var_dtypes or {}).get(n))
                   for n, v in inputs.items()}
        leaves = [tensors[n] for n in grad_vars]
        out = fn(**tensors)
        grads = _grad(out, leaves, _cotangent(cotangent, out, dtype, device), True, False)
        for k, d in enumerate(directions):
            terms = [(g * to_tensor(d[n], dtype, device).to(g.dtype)).sum() for n, g in zip(grad_vars, grads)]
            if not zero[k] and not any(t.requires_grad for t in terms):
                raise _no_graph(k)
            grads = _grad(sum(terms), leaves, None, k + 1 < len(directions), zero[k])
    return {n: to_numpy(g) for n, g in zip(grad_vars, grads)}


def _no_graph(k: int):
    """torch's own error here ('element 0 of tensors does not require grad') names no cause: say what it is."""
    from .impl import ImplFailure

    which = ("first-order gradient", "double backward") if k == 0 else ("second derivative", "third-order backward")
    return ImplFailure(f"the {which[0]} cannot be differentiated: it has no graph (its backward ran under "
                       "torch.no_grad(), detached its result, or is @once_differentiable), yet the higher "
                       "derivative is not 0", "not_differentiable", which[1])


def _grad(scalar, leaves, upstream, create_graph: bool, zero: bool):
    if zero and not (isinstance(scalar, torch.Tensor) and scalar.requires_grad):
        return [torch.zeros_like(leaf) for leaf in leaves]
    grads = torch.autograd.grad(scalar, leaves, upstream, create_graph=create_graph, allow_unused=True)
    # torch's double backward of abs gives a ZeroTensor, which has no numpy form
    return [torch.zeros_like(leaf) if g is None or g._is_zerotensor() else g for leaf, g in zip(leaves, grads)]


def forward_over_reverse(fn: Callable, inputs: dict, grad_vars, cotangent, direction: dict, dtype: str,
                         device: str, var_dtypes: dict | None = None) -> dict:
    """H v as the forward-mode derivative (``torch.func.jvp``) of the VJP (``torch.func.vjp``) along v; raises
    where the function does not support forward mode (a classic autograd.Function without ``setup_context``)."""
    with _no_tf32():
        fixed = {n: input_tensor(v, dtype, device, False, (var_dtypes or {}).get(n)) for n, v in inputs.items()
                 if n not in grad_vars}
        primals = tuple(to_tensor(inputs[n], dtype, device) for n in grad_vars)
        tangents = tuple(to_tensor(direction[n], dtype, device) for n in grad_vars)
        cot = to_tensor(cotangent, dtype, device)  # made outside the transforms (they refuse requires_grad_)

        def call(*xs):
            return fn(**fixed, **dict(zip(grad_vars, xs)))

        def gradient(*xs):
            out, pull = torch.func.vjp(call, *xs)
            return pull(cot.to(out.dtype).expand(out.shape))

        _, hv = torch.func.jvp(gradient, primals, tangents)
    return {n: to_numpy(h) if h is not None else np.zeros(np.shape(inputs[n])) for n, h in zip(grad_vars, hv)}
