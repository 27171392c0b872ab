"""A PNG per training case: the loss curves of every run and, for one input feature, the fitted line."""

from __future__ import annotations

import re

import numpy as np

from .schema import TrainCase


def plot(case: TrainCase, data, runs: dict, directory) -> str:
    """A PNG of the loss curves and, for one input feature, the fitted line over the data. Returns its path."""
    from pathlib import Path

    from matplotlib.figure import Figure

    t = case.model.train
    fig = Figure(figsize=(11, 4.2))
    ax_loss, ax_fit = fig.subplots(1, 2)
    for label, run in runs.items():
        ax_loss.plot(range(len(run.losses)), run.losses, label=label)
    ax_loss.set_yscale("log")
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("loss (before the step's update)")
    ax_loss.legend(fontsize=8)
    x = np.asarray(data[t.inputs[0]], dtype=float)
    y = np.asarray(data[t.target], dtype=float)
    if x.ndim <= 2 and x.reshape(len(x), -1).shape[1] == 1:
        xs = x.reshape(-1)
        ax_fit.scatter(xs, y.reshape(len(xs), -1)[:, 0], s=12, label="data")
        label, run = next(iter(runs.items()))
        final = run.params[-1]
        grid = np.linspace(xs.min(), xs.max(), 50)
        if case.model.model.type == "linear":
            line = grid * float(final["weight"].reshape(-1)[0]) + float(final["bias"].reshape(-1)[0])
        else:
            (_wn, w), (_bn, b) = list(final.items())[:2]
            line = grid * float(np.reshape(w, -1)[0]) + float(np.reshape(b, -1)[0])
        ax_fit.plot(grid, line, color="red", label=f"fit ({label})")
        ax_fit.legend(fontsize=8)
    else:
        ax_fit.text(0.5, 0.5, "more than one input feature:\nno line to draw", ha="center", va="center")
    ax_fit.set_title(case.name, fontsize=9)
    Path(directory).mkdir(parents=True, exist_ok=True)
    path = Path(directory) / f"{re.sub(r'[^A-Za-z0-9_.-]', '_', case.name)}.png"
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    return str(path)
