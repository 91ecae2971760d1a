"""Benchmark: the fault suite of tests/test_faults_*.py, with more kill trials. Writes
benchmarks/results/faults.json and faults.md.

    python benchmarks/faults.py [--kill-trials 52] [--workers 2] [--seed 26]

On the tiny random-weight models of tests/conftest.py:

- kill trials: `kdistill run` killed with kill -9 at a random moment of each phase in turn (elicitation,
  training, evaluation, report), then `--resume`; identical when every untimed figure of results.json and the
  sha256 of every saved student's weights equal an uninterrupted run's, and no partial step is left;
- damaged files: 14 kinds of damage to a checkpoint step, 6 to a saved student, 9 to the teacher cache
  (tests/damage_faults.py); detected when named and never used, and what follows is right;
- bad inputs: every case of tests/bad_inputs.yaml through `kdistill.cli.main`; clear when it exits non-zero
  with one line on stderr that names the place, no traceback, and nothing written;
- endpoint faults: every case of tests/endpoint_faults.py; ok when it gives the clean run's answers, or one
  clear line with every answer so far kept (and a re-run asks only for the rest);
- environment faults: a full disk (a file-size limit) and a file where a folder should be, during a run.

`tracebacks` counts outputs that showed a traceback; `silent_wrong` counts results that were wrong with no
error to say so (a resumed run that differs, a damaged file used, a bad input accepted, an endpoint fault
that changed the answers without an error).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
TESTS = HERE.parent / "tests"
sys.path[:0] = [str(HERE.parent / "src"), str(TESTS)]
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import faultkit  # noqa: E402
from conftest import save_tiny_encoder, save_tiny_lm, tiny_config_dict  # noqa: E402


def kill_trials(root: Path, models: dict[str, Path], n: int, workers: int, seed: int) -> dict:
    config = faultkit.kill_job_config(root / "job", models)
    reference = faultkit.reference_run(config, root / "reference")
    rngs = [random.Random(seed * 1000 + i) for i in range(n)]
    targets = [faultkit.PHASES[i % len(faultkit.PHASES)] for i in range(n)]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        trials = list(pool.map(lambda i: faultkit.kill_trial(config, root / f"trial{i}", reference, targets[i], rngs[i]),
                               range(n)))
    return {"reference_phase_seconds": reference.phase_seconds, "trials": [asdict(t) for t in trials]}


def damaged_files(root: Path, models: dict[str, Path]) -> list[dict]:
    import damage_faults as d

    outcomes = []
    for bench_cls, kinds in ((d.CheckpointBench, d.CHECKPOINT_KINDS), (d.StudentBench, d.STUDENT_KINDS),
                             (d.CacheBench, d.CACHE_KINDS)):
        bench = bench_cls(root / bench_cls.__name__, models)
        for i, (name, how) in enumerate(kinds):
            outcome = bench.run(name, how, root / f"{bench_cls.__name__}-{i}")
            outcomes.append({**asdict(outcome), "ok": outcome.ok})
    return outcomes


def _base(root: Path, models: dict[str, Path]) -> dict:
    (root / "base").mkdir(parents=True, exist_ok=True)
    return tiny_config_dict(root / "base", models)


def bad_inputs(root: Path, models: dict[str, Path]) -> list[dict]:
    base = _base(root, models)
    outcomes = []
    for i, case in enumerate(faultkit.load_bad_inputs()):
        outcome = faultkit.run_bad_input(case, base, root / f"case{i}")
        outcomes.append({"name": outcome.name, "code": outcome.code, "clear": outcome.clear,
                         "traceback": outcome.traceback, "written": outcome.written,
                         "line": outcome.lines[0] if outcome.lines else "", "lines": len(outcome.lines)})
    return outcomes


def endpoint_faults(root: Path, models: dict[str, Path]) -> list[dict]:
    import endpoint_faults as e

    base = _base(root, models)
    reference = e.clean_reference(base, root / "clean")
    outcomes = []
    for i, case in enumerate(e.CASES):
        outcome = e.run_endpoint_case(case, base, root / f"case{i}", reference)
        outcomes.append({**asdict(outcome), "expected": "the clean answers" if case.expect is None else "a clear error"})
    return outcomes


def environment_faults(root: Path, models: dict[str, Path], reference_root: Path) -> list[dict]:
    """A full disk (every write past 60 kB fails) and a file where the students' folder should be; then
    --resume once the cause is gone, compared with the kill trials' uninterrupted run."""
    config = reference_root / "job" / "job.yaml"
    reference = faultkit.fingerprint(reference_root / "reference" / "tiny")
    outcomes = []
    for name in ("full disk", "a file where a folder should be"):
        out = root / name.replace(" ", "-")
        extra = {}
        if name == "full disk":
            extra["preexec_fn"] = lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (60_000, 60_000))
        else:
            (out / "tiny").mkdir(parents=True)
            (out / "tiny" / "students").write_text("not a folder")
        done = subprocess.run(faultkit.run_cmd(config, out), env=faultkit.cli_env(), capture_output=True, text=True,
                              **extra)
        errors = [line[line.index("kdistill: "):] for line in done.stderr.splitlines() if "kdistill: " in line]
        if (out / "tiny" / "students").is_file():  # the cause, gone
            (out / "tiny" / "students").unlink()
        resumed = subprocess.run(faultkit.run_cmd(config, out, "--resume"), env=faultkit.cli_env(),
                                 capture_output=True, text=True)
        identical = resumed.returncode == 0 and faultkit.fingerprint(out / "tiny") == reference
        outcomes.append({"name": name, "code": done.returncode, "line": errors[0] if errors else "",
                         "one_line": len(errors) == 1, "traceback": "Traceback" in done.stderr + resumed.stderr,
                         "resumed_identical": identical,
                         "partial_writes_left": faultkit.partial_writes(out / "tiny")})
    return outcomes


