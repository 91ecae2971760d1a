"""Endpoint faults through `kdistill elicit`: each kind gives the clean run's answers, or one clear line with
every answer so far kept, and a re-run once the fault is gone asks only for the rest (tests/endpoint_faults.py)."""

from __future__ import annotations

import pytest

from conftest import tiny_config_dict
from endpoint_faults import CASES, clean_reference, run_endpoint_case


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_models):
    root = tmp_path_factory.mktemp("endpoint")
    base = tiny_config_dict(root, tiny_models)
    return base, clean_reference(base, root / "clean")


def test_at_least_16_kinds_of_fault():
    assert len(CASES) >= 16 and len({c.name for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_an_endpoint_fault_gives_the_clean_answers_or_a_clear_error_keeping_the_answers(case, setup, tmp_path,
                                                                                      monkeypatch):
    base, reference = setup
    outcome = run_endpoint_case(case, base, tmp_path / "case", reference)
    assert outcome.ok, f"{outcome.detail}: {outcome.line}"
