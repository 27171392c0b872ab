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


STYLES = {"symbolic": dict(color="0.55", lw=4.0, ls="-", alpha=0.7),  # the reference: a wide grey band
          "float64": dict(color="tab:blue", lw=1.6, ls="--"),
          "float32": dict(color="tab:orange", lw=1.3, ls=":", marker="o", markersize=3)}


def _style(label: str) -> dict:
    return next((dict(v) for k, v in STYLES.items() if k in label), dict(lw=1.2))


def plot(case: TrainCase, data, runs: dict, directory) -> str:
    """Three panels, each answering one question: does the loss fall; where do the runs part from the float64
    symbolic-gradient reference; does the fit match the data (one input feature: the fitted line over the data;
    more: every parameter's trajectory against its target). Curves that coincide are told apart by line style
    and markers, and a note says when they are identical. Returns the PNG's path."""
    from matplotlib.figure import Figure

    t = case.model.train
    fig = Figure(figsize=(15, 4.8))
    ax_loss, ax_part, ax_fit = fig.subplots(1, 3)
    fig.suptitle(case.name, fontsize=11)
    longest = max((len(r.losses) for r in runs.values()), default=1)
    for label, run in runs.items():
        style = _style(label)
        if "marker" in style:
            style["markevery"] = max(1, longest // 25)
        ax_loss.plot(range(len(run.losses)), run.losses, label=label, **style)
    ax_loss.set_yscale("log")
    ax_loss.set_title("Does the loss fall?", fontsize=11)
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel(f"loss ({t.loss}, before the step's update)" if isinstance(t.loss, str) else "loss")
    ax_loss.legend(fontsize=8)
    _partings(ax_part, runs)
    x = np.asarray(data[t.inputs[0]], dtype=float)
    y = np.asarray(data[t.target], dtype=float)
    label, run = next(iter(runs.items()))
    line = _fitted_line(case, x, run.params[-1]) if x.ndim <= 2 and x.reshape(len(x), -1).shape[1] == 1 else None
    if line is not None:
        xs = x.reshape(-1)
        ax_fit.scatter(xs, y.reshape(len(xs), -1)[:, 0], s=14, label="data", color="tab:gray")
        ax_fit.plot(*line, color="red", label=f"fit at the last step ({label})")
        ax_fit.set_title("Does the fit match the data?", fontsize=11)
        ax_fit.set_xlabel(t.inputs[0])
        ax_fit.set_ylabel(t.target)
        ax_fit.legend(fontsize=8)
    else:
        _trajectories(ax_fit, case, run, label)
    directory = prepare_dir(case, directory)
    path = directory / file_name(case.name)
    try:
        # written beside and renamed into place: a link already at the path is replaced, never followed
        fd, tmp = tempfile.mkstemp(suffix=".png", dir=directory)
        try:
            with os.fdopen(fd, "wb") as f:
                fig.tight_layout()
                fig.savefig(f, dpi=90, format="png")
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    except OSError as exc:
        raise UsageError(f"{case.path}: case {case.name!r}: --plot: cannot write {path}: {exc.strerror or exc}") \
            from None
    return str(path)


def _partings(ax, runs: dict) -> None:
    """Largest parameter difference of each autograd run from the float64 reference, step by step."""
    ref_label = next((k for k in runs if "symbolic" in k), None)
    ax.set_title("Where do the runs part from the float64 reference?", fontsize=11)
    ax.set_xlabel("step")
    ax.set_ylabel("max |param - reference param|")
    if ref_label is None:
        ax.text(0.5, 0.5, "no reference run", ha="center", va="center", transform=ax.transAxes)
        return
    ref = runs[ref_label]
    identical, drawn = [], False
    for label, run in runs.items():
        if label == ref_label:
            continue
        n = min(len(run.params), len(ref.params))
        diff = np.array([max(float(np.max(np.abs(run.params[i][k] - ref.params[i][k]), initial=0.0))
                             for k in ref.params[0]) for i in range(n)])
        if not np.any(diff):
            identical.append(label)
            continue
        style = _style(label)
        style.pop("marker", None)
        ax.plot(range(n), np.where(diff > 0, diff, np.nan), label=label, **style)
        drawn = True
    if drawn:
        ax.set_yscale("log")
        ax.legend(fontsize=8, title="a gap: exactly equal at that step")
    if identical:
        ax.text(0.5, 0.92 if drawn else 0.5, f"identical to the reference at every step:\n{', '.join(identical)}",
                ha="center", va="top" if drawn else "center", transform=ax.transAxes, fontsize=9)


def _trajectories(ax, case: TrainCase, run, label: str) -> None:
    """Every parameter entry against the step, with its target (expect.params) dashed: for models with more
    than one input feature, where no single fitted line can be drawn."""
    ax.set_title("Do the parameters reach their targets?", fontsize=11)
    ax.set_xlabel("step")
    ax.set_ylabel(f"parameter value ({label})")
    colours = iter(["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink"])
    shown = 0
    for name in run.params[0]:
        values = np.array([p[name].reshape(-1) for p in run.params])
        target = case.expect_params.get(name) if getattr(case, "expect_params", None) else None
        target = None if target is None else np.broadcast_to(np.asarray(target, float), run.params[0][name].shape)
        for j in range(min(values.shape[1], 7 - shown)):
            colour = next(colours, "black")
            entry = f"{name}[{j}]" if values.shape[1] > 1 else name
            ax.plot(values[:, j], color=colour, label=f"{entry} -> {values[-1, j]:.5g}")
            if target is not None:
                ax.axhline(float(target.reshape(-1)[j]), color=colour, ls="--", lw=1)
            shown += 1
    ax.legend(fontsize=8, title="dashed: expect.params" if getattr(case, "expect_params", None) else None)


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
