"""Whole runs through faults, in a real `kdistill run` process: kill -9 at a random moment of each phase
(elicitation, training, evaluation, report), a full disk, a file where a folder should be, a folder it may not
write. Each ends in one line (or a kill), and `--resume` once the cause is gone gives the uninterrupted run's
results and students, bit for bit, with no partial step left behind.

A few kill trials here (seeded); benchmarks/faults.py runs more of them and records the figures.
"""

from __future__ import annotations

import os
import random
import resource
import subprocess

import pytest

from faultkit import PHASES, cli_env, fingerprint, kill_job_config, kill_trial, partial_writes, reference_run, run_cmd

TRIALS = 6


@pytest.fixture(scope="module")
def job(tmp_path_factory, tiny_models):
    root = tmp_path_factory.mktemp("runs")
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


def _fails_in_one_line(config, out, **popen) -> str:
    """The one error line of a run that fails (its progress bars and log lines are on stderr too)."""
    done = subprocess.run(run_cmd(config, out), env=cli_env(), capture_output=True, text=True, timeout=600, **popen)
    errors = [line[line.index("kdistill: "):] for line in done.stderr.splitlines() if "kdistill: " in line]
    assert done.returncode == 2 and len(errors) == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
    return errors[0]


def _resumes_to_the_reference(config, out, reference) -> None:
    subprocess.run(run_cmd(config, out, "--resume"), env=cli_env(), check=True, capture_output=True, timeout=600)
    assert fingerprint(out / "tiny") == reference.fingerprint
    assert not partial_writes(out / "tiny")


def test_a_full_disk_is_one_line_naming_the_file_and_resume_finishes_the_run(job):
    """A file-size limit makes every write past 60 kB fail as a full disk does (the first is a checkpoint)."""
    config, reference, root = job
    out = root / "full-disk"
    limit = lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (60_000, 60_000))  # noqa: E731
    line = _fails_in_one_line(config, out, preexec_fn=limit)
    assert "kdistill: error: " in line and "step-0000003" in line and "ulimit -f" in line and "--resume" in line
    assert not partial_writes(out / "tiny")  # the failed write left nothing half-written
    _resumes_to_the_reference(config, out, reference)


def test_a_file_where_a_folder_should_be_is_one_line_and_resume_finishes_the_run(job):
    config, reference, root = job
    out = root / "file-in-the-way"
    (out / "tiny").mkdir(parents=True)
    (out / "tiny" / "students").write_text("not a folder")
    line = _fails_in_one_line(config, out)
    assert "tiny/students: a file already exists where a folder is needed" in line, line
    (out / "tiny" / "students").unlink()
    _resumes_to_the_reference(config, out, reference)


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_a_folder_it_may_not_write_is_one_line_and_resume_finishes_the_run(job):
    config, reference, root = job
    out = root / "read-only"
    (out / "tiny" / "eval").mkdir(parents=True)
    (out / "tiny" / "eval").chmod(0o555)
    try:
        line = _fails_in_one_line(config, out)
        assert "tiny/eval" in line and "permission denied" in line, line
    finally:
        (out / "tiny" / "eval").chmod(0o755)
    _resumes_to_the_reference(config, out, reference)
