"""Losses and nn layers written as IR over primitive ops (torch's formulas), for the symbolic engine to lower
like any expression: ``_LOSS_REWRITES``/``_NN_REWRITES`` map an op name to a function of its IR arguments and
parameters, and ``_patch_map`` is the index map of a conv/pool's windows (a ``gather_map`` step)."""

from __future__ import annotations

import numpy as np

from ..expr.ir import Call, Const


# ---- losses written as IR over primitive ops (torch's formulas), then lowered like any expression ----
def _c(name, *args, **params):
    return Call(name, tuple(args), tuple(params.items()))


def _reduced(loss, reduction: str, shape=()):
    if reduction == "none":
        return loss
    if reduction == "batchmean":  # kl_div: sum over all entries / size of dim 0 (torch's recommended form)
        return _c("div", _c("sum", loss, dim=None, keepdim=False), Const(float(shape[0] if shape else 1)))
    return _c("mean" if reduction == "mean" else "sum", loss, dim=None, keepdim=False)


def _kl_div(x, t, reduction, log_target, shape):
    pointwise = _c("mul", _c("exp", t), _c("sub", t, x)) if log_target else \
        _c("sub", _c("xlogy", t, t), _c("mul", t, x))
    return _reduced(pointwise, reduction, shape)


def _norm_keep(x, p, dim):
    return _c("norm", x, p=float(p), dim=dim, keepdim=True)


def _unit(x, p, dim, eps):
    """x over its norm clamped at eps: F.normalize, and both halves of F.cosine_similarity."""
    return _c("div", x, _c("maximum", _norm_keep(x, p, dim), Const(eps)))


_LOSS_REWRITES = {
    "l1_loss": lambda a, b, reduction, shape: _reduced(_c("abs", _c("sub", a, b)), reduction),
    "smooth_l1_loss": lambda a, b, reduction, beta, shape: _reduced(_c("smooth_l1_piece", _c("sub", a, b), beta=beta),
                                                             reduction) if beta > 0 else
    _reduced(_c("abs", _c("sub", a, b)), reduction),
    "huber_loss": lambda a, b, reduction, delta, shape: _reduced(_c("huber_piece", _c("sub", a, b), delta=delta),
                                                                 reduction),
    "binary_cross_entropy_with_logits": lambda x, y, reduction, shape: _reduced(
        _c("sub", _c("logaddexp", Const(0.0), x), _c("mul", x, y)), reduction),
    "kl_div": _kl_div,
    "cosine_similarity": lambda a, b, dim, eps, shape: _c(
        "sum", _c("mul", _unit(a, 2, dim, eps), _unit(b, 2, dim, eps)), dim=dim, keepdim=False),
    "normalize": lambda x, p, dim, eps, shape: _unit(x, p, dim, eps),
}


def _layer_norm(x, normalized_shape, weight, bias, eps, shapes, rms=False):
    dims = tuple(range(-len(normalized_shape), 0))
    if rms:
        scale = _c("rsqrt", _c("add", _c("mean", _c("pow", x, Const(2.0)), dim=dims, keepdim=True), Const(eps)))
        out = _c("mul", x, scale)
    else:
        mean = _c("mean", x, dim=dims, keepdim=True)
        var = _c("var", x, dim=dims, correction=0.0, keepdim=True)
        out = _c("mul", _c("sub", x, mean), _c("rsqrt", _c("add", var, Const(eps))))
    if not (isinstance(weight, Const) and weight.value == 1.0):
        out = _c("mul", out, weight)
    if bias is not None and not (isinstance(bias, Const) and bias.value == 0.0):
        out = _c("add", out, bias)
    return out


def _sdpa(q, k, v, is_causal, scale, shapes):
    s = _c("matmul", q, _c("mT", k))
    s = _c("mul", s, Const(scale or 1.0 / float(np.sqrt(shapes[0][-1]))))
    if is_causal:
        s = _c("causal_fill", s)
    return _c("matmul", _c("softmax", s, dim=-1), v)


