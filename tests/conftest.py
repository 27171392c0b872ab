"""Shared fixtures. Hypothesis: the built-in 'ci' profile loads itself when CI is set; 'dev' is the default."""

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile("dev", max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("thorough", max_examples=1000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
if not os.environ.get("CI"):
    settings.load_profile(os.environ.get("DIFFCHECK_HYPOTHESIS_PROFILE", "dev"))

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"


@pytest.fixture
def write_case(tmp_path):
    """Write TOML text to a file in a temporary directory and return its path."""

    def write(text: str, name: str = "case.toml") -> Path:
        path = tmp_path / name
        path.write_text(text)
        return path

    return write

# tests/data holds case files that must fail or are invalid on purpose: the CLI tests run them, pytest must not
# collect them as tests of their own.
collect_ignore_glob = ["data/*"]
