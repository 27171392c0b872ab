"""Forward values, rounding budgets and exact adjoints of the symbolic engine's non-elementwise steps.

``Program._step`` and ``Program._back`` (``symbolic``) handle elementwise ops through sympy's derivatives and
hand every other step here: ``step`` computes a step's value and error bound (units of u), ``back`` yields each
input's adjoint and its error bound. The families: reductions (sum, mean, logsumexp), reductions and scans with
exact adjoints (amax/amin, prod, cumsum, cumprod, sort), index maps (shape ops, patches, take), einsum, matmul
and transpose. The error-term helpers (``rss``, ``l2``, ``accumulation``) are shared with the elementwise rules.

Why it is over 400 lines: it is a table of rules, one forward/budget/adjoint pair per step family (sum/mean,
logsumexp, amax/amin, prod, cumsum, cumprod, sort, index maps, take, einsum, matmul), each short and read beside
its pair and the two dispatchers; a split by family would give several small modules that share every helper.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..expr.shapes import matmul_shape
from . import sympy_eval

KINK_SAFETY = 16.0  # entries this many rounding bounds from a kink are treated as sitting on it


def rss(*terms):
    """Root-sum-square of error terms: independent rounding errors add in quadrature (hypot: no underflow).
    Used across the many terms of sums and matmuls; the few terms of one elementwise op add worst-case.
    The result has the terms' broadcast shape even when every term is zero."""
    shape = np.broadcast_shapes(*(np.shape(t) for t in terms))
    total = None
    for t in terms:
        if np.any(t):  # hypot(0, t) is |t| exactly (C99 F.10.4.3): the first term needs no hypot
            total = np.abs(np.broadcast_to(t, shape), dtype=np.float64) if total is None else np.hypot(total, t)
    return np.zeros(shape) if total is None else total


def l2(x, axis, keepdims: bool = False):
    """2-norm along ``axis``, scaled so that squares of tiny or huge entries neither underflow nor overflow."""
    x = np.abs(np.asarray(x, dtype=float))
    m = np.max(x, axis=axis, keepdims=True) if x.size else np.zeros(())
    m = np.where((m > 0) & np.isfinite(m), m, 1.0)
    out = np.sqrt(np.sum(np.square(x / m), axis=axis, keepdims=True)) * m
    return out if keepdims else np.squeeze(out, axis=axis)


def l2_matmul(a, b):
    """sqrt(|a|**2 @ |b|**2), the 2-norms of the terms of each entry of a @ b, scaled like ``l2``."""
    sa = float(np.max(np.abs(a), initial=0.0)) or 1.0
    sb = float(np.max(np.abs(b), initial=0.0)) or 1.0
    return np.sqrt(np.matmul(np.square(a / sa), np.square(b / sb))) * (sa * sb)


def accumulation(k: int, norm, total):
    """Rounding of a k-term sum, in units of u, from the sum of squared terms and the sum itself.

    A sequential sum rounds each partial sum S_j once, so its error is about u*sqrt(sum_j S_j**2): for terms
    of random sign that is sqrt(k/2)*||t||_2, for terms of one sign sqrt(k/3)*|sum|. sqrt(k)*hypot(||t||_2,
    sum) bounds both; pairwise and blocked sums (torch, BLAS) stay well below it. ``norm`` is ||t||_2.
    """
    if k <= 1:
        return 0.0
    return np.sqrt(k) * np.hypot(norm, total)


@dataclass
class Instr:
    op: str
    args: tuple[int, ...]
    params: dict
    shape: tuple[int, ...]