_NN_REWRITES = {
    "linear": lambda x, w, b, shapes: (lambda y: y if isinstance(b, Const) and b.value == 0.0 else _c("add", y, b))(
        _c("matmul", x, _c("mT", w) if len(shapes[1]) == 2 else w)),
    "layer_norm": lambda x, weight, bias, normalized_shape, eps, shapes: _layer_norm(x, normalized_shape, weight, bias,
                                                                                    eps, shapes),
    "rms_norm": lambda x, weight, normalized_shape, eps, shapes: _layer_norm(x, normalized_shape, weight, None, eps,
                                                                            shapes, rms=True),
    "scaled_dot_product_attention": _sdpa,
}


def _patch_map(x_shape, p):
    """Flat indices of every window entry of a conv/pool (-1 in the padding), as (N, G, positions, Cg * K)."""
    from ..expr.shapes import conv_out, nd

    d = len(x_shape) - 2
    kernel, stride, padding, dilation = (nd(p[k], d) for k in ("kernel", "stride", "padding", "dilation"))
    out = conv_out(x_shape[2:], kernel, stride, padding, dilation)
    ids = np.arange(int(np.prod(x_shape))).reshape(x_shape)
    ids = np.pad(ids, [(0, 0), (0, 0)] + [(q, q) for q in padding], constant_values=-1)
    axes = [np.arange(o)[:, None] * st + np.arange(k)[None, :] * dl for o, k, st, dl in
            zip(out, kernel, stride, dilation)]  # (out, kernel) per spatial dim
    # N, C, O, K in 1-D; N, C, Ho, Wo, kh, kw in 2-D
    win = ids[:, :, axes[0]] if d == 1 else ids[:, :, axes[0][:, None, :, None], axes[1][None, :, None, :]]
    n, c = x_shape[:2]
    g = p["groups"]
    win = win.reshape(n, g, c // g, int(np.prod(out)), int(np.prod(kernel)))
    return np.transpose(win, (0, 1, 3, 2, 4)).reshape(n, g, int(np.prod(out)), -1)


def _conv(x, w, b, stride, padding, dilation, groups, shapes, d):
    from ..expr.shapes import conv_out

    n, o = shapes[0][0], shapes[1][0]
    kernel = shapes[1][2:]
    out = conv_out(shapes[0][2:], kernel, stride, padding, dilation)
    patches = _c("patches", x, kernel=tuple(kernel), stride=stride, padding=padding, dilation=dilation,
                 groups=groups, fill=0.0)
    weight = _c("reshape", w, shape=(groups, o // groups, -1))
    y = _c("einsum", patches, weight, equation="ngld,god->ngol")
    y = _c("reshape", y, shape=(n, o, *out))
    if isinstance(b, Const) and b.value == 0.0:
        return y
    return _c("add", y, _c("reshape", b, shape=(o,) + (1,) * d))


def _pool(x, kernel_size, stride, padding, shapes, how):
    from ..expr.shapes import conv_out

    n, c = shapes[0][:2]
    stride = stride or kernel_size
    out = conv_out(shapes[0][2:], kernel_size, stride, padding, (1,))
    fill = -np.inf if how == "amax" else 0.0
    patches = _c("patches", x, kernel=tuple(kernel_size), stride=tuple(stride), padding=tuple(padding),
                 dilation=(1,), groups=c, fill=fill)
    pooled = _c(how, patches, dim=-1, keepdim=False)
    return _c("reshape", pooled, shape=(n, c, *out))


_NN_REWRITES.update({
    "conv1d": lambda x, w, b, stride, padding, dilation, groups, shapes: _conv(x, w, b, stride, padding, dilation,
                                                                               groups, shapes, 1),
    "conv2d": lambda x, w, b, stride, padding, dilation, groups, shapes: _conv(x, w, b, stride, padding, dilation,
                                                                               groups, shapes, 2),
    "avg_pool2d": lambda x, kernel_size, stride, padding, shapes: _pool(x, kernel_size, stride, padding, shapes,
                                                                        "mean"),
    "max_pool2d": lambda x, kernel_size, stride, padding, shapes: _pool(x, kernel_size, stride, padding, shapes,
                                                                        "amax"),
})
