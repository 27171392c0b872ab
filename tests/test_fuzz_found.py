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


def test_empty_slices_broadcast_and_softmax_like_torch(tmp_path):
    # a size-1 dim broadcast against an empty one was inferred as size 1 (max(0, 1)), and softmax over an empty
    # dim took numpy's max of no entries: both crashed the run ("running it raised ValueError")
    result, cases = run_json(tmp_path, '''
dtypes = ["float64", "float32", "float16", "bfloat16"]
[[case]]
name = "broadcast"
expr = "sum(sin(x[:, 3:]) * 2) + sum(x)"
vars.x = { shape = [2, 3] }
[[case]]
name = "softmax"
expr = "sum(softmax(x[:, 3:], dim=1)) + x"
vars.x = { shape = [2, 3] }
''')
    assert result.exit_code == 0, result.output
    assert [c["status"] for c in cases] == ["pass", "pass"], [c["message"] for c in cases]


def test_sum_or_mean_of_a_constant_passes(tmp_path):
    # autograd asked a Python float for its .ndim: an AttributeError that stopped the case
    result, [case] = run_json(tmp_path, '''
name = "const"
expr = "logsigmoid(mean(0.5 * 0.5)) + sum(2.0) * x"
dtypes = ["float64", "float16"]
vars.x = { shape = [] }
''')
    assert result.exit_code == 0, result.output
    assert case["status"] == "pass", case["message"]


def test_amax_amin_logsumexp_over_an_empty_dim_are_case_errors_naming_the_op(tmp_path):
    # torch raises for amax/amin of no entries (logsumexp is -inf): a case error, not a numpy traceback
    result, cases = run_json(tmp_path, '''
[[case]]
name = "amin"
expr = "amin(x[2:], dim=-1) + x"
vars.x = { shape = [2] }
[[case]]
name = "lse"
expr = "logsumexp(x[:, 3:], dim=1) * x[:, 0]"
vars.x = { shape = [2, 3] }
[[case]]
name = "good"
expr = "sum(x[2:]) + x"
vars.x = { shape = [2] }
''')
    assert result.exit_code == 2
    assert [c["status"] for c in cases] == ["error", "error", "pass"]
    assert "amin() over dim 0, which is empty (size 0)" in cases[0]["message"]
    assert "case 'amin'" in cases[0]["message"] and "case.toml" in cases[0]["message"]
    assert "logsumexp() over dim 1, which is empty" in cases[1]["message"]


def test_reductions_scans_and_sort_of_a_constant_pass(tmp_path):
    # a constant reached torch.amin / torch.cumsum / torch.sort as a Python float: an AttributeError or TypeError
    # reported as "autograd is off"
    result, [case] = run_json(tmp_path, '''
name = "consts"
expr = "amin(0.5).detach() + sort(0.5) + cumsum(0.5, 0) * cumprod(2.0, 0) + softmax(1.5, dim=0) + norm(3.0) * x"
dtypes = ["float64", "float32", "float16"]
vars.x = { shape = [] }
''')
    assert result.exit_code == 0, result.output
    assert case["status"] == "pass", case["message"]


def test_var_of_equal_entries_allows_the_second_order_rounding_of_its_squares(tmp_path):
    # var of three equal entries is 0; float32's mean of them is off by rounding, so each deviation is ~u|x| and
    # its square ~(u x)**2: a first-order budget of 2|dev| e = 0 allowed nothing ("autograd is off", 5e-15 vs 0)
    result, [case] = run_json(tmp_path, '''
name = "var_equal"
expr = """var(atan(expand((cat([x[1:], expand(x, [2])], dim=0) @ cat([y[2:, :], expand(z, [2, 1])], dim=-2)),
            [3])), correction=1, dim=-1)"""
dtypes = ["float64", "float32"]
seed = 1207760805
vars.x = { shape = [1], domain = [-2.0, 2.0] }
vars.y = { shape = [2, 1], domain = [-1.0, 1.0] }
vars.z = { shape = [], domain = [-1.0, 1.0] }
''')
    assert result.exit_code == 0, result.output
    assert case["status"] == "pass", case["message"]
    assert any(c["kind"] == "value" and c["dtype"] == "float32" and c["status"] == "pass" for c in case["checks"])


def test_flatten_of_an_empty_slice_passes(tmp_path):
    # the reference's index map asked numpy to infer a -1 size for an empty array: a case error torch does not give
    result, [case] = run_json(tmp_path, '''
name = "flat"
expr = "sum(flatten(x[:, 3:], 0, 1)) + sum(flatten(sin(y[1:, :, :]), 1, 2)) + x"
dtypes = ["float64", "float32"]
vars.x = { shape = [2, 3] }
vars.y = { shape = [1, 2, 2] }
''')
    assert result.exit_code == 0, result.output
    assert case["status"] == "pass", case["message"]


def test_expand_and_reshape_to_an_empty_dim_pass_as_torch(tmp_path):
    # torch expands a size-1 dim to 0 and reshapes 0 entries to [3, 0, 2]; both were case errors ("sizes must be
    # positive"); a -1 beside a 0 stays an error, as torch cannot infer it either
    _, cases = run_json(tmp_path, '''
dtypes = ["float64", "float32"]
[[case]]
name = "expand0"
expr = "sum(expand(sin(x[0]), [0, 3])) + x"
vars.x = { shape = [1, 3] }
[[case]]
name = "reshape0"
expr = "sum(reshape(x[:, 3:], [3, 0, 2])) * 2 + sum(reshape(x[:, 3:], [2, -1])) + x"
vars.x = { shape = [2, 3] }
[[case]]
name = "ambiguous"
expr = "sum(reshape(x[:, 3:], [0, -1])) + x"
vars.x = { shape = [2, 3] }
''')
    assert [c["status"] for c in cases] == ["pass", "pass", "error"], [c["message"] for c in cases]
    assert "a -1 cannot be inferred beside a size 0" in cases[2]["message"]