def step(prog, i: int, ins: Instr, fwd, vals, errs, kink_u, with_err):
    """Value and error bound of a non-elementwise step ``i`` (``Program._step`` for everything else)."""
    if ins.op in ("sum", "mean"):
        x, e = vals[0], errs[0]
        n = _count(np.shape(x), ins.params["dims"])
        axes, keep = ins.params["dims"], ins.params["keepdim"]
        total = np.sum(x, axis=axes, keepdims=keep)
        if not with_err:  # values only (finite differences, the training loop between budgets)
            return (total / n if ins.op == "mean" else total), 0.0
        err = rss(l2(np.broadcast_to(e, np.shape(x)), axes, keep), accumulation(n, l2(x, axes, keep), total))
        if ins.op == "mean":
            total = total / n
            err = rss(err / n, total)
        return total, err
    if ins.op == "lse":
        x, e = vals[0], errs[0]
        dims, keep = ins.params["dims"], ins.params["keepdim"]
        m = np.max(x, axis=dims, keepdims=True, initial=-np.inf)  # initial: softmax over an empty dim is empty
        m = np.where(np.isfinite(m), m, 0.0)
        s = np.sum(np.exp(x - m), axis=dims, keepdims=True)
        v = m + np.log(s)
        if not with_err:
            return (v if keep else np.squeeze(v, axis=dims)), 0.0
        q = np.exp(x - v)
        n = _count(np.shape(x), dims)
        err = rss(l2(q * e, dims, True), accumulation(n, l2(q, dims, True), 1.0), sympy_eval.FUNCTION_ULPS,
                  m, v)
        if not keep:
            v, err = np.squeeze(v, axis=dims), np.squeeze(err, axis=dims)
        return v, err
    if ins.op == "take":
        x = np.asarray(vals[0], dtype=float)
        m = _take_map(ins.params["how"], ins.params["dim"], x.shape, np.asarray(vals[1]).astype(np.int64))
        fwd.aux[i] = {"map": m}
        e = np.broadcast_to(errs[0], x.shape).reshape(-1) if with_err else None
        return x.reshape(-1)[m], (e[m] if with_err else 0.0)
    if ins.op == "einsum":
        return _einsum_err(ins.params["equation"], [np.asarray(v, float) for v in vals], errs, with_err)
    if ins.op == "gather_map":
        shapes = [prog.slots[a].shape for a in ins.args]
        m = ins.params["map"]
        fill = ins.params.get("fill", 0.0)
        flat = np.concatenate([np.broadcast_to(v, sh).reshape(-1) for v, sh in zip(vals, shapes)] + [[fill]])
        if not with_err:
            return flat[m], 0.0
        ferr = np.concatenate([np.broadcast_to(e, sh).reshape(-1) for e, sh in zip(errs, shapes)] + [[0.0]])
        return flat[m], ferr[m]  # index -1 picks the appended 0: an exact zero
    if ins.op in _STRUCTURED:
        return _STRUCTURED[ins.op][0](prog, i, ins, vals, errs, fwd, kink_u)
    if ins.op == "matmul":
        (a, b), (ea, eb) = vals, errs
        value = np.matmul(a, b)
        if not with_err:
            return value, 0.0
        k = np.shape(a)[-1]
        err = accumulation(k + 1, l2_matmul(a, b), value)
        if np.any(eb):
            err = rss(err, l2_matmul(a, np.broadcast_to(eb, np.shape(b))))
        if np.any(ea):
            err = rss(err, l2_matmul(np.broadcast_to(ea, np.shape(a)), b))
        return value, err
    if ins.op == "transpose":
        return np.transpose(vals[0]), np.transpose(errs[0]) if np.ndim(errs[0]) else errs[0]
    raise NotImplementedError(ins.op)  # pragma: no cover


