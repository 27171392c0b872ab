"""Entry-by-entry comparison of two results into a Check record, with the worst entries and a diagnosis.

Never raises on bad numbers: nan, inf and wrong shapes become failing entries with a message.
"""

from __future__ import annotations

import numpy as np

from .model import Check, Entry
from .tolerance import FLOOR, TINY, Tolerance

__all__ = ["Check", "Entry", "compare", "diagnose", "margin_text", "margins", "negligible", "worst_margin"]

WORST = 5
MATRIX = 64  # failing results up to this many entries carry their full error matrix


def compare(check: Check, got, ref, tol: Tolerance, lo=None, hi=None, fd=None, judge=None, upstream=None,
            known=None) -> Check:
    """Fill ``check`` from comparing ``got`` to ``ref`` entry by entry under ``tol``.

    ``lo``/``hi`` (optional) give, per entry, the hull of one-sided derivatives where the reference sits on a
    kink: there any value inside the hull (within tolerance) is right. ``judge`` (optional mask) leaves out the
    entries the caller has nothing to judge by (not differenced). ``upstream`` (optional) is the cotangent a
    gradient was computed with, for the diagnosis. ``known`` (optional): ``_margins`` of these very arrays, where
    the caller ranked them already (so they are not computed twice).

    Never a vacuous pass (``nan > 1`` is False): an entry whose reference or allowed error is not finite cannot be
    judged, so a check with such entries and none failing is a ``skip`` that says why; a non-finite value against
    a finite reference fails whatever the tolerance.
    """
    got = np.asarray(got, dtype=float)
    ref = np.asarray(ref, dtype=float)
    check.atol, check.rtol, check.tolerance = tol.atol, tol.rtol, tol.source
    if got.shape != ref.shape:
        check.status = "fail"
        check.message = f"shape {list(got.shape)} where {list(ref.shape)} was expected"
        return check
    allowed = np.asarray(tol.allowed, dtype=float)
    allowed = allowed if allowed.shape == ref.shape else np.broadcast_to(allowed, ref.shape)
    err, margin, ambiguous, finite = _margins(got, ref, allowed, lo, hi) if known is None else known
    if judge is None and finite:
        # the usual case: every entry judged, nothing to map (the masks below would all be False, ok all True)
        unjudged = ok = None
        with np.errstate(divide="ignore", invalid="ignore"):
            rel = np.where(err == 0, 0.0, err / np.abs(ref))
    else:
        judged = np.ones(ref.shape, bool) if judge is None else np.broadcast_to(np.asarray(judge, bool), ref.shape)
        wrong_value = judged & ~np.isfinite(got) & np.isfinite(ref)  # wrong whatever the tolerance
        no_ref = judged & ~wrong_value & ~np.isfinite(ref)
        no_tol = judged & ~wrong_value & ~no_ref & ~np.isfinite(allowed)
        ok = judged & ~no_ref & ~no_tol
        with np.errstate(divide="ignore", invalid="ignore"):
            rel = np.where(err == 0, 0.0, err / np.abs(ref))
        margin = np.where(ok, margin, 0.0)
        rel, err = np.where(ok, rel, 0.0), np.where(ok, err, 0.0)
        unjudged = no_ref | no_tol
    bad = margin > 1.0 if ok is None else ok & (margin > 1.0)
    check.entries = int(ref.size)
    check.bad = int(np.count_nonzero(bad))
    check.ambiguous = int(np.count_nonzero(ambiguous))
    check.max_abs_err = float(err.max()) if err.size else 0.0
    check.max_rel_err = float(rel.max()) if rel.size else 0.0
    check.margin = float(margin.max()) if margin.size else 0.0
    flat_margin = margin.reshape(-1)
    if flat_margin.size > WORST:  # the k worst without sorting everything
        top = np.argpartition(-flat_margin, WORST - 1)[:WORST]
        order = top[np.argsort(-flat_margin[top], kind="stable")]
    else:
        order = np.argsort(-flat_margin, kind="stable")
    # the worst entries' fields gathered once per array (the same floats as one entry at a time)
    where = np.unravel_index(order, ref.shape) if ref.ndim else None
    columns = [a[where].tolist() if ref.ndim else [float(a)] * len(order) for a in (got, ref, err, allowed)]
    indices = [list(i) for i in zip(*(w.tolist() for w in where))] if ref.ndim else [[]] * len(order)
    kinks = ambiguous[where].tolist() if ref.ndim else [bool(ambiguous)] * len(order)
    fds = [None] * len(order) if fd is None else [float(v) for v in np.asarray(fd)[where].tolist()] if ref.ndim \
        else [float(np.asarray(fd))] * len(order)
    for k, idx in enumerate(indices):
        idx_t = tuple(idx)
        on_kink = kinks[k]
        check.worst.append(Entry(idx, *(c[k] for c in columns), fds[k],
                                 float(lo[idx_t]) if on_kink else None, float(hi[idx_t]) if on_kink else None))
    if check.bad:
        if ref.size <= MATRIX:
            check.error_matrix = np.where(np.isfinite(got - ref), got - ref, np.nan).tolist()
        check.status = "fail"
        check.message = f"{check.bad} of {check.entries} entries outside tolerance (worst {margin_text(check)})"
        check.diagnosis = diagnose(got, ref, bad, upstream, gradient=check.var is not None)
        if ref.size > 1:
            check.details["margin_map"] = margin_map(margin, ref.shape)
    elif unjudged is not None and unjudged.any():
        why = [f"the reference is not finite at {int(no_ref.sum())}"] * bool(no_ref.any()) + \
            [f"the allowed error is not finite at {int(no_tol.sum())} (the error budget overflows float64 or is "
             f"undefined at this point)"] * bool(no_tol.any())
        check.status = "skip"
        check.message = f"cannot be judged at {int((no_ref | no_tol).sum())} of {check.entries} entries: " + \
            "; ".join(why)
    elif check.ambiguous:
        check.status = "warn"
        check.message = (f"{check.ambiguous} entries sit on a non-differentiable point; the value there lies "
                         f"between the one-sided derivatives")
    return check


