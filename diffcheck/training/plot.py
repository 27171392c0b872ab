"""A PNG per training case: the loss curves of every run and, for one input feature, the fitted line."""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from pathlib import Path

import numpy as np

from ..errors import UsageError
from .schema import TrainCase

MAX_STEM = 80  # file name characters before the hash suffix; file systems allow 255 bytes


def plot(case: TrainCase, data, runs: dict, directory) -> str:
    """A PNG of the loss curves and, for one input feature, the fitted line over the data. Returns its path."""
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
    label, run = next(iter(runs.items()))
    line = _fitted_line(case, x, run.params[-1]) if x.ndim <= 2 and x.reshape(len(x), -1).shape[1] == 1 else None
    if line is not None:
        xs = x.reshape(-1)
        ax_fit.scatter(xs, y.reshape(len(xs), -1)[:, 0], s=12, label="data")
        ax_fit.plot(*line, color="red", label=f"fit ({label})")
        ax_fit.legend(fontsize=8)
    else:
        ax_fit.text(0.5, 0.5, "not one input feature with one prediction per sample:\nno line to draw",
                    ha="center", va="center")
    ax_fit.set_title(case.name, fontsize=9)
    fig.tight_layout()
    directory = prepare_dir(case, directory)
    path = directory / file_name(case.name)
    try:
        # written beside and renamed into place: a link already at the path is replaced, never followed
        fd, tmp = tempfile.mkstemp(suffix=".png", dir=directory)
        try:
            with os.fdopen(fd, "wb") as f:
                fig.savefig(f, dpi=80, format="png")
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    except OSError as exc:
        raise UsageError(f"{case.path}: case {case.name!r}: --plot: cannot write {path}: {exc.strerror or exc}") \
            from None
    return str(path)


def prepare_dir(case: TrainCase, directory) -> Path:
    """The plot directory, created; checked before a case runs so that a bad --plot does not cost the run."""
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"{case.path}: case {case.name!r}: --plot: cannot create {directory}: "
                         f"{exc.strerror or exc}") from None
    if not os.access(directory, os.W_OK):
        raise UsageError(f"{case.path}: case {case.name!r}: --plot: {directory} is not writable")
    return directory


def _fitted_line(case: TrainCase, x: np.ndarray, params: dict[str, np.ndarray]):
    """The model's prediction (first output) over a grid of its one input feature, or None where it has none."""
    import torch

    from ..engines.autograd import build

    if len(case.model.train.inputs) != 1:
        return None
    grid = np.linspace(x.min(), x.max(), 50)
    inputs = {case.model.train.inputs[0]: torch.tensor(grid.reshape(50, *x.shape[1:]))}
    try:
        with torch.no_grad():
            p = build(case.model_ir)(**inputs, **{k: torch.tensor(v) for k, v in params.items()}).numpy()
    except RuntimeError:  # a model whose params are per sample does not extend to a grid
        return None
    return (grid, p.reshape(50, -1)[:, 0]) if p.shape[:1] == (50,) else None


def file_name(name: str) -> str:
    """The PNG's name: the case name if it is short and plain, else its plain characters (truncated) and a hash of
    the exact name after a '+', which a plain name never holds: two cases never share a file, and no name leaves
    the plot directory."""
    stem = re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:MAX_STEM]
    if stem == name and not stem.startswith("."):
        return f"{stem}.png"
    return f"{stem.lstrip('.')}+{hashlib.sha256(name.encode()).hexdigest()[:12]}.png"