def back(prog, i: int, ins: Instr, fwd, vals, shapes, g, ge, with_err, side):
    """Yield (input slot, (adjoint, error bound)) of a non-elementwise step (``Program._back``'s rest)."""
    if ins.op in ("sum", "mean"):
        x_shape = shapes[0]
        dims, keep = ins.params["dims"], ins.params["keepdim"]
        ga, gae = _expand(g, x_shape, dims, keep), _expand(ge, x_shape, dims, keep)
        if ins.op == "mean":
            n = _count(x_shape, dims)
            ga = ga / n
            gae = rss(gae / n, ga)
        yield ins.args[0], (ga, gae)
        return
    if ins.op == "lse":
        x = vals[0]
        dims, keep = ins.params["dims"], ins.params["keepdim"]
        v = _expand(fwd.values[i], x.shape, dims, keep)
        ve = _expand(fwd.errs[i], x.shape, dims, keep)
        q = np.exp(x - v)
        ga, gae = _expand(g, x.shape, dims, keep), _expand(ge, x.shape, dims, keep)
        contrib = ga * q
        qe = q * rss(np.broadcast_to(fwd.errs[ins.args[0]], x.shape), ve, x, v, sympy_eval.FUNCTION_ULPS)
        yield ins.args[0], (contrib, rss(np.abs(q) * gae, np.abs(ga) * qe, contrib))
        return
    if ins.op == "gather_map":
        yield from _gather_map_back(ins, shapes, g, ge, with_err)
        return
    if ins.op == "take":
        back = Instr("gather_map", ins.args[:1], {"map": fwd.aux[i]["map"]}, ins.shape)
        yield from _gather_map_back(back, shapes[:1], g, ge, with_err)
        return
    if ins.op == "einsum":
        yield from _einsum_back(ins, [np.asarray(v, float) for v in vals], [fwd.errs[a] for a in ins.args],
                                shapes, g, ge, with_err)
        return
    if ins.op in _STRUCTURED:
        yield ins.args[0], _STRUCTURED[ins.op][1](prog, i, ins, vals[0], fwd, g, ge, with_err, side)
        return
    if ins.op == "matmul":
        yield from _matmul_back(ins, vals, [fwd.errs[a] for a in ins.args], shapes, g, ge, with_err,
                                [prog.slots[a].active for a in ins.args])
        return
    if ins.op == "transpose":
        yield ins.args[0], (np.transpose(g), np.transpose(ge) if np.ndim(ge) else ge)
        return
    raise NotImplementedError(ins.op)  # pragma: no cover


def _count(shape, dims) -> int:
    return math.prod(shape[d] for d in dims) if dims else 1  # np.prod of a list would cost an array


def _expand(g, x_shape, dims, keepdim):
    """Broadcast a reduced adjoint back over the reduced dims."""
    g = np.asarray(g, dtype=float)
    if g.ndim == 0:  # a scalar (e.g. the 0.0 error of a pass without error budgets) broadcasts as it is
        return np.broadcast_to(g, x_shape)
    if not keepdim and dims and np.ndim(g) != len(x_shape):
        g = np.expand_dims(g, axis=dims)
    return np.broadcast_to(g, x_shape)


def _unbroadcast(contrib, err, shape, with_err):
    """Sum an adjoint over the axes that broadcasting added or stretched, back to ``shape``."""
    contrib = np.asarray(contrib, dtype=float)
    if contrib.shape == tuple(shape):
        return contrib, err
    lead = contrib.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(lead + j for j, s in enumerate(shape) if s == 1 and contrib.shape[lead + j] != 1)
    n = int(np.prod([contrib.shape[a] for a in axes])) if axes else 1
    total = np.sum(contrib, axis=axes).reshape(shape)
    if not with_err:
        return total, 0.0
    err = rss(l2(np.broadcast_to(err, contrib.shape), axes).reshape(shape),
              accumulation(n, l2(contrib, axes).reshape(shape), total))
    return total, err


