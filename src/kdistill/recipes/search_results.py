"""What a search leaves behind: results.json and results.md (every trial), and best.yaml, the best trial's
settings as a plain run config that `kdistill run` takes as it is."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from optuna.trial import FrozenTrial, TrialState

from kdistill.config import RunConfig, to_dict
from kdistill.io import atomic_write_json, atomic_write_text


def best_trial(trials: list[FrozenTrial]) -> FrozenTrial | None:
    """The completed trial with the highest score; the earliest of equals."""
    completed = [t for t in trials if t.state == TrialState.COMPLETE]
    return max(completed, key=lambda t: t.value) if completed else None


def _note(trial: FrozenTrial, retried_as: dict[int, int]) -> str:
    if trial.number in retried_as:
        return f"interrupted; run again as trial {retried_as[trial.number]}"
    if "retry_of" in trial.user_attrs:
        return f"retry of trial {trial.user_attrs['retry_of']}"
    if trial.state == TrialState.PRUNED:
        return f"pruned at step {trial.last_step}"
    return trial.user_attrs.get("error", "")


def trial_rows(trials: list[FrozenTrial], params: dict[int, dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per trial: number, state, its config overrides, score, duration and a note."""
    retried_as = {t.user_attrs["retry_of"]: t.number for t in trials if "retry_of" in t.user_attrs}
    rows = []
    for t in trials:
        # an interrupted trial was closed only when the next search started: its span is no duration
        seconds = ((t.datetime_complete - t.datetime_start).total_seconds()
                   if t.datetime_complete and t.datetime_start and t.number not in retried_as else None)
        rows.append({"number": t.number, "state": t.state.name.lower(), "params": params[t.number],
                     "value": t.value, "seconds": seconds, "steps": t.user_attrs.get("steps"),
                     "intermediate": {str(k): v for k, v in sorted(t.intermediate_values.items())},
                     "note": _note(t, retried_as)})
    return rows


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def _markdown(results: dict[str, Any]) -> str:
    keys = list(dict.fromkeys(k for row in results["trials"] for k in row["params"]))
    best = results["best"]
    used, total = results["training_examples"]
    lines = [f"# Search `{results['run']}`: {results['finished']} trials finished",
             "",
             f"Each trial trained the distilled student on {used} of the {total} training examples "
             f"(search.subsample {results['subsample']}) and was scored by its best validation macro-F1 on the "
             f"whole validation split. Sampler {results['sampler']}, pruner {results['pruner']}.",
             ""]
    if best:
        lines += [f"Best: trial {best['number']}, validation macro-F1 **{best['value']:.4f}**. "
                  f"`kdistill run {results['best_config']}` runs it as a normal run.", ""]
    lines += ["| trial | state | val macro-F1 | seconds | " + " | ".join(keys) + " | note |",
              "|---" * (len(keys) + 5) + "|"]
    for row in results["trials"]:
        cells = [row["number"], row["state"], row["value"], row["seconds"], *(row["params"].get(k) for k in keys),
                 row["note"]]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def write_results(out: Path, cfg: RunConfig, trials: list[FrozenTrial], params: dict[int, dict[str, Any]], *,
                  finished: int, training_examples: tuple[int, int]) -> dict[str, Any]:
    """results.json and results.md in ``out``; ``params`` holds each trial's config overrides."""
    best = best_trial(trials)
    rows = trial_rows(trials, params)
    results = {"run": cfg.name, "metric": cfg.search.metric, "direction": "maximize",
               "sampler": cfg.search.sampler, "pruner": cfg.search.pruner, "subsample": cfg.search.subsample,
               "seed": cfg.search.seed, "training_examples": list(training_examples),
               "finished": finished,
               "best": None if best is None else {"number": best.number, "value": best.value,
                                                  "params": params[best.number]},
               "best_config": str(out / "best.yaml"), "trials": rows}
    atomic_write_json(out / "results.json", results)
    atomic_write_text(out / "results.md", _markdown(results))
    return results


def write_best_config(path: Path, cfg: RunConfig, trial: FrozenTrial, subsample: float) -> None:
    """``cfg`` (the best trial's settings applied) as YAML without its `search` section."""
    data = to_dict(cfg)
    del data["search"]  # a plain run; the defaults stand in for it
    header = (f"# The best trial ({trial.number}) of the search in {path.parent}: validation macro-F1 "
              f"{trial.value:.4f},\n# trained on a {subsample} subsample of the training split. "
              f"`kdistill run {path}` runs it as a normal run.\n")
    atomic_write_text(path, header + yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