def margins(got, ref, allowed, lo=None, hi=None):
    """Per entry: the error (|got - ref|, or where the reference sits on a kink, hi > lo, the distance from got to
    the hull [lo, hi]; nan anywhere counts as infinite, equal infinities as 0), error / allowed (nan -> inf), and
    the kink mask. The one definition behind ``compare`` and ``worst_margin``."""
    return _margins(got, ref, allowed, lo, hi)[:3]


def _finite(a) -> bool:
    """Whether every entry of ``a`` is finite."""
    return bool(np.isfinite(a).all())


def _margins(got, ref, allowed, lo=None, hi=None):
    """``margins`` and whether ``got``, ``ref``, the error and ``allowed`` are all finite (the callers' usual
    case)."""
    got, ref = np.asarray(got, dtype=float), np.asarray(ref, dtype=float)
    with np.errstate(invalid="ignore", over="ignore"):
        err = np.abs(got - ref)
    ambiguous = np.zeros(ref.shape, dtype=bool)
    kinked = False
    if lo is not None and hi is not None and lo is not hi:  # one array for both: no entry on a kink
        ambiguous = np.asarray(hi > lo)
        kinked = bool(ambiguous.any())
        if kinked:  # no kink: the error is |got - ref| as it is
            below, above = np.asarray(lo) - got, got - np.asarray(hi)
            err = np.where(ambiguous, np.maximum(np.maximum(below, above), 0.0), err)
    # |got - ref| is finite only where both are (inf - x is inf, inf - inf and nan are nan): without a kink's
    # replaced error, the error's finiteness is all three's
    if _finite(err) and (not kinked or (_finite(got) and _finite(ref))):  # the usual case: nothing below would
        with np.errstate(divide="ignore", invalid="ignore"):  # change (no nan, no inf)
            margin = np.where(err == 0, 0.0, err / allowed)
        if _finite(allowed):  # a finite error over a finite allowed one is never nan (0 / 0 is mapped to 0)
            return err, margin, ambiguous, True
        return err, np.where(np.isnan(margin), np.inf, margin), ambiguous, False
    err = np.where(np.isnan(got) | np.isnan(ref) | np.isnan(err), np.inf, err)
    err = np.where(np.isinf(got) & np.isinf(ref) & (got == ref), 0.0, err)
    with np.errstate(divide="ignore", invalid="ignore"):
        margin = np.where(err == 0, 0.0, err / allowed)
    return err, np.where(np.isnan(margin), np.inf, margin), ambiguous, False