def _matmul_back(ins: Instr, vals, errs, shapes, g, ge, with_err, need=(True, True)):
    """Adjoints of numpy-style matmul, 1-D operands and batch broadcasting included. An operand not in ``need``
    (one that depends on no differentiated var: every caller drops its adjoint) gets zeros, not computed."""
    a, b = vals
    ea, eb = errs
    sa, sb = shapes
    a2 = a[None, :] if a.ndim == 1 else a
    b2 = b[:, None] if b.ndim == 1 else b
    out2 = matmul_shape(a2.shape, b2.shape)
    g2 = np.reshape(g, out2)
    ge2 = np.reshape(np.broadcast_to(ge, np.shape(g)), out2) if with_err else 0.0
    bt, at = np.swapaxes(b2, -1, -2), np.swapaxes(a2, -1, -2)
    ga = np.matmul(g2, bt) if need[0] else np.zeros(a2.shape)
    gb = np.matmul(at, g2) if need[1] else np.zeros(b2.shape)
    ea_ = gb_err = 0.0
    if with_err:
        ge_full = np.broadcast_to(ge2, g2.shape)
        m, n = b2.shape[-1], a2.shape[-2]
        if need[0]:
            ea_ = rss(accumulation(m + 1, l2_matmul(g2, bt), ga), l2_matmul(ge_full, bt))
        if need[1]:
            gb_err = rss(accumulation(n + 1, l2_matmul(at, g2), gb), l2_matmul(at, ge_full))
        if np.any(eb) and need[0]:  # operand errors in the operands' promoted (2-D) layout
            eb2 = np.reshape(np.broadcast_to(eb, np.shape(b)), np.shape(b2))
            ea_ = rss(ea_, l2_matmul(g2, np.swapaxes(eb2, -1, -2)))
        if np.any(ea) and need[1]:
            ea2 = np.reshape(np.broadcast_to(ea, np.shape(a)), np.shape(a2))
            gb_err = rss(gb_err, l2_matmul(np.swapaxes(ea2, -1, -2), g2))
        ea_ = ea_ if need[0] else np.zeros(a2.shape)
        gb_err = gb_err if need[1] else np.zeros(b2.shape)
    ga, ea_ = _unbroadcast(ga, ea_, a2.shape, with_err)
    gb, gb_err = _unbroadcast(gb, gb_err, b2.shape, with_err)
    yield ins.args[0], (ga.reshape(sa), np.reshape(ea_, sa) if with_err else 0.0)
    yield ins.args[1], (gb.reshape(sb), np.reshape(gb_err, sb) if with_err else 0.0)


# ---- reductions and scans with exact adjoints: amax/amin (ties share equally, as torch), prod, cumsum, cumprod,
# sort (a permutation; tied values may go either way). Each is (forward, backward) over one input. ----
def _near_ties(v, x, e, ev, kink_u):
    """Entries within rounding distance of ``v`` (broadcast), or exactly equal to it."""
    if kink_u is None:
        return x == v
    return (np.abs(v - x) <= KINK_SAFETY * kink_u * (np.abs(e) + np.abs(ev)) + 1e-300) | (x == v)


def _amax_fwd(prog, i, ins, vals, errs, fwd, kink_u):
    x = np.asarray(vals[0], dtype=float)
    e = np.broadcast_to(errs[0], x.shape)
    dims, keep = ins.params["dims"], ins.params["keepdim"]
    sgn = 1.0 if ins.op == "amax" else -1.0
    if not dims:
        fwd.aux[i] = {"d": np.ones(x.shape), "near": np.zeros(x.shape, bool), "order": np.zeros(x.shape)}
        return x, e
    v = sgn * np.max(sgn * x, axis=dims, keepdims=True)
    exact = x == v
    d = exact / np.sum(exact, axis=dims, keepdims=True)
    ev = np.max(np.where(exact, e, 0.0), axis=dims, keepdims=True)
    near = _near_ties(v, x, e, ev, kink_u)
    near = near & (np.sum(near, axis=dims, keepdims=True) > 1)  # a tie needs two
    err = np.max(np.where(near | exact, e, 0.0), axis=dims, keepdims=True)
    fwd.aux[i] = {"d": d, "near": near, "order": exact}
    if near.any() and prog.slots[i].active:
        fwd.kinks[i] = near
    if not keep:
        v, err = np.squeeze(v, axis=dims), np.squeeze(err, axis=dims)
    return v, err


def _amax_back(prog, i, ins, x, fwd, g, ge, with_err, side):
    dims, keep = ins.params["dims"], ins.params["keepdim"]
    aux = fwd.aux[i]
    ga, gae = _expand(g, np.shape(x), dims, keep), _expand(ge, np.shape(x), dims, keep)
    d = aux["d"]
    if side:  # a lower precision may pick any of the tied entries: each gets nothing or everything
        d = np.where(aux["near"], 1.0 if side > 0 else 0.0, d)
    contrib = ga * d
    if not with_err:
        return contrib, 0.0
    reach = np.where(aux["near"], 1.0, d)
    return contrib, gae * reach + np.abs(contrib)


