"""The fault suite's tools, shared by tests/test_faults_*.py and benchmarks/faults.py.

A tiny job on disk (random-weight models of conftest.py), `kdistill` in a subprocess, `kill -9` at a random
moment of a chosen phase (elicitation, training, evaluation, report) followed by `--resume`, the fingerprint
of what a run made (every untimed figure of results.json and the sha256 of every saved student's weights),
and the bad inputs of bad_inputs.yaml run through `kdistill.cli.main` with stderr captured as a user sees it.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import json
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"
PHASES = ("elicit", "train", "eval", "report")
# results.json keys that hold timings: they differ between any two runs (as in benchmarks/parity.py)
TIMED = ("latency", "throughput", "tokens_per_s", "seconds", "timings", "speedup", "wall", "_s", "per_s",
         "fixed_length")


# ------------------------------------------------------------------------------------------------
# the job


def kill_job_config(root: Path, models: dict[str, Path], **sections: Any) -> Path:
    """A small but whole job (teacher, labels-only and distilled students, evaluation, report) as a YAML file:
    one seed, checkpoints every 3 steps, so a kill can land in every phase."""
    from conftest import tiny_config_dict

    root.mkdir(parents=True, exist_ok=True)
    config = tiny_config_dict(root, models, evaluation={"seeds": [0]},
                              training={"checkpoint_every_steps": 3, "eval_every_steps": 6,
                                        "early_stopping_patience": 0}, **sections)
    path = root / "job.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def cli_env(**extra: str) -> dict[str, str]:
    """The environment of a `kdistill` subprocess: this checkout's code, no hub, no progress bars, one thread
    (two jobs share the two cores of a CI machine; the reference run uses the same, so results compare)."""
    path = os.pathsep.join([str(SRC), str(HERE)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else []))
    return {**os.environ, "PYTHONPATH": path, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1", **extra}


def kdistill_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "kdistill.cli", *args]


def run_cmd(config: Path, out: Path, *extra: str) -> list[str]:
    return kdistill_cmd("run", str(config), "--set", f"output_dir={out}", *extra)


# ------------------------------------------------------------------------------------------------
# what a run made


def untimed(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: untimed(v) for k, v in value.items() if not any(t in str(k) for t in TIMED)}
    if isinstance(value, list):
        return [untimed(v) for v in value]
    return value


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fingerprint(run_dir: Path) -> dict[str, Any]:
    """Every untimed figure of results.json, and the sha256 of each saved student's weights."""
    results = json.loads((run_dir / "eval" / "results.json").read_text(encoding="utf-8"))
    weights = sorted(run_dir.glob("students/*/model.safetensors")) + sorted(run_dir.glob("student/model.safetensors"))
    return {"results": untimed(results), "weights": {str(p.relative_to(run_dir)): sha256(p) for p in weights},
            "report": (run_dir / "report.md").exists() and (run_dir / "report.html").exists()}


def partial_writes(run_dir: Path) -> list[str]:
    """What killed atomic writes left anywhere in the run directory (.<name>.<random>.tmp, .<name>.old)."""
    found = [p for pattern in (".*.tmp", ".*.old") for p in run_dir.rglob(pattern)]
    return sorted(str(p.relative_to(run_dir)) for p in found)


def phase_of(run_dir: Path, num_students: int) -> str:
    """Where a run stands, from what it has written so far."""
    if (run_dir / "eval" / "results.json").exists():
        return "report"  # the exported student, results with timings, report.md / .html / plots
    if len(list((run_dir / "students").glob("*.training.json"))) >= num_students:
        return "eval"
    if (run_dir / "checkpoints").exists() or (run_dir / "students").exists():
        return "train"
    return "elicit" if (run_dir / "config.yaml").exists() else "start"


# ------------------------------------------------------------------------------------------------
# kill -9, then --resume


@dataclass
class Reference:
    fingerprint: dict[str, Any]
    phase_seconds: dict[str, float]
    num_students: int


@dataclass
class KillTrial:
    target: str
    killed_in: str
    delay_s: float
    resumed_rc: int
    identical: bool
    partial_steps_left: list[str] = field(default_factory=list)
    partial_writes_left: list[str] = field(default_factory=list)
    error: str = ""


def _watch(proc: subprocess.Popen, run_dir: Path, num_students: int, until: str | None = None) -> dict[str, float]:
    """Poll ``run_dir`` until ``proc`` ends (or reaches phase ``until``); when each phase was first seen."""
    start, seen = time.monotonic(), {}
    while proc.poll() is None:
        phase = phase_of(run_dir, num_students)
        seen.setdefault(phase, time.monotonic() - start)
        if until is not None and (phase == until or _after(phase, until)):
            break
        time.sleep(0.01)
    return seen


def _after(phase: str, target: str) -> bool:
    order = ("start",) + PHASES
    return phase in order and order.index(phase) > order.index(target)


