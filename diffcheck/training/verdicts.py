"""The checks of a training run: ``converge`` (the expectations), ``trajectory`` (step by step against the
symbolic-gradient loop) and ``reproducible`` (a second run from the same seed).
"""

from __future__ import annotations

import math

import numpy as np

from .. import tolerance as tol
from ..errors import CaseError
from ..model import Check
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


def check_affine(case: TrainCase, data) -> None:
    """``least_squares`` solves for ``p = x @ w + b`` (weight first, bias second): raise CaseError unless the model,
    at random parameters and the case's own data, is exactly that function (an ``nn.Linear`` is by construction)."""
    import torch

    from ..engines.autograd import build

    t = case.model.train
    x = np.asarray(data[t.inputs[0]], dtype=float)
    x2 = x.reshape(len(x), -1)
    rank = np.linalg.matrix_rank(np.hstack([x2, np.ones((len(x2), 1))]))
    if rank <= x2.shape[1]:  # many fits reach the least loss: which one the run finds is not a verdict
        raise CaseError(f"least_squares has no unique fit on this data: [{t.inputs[0]}, 1] ({len(x2)} samples, "
                        f"{x2.shape[1]} feature(s) and the bias) has rank {rank}, under {x2.shape[1] + 1} (equal "
                        "samples, fewer samples than unknowns or dependent features); give more varied data or "
                        "compare with expect.params", case.path, case.name, "expect.least_squares")
    if case.model.model.type == "linear":
        return
    outs = int(np.asarray(data[t.target]).size // len(x))
    (wn, ws), (bn, bs) = list(case.param_shapes.items())
    why = None
    if math.prod(ws) != x2.shape[1] * outs or math.prod(bs) != outs:
        why = (f"'{wn}' has {math.prod(ws)} entries and '{bn}' {math.prod(bs)}, where x @ w + b with {x2.shape[1]} "
               f"input feature(s) and {outs} output(s) needs {x2.shape[1] * outs} and {outs}")
    else:
        rng = np.random.default_rng(0)
        w, b = rng.uniform(0.5, 2.0, ws) * rng.choice([-1, 1], ws), rng.uniform(0.5, 2.0, bs)
        tensors = {t.inputs[0]: torch.tensor(x), wn: torch.tensor(w), bn: torch.tensor(b)}
        with torch.no_grad():
            got = build(case.model_ir)(**tensors).numpy().reshape(len(x), -1)
        want = x2 @ w.reshape(x2.shape[1], outs) + b.reshape(outs)
        scale = np.abs(x2) @ np.abs(w).reshape(x2.shape[1], outs) + np.abs(b).reshape(outs)
        if got.shape != want.shape or not np.all(np.abs(got - want) <= 1e-12 * scale):
            why = f"at random {wn}, {bn} the model is not {t.inputs[0]} @ {wn} + {bn} on this data"
    if why:
        raise CaseError(f"least_squares fits p = x @ w + b (the first param the weight, the second the bias), but "
                        f"{why}: compare with expect.params instead", case.path, case.name, "expect.least_squares")


def converge(case: TrainCase, data, run: Trajectory, dtype, device) -> Check:
    e = case.model.expect
    check = Check("converge", "autograd", "expect", dtype=dtype, device=device)
    final = run.params[-1]
    problems, notes = [], []
    targets, source = dict(case.expect_params), "expect.params" if case.expect_params else None
    if e.least_squares:
        targets, source = least_squares(case, data), "least squares of the same data"
    if run.blowup is not None:
        problems.append(f"the run is not finite at step {run.blowup} (its loss or updated parameters are inf or "
                        f"nan, after parameters up to {_magnitude(final):.3g}): it diverged or overflowed "
                        f"{dtype}; a smaller train.lr may help")
    worst = 0.0
    for k, want in targets.items():
        diff = float(np.max(np.abs(final[k] - want)))
        worst = max(worst, diff / e.atol if e.atol else (math.inf if diff else 0.0))
        notes.append(f"{k} = {_fmt(final[k])} (want {_fmt(want)})")
        if not np.all(np.isfinite(want)):
            problems.append(f"{k}: the {source} target is not finite ({_fmt(want)})")
        elif not diff <= e.atol:
            problems.append(f"{k} reached {_fmt(final[k])}, wanted {_fmt(want)} from {source} "
                            f"(off by {diff:.3g}{_where(final[k], want)}, atol {e.atol:g})")
    final_loss = run.losses[-1] if run.losses else math.nan
    notes.append(f"final loss {final_loss:.3g} after {len(run.losses)} steps")
    if e.final_loss_below is not None and not final_loss < e.final_loss_below:
        problems.append(f"final loss {final_loss:.3g} is not below {e.final_loss_below:g}")
    if e.stop_step is not None and run.stop_step != e.stop_step:
        fired = "never fired" if run.stop_step is None else f"fired at step {run.stop_step}"
        problems.append(f"the stop rule ({case.model.train.stop}) {fired}, expected step {e.stop_step}")
    if e.stop_step is not None and run.stop_step is not None:
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
    if source:
        check.atol = e.atol
        check.tolerance = f"atol {e.atol:g} against {source}"
    else:
        check.tolerance = "no parameter targets (expect.params, expect.least_squares); the run must stay finite"
    check.details = {"final_params": {k: np.asarray(v).tolist() for k, v in final.items()},
                     "target_params": {k: np.asarray(v).tolist() for k, v in targets.items()},
                     "target_source": source, "final_loss": final_loss if math.isfinite(final_loss) else None,
                     "first_loss": run.losses[0] if run.losses else None, "steps": len(run.losses),
                     "stop_step": run.stop_step, "blowup_step": run.blowup}
    check.status = "fail" if problems else "pass"
    check.message = "; ".join(problems) if problems else "; ".join(notes)
    check.diagnosis = "; ".join(notes) if problems else ""
    return check


def trajectory(case: TrainCase, run: Trajectory, ref: Trajectory, dtype, device) -> Check:
    """Step by step against the symbolic-gradient loop. Step k's update may round by
    r_k = 4 (u + u_float64) (|params_k| + lr x gradient budget_k); an error made at step k is carried to step s at
    its own size, or grown in proportion with the parameters' magnitude when they grow (a diverging run amplifies
    its rounding as it amplifies its parameters): allowed_s = max(sum r_k, m_s x sum r_k / m_k), where
    m_k = |params_k| + lr x gradient budget_k is the magnitude step k's rounding is relative to."""
    want = case.model.expect.trajectory
    lr = case.model.train.lr
    u = tol.UNIT_ROUNDOFF[dtype] + tol.UNIT_ROUNDOFF["float64"]
    check = Check("trajectory", "autograd", "symbolic-gradient loop (float64)", dtype=dtype, device=device)
    steps = min(len(run.params), len(ref.params))
    absolute, relative, worst_margin, first_bad, unjudged = 0.0, 0.0, 0.0, None, None
    per_param_err = max(1, len(ref.params[0]))
    scales, devs = _per_step_max(ref.params[:steps]), _per_step_max(run.params[:steps], ref.params[:steps])
    for s in range(1, steps):
        scale = scales[s]
        grad_budget = max(ref.grad_err[(s - 1) * per_param_err:s * per_param_err], default=0.0)
        magnitude = scale + lr * grad_budget
        rounding = tol.SAFETY * u * magnitude + tol.FLOOR * tol.TINY[dtype]
        absolute += rounding
        relative += rounding / magnitude if magnitude > 0 else 0.0
        allowed = max(absolute, magnitude * relative)
        if not math.isfinite(allowed):
            unjudged = (s, f"the error budget is not finite from step {s}")
            break
        dev = devs[s]
        margin = dev / allowed if allowed else (math.inf if dev else 0.0)
        if margin > worst_margin:
            worst_margin = margin
        if margin > 1 and first_bad is None:
            first_bad = (s, dev, allowed)
    if unjudged is None and (run.blowup is not None or ref.blowup is not None) and first_bad is None:
        which = [f"the {dtype} run from step {run.blowup}"] * (run.blowup is not None) + \
                [f"the float64 reference from step {ref.blowup}"] * (ref.blowup is not None)
        unjudged = (steps, f"{' and '.join(which)} {'are' if len(which) > 1 else 'is'} not finite")
    check.margin = worst_margin
    check.tolerance = ("max(sum of r_k, |params_s| x sum of r_k / |params_k|): step k's rounding "
                       "r_k = 4 x (u + u_float64) x (|params_k| + lr x gradient budget_k), grown with the parameters")
    check.entries = steps - 1
    if first_bad is None:
        judged = (unjudged[0] if unjudged else steps) - 1
        if judged < 1:
            check.status = "skip"
            check.message = f"nothing to compare: {unjudged[1]}"
        elif want == "matches":
            check.message = f"matches the symbolic-gradient loop over {judged} steps (worst margin {worst_margin:.2g})"
            if unjudged:
                check.status = "warn"
                check.message += f"; steps after {judged} not judged: {unjudged[1]}"
        else:
            check.status = "fail"
            check.message = f"expected the run to diverge from the correct trajectory, but it follows it over " \
                            f"{judged} steps" + (f" (then {unjudged[1]})" if unjudged else "")
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
    common = min(len(run.params), len(again.params))
    diff = max(_per_step_max(run.params[:common], again.params[:common]))
    same_length = len(run.params) == len(again.params) and run.blowup == again.blowup
    limit = 0.0 if device == "cpu" else 1e-6
    check.max_abs_err = diff
    if not diff <= limit or not same_length:
        check.status = "fail"
        check.message = f"two runs from the same seed differ by {diff:.3g}" + ("" if same_length else
                                                                           " and stop at different steps")
    else:
        check.message = "identical" if diff == 0 else f"within {diff:.3g}"
    return check


def _magnitude(params: dict[str, np.ndarray]) -> float:
    return max((float(np.max(np.abs(v), initial=0.0)) for v in params.values()), default=0.0)


def _per_step_max(params: list[dict], other: list[dict] | None = None) -> list[float]:
    """At each step, the largest |entry| (or |entry - other's entry|) over every param: ``_magnitude`` of each
    step (of the difference), in one numpy pass per param over the stacked steps (the same maxima: a max
    rounds nothing)."""
    out = np.zeros(len(params))
    for k in (params[0] if params else {}):
        stack = np.stack([p[k] for p in params])
        if other is not None:
            stack = stack - np.stack([p[k] for p in other])
        out = np.maximum(out, np.abs(stack).reshape(len(params), -1 if stack[0].size else 0).max(axis=1, initial=0.0))
    return out.tolist()


def _where(got, want) -> str:
    """Which entry is worst, for a parameter with more than one."""
    diff = np.abs(np.asarray(got, dtype=float) - np.asarray(want, dtype=float))
    if diff.size <= 1:
        return ""
    return f" at entry {[int(i) for i in np.unravel_index(int(np.argmax(diff)), diff.shape)]}"


def _fmt(a) -> str:
    a = np.asarray(a, dtype=float)
    return f"{float(a.reshape(-1)[0]):.6g}" if a.size == 1 else np.array2string(a.reshape(-1), precision=5)