def _prod_fwd(prog, i, ins, vals, errs, fwd, kink_u):
    x = np.asarray(vals[0], dtype=float)
    e = np.broadcast_to(errs[0], x.shape)
    dims, keep = ins.params["dims"], ins.params["keepdim"]
    v = np.prod(x, axis=dims, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.sum(e / np.abs(x), axis=dims, keepdims=True) + (_count(x.shape, dims) - 1)
    err = np.abs(v) * rel
    fwd.aux[i] = {"v": v, "rel": rel}
    if not keep:
        v, err = np.squeeze(v, axis=dims), np.squeeze(err, axis=dims)
    return v, err


def _prod_back(prog, i, ins, x, fwd, g, ge, with_err, side):
    """torch's rule without zeros: grad * prod / x (an input with a zero makes the reference non-finite: skipped)."""
    dims, keep = ins.params["dims"], ins.params["keepdim"]
    aux = fwd.aux[i]
    ga, gae = _expand(g, np.shape(x), dims, keep), _expand(ge, np.shape(x), dims, keep)
    ratio = aux["v"] / x
    contrib = ga * ratio
    if not with_err:
        return contrib, 0.0
    e = np.broadcast_to(fwd.errs[ins.args[0]], np.shape(x))
    return contrib, np.abs(contrib) * (aux["rel"] + e / np.abs(x) + 2) + gae * np.abs(ratio)


def _scan_err(terms, errs, axis, reverse=False):
    """Rounding of every prefix sum (or suffix sum) along ``axis``, as ``accumulation`` charges a k-term sum."""
    flip = (lambda a: np.flip(a, axis)) if reverse else (lambda a: a)
    t, e = flip(np.asarray(terms, float)), flip(np.broadcast_to(errs, np.shape(terms)))
    total = np.cumsum(t, axis=axis)
    k = np.arange(1, t.shape[axis] + 1).reshape([-1 if d == axis % t.ndim else 1 for d in range(t.ndim)])
    acc = np.where(k > 1, np.sqrt(k) * np.hypot(np.sqrt(np.cumsum(t * t, axis=axis)), total), 0.0)
    return flip(total), flip(rss(np.sqrt(np.cumsum(e * e, axis=axis)), acc))


def _cumsum_fwd(prog, i, ins, vals, errs, fwd, kink_u):
    return _scan_err(vals[0], errs[0], ins.params["axis"])


def _cumsum_back(prog, i, ins, x, fwd, g, ge, with_err, side):
    """The adjoint of a prefix sum is the suffix sum of the upstream gradient."""
    g = np.broadcast_to(g, np.shape(x))
    total, err = _scan_err(g, ge if with_err else 0.0, ins.params["axis"], reverse=True)
    return total, (err if with_err else 0.0)


def _cumprod_fwd(prog, i, ins, vals, errs, fwd, kink_u):
    x = np.asarray(vals[0], dtype=float)
    axis = ins.params["axis"]
    e = np.broadcast_to(errs[0], x.shape)
    v = np.cumprod(x, axis=axis)
    k = np.arange(1, x.shape[axis] + 1).reshape([-1 if d == axis else 1 for d in range(x.ndim)])
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.cumsum(e / np.abs(x), axis=axis) + (k - 1)
    fwd.aux[i] = {"v": v, "rel": rel}
    return v, np.abs(v) * rel


def _cumprod_back(prog, i, ins, x, fwd, g, ge, with_err, side):
    """torch's rule without zeros: suffix sums of grad * output, over x."""
    axis, aux = ins.params["axis"], fwd.aux[i]
    g = np.broadcast_to(g, np.shape(x))
    terms = g * aux["v"]
    term_err = (np.abs(terms) * (aux["rel"] + 1) + np.broadcast_to(ge, np.shape(x)) * np.abs(aux["v"])) \
        if with_err else 0.0
    total, err = _scan_err(terms, term_err, axis, reverse=True)
    contrib = total / x
    if not with_err:
        return contrib, 0.0
    e = np.broadcast_to(fwd.errs[ins.args[0]], np.shape(x))
    return contrib, err / np.abs(x) + np.abs(contrib) * (e / np.abs(x) + 1)


def _sort_fwd(prog, i, ins, vals, errs, fwd, kink_u):
    x = np.asarray(vals[0], dtype=float)
    axis = ins.params["axis"]
    e = np.broadcast_to(errs[0], x.shape)
    idx = np.argsort(-x if ins.params["descending"] else x, axis=axis, kind="stable")
    v, ev = np.take_along_axis(x, idx, axis), np.take_along_axis(e, idx, axis)
    # tie groups along the sorted axis: a new group starts where neighbours are further apart than rounding
    gap = np.abs(np.diff(v, axis=axis))
    tol = KINK_SAFETY * (kink_u or 0.0) * (np.take(ev, range(1, v.shape[axis]), axis) +
                                           np.take(ev, range(v.shape[axis] - 1), axis))
    tied = (gap <= tol + 1e-300) | (gap == 0)
    starts = np.concatenate([np.ones_like(np.take(tied, [0], axis)), ~tied], axis=axis) if v.shape[axis] > 1 \
        else np.ones(v.shape, bool)
    group = np.cumsum(starts, axis=axis)
    fwd.aux[i] = {"idx": idx, "group": group, "order": idx}
    near = np.zeros(x.shape, bool)
    if v.shape[axis] > 1:
        in_tie = np.concatenate([np.zeros_like(np.take(tied, [0], axis)), tied], axis=axis) | \
            np.concatenate([tied, np.zeros_like(np.take(tied, [0], axis))], axis=axis)
        np.put_along_axis(near, idx, in_tie, axis)
    if near.any() and prog.slots[i].active:
        fwd.kinks[i] = near
    return v, ev


def _group_extreme(g, group, axis, side):
    """Within each tie group along ``axis``, every entry replaced by the group's min (side < 0) or max."""
    gm, grp = np.moveaxis(np.array(g, dtype=float), axis, -1), np.moveaxis(group, axis, -1)
    out = gm.copy()
    for row in np.ndindex(gm.shape[:-1]):
        for k in np.unique(grp[row]):
            sel = grp[row] == k
            if sel.sum() > 1:
                out[row][sel] = gm[row][sel].max() if side > 0 else gm[row][sel].min()
    return np.moveaxis(out, -1, axis)


def _sort_back(prog, i, ins, x, fwd, g, ge, with_err, side):
    """Sorting is a permutation: each input gets the gradient of the position it was sorted to. Tied inputs may
    be sorted either way, so each may get any of its tie group's gradients."""
    axis, aux = ins.params["axis"], fwd.aux[i]
    g = np.broadcast_to(g, np.shape(x))
    if side:
        g = _group_extreme(g, aux["group"], axis, side)
    out = np.zeros(np.shape(x))
    np.put_along_axis(out, aux["idx"], g, axis)
    if not with_err:
        return out, 0.0
    ge = np.broadcast_to(ge, np.shape(x))
    if i in fwd.kinks:  # a tied entry may receive any of its group's gradients and their errors
        ge = np.maximum(ge, _group_extreme(ge, aux["group"], axis, 1))
    err = np.zeros(np.shape(x))
    np.put_along_axis(err, aux["idx"], ge, axis)
    return out, err


_STRUCTURED = {"amax": (_amax_fwd, _amax_back), "amin": (_amax_fwd, _amax_back), "prod": (_prod_fwd, _prod_back),
               "cumsum": (_cumsum_fwd, _cumsum_back), "cumprod": (_cumprod_fwd, _cumprod_back),
               "sort": (_sort_fwd, _sort_back)}


def _gather_map_back(ins: Instr, shapes, g, ge, with_err):
    """Scatter-add the adjoint back through an index map: entries used twice (expand) accumulate; a k-fold sum
    is charged its rounding as ``accumulation`` does."""
    m = ins.params["map"].reshape(-1)
    keep = m >= 0
    total = int(sum(int(np.prod(s)) for s in shapes))
    g = np.broadcast_to(g, ins.shape).reshape(-1)
    out = np.zeros(total)
    np.add.at(out, m[keep], g[keep])
    err = 0.0
    if with_err:
        ge = np.broadcast_to(ge, ins.shape).reshape(-1)
        err = np.zeros(total)
        np.add.at(err, m[keep], ge[keep])
        count = np.bincount(m[keep], minlength=total)
        if count.max(initial=0) > 1:
            absg = np.zeros(total)
            np.add.at(absg, m[keep], np.abs(g[keep]))
            err = err + np.where(count > 1, np.sqrt(count) * absg, 0.0)
    start = 0
    for arg, s in zip(ins.args, shapes):
        n = int(np.prod(s))
        yield arg, (out[start:start + n].reshape(s), err[start:start + n].reshape(s) if with_err else 0.0)
        start += n


def _einsum_err(equation: str, arrays: list, errs: list, with_err: bool, out_shape=None):
    """np.einsum with the matmul-style budget: each output entry is a sum of k products of n factors, charged
    ``accumulation(k + n - 1)`` over the terms' 2-norm, plus each operand's error through the others."""
    lhs, rhs = equation.split("->")
    value = np.einsum(equation, *arrays)
    if not with_err:
        return value, 0.0
    subs = lhs.split(",")
    sizes = {ch: n for sub, a in zip(subs, arrays) for ch, n in zip(sub, np.shape(a))}
    k = int(np.prod([sizes[ch] for ch in sizes if ch not in rhs])) if any(ch not in rhs for ch in sizes) else 1
    scales = [float(np.max(np.abs(a), initial=0.0)) or 1.0 for a in arrays]
    sq = [np.square(a / s) for a, s in zip(arrays, scales)]
    norm = np.sqrt(np.einsum(equation, *sq)) * float(np.prod(scales))
    err = accumulation(k + len(arrays) - 1, norm, value) if k + len(arrays) > 2 else np.abs(value) * 0.0
    for j, e in enumerate(errs):
        if np.any(e):
            es = np.broadcast_to(e, np.shape(arrays[j]))
            parts = [np.square(es) if i == j else np.square(a) for i, a in enumerate(arrays)]
            err = rss(err, np.sqrt(np.einsum(equation, *parts)))
    return value, err


def _einsum_back(ins: Instr, arrays, errs, shapes, g, ge, with_err):
    """The adjoint of operand j is an einsum of the upstream gradient with the other operands; an index only
    operand j has (summed away) comes back through a ones vector of its size."""
    lhs, rhs = ins.params["equation"].split("->")
    subs = lhs.split(",")
    sizes = {ch: n for sub, a in zip(subs, arrays) for ch, n in zip(sub, np.shape(a))}
    g = np.broadcast_to(np.asarray(g, float), ins.shape)
    ge = np.broadcast_to(ge, ins.shape) if with_err else 0.0
    for j, sub in enumerate(subs):
        others = [(s, a, e) for i, (s, a, e) in enumerate(zip(subs, arrays, errs)) if i != j]
        seen = set(rhs) | {ch for s, _, _ in others for ch in s}
        extra = [(ch, np.ones(sizes[ch]), 0.0) for ch in sub if ch not in seen]
        ops = [(rhs, g, ge), *others, *extra]
        eq = ",".join(s for s, _, _ in ops) + "->" + sub
        value, err = _einsum_err(eq, [a for _, a, _ in ops], [e for _, _, e in ops], with_err)
        yield ins.args[j], (np.reshape(value, shapes[j]), np.reshape(err, shapes[j]) if with_err else 0.0)


def _take_map(how: str, dim: int, x_shape, idx):
    """Flat indices into x of what embedding / x[idx] / index_select / gather / a class pick read."""
    ids = np.arange(int(np.prod(x_shape))).reshape(x_shape)
    if how in ("embedding", "index_var"):
        return ids[idx]
    if how == "index_select":
        return np.take(ids, idx, axis=dim)
    if how == "gather":
        grid = list(np.indices(idx.shape))
        grid[dim] = idx
        return ids[tuple(grid)]
    # "class": x[..., t] for each leading position (cross_entropy, nll_loss)
    grid = [*list(np.indices(idx.shape)), idx]
    return ids[tuple(grid)]