def reference_run(config: Path, out: Path, num_students: int = 2) -> Reference:
    """An uninterrupted run, and how long each phase took in it."""
    proc = subprocess.Popen(run_cmd(config, out), env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    start = time.monotonic()
    seen = _watch(proc, out / "tiny", num_students)
    seen["end"] = time.monotonic() - start
    if proc.wait() != 0:
        raise RuntimeError(f"the reference run failed: {proc.stderr.read().decode()[-2000:]}")
    marks = [seen.get(p) for p in ("start",) + PHASES] + [seen["end"]]
    durations = {}
    for i, phase in enumerate(PHASES):
        begin = marks[i + 1]
        end = next((m for m in marks[i + 2:] if m is not None), seen["end"])
        durations[phase] = max(0.05, end - begin) if begin is not None else 0.05
    return Reference(fingerprint(out / "tiny"), durations, num_students)


def kill_trial(config: Path, out: Path, reference: Reference, target: str, rng: random.Random,
               attempts: int = 4) -> KillTrial:
    """Start the job, kill -9 it at a random moment of phase ``target``, resume it, and compare with the
    reference. A run that finished before the kill is started again with a shorter delay."""
    run_dir = out / "tiny"
    scale, killed_in, delay = 1.0, "finished", 0.0
    for _ in range(attempts):  # until the kill lands in ``target`` (a busy machine moves the phases)
        shutil.rmtree(out, ignore_errors=True)
        proc = subprocess.Popen(run_cmd(config, out), env=cli_env(), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        _watch(proc, run_dir, reference.num_students, until=target)
        delay = rng.uniform(0, reference.phase_seconds[target]) * scale
        deadline = time.monotonic() + delay
        while proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        killed_in = phase_of(run_dir, reference.num_students) if proc.poll() is None else "finished"
        if killed_in != "finished":
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        if killed_in == target:
            break
        scale /= 3
    if killed_in == "finished":
        return KillTrial(target, "finished", 0.0, -1, False, error="the run finished before every kill attempt")
    resumed = subprocess.run(run_cmd(config, out, "--resume"), env=cli_env(), capture_output=True, text=True)
    if resumed.returncode != 0:
        return KillTrial(target, killed_in, delay, resumed.returncode, False, error=resumed.stderr[-1000:])
    left = partial_writes(run_dir)
    return KillTrial(target, killed_in, delay, 0, fingerprint(run_dir) == reference.fingerprint,
                     partial_steps_left=[p for p in left if "step-" in p], partial_writes_left=left)


# ------------------------------------------------------------------------------------------------
# bad inputs: one line on stderr, naming the place, and nothing written


@dataclass
class BadInput:
    name: str
    code: int
    stderr: str
    expect: str
    written: list[str]

    @property
    def lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.strip()]

    @property
    def traceback(self) -> bool:
        return "Traceback" in self.stderr

    @property
    def clear(self) -> bool:
        """Non-zero exit, exactly one line on stderr, holding the expected place, no traceback, nothing written."""
        return (self.code != 0 and len(self.lines) == 1 and self.expect in self.lines[0] and not self.traceback
                and not self.written)


def load_bad_inputs(path: Path = HERE / "bad_inputs.yaml") -> list[dict[str, Any]]:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def _merge(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in patch.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _fill(value: Any, names: dict[str, str]) -> Any:
    if isinstance(value, str):
        for key, text in names.items():
            value = value.replace("{" + key + "}", text)
        return value
    if isinstance(value, list):
        return [_fill(v, names) for v in value]
    if isinstance(value, dict):
        return {k: _fill(v, names) for k, v in value.items()}
    return value


def _make_files(case: dict[str, Any], folder: Path) -> None:
    for spec in case.get("files", []):
        path = folder / spec["path"]
        path.parent.mkdir(parents=True, exist_ok=True)
        if spec.get("folder"):
            path.mkdir(exist_ok=True)
        elif "hex" in spec:
            path.write_bytes(bytes.fromhex(spec["hex"]))
        else:
            path.write_text(spec.get("text", ""), encoding="utf-8")


def _snapshot(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def run_bad_input(case: dict[str, Any], base: dict[str, Any], folder: Path) -> BadInput:
    """One case of bad_inputs.yaml, in its own ``folder``: its files, its config (the base job with its patch),
    then `kdistill <command> ...` in this process, stderr captured with the CLI's log lines in it."""
    from kdistill.cli import main

    case, argv = prepare_bad_input(case, base, folder)
    before = _snapshot(folder)
    code, err = _main_captured(main, argv, case.get("env", {}))
    written = sorted(_snapshot(folder) - before)
    return BadInput(case["name"], code, err, case["expect"], written)


def prepare_bad_input(case: dict[str, Any], base: dict[str, Any], folder: Path) -> tuple[dict[str, Any], list[str]]:
    """The case with {tmp} and {config} filled in, after making its files and config; and its command line."""
    folder.mkdir(parents=True, exist_ok=True)
    case = _fill(case, {"tmp": str(folder), "config": str(folder / "case.yaml")})
    _make_files(case, folder)
    config = _merge({**base, "output_dir": str(folder / "runs")}, case.get("config", {}))
    (folder / "case.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    argv = case.get("argv") or [case.get("command", "run"), str(folder / "case.yaml")]
    return case, [str(a) for a in [*argv, *[a for pair in case.get("set", []) for a in ("--set", pair)]]]


def _main_captured(main: Any, argv: list[str], env: dict[str, str]) -> tuple[int, str]:
    """``main(argv)`` with stderr as a user would read it: the CLI's log lines and warnings go there too."""
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    root = logging.getLogger()
    old_level, old_env = root.level, {k: os.environ.get(k) for k in env}
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    os.environ.update(env)
    try:
        with contextlib.redirect_stderr(buffer), contextlib.redirect_stdout(io.StringIO()):
            try:
                code = main(argv)
            except SystemExit as exit_:  # argparse
                code = exit_.code if isinstance(exit_.code, int) else 1
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
        for key, value in old_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return code, buffer.getvalue()
