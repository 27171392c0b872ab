"""diffcheck.check's arguments: dtypes/devices as one name or many, vars as arrays and tensors, clean errors."""

import subprocess
import sys

import numpy as np
import pytest
import torch

import diffcheck
from diffcheck import CaseError

X = {"x": {"shape": [3]}}


def _autograd_dtypes(result):
    return sorted({c.dtype for c in result.checks if c.engine == "autograd"})


@pytest.mark.parametrize("dtypes", ["float32", ["float32"], ("float32",), torch.float32, [torch.float32]])
def test_dtypes_take_one_name_or_a_sequence(dtypes):
    result = diffcheck.check("sum(x**2)", vars=X, dtypes=dtypes, devices=torch.device("cpu"))
    assert result.ok and _autograd_dtypes(result) == ["float32"]


def test_none_means_the_default_dtypes_and_devices():
    result = diffcheck.check("sum(x**2)", vars=X, dtypes=None, devices=None)
    assert result.ok and _autograd_dtypes(result) == ["float32", "float64"]
    assert {c.device for c in result.checks if c.engine == "autograd"} == {"cpu"}


@pytest.mark.parametrize(("arg", "value"), [("dtypes", 5), ("dtypes", {"float32": 1}), ("devices", b"cpu"),
                                            ("devices", 1.0)])
def test_nonsense_dtypes_or_devices_are_a_type_error_naming_the_argument(arg, value):
    with pytest.raises(TypeError, match=f"^diffcheck.check: {arg} must be a name or a sequence of names"):
        diffcheck.check("sum(x**2)", vars=X, **{arg: value})


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"dtypes": "float33"}, "dtypes.0: Input should be 'float64', 'float32', 'float16' or 'bfloat16' (got 'float33')"),
    ({"devices": "gpu"}, "devices.0: Input should be 'cpu' or 'cuda' (got 'gpu')"),
    ({"dtypes": []}, "'dtypes' must list at least one entry"),
    ({"dtypes": [torch.int32]}, "(got 'int32')"),
])
def test_unknown_names_are_case_errors_naming_the_argument(kwargs, message):
    with pytest.raises(CaseError) as info:
        diffcheck.check("sum(x**2)", vars=X, **kwargs)
    assert message in str(info.value) and str(info.value).startswith("<diffcheck.check>: case 'check': ")
    assert info.value.key == next(iter(kwargs)) or info.value.key.startswith(next(iter(kwargs)))


@pytest.mark.parametrize("x", [np.array([1.0, 2.0]), torch.tensor([1.0, 2.0], requires_grad=True),
                               {"value": np.array([1.0, 2.0])}, {"value": torch.tensor([1.0, 2.0])},
                               torch.tensor([1.0, 2.0], dtype=torch.float16, requires_grad=True),
                               np.array([1, 2], dtype=np.int64)])
def test_vars_take_arrays_and_tensors_with_their_values(x):
    # the tensor in {"value": t} has requires_grad=False, but the dict form's own requires_grad is not given
    if isinstance(x, dict) and isinstance(x["value"], torch.Tensor):
        x = {**x, "requires_grad": True}
    right = diffcheck.check("sum(x**2)", vars={"x": x}, expect={"grad": {"x": [2.0, 4.0]}}, dtypes="float64")
    assert right.ok, right.message
    wrong = diffcheck.check("sum(x**2)", vars={"x": x}, expect={"grad": {"x": [2.0, 4.5]}}, dtypes="float64")
    assert wrong.status == "fail" and any(c.diagnosis == "only entry [1] is wrong" for c in wrong.checks)


def test_vars_take_numbers_and_numpy_scalars():
    result = diffcheck.check("x**2 * y", vars={"x": 3.0, "y": np.float32(2.0)}, expect={"grad": {"x": 12.0}},
                             dtypes="float64")
    assert result.ok, result.message
    assert diffcheck.check("x**2 * y", vars={"x": 3, "y": 2.0}, expect={"grad": {"x": 13.0}},
                           dtypes="float64").status == "fail"


def test_a_tensor_without_requires_grad_is_held_constant():
    x = torch.tensor([1.0, 2.0], requires_grad=True)
    y = torch.tensor([3.0, 4.0])
    result = diffcheck.check("sum(x*y)", vars={"x": x, "y": y}, dtypes="float64",
                             expect={"value": torch.tensor(11.0), "grad": {"x": np.array([3.0, 4.0])}})
    assert result.ok, result.message
    assert {c.var for c in result.checks if c.kind in ("grad", "fd")} == {"x"}
    with pytest.raises(CaseError, match="var 'y' has requires_grad = false"):
        diffcheck.check("sum(x*y)", vars={"x": x, "y": y}, expect={"grad": {"y": [1.0, 2.0]}})


def test_only_constant_tensors_say_how_to_differentiate_them():
    with pytest.raises(CaseError, match=r"no var is differentiated: the tensors given for x, y have "
                                        r"requires_grad=False \(create them with requires_grad=True"):
        diffcheck.check("sum(x*y)", vars={"x": torch.ones(2), "y": {"value": torch.ones(2)}})


@pytest.mark.parametrize(("x", "message"), [
    (np.array([1 + 1j]), "vars.x must hold real numbers, got a numpy array of complex128"),
    (torch.tensor([True]), "vars.x must hold real numbers, got a tensor of torch.bool"),
    ({"value": np.array(["a"])}, "vars.x.value must hold real numbers, got a numpy array of <U1"),
    (np.array([np.nan]), "vars.x.value must hold finite numbers (no inf or nan)"),
    ({"value": np.ones((1, 2)), "shape": [2]}, "vars.x.value has shape [1, 2] but the shape is [2]"),
    ([1.0, 2.0], "vars.x: Input should be a valid dictionary"),
])
def test_bad_var_values_are_case_errors_naming_the_key(x, message):
    with pytest.raises(CaseError) as info:
        diffcheck.check("sum(x**2)", vars={"x": x})
    assert message in str(info.value)
    assert info.value.key.startswith("vars.x")


@pytest.mark.parametrize("vars", [None, [("x", {"shape": [3]})], "x"])
def test_vars_that_are_not_a_mapping_are_a_type_error(vars):
    with pytest.raises(TypeError, match=r"^diffcheck\.check: vars must be a dict of var name"):
        diffcheck.check("sum(x**2)", vars=vars)


def test_the_api_does_not_import_torch_until_a_check_runs():
    code = "import sys, diffcheck; diffcheck.check; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False"]
