"""The gradient case as stages over a frozen point: each stage has its own random stream, so adding a stage moves
no other stage's draws; the results model's enums keep today's strings; verdicts read fields, not messages."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

import diffcheck
from diffcheck import checks
from diffcheck.model import Check, Kind, Status
from diffcheck.runner import Options, run_case

CASE = {"name": "probe", "expr": "sum(sin(x) * y)", "devices": ["cpu"], "dtypes": ["float64"], "seed": 5,
        "vars": {"x": {"shape": [40]}, "y": {"shape": [40]}}}


def _case():
    from diffcheck.casefile import build_case

    return build_case(CASE)


def _fd_probes(result):
    return [(c.label, c.status, c.max_abs_err, c.margin) for c in result.checks if c.kind == "fd"]


def test_a_new_stage_that_draws_random_numbers_moves_no_other_stage(monkeypatch):
    before = run_case(_case(), Options(devices=("cpu",)))

    def extra(point):
        checks.stage_rng(point.seed, "extra").standard_normal(10_000)
        return []

    monkeypatch.setattr(checks, "STAGES", (checks.Stage("extra", "reference", lambda case: True, extra),
                                           *checks.STAGES))
    after = run_case(_case(), Options(devices=("cpu",)))
    assert before.status == after.status == "pass"
    assert _fd_probes(before) and _fd_probes(before) == _fd_probes(after)  # the random directions did not move


def test_each_stage_has_its_own_stream_from_the_seed_and_its_name():
    a, b = checks.stage_rng(3, "reference").random(4), checks.stage_rng(3, "reference").random(4)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, checks.stage_rng(3, "impl").random(4))
    assert not np.array_equal(a, checks.stage_rng(4, "reference").random(4))


def test_the_point_is_frozen():
    from diffcheck.checks.point import build_point

    point = build_point(_case(), Options(), 5, None, ["float64"])
    with pytest.raises(dataclasses.FrozenInstanceError):
        point.base = {}


def test_enums_compare_equal_to_strings_and_write_them_in_json():
    check = Check("grad", "autograd", "symbolic", status="skip")
    assert check.kind is Kind.GRAD and check.status == Status.SKIP == "skip"
    assert f"{check.kind} {check.status}" == "grad skip" and check.label == "grad"
    assert json.loads(json.dumps(check.to_json()))["kind"] == "grad"
    with pytest.raises(ValueError):
        Check("gard", "autograd", "symbolic")  # a misspelt kind is caught where it is made


def test_the_public_names_live_in_the_model_and_the_runner_re_exports_them():
    import diffcheck.runner

    assert diffcheck.Options is diffcheck.runner.Options and diffcheck.Options.__module__ == "diffcheck.model"
    assert diffcheck.CaseResult is diffcheck.runner.CaseResult


def test_a_device_left_out_is_known_by_its_field_not_by_its_message():
    from diffcheck.devices import not_requested

    result = run_case(dataclasses.replace(_case(), devices=("cpu", "cuda")), Options(devices=("cpu",)))
    skipped = [c for c in result.checks if c.device == "cuda"]
    assert skipped and all(c.details["skipped"] == "not_requested" and not_requested(c) for c in skipped)
    lookalike = Check("grad", "autograd", "symbolic", status="skip", message="cuda not requested (--device cpu)")
    assert not not_requested(lookalike)


def test_assert_ok_raises_with_the_report_the_runner_rendered():
    case = dataclasses.replace(_case(), expect=None)
    result = diffcheck.check("sum(x * x)", {"x": np.array([1.0, 2.0])}, expect={"grad": {"x": [2.0, 5.0]}},
                             dtypes=["float64"])
    assert result.status == "fail" and result.report_text
    with pytest.raises(AssertionError, match="expect_grad x"):
        result.assert_ok()
    assert run_case(case, Options(devices=("cpu",))).report_text == ""  # a pass renders nothing


def test_a_list_of_statuses_prints_as_it_always_did():
    assert repr([Check("jvp", "impl", "symbolic").status]) == "['pass']"