def worst_margin(got, ref, allowed, lo=None, hi=None) -> float:
    """The largest error / allowed over the entries, without the report's detail (to rank cotangents)."""
    got, ref = np.asarray(got, dtype=float), np.asarray(ref, dtype=float)
    if got.shape != ref.shape:
        return float("inf")
    return float(np.max(ranks(got, ref, allowed, lo, hi), initial=0.0))


def ranks(got: np.ndarray, ref: np.ndarray, allowed, lo=None, hi=None) -> np.ndarray:
    """Each entry's error / allowed for ranking: an entry that cannot be judged (allowed or reference not finite)
    ranks 1, above any pass, below any fail."""
    return _ranked(got, ref, allowed, _margins(got, ref, allowed, lo, hi))


def _ranked(got, ref, allowed, known) -> np.ndarray:
    """``ranks`` from the ``_margins`` of these arrays: where every value is finite, no entry is unjudged."""
    _, margin, _, finite = known
    if finite:
        return margin
    unjudged = np.isfinite(got) & ~(np.isfinite(allowed) & np.isfinite(ref))
    return np.where(unjudged, 1.0, margin)


MAP_SIDE = 128  # a failing check's margin map keeps every entry up to 128 x 128, then the max over blocks


def margin_map(margin: np.ndarray, shape) -> dict:
    """error / allowed over the entries of a failing result, for the HTML report's heatmap: a matrix (1-D results
    as one row, more dimensions folded into rows), max-pooled over blocks past MAP_SIDE per side, 3 digits."""
    m = np.asarray(margin, dtype=float).reshape(shape)
    m = m.reshape(1, -1) if m.ndim <= 1 else m.reshape(-1, m.shape[-1])
    block = [max(1, -(-m.shape[0] // MAP_SIDE)), max(1, -(-m.shape[1] // MAP_SIDE))]
    if block != [1, 1]:
        pad = [(-m.shape[0]) % block[0], (-m.shape[1]) % block[1]]
        m = np.pad(m, ((0, pad[0]), (0, pad[1])))
        m = m.reshape(m.shape[0] // block[0], block[0], m.shape[1] // block[1], block[1]).max(axis=(1, 3))
    values = [[float(f"{v:.3g}") if np.isfinite(v) else None for v in row] for row in m]
    return {"shape": [int(s) for s in shape], "block": block, "values": values}


def negligible(allowed: float, abs_err: float, dtype: str | None) -> bool:
    """An allowed error that is only the underflow floor (the reference is exact: no rounding budget), or so small
    against the error that their ratio says nothing."""
    return allowed <= 2 * FLOOR * TINY.get(dtype or "float64", TINY["float64"]) or abs_err > 1e30 * allowed


def margin_text(check: Check, digits: int = 3) -> str:
    """The worst margin for people: ``margin 3.2``; ``abs err 0.011, allowed 0`` where the allowed error is
    negligible (a margin of 1e+305 reads as nothing); ``margin n/a`` where no entry could be judged."""
    m = check.margin
    if m != m:
        return "margin n/a"
    w = check.worst[0] if check.worst else None
    if w is not None and m > 1 and negligible(w.allowed, w.abs_err, check.dtype):
        return f"abs err {w.abs_err:.{digits}g}, allowed 0"
    return f"margin {m:.{digits}g}"


def diagnose(got: np.ndarray, ref: np.ndarray, bad: np.ndarray, upstream=None, gradient: bool = True) -> str:
    """One line naming the pattern of a wrong result, where the pattern is clear. ``upstream``: the cotangent the
    gradient was computed with (a backward that returns it unchanged treats its derivative as 1); ``gradient``:
    whether the result is a gradient at all (a wrong value is never "a gradient that never reached its input")."""
    if not bad.any():
        return ""
    if np.isnan(got[bad]).any():
        return "nan where the reference is finite"
    if np.all(got == 0) and np.any(ref != 0) and gradient:
        return "all zero: the gradient never reached this input (detached, or upstream gradient ignored)"
    if upstream is not None and _passes_through(got, ref, upstream):
        return "the backward passes the upstream gradient straight through (d/dx treated as 1)"
    if np.all(ref[bad] == 0) and 2 <= bad.sum() < bad.size:
        return "nonzero only where the reference is exactly 0: the gradient leaks where it should be blocked"
    if ref.size == 1:
        return _describe_one(float(got.reshape(-1)[0]), float(ref.reshape(-1)[0]), "the scalar" if ref.ndim == 0
                             else f"the single entry {[0] * ref.ndim}")
    if ref.ndim == 2 and ref.shape[0] == ref.shape[1] and ref.shape[0] > 1:
        scale = np.max(np.abs(ref)) or 1.0
        if np.allclose(got, ref.T, rtol=1e-3, atol=1e-6 * scale) and not np.allclose(got, ref, rtol=1e-3):
            return "transposed: the result equals the reference's transpose"
    nz = bad & (ref != 0)
    if nz.sum() >= 2:
        ratios = got[nz] / ref[nz]
        r = float(np.median(ratios))
        # a factor within 1e-3 of 1 is no scaling anyone wrote: say how small the relative error is instead
        if abs(r - 1) >= 1e-3 and np.allclose(ratios, r, rtol=1e-3):
            if abs(r + 1) < 1e-3:
                return "sign flipped: every wrong entry is the negated reference"
            every = " (every entry)" if bad.sum() == bad.size else ""
            return f"scaled by {r:.6g}{every}"
        rel = ratios - 1
        if np.all(np.abs(rel) < 1e-3):
            rel_median = float(np.median(rel))
            if np.allclose(rel, rel_median, rtol=0.05):
                return (f"a small relative error of {rel_median:+.2g} in every wrong entry ({int(bad.sum())} of "
                        f"{bad.size}): a constant slightly off, or float32 arithmetic somewhere")
    if bad.sum() == 1:
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        return f"only entry {list(idx)} is wrong"
    if ref.ndim == 2:
        rows, cols = np.unique(np.argwhere(bad)[:, 0]), np.unique(np.argwhere(bad)[:, 1])
        if len(rows) == 1 and ref.shape[0] > 1:
            return f"only row {int(rows[0])} is wrong"
        if len(cols) == 1 and ref.shape[1] > 1:
            return f"only column {int(cols[0])} is wrong"
    frac = bad.sum() / bad.size
    small = ""
    if nz.any() and np.all(np.abs(got[nz] / ref[nz] - 1) < 1e-3):
        small = f", small relative errors (up to {float(np.max(np.abs(got[nz] / ref[nz] - 1))):.2g})"
    return f"{int(bad.sum())} of {bad.size} entries wrong ({frac:.0%}), no single pattern{small}"


def _passes_through(got, ref, upstream) -> bool:
    """Whether ``got`` is the upstream gradient itself (broadcast to its shape) and the reference is not."""
    try:
        up = np.broadcast_to(np.asarray(upstream, dtype=float), got.shape)
    except ValueError:
        return False
    return bool(np.allclose(got, up, rtol=1e-6, atol=0) and not np.allclose(ref, up, rtol=1e-6, atol=0))


def _describe_one(got: float, ref: float, what: str) -> str:
    """A wrong scalar (or one-entry) result: the pattern is in how it relates to the reference."""
    if ref == 0:
        return f"{what} is wrong: {got:.7g} where the reference is 0"
    r = got / ref
    if abs(r + 1) < 1e-3:
        return f"sign flipped: {what} is the negated reference"
    if abs(r - 1) < 1e-3:
        return f"{what} is off by a small relative error of {r - 1:+.2g}"
    return f"{what} is wrong: {got:.7g} where the reference is {ref:.7g} ({r:.4g} x the reference)"
