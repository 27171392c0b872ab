"""Defects found by random compositions of the language's ops (a throwaway fuzzer over every op, shape and
dtype): each minimal composition as a case file through the CLI, which must pass or skip with the reason."""

import json

from click.testing import CliRunner

from diffcheck.cli import main


def run_json(tmp_path, text):
    path = tmp_path / "case.toml"
    path.write_text(text)
    out = tmp_path / "report.json"
    result = CliRunner().invoke(main, ["run", str(path), "--device", "cpu", "--json", str(out)])
    return result, json.loads(out.read_text())["cases"]


def test_expand_and_permute_of_a_0d_tensor_to_no_dims_pass(tmp_path):
    # autograd called x.expand(*()) and x.permute(*()): a TypeError for torch, reported as "autograd is off"
    result, [case] = run_json(tmp_path, '''
name = "zero_d"
expr = "logaddexp(expand(x, []), permute(x, [])) * sin(x)"
dtypes = ["float64", "float32"]
vars.x = { shape = [], domain = [-2.0, 2.0] }
''')
    assert result.exit_code == 0, result.output
    assert case["status"] == "pass"
    assert {c["dtype"] for c in case["checks"] if c["kind"] == "grad" and c["status"] == "pass"} == \
        {"float64", "float32"}


def test_an_eps_that_is_zero_in_float16_skips_float16_with_the_reason(tmp_path):
    # cosine_similarity(a, 0) and normalize(0): torch's eps (1e-8, 1e-12) is 0 in float16, so 0/0 = nan there;
    # that was a false "autograd is off". bfloat16 holds the eps and is still judged.
    result, cases = run_json(tmp_path, '''
dtypes = ["float64", "float32", "float16", "bfloat16"]
[[case]]
name = "cos"
expr = "cosine_similarity(softmax(x, dim=0), x.detach() * (x > 5), dim=0)"
vars.x = { shape = [4] }
[[case]]
name = "norm"
expr = "sum(normalize(x * (x > 5), p=1.0, dim=0) + x)"
vars.x = { shape = [3] }
''')
    assert result.exit_code == 0, result.output
    for case in cases:
        assert case["status"] == "pass", case["message"]
        half = [c for c in case["checks"] if c["dtype"] == "float16" and c["device"] == "cpu"]
        assert half and all(c["status"] == "skip" and "parameter eps = " in c["message"] and
                            "is 0 in float16" in c["message"] for c in half), half
        assert any(c["dtype"] == "bfloat16" and c["kind"] == "grad" and c["status"] == "pass"
                   for c in case["checks"])
