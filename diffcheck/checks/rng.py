"""An impl's forward evaluated twice at the same point must give the same value, before anything is differenced:
a function that draws random numbers (dropout) would otherwise fail every comparison with a new mask each time.
With ``rng = "replay"`` every call replays the same torch RNG state (``engines.impl.replay``), and this check
confirms that the replay makes it repeatable."""

from __future__ import annotations

import numpy as np

from ..model import Check
from .point import Point

ADVICE = 'the function draws random numbers: set rng = "replay"'
BITS = 32  # entries compared at least, over the repeated evaluations of a small output
MOST = 16  # evaluations after the first, at most


def repeatable(point: Point) -> Check | None:
    """A failing ``rng`` check when forward evaluations (float64, CPU, no grad) at one point differ; a passing one
    under ``rng = "replay"``; None otherwise (nothing to report, or a forward that raises, which the stages report).

    Two evaluations of a small random output can agree by chance (a 3-entry dropout mask does 1 time in 8), so a
    small output is evaluated again until at least ``BITS`` entries have been compared (at most ``MOST`` times)."""
    import torch

    from ..engines.autograd import input_tensor, to_numpy

    x = point.at("float64")

    def forward():
        with torch.no_grad():
            return to_numpy(point.fn(**{n: input_tensor(v, "float64", "cpu", False, point.case.vars[n].dtype)
                                        for n, v in x.items()}))

    try:
        first = forward()
        same = np.ones(np.shape(first), dtype=bool)
        for _ in range(min(MOST, -(-BITS // max(first.size, 1)))):
            again = forward()
            same &= (first == again) | (np.isnan(first) & np.isnan(again))
            if not same.all():
                break
    except Exception:  # the impl's own failure is reported by the stages, with its phase
        return None
    check = Check("rng", "impl", "the impl's forward evaluated again", dtype="float64", device="cpu")
    if same.all():
        if point.case.rng != "replay":
            return None
        check.message = 'rng = "replay": repeated evaluations at the same point agree'
        return check
    check.status = "fail"
    where = f"evaluations at the same point differ at {int((~same).sum())} of {same.size} entries"
    if point.case.rng == "replay":
        check.message = (f'the forward changes between evaluations even with rng = "replay" ({where}): it draws '
                         "from a generator other than torch's default one, or keeps state between calls")
    else:
        check.message = f"{ADVICE} ({where}; nothing else was compared)"
    check.details["rng"] = point.case.rng
    return check
