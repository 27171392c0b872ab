"""Tolerances derived from an error budget, never one fixed number.

The symbolic engine bounds, entry by entry, the rounding error a computation of the same formula would make
in a dtype with unit roundoff u, in units of u ("budget"). A result computed in ``dtype`` and a float64
reference then may differ by at most

    allowed = SAFETY * (u_dtype + u_float64) * budget + FLOOR * tiny_dtype

SAFETY covers the constant factors first-order analysis leaves out (torch may use a different but equally
stable formula); the floor covers underflow. A case's ``[tolerance]`` table replaces this with
``atol + rtol * |reference|`` and the report says so, with the case's reason.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SAFETY = 4.0
FLOOR = 4.0
UNIT_ROUNDOFF = {"float64": 2.0**-53, "float32": 2.0**-24, "float16": 2.0**-11, "bfloat16": 2.0**-8}
TINY = {"float64": 2.2250738585072014e-308, "float32": 1.1754943508222875e-38, "float16": 6.103515625e-05,
        "bfloat16": 1.1754943508222875e-38}
MAX = {"float64": 1.7976931348623157e308, "float32": 3.4028234663852886e38, "float16": 65504.0,
       "bfloat16": 3.3895313892515355e38}
FD_SAFETY = 4.0  # Richardson error estimates are estimates; a bug must stand this far above them


def lowest(dtypes) -> str:
    """The least precise dtype of a set (its roundoff decides which inputs are representable)."""
    return max(dtypes, key=lambda d: UNIT_ROUNDOFF[d])


@dataclass(frozen=True)
class Tolerance:
    """Per-entry allowed absolute error, and where it came from (printed in the report)."""

    allowed: np.ndarray
    atol: float | None  # set when the case overrides the derived tolerance
    rtol: float | None
    source: str


def derived(budget, reference, dtype: str, override=None) -> Tolerance:
    """Allowed error of a ``dtype`` result against the float64 reference whose budget is ``budget``."""
    reference = np.asarray(reference, dtype=float)
    if override is not None and _overrides(override, dtype):
        atol, rtol = override.for_dtype(dtype)
        allowed = atol + rtol * np.abs(reference)
        return Tolerance(np.broadcast_to(allowed, reference.shape), atol, rtol,
                         f"case override atol={atol:g} rtol={rtol:g} ({override.reason})")
    u = UNIT_ROUNDOFF[dtype] + UNIT_ROUNDOFF["float64"]
    budget = np.asarray(budget, dtype=float)
    if budget.shape != reference.shape:  # broadcast_to costs more than the arithmetic on a small array
        budget = np.broadcast_to(budget, reference.shape)
    allowed = SAFETY * u * budget + FLOOR * TINY[dtype]
    worst = float(budget.max()) if budget.size else 0.0
    return Tolerance(allowed, None, None,
                     f"derived: {SAFETY:g} x (u_{dtype} + u_float64) x error budget (budget up to {worst:.3g} u)")


def _overrides(override, dtype: str) -> bool:
    """Whether a case's ``[tolerance]`` table covers ``dtype``: a top-level atol/rtol covers every dtype, a
    ``tolerance.<dtype>`` table only its own; the other dtypes keep the derived tolerance."""
    return override.atol is not None or override.rtol is not None or dtype in override.per_dtype


def expected(reference, atol: float, rtol: float, budget, dtype: str) -> Tolerance:
    """Allowed error against a known answer: the case's atol/rtol plus the engine's own rounding."""
    reference = np.asarray(reference, dtype=float)
    own = derived(budget, reference, dtype).allowed
    allowed = atol + rtol * np.abs(reference) + own
    return Tolerance(allowed, atol, rtol, f"expect atol={atol:g} rtol={rtol:g} + {dtype} rounding budget")
