"""Training plots people can read: one question per panel, labelled axes, coinciding curves told apart."""

import struct

from click.testing import CliRunner
from matplotlib.figure import Figure

from diffcheck.cli import main

from .conftest import ROOT

TRAIN = ROOT / "cases" / "train" / "seeds.toml"


def run_plot(tmp_path, monkeypatch, name):
    figures = []
    save = Figure.savefig

    def keep(self, *args, **kwargs):
        figures.append(self)
        return save(self, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", keep)
    result = CliRunner().invoke(main, ["run", str(TRAIN), "-k", name, "--device", "cpu", "--plot", str(tmp_path)])
    assert result.exit_code == 0, result.output
    (png,) = tmp_path.glob("*.png")
    width, height = struct.unpack(">II", png.read_bytes()[16:24])
    return figures[-1], width, height


def test_each_panel_answers_one_question_and_curves_are_distinguishable(tmp_path, monkeypatch):
    fig, width, height = run_plot(tmp_path, monkeypatch, "T5_short_nn_linear_run")
    assert width >= 1200 and height >= 400  # readable at a glance (was 880x336)
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["Does the loss fall?", "Where do the runs part from the float64 reference?",
                      "Does the fit match the data?"]
    assert all(ax.get_xlabel() and ax.get_ylabel() for ax in fig.axes)
    loss = fig.axes[0]
    styles = {(line.get_linestyle(), line.get_marker(), line.get_linewidth()) for line in loss.get_lines()}
    assert len(styles) == len(loss.get_lines()) == 3  # three coinciding curves, three looks


def test_multi_feature_model_shows_parameter_trajectories_against_targets(tmp_path, monkeypatch):
    fig, _, _ = run_plot(tmp_path, monkeypatch, "T3_two_features_minibatch")
    ax = fig.axes[2]
    assert ax.get_title() == "Do the parameters reach their targets?"
    labels = [line.get_label() for line in ax.get_lines() if not line.get_label().startswith("_")]
    assert [lab.split(" ")[0] for lab in labels] == ["w[0]", "w[1]", "b"]
    targets = sorted(round(line.get_ydata()[0], 6) for line in ax.get_lines() if line.get_linestyle() == "--")
    assert targets == [-3.4, 2.0, 4.2]  # T3's true_w and true_b, dashed
