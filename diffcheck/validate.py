"""Validation rules both case schemas share (gradient cases in ``casefile``, training cases in
``training.schema``), so that a key means the same and fails with the same words in either kind of case.

``fail(message, key)`` is the schema's own function that raises a CaseError naming the file, the case and the key.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict

MAX_NAME = 1000  # characters of a case name, which every report line, JUnit testcase and pytest id prints
SEED_LIMIT = 2**63  # seeds feed torch.manual_seed and numpy's generators: a non-negative 63-bit integer


class Strict(BaseModel):
    """Case tables: unknown keys are errors, types are not coerced (``"3"`` is not a number), values are frozen."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


def check_name(name: str, fail) -> None:
    if len(name) > MAX_NAME:
        fail(f"'name' is {len(name)} characters long; the limit is {MAX_NAME}", "name")


def check_seed(seed: int | None, fail) -> None:
    if seed is not None and not 0 <= seed < SEED_LIMIT:
        fail(f"seed must be an integer from 0 to 2**63 - 1, got {seed}", "seed")


def check_choices(key: str, values, fail) -> None:
    """A list such as ``dtypes`` or ``devices``: at least one entry, none twice (a check would run twice)."""
    if not values:
        fail(f"'{key}' must list at least one entry", key)
    if len(set(values)) != len(values):
        fail(f"'{key}' lists an entry twice", key)


def numbers(value, key: str, fail):
    """A number or a nested list of numbers (not ragged, no bools, all finite) as a float64 array of its shape."""
    if isinstance(value, bool) or not isinstance(value, (int, float, list)):
        fail(f"{key} must be a number or a nested list of numbers, got {type(value).__name__}", key)
    try:
        raw = np.array(value, dtype=object)
        flat = raw.reshape(-1).tolist()
    except ValueError:  # numpy gave up on the nesting
        flat = [[]]
    if any(isinstance(v, list) for v in flat):
        fail(f"{key} is a ragged nested list: every row must have the same length", key)
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in flat):
        fail(f"{key} must hold numbers only", key)
    try:
        arr = np.array(flat, dtype=np.float64).reshape(raw.shape)
    except OverflowError:  # an integer beyond float64's range
        arr = np.full(raw.shape, np.inf)
    if not np.all(np.isfinite(arr)):
        fail(f"{key} must hold finite numbers (no inf or nan)", key)
    return arr
