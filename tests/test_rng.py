"""Random functions: a forward that changes between two evaluations at one point is one clear failing check
(not a flood of mismatches); with rng = "replay" every evaluation replays the same torch RNG state, so a
dropout is judged like any other function, and a backward that draws its own mask is caught."""

import json
import shutil

import pytest
import torch
from click.testing import CliRunner

from diffcheck.casefile import load_data
from diffcheck.cli import main
from diffcheck.runner import Options, run_case

from .conftest import ROOT

CORPUS = ROOT / "benchmarks" / "transform_corpus"


def run_json(tmp_path, path, *args):
    out = tmp_path / "out.json"
    result = CliRunner().invoke(main, ["run", str(path), "--json", str(out), "--device", "cpu", *map(str, args)])
    return result.exit_code, result.output, {c["name"]: c for c in json.loads(out.read_text())["cases"]}


@pytest.fixture
def corpus(tmp_path):
    for name in ("rng.toml", "rng_kernels.py"):
        shutil.copy(CORPUS / name, tmp_path / name)
    return tmp_path / "rng.toml"


def test_the_corpus_mask_is_what_the_replayed_rng_draws():
    import tomllib

    data = tomllib.loads((CORPUS / "rng.toml").read_text())
    torch.manual_seed(data["seed"])
    drawn = torch.rand(data["vars"]["m"]["shape"], dtype=torch.float64) >= 0.5
    assert drawn.tolist() == data["vars"]["m"]["value"]


def test_a_random_forward_without_replay_is_one_clear_finding(tmp_path, corpus):
    corpus.write_text(corpus.read_text().replace('rng = "replay"\n', ""))
    code, out, cases = run_json(tmp_path, corpus)
    assert code == 1
    for case in cases.values():
        assert case["status"] == "fail"
        assert case["message"].startswith('the function draws random numbers: set rng = "replay" (evaluations '
                                          "at the same point differ at "), case["message"]
        assert [c["kind"] for c in case["checks"]] == ["rng"]  # nothing else was compared: no flood
    assert "Jacobian" not in out and "self_fd" not in out


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_with_replay_a_dropout_is_checked_like_any_function(tmp_path, corpus, dtype):
    code, out, cases = run_json(tmp_path, corpus, "--dtype", dtype)
    assert code == 1, out
    for name in ("ok_rng_dropout", "ok_rng_dropout_autograd"):
        case = cases[name]
        assert case["status"] == "pass", out
        ran = {c["kind"] for c in case["checks"] if c["status"] == "pass"}
        assert {"rng", "self_fd", "grad", "value"} <= ran if dtype == "float64" else {"rng", "grad", "value"} <= ran
    bug = cases["bug_rng_dropout"]
    assert bug["status"] == "fail"
    failed = {c["kind"] for c in bug["checks"] if c["status"] == "fail"}
    assert "grad" in failed and (dtype != "float64" or "self_fd" in failed), out
    assert [c["status"] for c in bug["checks"] if c["kind"] == "rng"] == ["pass"]


def test_replay_leaves_the_callers_rng_stream_alone(tmp_path, corpus):
    [case] = [c for c in load_data_file(corpus) if c.name == "ok_rng_dropout"]
    torch.manual_seed(123)
    before = torch.get_rng_state()
    assert run_case(case, Options(devices=("cpu",), dtypes=("float64",))).status == "pass"
    assert torch.equal(torch.get_rng_state(), before)


def load_data_file(path):
    import tomllib

    data = tomllib.loads(path.read_text())
    return load_data(data, str(path))


def test_a_small_random_output_cannot_pass_by_repeating_by_chance():
    """Two draws of a 3-entry mask agree 1 time in 8: the probe evaluates a small output until 32 entries agree."""
    import torch

    import diffcheck

    def dropout(x):
        return x * (torch.rand(x.shape, dtype=torch.float64) > 0.5)

    for _ in range(20):
        result = diffcheck.check(None, {"x": {"shape": [3], "domain": [1.0, 2.0]}}, impl=dropout, dtypes="float64")
        assert result.message.startswith('the function draws random numbers: set rng = "replay"'), result.message


def test_randomness_outside_torch_is_named_even_under_replay(tmp_path):
    (tmp_path / "mine.py").write_text("import random\n\ndef f(x):\n    return x * random.random()\n")
    path = tmp_path / "c.toml"
    path.write_text('name = "py_random"\nexpr = "x"\nimpl = "mine:f"\nrng = "replay"\nvars.x = { shape = [3] }\n')
    code, out, cases = run_json(tmp_path, path)
    assert code == 1
    assert cases["py_random"]["message"].startswith('the forward changes between evaluations even with rng = '
                                                    '"replay"'), out


def test_a_deterministic_impl_gets_no_rng_check_and_rng_is_validated(tmp_path):
    (tmp_path / "mine.py").write_text("def f(x):\n    return 2 * x\n")
    path = tmp_path / "c.toml"
    path.write_text('name = "det"\nexpr = "2 * x"\nimpl = "mine:f"\nvars.x = { shape = [3] }\n')
    code, out, cases = run_json(tmp_path, path)
    assert code == 0 and not [c for c in cases["det"]["checks"] if c["kind"] == "rng"], out
    path.write_text(path.read_text() + 'rng = "replai"\n')
    result = CliRunner().invoke(main, ["run", str(path)])
    assert result.exit_code == 2 and "case 'det'" in result.output and "rng" in result.output
    assert "'replay'" in result.output, result.output