def summary(kills: dict, damaged: list[dict], inputs: list[dict], endpoint: list[dict], environment: list[dict],
            seconds: float) -> dict:
    trials = kills["trials"]
    return {
        "kill_trials": len(trials),
        "kill_identical": sum(t["identical"] and not t["partial_steps_left"] for t in trials),
        "kill_partial_steps_left": sum(bool(t["partial_steps_left"]) for t in trials),
        "kill_phases": {p: sum(t["killed_in"] == p for t in trials) for p in faultkit.PHASES},
        "damaged_files": len(damaged),
        "damaged_detected": sum(o["ok"] for o in damaged),
        "damaged_kinds": {where: sum(o["where"] == where for o in damaged) for where in ("checkpoint", "student", "cache")},
        "bad_inputs": len(inputs),
        "bad_inputs_clear": sum(o["clear"] for o in inputs),
        "tracebacks": (sum(o["traceback"] for o in inputs) + sum("Traceback" in t["error"] for t in trials)
                       + sum(o["traceback"] for o in environment)),
        "silent_wrong": (sum(t["resumed_rc"] == 0 and not t["identical"] for t in trials)
                         + sum(o["used"] and not o["detected"] for o in damaged) + sum(o["code"] == 0 for o in inputs)
                         + sum(not o["ok"] and "differ" in o["detail"] for o in endpoint)),
        "endpoint_faults": len(endpoint),
        "endpoint_ok": sum(o["ok"] for o in endpoint),
        "environment_faults": len(environment),
        "environment_ok": sum(o["one_line"] and o["resumed_identical"] and not o["traceback"] for o in environment),
        "wall_seconds": round(seconds, 1),
    }


def markdown(figures: dict, details: dict) -> str:
    f = figures
    lines = ["# Fault suite", "", "`python benchmarks/faults.py` on the tiny random-weight models of tests/conftest.py "
             f"({os.cpu_count()} CPUs, {f['wall_seconds']:.0f} s).", "",
             "| what | tried | as required |", "|---|---|---|",
             f"| kill -9, then --resume: bit-identical, no partial step | {f['kill_trials']} | {f['kill_identical']} |",
             f"| damaged files (checkpoint {f['damaged_kinds']['checkpoint']}, student {f['damaged_kinds']['student']}, "
             f"cache {f['damaged_kinds']['cache']}): named, never used | {f['damaged_files']} | {f['damaged_detected']} |",
             f"| bad inputs: one line naming the place, nothing written | {f['bad_inputs']} | {f['bad_inputs_clear']} |",
             f"| endpoint faults: the clean answers, or one line with the answers kept | {f['endpoint_faults']} | "
             f"{f['endpoint_ok']} |",
             f"| environment faults: one line, then --resume bit-identical | {f['environment_faults']} | "
             f"{f['environment_ok']} |", "",
             f"Tracebacks shown: **{f['tracebacks']}**. Silently wrong results: **{f['silent_wrong']}**. "
             f"Kills landed in: {', '.join(f'{p} {n}' for p, n in f['kill_phases'].items())}.", "",
             "## Damaged files", "", "| where | damage | named, never used, right after |", "|---|---|---|"]
    lines += [f"| {o['where']} | {o['kind']} | {'yes' if o['ok'] else 'NO: ' + o['detail']} |" for o in details["damaged"]]
    lines += ["", "## Endpoint faults", "", "| fault | expected | ok | what the user got |", "|---|---|---|---|"]
    lines += [f"| {o['name']} | {o['expected']} | {'yes' if o['ok'] else 'NO'} | "
              f"{(o['line'] if o['line'].startswith('kdistill:') else o['detail']).replace('|', '/')[:160]} |"
              for o in details["endpoint"]]
    lines += ["", "## Environment faults", "", "| fault | the one line (cut) | resumed bit-identical |", "|---|---|---|"]
    lines += [f"| {o['name']} | {o['line'][:160]} | {'yes' if o['resumed_identical'] else 'NO'} |"
              for o in details["environment"]]
    lines += ["", "## Bad inputs", "", "| input | clear | the one line (cut) |", "|---|---|---|"]
    lines += [f"| {o['name']} | {'yes' if o['clear'] else 'NO'} | {o['line'].replace('|', '/')[:140]} |"
              for o in details["bad_inputs"]]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kill-trials", type=int, default=52)
    parser.add_argument("--workers", type=int, default=2, help="kill trials run side by side")
    parser.add_argument("--seed", type=int, default=26)
    parser.add_argument("--out", default=str(HERE / "results" / "faults"))
    args = parser.parse_args()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="kdistill-faults-") as tmp:
        root = Path(tmp)
        models = {"lm": save_tiny_lm(root / "models" / "lm"), "encoder": save_tiny_encoder(root / "models" / "encoder")}
        details = {"kills": kill_trials(root / "kill", models, args.kill_trials, args.workers, args.seed)}
        print(f"kill trials done in {time.perf_counter() - start:.0f} s", flush=True)
        details["damaged"] = damaged_files(root / "damage", models)
        details["bad_inputs"] = bad_inputs(root / "inputs", models)
        details["endpoint"] = endpoint_faults(root / "endpoint", models)
        details["environment"] = environment_faults(root / "environment", models, root / "kill")
        figures = summary(details["kills"], details["damaged"], details["bad_inputs"], details["endpoint"],
                          details["environment"], time.perf_counter() - start)
    out = Path(args.out)
    out.with_suffix(".json").write_text(json.dumps({**figures, "details": details}, indent=1, default=str) + "\n")
    out.with_suffix(".md").write_text(markdown(figures, details))
    print(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
