"""Stage ``transforms``: the case's gradients again under what runs them -- ``torch.compile``, ``vmap``, forward
mode, odd layouts, aliased inputs. Each transform is a module here with ``run(point, requested) -> list[Check]``
(``requested``: every transform of this run) whose checks have the transform's name as their kind, judged in every
dtype and device the run asked for; one that cannot apply to a case returns a ``skip`` check with the reason.
"""

from __future__ import annotations

import importlib

from ...model import Check, Options
from ..point import Point


def requested(case, options: Options) -> list[str]:
    """The transforms to run on ``case``: its own ``transforms`` (unless the run checks one transform only) and
    the run's ``--transform``s, each once, in the order of ``casefile.TRANSFORMS``."""
    from ...casefile import TRANSFORMS

    names = set(options.transforms) | (set(case.transforms) if options.case_transforms else set())
    return [name for name in TRANSFORMS if name in names]


def transforms(point: Point, names: list[str]) -> list[Check]:
    checks: list[Check] = []
    for name in names:  # each is told the others (aliasing runs compiled too when compile is one)
        checks += importlib.import_module(f"{__name__}.{name}").run(point, names)
    return checks
