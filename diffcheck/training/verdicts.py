"""The checks of a training run: ``converge`` (the expectations), ``trajectory`` (step by step against the
symbolic-gradient loop) and ``reproducible`` (a second run from the same seed).
"""

from __future__ import annotations

import math

import numpy as np

from .. import tolerance as tol
from ..compare import Check
from .loops import Trajectory
from .schema import SLIPS, TrainCase


def least_squares(case: TrainCase, data) -> dict[str, np.ndarray]:
    """Closed-form float64 least-squares fit of the same (noisy) data, in the model's parameter layout."""
    t = case.model.train
    x = np.asarray(data[t.inputs[0]], dtype=float)
    y = np.asarray(data[t.target], dtype=float)
    x2 = x.reshape(len(x), -1)
    design = np.hstack([x2, np.ones((len(x2), 1))])
    coef, *_ = np.linalg.lstsq(design, y.reshape(len(y), -1), rcond=None)
    w, b = coef[:-1], coef[-1]
    if case.model.model.type == "linear":
        return {"weight": w.T.reshape(case.param_shapes["weight"]), "bias": b.reshape(case.param_shapes["bias"])}
    (wn, ws), (bn, bs) = list(case.param_shapes.items())[:2]  # documented: weight first, then bias
    return {wn: w.reshape(ws), bn: b.reshape(bs)}


def converge(case: TrainCase, data, run: Trajectory, dtype, device) -> Check:
    e = case.model.expect
    check = Check("converge", "autograd", "expect", dtype=dtype, device=device)
    final = run.params[-1]
    problems, notes = [], []
    targets = {k: np.broadcast_to(np.array(v, dtype=float), case.param_shapes[k]) for k, v in e.params.items()}
    source = "expect.params"
    if e.least_squares:
        targets, source = least_squares(case, data), "least squares of the same data"
    worst = 0.0
    for k, want in targets.items():
        diff = float(np.max(np.abs(final[k] - want)))
        worst = max(worst, diff / e.atol)
        notes.append(f"{k} = {_fmt(final[k])} (want {_fmt(want)})")
        if diff > e.atol:
            problems.append(f"{k} is {diff:.3g} from {source} (atol {e.atol:g})")
    final_loss = run.losses[-1]
    notes.append(f"final loss {final_loss:.3g} after {len(run.losses)} steps")
    if e.final_loss_below is not None and not final_loss < e.final_loss_below:
        problems.append(f"final loss {final_loss:.3g} is not below {e.final_loss_below:g}")
    if e.stop_step is not None and run.stop_step != e.stop_step:
        problems.append(f"the stop rule fired at step {run.stop_step}, expected {e.stop_step}")
    if e.stop_step is not None:
        notes.append(f"stop rule fired at step {run.stop_step}")
    if e.loss_decreasing:
        # a rise counts only above the loss's own rounding: each residual may be off by u * (|p| + |y|), so a
        # mean of squared residuals L may move by (sqrt(L) + u * 2|y|)**2 - L, plus u * L for the mean itself
        u = tol.SAFETY * tol.UNIT_ROUNDOFF[dtype]
        ymax = float(np.max(np.abs(data[case.model.train.target]), initial=0.0))

        def noise(loss: float) -> float:
            return (math.sqrt(max(loss, 0.0)) + 2 * u * ymax) ** 2 - loss + u * loss

        rises = [i for i in range(1, len(run.losses))
                 if run.losses[i] - run.losses[i - 1] > noise(run.losses[i - 1])]
        if rises:
            problems.append(f"the loss rose at {len(rises)} step(s), first at step {rises[0]}")
    check.margin = worst
    check.atol = e.atol
    check.tolerance = f"atol {e.atol:g} against {source}"
    check.details = {"final_params": {k: np.asarray(v).tolist() for k, v in final.items()},
                     "target_params": {k: np.asarray(v).tolist() for k, v in targets.items()},
                     "target_source": source if targets else None, "final_loss": final_loss,
                     "first_loss": run.losses[0], "steps": len(run.losses), "stop_step": run.stop_step}
    check.status = "fail" if problems else "pass"
    check.message = "; ".join(problems) if problems else "; ".join(notes)
    check.diagnosis = "; ".join(notes) if problems else ""
    return check


def trajectory(case: TrainCase, run: Trajectory, ref: Trajectory, dtype, device) -> Check:
    """Step by step against the symbolic-gradient loop; the allowed deviation grows with the steps."""
    want = case.model.expect.trajectory
    lr = case.model.train.lr
    u = tol.UNIT_ROUNDOFF[dtype] + tol.UNIT_ROUNDOFF["float64"]
    check = Check("trajectory", "autograd", "symbolic-gradient loop (float64)", dtype=dtype, device=device)
    steps = min(len(run.params), len(ref.params))
    allowed_sum, worst_margin, first_bad = 0.0, 0.0, None
    per_param_err = max(1, len(ref.params[0]))
    for s in range(1, steps):
        scale = max(float(np.max(np.abs(v), initial=0.0)) for v in ref.params[s].values())
        grad_budget = max(ref.grad_err[(s - 1) * per_param_err:s * per_param_err], default=0.0)
        allowed_sum += tol.SAFETY * u * (scale + lr * grad_budget) + tol.FLOOR * tol.TINY[dtype]
        dev = max(float(np.max(np.abs(run.params[s][k] - ref.params[s][k]), initial=0.0)) for k in ref.params[s])
        margin = dev / allowed_sum if allowed_sum else (math.inf if dev else 0.0)
        if margin > worst_margin:
            worst_margin = margin
        if margin > 1 and first_bad is None:
            first_bad = (s, dev, allowed_sum)
    check.margin = worst_margin
    check.tolerance = "sum over steps of 4 x (u + u_float64) x (|params| + lr x gradient budget)"
    check.entries = steps - 1
    if first_bad is None:
        check.status = "pass" if want == "matches" else "fail"
        check.message = (f"matches the symbolic-gradient loop over {steps - 1} steps (worst margin {worst_margin:.2g})"
                         if want == "matches" else "expected the run to diverge from the correct trajectory, "
                                                   "but it follows it")
    else:
        s, dev, allowed = first_bad
        text = f"diverges from the correct trajectory at step {s}: deviation {dev:.3g} > allowed {allowed:.3g}"
        check.status = "fail" if want == "matches" else "pass"
        check.message = text + (" (expected: the case reproduces a slip)" if want == "diverges" else "")
        if want == "diverges":
            check.margin = 0.0  # an expected divergence passes: its deviation is in the message, not a margin
    if case.model.train.slip:
        check.message += f"; slip: {SLIPS[case.model.train.slip]}"
    return check


def reproducible(run: Trajectory, again: Trajectory, dtype, device) -> Check:
    check = Check("reproducible", "autograd", "a second run from the same seed", dtype=dtype, device=device)
    diff = max(float(np.max(np.abs(a[k] - b[k]), initial=0.0)) for a, b in zip(run.params, again.params) for k in a)
    same_length = len(run.params) == len(again.params)
    limit = 0.0 if device == "cpu" else 1e-6
    check.max_abs_err = diff
    if diff > limit or not same_length:
        check.status = "fail"
        check.message = f"two runs from the same seed differ by {diff:.3g}" + ("" if same_length else
                                                                           " and stop at different steps")
    else:
        check.message = "identical" if diff == 0 else f"within {diff:.3g}"
    return check


def _fmt(a) -> str:
    a = np.asarray(a, dtype=float)
    return f"{float(a.reshape(-1)[0]):.6g}" if a.size == 1 else np.array2string(a.reshape(-1), precision=5)
