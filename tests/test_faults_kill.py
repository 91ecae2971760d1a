"""kill -9 at a random moment of each phase (elicitation, training, evaluation, report), then `--resume`: the
same results and the same students, bit for bit, as an uninterrupted run, and no partial step left behind.

A few trials here (seeded); benchmarks/faults.py runs more of them and records the figures.
"""

from __future__ import annotations

import random

import pytest

from faultkit import PHASES, kill_job_config, kill_trial, reference_run

TRIALS = 6


@pytest.fixture(scope="module")
def job(tmp_path_factory, tiny_models):
    root = tmp_path_factory.mktemp("kill")
    config = kill_job_config(root / "job", tiny_models)
    return config, reference_run(config, root / "reference"), root


def test_kill_9_in_every_phase_then_resume_gives_the_uninterrupted_result(job):
    config, reference, root = job
    rng = random.Random(26)
    trials = [kill_trial(config, root / f"trial{i}", reference, PHASES[i % len(PHASES)], rng) for i in range(TRIALS)]
    assert {t.killed_in for t in trials} >= set(PHASES), [t.killed_in for t in trials]  # every phase was hit
    for trial in trials:
        assert trial.resumed_rc == 0, trial.error
        assert trial.identical, f"killed in {trial.killed_in} after {trial.delay_s:.2f} s: resumed result differs"
        assert not trial.partial_steps_left and not trial.partial_writes_left, trial
