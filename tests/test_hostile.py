"""Hostile and malformed case files: a clear error naming the file (and key), never a crash; good cases still run."""

import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from diffcheck.casefile import Case, load_data
from diffcheck.cli import main
from diffcheck.errors import CaseError

HOSTILE = {
    "binary.toml": b"\x00\xff\xfe binary",
    "deep.toml": ("a = " + "[" * 5000 + "]" * 5000 + "\n").encode(),
    "bomb.toml": b'name = "bomb"\nexpr = "sum(x + y)"\nvars.x = { shape = [4000000, 1] }\n'
                 b'vars.y = { shape = [1, 4000000] }\n',
    "negseed.toml": b'name = "negseed"\nexpr = "x"\nseed = -3\nvars.x = {}\n',
    "caseint.toml": b"case = 5\n",
    "nameint.toml": b'[[case]]\nname = 3\nexpr = "x"\n',
    "escape.toml": b'name = "escape"\nexpr = "x.__class__.__mro__[1].__subclasses__()"\nvars.x = {}\n',
    "huge.toml": b'name = "huge"\nexpr = "x"\nvars.x = { shape = [100000, 100000] }\n',
    "strval.toml": b'name = "strval"\nexpr = "x"\nvars.x = { shape = [2], value = "[1, 2]" }\n',
    "import.toml": b'name = "imp"\nexpr = "__import__(\'os\').system(\'touch SENTINEL\')"\nvars.x = {}\n',
    "lambda.toml": b'name = "lam"\nexpr = "(lambda: x)()"\nvars.x = {}\n',
    "nan.toml": b'name = "nan"\nexpr = "x"\nvars.x = { value = nan }\n',
    "train_bad.toml": b'kind = "train"\nname = "t"\ndata.x = { rand = [3, 1] }\ndata.y = "x"\n'
                      b'model.expr = "w*x"\nmodel.params.w = { zeros = [1] }\ntrain = { lr = -1.0, steps = 3 }\n',
}
GOOD = b'name = "ok"\nexpr = "sum(x**2)"\nvars.x = { shape = [3] }\n'


def test_every_hostile_file_is_an_error_and_the_good_case_still_passes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name, content in HOSTILE.items():
        (tmp_path / name).write_bytes(content)
    (tmp_path / "ok.toml").write_bytes(GOOD)
    result = CliRunner().invoke(main, ["run", str(tmp_path), "--device", "cpu"])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert result.exit_code == 2
    assert "PASS" in result.output and "ok.toml::ok" in result.output
    for name in HOSTILE:
        assert f"ERROR {tmp_path / name}" in result.output, name
    assert not (tmp_path / "SENTINEL").exists() and "Traceback" not in result.output


toml_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12)
keys = st.sampled_from(["name", "expr", "vars", "dtypes", "devices", "seed", "expect", "tolerance", "impl",
                        "order", "kind", "data", "model", "train", "case", "description"])


@given(st.dictionaries(keys, toml_values, max_size=6))
def test_random_data_gives_cases_or_case_errors(data):
    for item in load_data(data, "fuzz.toml"):
        assert isinstance(item, Case | CaseError) or hasattr(item, "model")


@pytest.mark.parametrize("expr", ["x" + " + x" * 3000, "-" * 5000 + "x", "x" + "**x" * 300])
def test_very_long_or_deep_expressions_are_errors_or_cases(expr):
    [item] = load_data({"name": "long", "expr": expr, "vars": {"x": {}}}, "long.toml")
    assert isinstance(item, Case | CaseError)
