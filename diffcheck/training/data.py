"""The data sets of a training case: drawn in ``[data]`` order from torch's CPU generator seeded with the case seed,
in float32 as the seed tutorials do; and the batches of every step.
"""

from __future__ import annotations

import numpy as np
import torch

from ..engines.autograd import build
from ..errors import CaseError
from ..expr.parse import parse
from .schema import DrawModel, TrainCase


def draw(case: TrainCase):
    """Data (float32, in ``[data]`` order) and initial params, from torch's generator seeded with the case seed.

    Raises CaseError for an entry that is not finite (nan from an expression, a float32 overflow) or whose drawn
    shape is not the one validated: a run on such data would prove nothing."""
    m = case.model
    data: dict[str, torch.Tensor] = {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(case.seed)
        for name, item in m.data.items():
            data[name] = build(parse(item, set(data)))(**data) if isinstance(item, str) else _generate(item)
            data[name] = torch.as_tensor(data[name], dtype=torch.float32)
            _check(case, f"data.{name}", data[name], case.data_shapes[name])
        if m.model.type == "linear":
            layer = torch.nn.Linear(case.param_shapes["weight"][1], case.param_shapes["weight"][0])
            params = {"weight": layer.weight.detach().clone(), "bias": layer.bias.detach().clone()}
        else:
            params = {n: torch.as_tensor(_generate(d), dtype=torch.float32) for n, d in m.model.params.items()}
            for n, v in params.items():
                _check(case, f"model.params.{n}", v, case.param_shapes[n])
    return ({k: v.double().numpy() for k, v in data.items()}, {k: v.double().numpy() for k, v in params.items()})


def _check(case: TrainCase, key: str, value: torch.Tensor, shape: tuple) -> None:
    if tuple(value.shape) != tuple(shape):
        raise CaseError(f"{key} came out with shape {list(value.shape)} where {list(shape)} was computed (rounding "
                        f"of the bounds?): give it as linspace or value instead", case.path, case.name, key)
    bad = int((~torch.isfinite(value)).sum())
    if bad:
        raise CaseError(f"{key} is not finite at {bad} of {value.numel()} entries (in float32, as drawn): the data "
                        f"must be finite numbers", case.path, case.name, key)


def _generate(d: DrawModel):
    if d.rand is not None:
        t = torch.rand(d.rand)
    elif d.randn is not None:
        t = torch.randn(d.randn)
    elif d.linspace is not None:
        t = torch.linspace(d.linspace[0], d.linspace[1], int(d.linspace[2]))
    elif d.arange is not None:
        t = torch.arange(d.arange[0], d.arange[1], d.arange[2], dtype=torch.float32)
    elif d.zeros is not None:
        t = torch.zeros(d.zeros)
    elif d.ones is not None:
        t = torch.ones(d.ones)
    else:
        t = torch.tensor(np.array(d.value, dtype=np.float32))
    if d.shape is not None:
        t = t.reshape(d.shape)
    return t * d.scale + d.offset if (d.scale != 1.0 or d.offset != 0.0) else t


def batches(case: TrainCase, n: int):
    """The index batches of every step: full batch, or shuffled minibatches per epoch (torch generator)."""
    t = case.model.train
    if t.epochs is None:
        return [None] * t.steps
    size = t.batch_size or n
    g = torch.Generator().manual_seed(case.seed + 1)
    out = []
    for _ in range(t.epochs):
        order = torch.randperm(n, generator=g).numpy() if t.shuffle else np.arange(n)
        out += [order[i:i + size] for i in range(0, n, size)]
    return out
