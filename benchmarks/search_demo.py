"""Benchmark: the built-in search, killed once and resumed, and its best config trained again.

The default config's `search` section (12 optuna trials, median pruning) runs in a subprocess that is
SIGKILLed once mid-trial and then resumed; best.yaml's student is then trained again on the same subsample
with the same seed, and its validation macro-F1 compared with the best trial's.

    python benchmarks/search_demo.py [--config default] [--kill-after 4]

Works in benchmarks/runs/search_demo/ (the teacher cache there is kept between invocations; the search
starts afresh each time) and writes benchmarks/results/search_demo.json and .md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from kdistill.config import SearchConfig, load_config
from kdistill.data import prepare_data
from kdistill.io import atomic_write_json, atomic_write_text
from kdistill.recipes.search import subsample, train_trial
from kdistill.teachers.signal import teacher_signal

HERE = Path(__file__).resolve().parent


def _search_cmd(config: str, overrides: dict[str, Any]) -> list[str]:
    sets = [arg for key, value in overrides.items() for arg in ("--set", f"{key}={json.dumps(value)}")]
    return [sys.executable, "-m", "kdistill.cli", "search", config, *sets]


def _study_state(db: Path, name: str) -> tuple[int, bool]:
    """(finished trials, whether a running trial has reported a validation), read without writing."""
    try:
        study = optuna.load_study(study_name=name, storage=f"sqlite:///{db}")
        trials = study.get_trials(deepcopy=False)
    except Exception:  # not created yet, or locked by the writer for a moment: look again later
        return 0, False
    finished = sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL) for t in trials)
    return finished, any(t.state == TrialState.RUNNING and t.intermediate_values for t in trials)


def search_killed_once(config: str, overrides: dict[str, Any], *, kill_after: int, log_path: Path,
                       poll_s: float = 1.0, timeout_s: float = 7200) -> dict[str, Any]:
    """`kdistill search` in a subprocess, SIGKILLed once ``kill_after`` trials are finished and the next has
    reported a validation (so mid-trial), then `kdistill search` again to the end."""
    cfg = load_config(config, overrides)
    db = cfg.run_dir / "search" / "study.sqlite3"
    start = time.perf_counter()
    with open(log_path, "w") as log:
        child = subprocess.Popen(_search_cmd(config, overrides), stdout=log, stderr=subprocess.STDOUT)
        finished, mid_trial = 0, False
        while child.poll() is None and time.perf_counter() - start < timeout_s:
            # the study is read only once the child has logged a trial: its tables exist by then, and a
            # reader that creates them itself could race the child doing the same
            if "kdistill.recipes.search: trial" in log_path.read_text(encoding="utf-8", errors="replace"):
                finished, mid_trial = _study_state(db, cfg.name)
                if finished >= kill_after and mid_trial:
                    child.send_signal(signal.SIGKILL)
                    break
            time.sleep(poll_s)
        killed = child.wait() == -signal.SIGKILL
        killed_at = time.perf_counter() - start
        subprocess.run(_search_cmd(config, overrides), stdout=log, stderr=subprocess.STDOUT, check=True)
    return {"killed": killed, "killed_mid_trial": killed and mid_trial, "finished_before_kill": finished,
            "killed_after_s": killed_at, "search_s": time.perf_counter() - start}


def rerun_best(search_dir: Path, search: SearchConfig) -> dict[str, Any]:
    """best.yaml's distilled student trained again on the search's subsample with the same seed."""
    results = json.loads((search_dir / "results.json").read_text(encoding="utf-8"))
    best = load_config(search_dir / "best.yaml")
    data = prepare_data(best.data, best.task)
    targets = teacher_signal(best, data, progress=False).targets  # from the cache the search filled
    start = time.perf_counter()
    summary = train_trial(best, subsample(data, search.subsample, search.seed), targets,
                          workdir=search_dir / "rerun")
    value = summary["best_val_macro_f1"]
    return {"best_trial": results["best"]["number"], "best_trial_value": results["best"]["value"],
            "rerun_value": value, "difference": value - results["best"]["value"],
            "rerun_s": time.perf_counter() - start}


def _markdown(summary: dict[str, Any], table: str) -> str:
    kill, rerun, states = summary["kill"], summary["rerun"], summary["states"]
    return "\n".join([
        f"# search_demo: `kdistill search {summary['config']}`, {summary['finished']} trials", "",
        f"Trials: {', '.join(f'{n} {s}' for s, n in states.items())}. Wall time: search (with the kill and the "
        f"resume) {kill['search_s']:.0f} s, re-run of the best {rerun['rerun_s']:.0f} s.", "",
        f"Killed with SIGKILL after {kill['killed_after_s']:.0f} s, {kill['finished_before_kill']} trials finished, "
        f"mid-trial: {kill['killed_mid_trial']}; resumed to the end.", "",
        f"Best trial {rerun['best_trial']}: validation macro-F1 {rerun['best_trial_value']:.6f}; best.yaml trained "
        f"again on the same subsample and seed: {rerun['rerun_value']:.6f} (difference {rerun['difference']:.2e}).",
        "", "## The search's results.md", "", table])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="sentiment-prompted", help="a config with a `search` section")
    parser.add_argument("--kill-after", type=int, default=4, help="finished trials before the SIGKILL")
    args = parser.parse_args()
    work = HERE / "runs" / "search_demo"
    overrides = {"output_dir": str(work)}
    cfg = load_config(args.config, overrides)
    shutil.rmtree(cfg.run_dir / "search", ignore_errors=True)  # a fresh search; the teacher cache stays
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    kill = search_killed_once(args.config, overrides, kill_after=args.kill_after,
                              log_path=cfg.run_dir / "search_demo.log")
    rerun = rerun_best(cfg.run_dir / "search", cfg.search)
    results = json.loads((cfg.run_dir / "search" / "results.json").read_text(encoding="utf-8"))
    states: dict[str, int] = {}
    for row in results["trials"]:
        states[row["state"]] = states.get(row["state"], 0) + 1
    summary = {"config": args.config, "finished": results["finished"], "states": states, "kill": kill,
               "rerun": rerun, "best": results["best"], "trials": results["trials"]}
    (HERE / "results").mkdir(exist_ok=True)
    atomic_write_json(HERE / "results" / "search_demo.json", summary)
    table = (cfg.run_dir / "search" / "results.md").read_text(encoding="utf-8")
    atomic_write_text(HERE / "results" / "search_demo.md", _markdown(summary, table))
    print(_markdown(summary, ""))


if __name__ == "__main__":
    main()
