"""`kdistill search`: an optuna search over the distilled student's hyper-parameters.

Each trial trains one distilled student on a fixed, stratified subsample of the training split and is
scored by its best validation macro-F1 (the validation split stays whole, so trials compare); the pruner
may stop a poor trial at any validation. The teacher is asked once: every trial reuses its cached targets.

The study is stored in `runs/<name>/search/study.sqlite3`, so a killed search resumes: the trial the kill
cut off is marked failed and tried again with the same parameters, and the sampler is seeded by each
trial's place, so a resumed search draws the same points as an uninterrupted one. At the end it writes
results.md / results.json (every trial) and best.yaml, a plain run config for `kdistill run`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import logging
import shutil
from pathlib import Path
from typing import Any, Callable, Iterator

import optuna
from optuna.trial import FrozenTrial, TrialState
from tqdm.auto import tqdm

from kdistill.config import RunConfig, from_dict, load_config, to_dict
from kdistill.data import PreparedData, prepare_data
from kdistill.data.prepare import stratified_sample
from kdistill.errors import KdistillError
from kdistill.models import LabelModel
from kdistill.recipes import label as pipeline
from kdistill.recipes.preflight import preflight
from kdistill.recipes.search_results import best_trial, write_best_config, write_results
from kdistill.rundir import RunDir
from kdistill.targets import TeacherTargets
from kdistill.teachers.signal import teacher_signal

log = logging.getLogger(__name__)

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


def subsample(data: PreparedData, fraction: float, seed: int) -> PreparedData:
    """``data`` with its training split cut to ``fraction``: stratified by label (within the labelled and
    the unlabelled part separately, with data.num_labelled), the same examples for the same seed."""
    if fraction >= 1:
        return data
    labelled = None if data.labelled_train is None else {e.id for e in data.labelled_train}
    parts = [data.train] if labelled is None else [[e for e in data.train if e.id in labelled],
                                                   [e for e in data.train if e.id not in labelled]]
    kept: set[str] = set()
    for part in parts:
        kept |= {e.id for e in stratified_sample(part, max(1, round(fraction * len(part))), seed)}
    train = [e for e in data.train if e.id in kept]
    lost = sorted({e.label for e in data.train if e.label} - {e.label for e in train})  # "": the unlabelled pool
    if lost:
        raise KdistillError(f"search.subsample {fraction} keeps {len(train)} of {len(data.train)} training examples "
                            f"and none labelled {lost[0]!r}; raise search.subsample.")
    return dataclasses.replace(data, train=train, labelled_train=None if labelled is None else
                               [e for e in data.labelled_train if e.id in kept])


def with_overrides(cfg: RunConfig, overrides: dict[str, Any]) -> RunConfig:
    """A copy of ``cfg`` with dotted-key ``overrides`` applied, every field validated again."""
    data = to_dict(cfg)
    for key, value in overrides.items():
        *parents, leaf = key.split(".")
        node = data
        for part in parents:
            node = node[part]
        node[leaf] = value
    return from_dict(RunConfig, data, "search trial")


def _encoded(choices: list[Any]) -> list[Any]:
    # optuna stores plain values only: a list choice (an explicit layer map) is kept as its JSON text
    return [json.dumps(c) if isinstance(c, list) else c for c in choices]


def overrides_of(params: dict[str, Any], space: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The config overrides of a trial's ``params``: list choices decoded, each complement filled in."""
    out = {}
    for key, value in params.items():
        spec = space[key]
        if "choices" in spec:
            value = spec["choices"][_encoded(spec["choices"]).index(value)]
        out[key] = value
        if "complement" in spec:
            out[spec["complement"]] = 1.0 - value
    return out


def sample(trial: optuna.Trial, space: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Draw one value per space key; returns the trial's config overrides."""
    for key, spec in space.items():
        if "choices" in spec:
            trial.suggest_categorical(key, _encoded(spec["choices"]))
        elif isinstance(spec["low"], int):  # the config field is an int (SearchConfig converted the bounds)
            trial.suggest_int(key, spec["low"], spec["high"], log=spec["log"])
        else:
            trial.suggest_float(key, spec["low"], spec["high"], log=spec["log"])
    return overrides_of(trial.params, space)


def train_trial(cfg: RunConfig, data: PreparedData, targets: TeacherTargets, *, workdir: Path,
                teachers: dict[str, LabelModel] | None = None,
                on_record: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Train ``cfg``'s distilled student (seed evaluation.seeds[0]) on ``data`` in ``workdir``; returns its
    training summary (best_val_macro_f1, steps, seconds ...). Weights and checkpoints are deleted."""
    trial_cfg = dataclasses.replace(cfg, output_dir=str(workdir.parent), name=workdir.name)
    shutil.rmtree(workdir, ignore_errors=True)  # what a killed attempt left
    workdir.mkdir(parents=True)
    shared = cfg.paths.teacher_cache.resolve()
    shared.mkdir(parents=True, exist_ok=True)
    # the hidden term's teacher states are cached like the targets: in the run's store, not the trial's
    (workdir / "teacher_cache").symlink_to(shared, target_is_directory=True)
    try:
        folder = pipeline.train(trial_cfg, variant="distilled", progress=False, targets=targets,
                                teachers=teachers, on_record=on_record, data=data)
        summary = json.loads(RunDir.beside(folder, "training.json").read_text(encoding="utf-8"))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)  # a trial keeps its numbers, not its weights
    return {k: v for k, v in summary.items() if k != "history"}


def _open_study(cfg: RunConfig, storage: optuna.storages.BaseStorage, seed: int) -> optuna.Study:
    s = cfg.search
    sampler = (optuna.samplers.TPESampler(n_startup_trials=s.startup_trials, seed=seed) if s.sampler == "tpe"
               else optuna.samplers.RandomSampler(seed=seed))
    pruner = (optuna.pruners.MedianPruner(n_startup_trials=s.startup_trials) if s.pruner == "median"
              else optuna.pruners.NopPruner())
    return optuna.create_study(study_name=cfg.name, storage=storage, sampler=sampler, pruner=pruner,
                               direction="maximize", load_if_exists=True)


def finished_trials(study: optuna.Study) -> list[FrozenTrial]:
    """Completed, pruned and failed trials, less those a kill cut off (each was queued again)."""
    trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs["retry_of"] for t in trials if "retry_of" in t.user_attrs}
    return [t for t in trials if t.state in FINISHED and t.number not in retried]


def _retry_interrupted(study: optuna.Study) -> None:
    """A trial still RUNNING when a search starts was cut off by a kill (the lock rules out a live one):
    mark it failed, then queue its parameters again so the same point is tried."""
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study.tell(trial.number, state=TrialState.FAIL)
        study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
        log.warning("trial %d was interrupted; it runs again with the same parameters", trial.number)


def _fingerprint(cfg: RunConfig) -> dict[str, Any]:
    data = json.loads(json.dumps(to_dict(cfg), default=str))
    del data["search"]["trials"], data["output_dir"]  # more trials, or a moved folder, is the same search
    return data


def _first_difference(old: Any, new: Any, key: str = "") -> tuple[str, Any, Any] | None:
    if isinstance(old, dict) and isinstance(new, dict):
        for k in [*old, *(k for k in new if k not in old)]:
            found = _first_difference(old.get(k), new.get(k), f"{key}.{k}" if key else k)
            if found:
                return found
        return None
    return None if old == new else (key, old, new)


def _check_same_config(study: optuna.Study, cfg: RunConfig, path: Path) -> None:
    """Trials of one study must come from one config, or their scores would not compare."""
    if "config" not in study.user_attrs:
        study.set_user_attr("config", _fingerprint(cfg))
        return
    diff = _first_difference(study.user_attrs["config"], _fingerprint(cfg))
    if diff:
        raise KdistillError(f"{path}: this search was started with another config ({diff[0]} was {diff[1]!r}, is "
                            f"now {diff[2]!r}); search with the same config, or delete {path.parent} to start anew.")


@contextlib.contextmanager
def _exclusive(path: Path) -> Iterator[None]:
    """One search per run directory: a second would take the first's running trial for a crashed one."""
    with open(path, "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released by the kernel if the process dies
        except BlockingIOError:
            raise KdistillError(f"{path.parent}: another `kdistill search` of this run is running; wait for it "
                                "to end or stop it first.") from None
        yield


def _run_trial(study: optuna.Study, cfg: RunConfig, data: PreparedData, targets: TeacherTargets,
               teachers: dict[str, LabelModel] | None, trials_dir: Path) -> FrozenTrial:
    """Ask, train, tell. An exception other than a pruning or a KdistillError (a bug, Ctrl-C, a kill)
    leaves the trial RUNNING, and the next search runs it again."""
    trial = study.ask()
    overrides = sample(trial, cfg.search.space)

    def report(record: dict[str, Any]) -> None:
        if "val_macro_f1" in record:
            trial.report(record["val_macro_f1"], record["step"])
            if trial.should_prune():
                raise optuna.TrialPruned()

    try:
        summary = train_trial(with_overrides(cfg, overrides), data, targets, teachers=teachers, on_record=report,
                              workdir=trials_dir / f"trial-{trial.number:03d}")
    except optuna.TrialPruned:
        return study.tell(trial, state=TrialState.PRUNED)
    except KdistillError as err:  # this point of the space is no valid run (say, a layer map too deep)
        trial.set_user_attr("error", str(err))
        return study.tell(trial, state=TrialState.FAIL)
    for key in ("steps", "best_step", "seconds", "stopped_early"):
        trial.set_user_attr(key, summary[key])
    return study.tell(trial, summary["best_val_macro_f1"])


def _teacher_side(cfg: RunConfig, data: PreparedData, progress: bool):
    """The teacher targets every trial shares (asked once, then from the cache), and the loaded teachers
    when the hidden term may be on (its states depend on the trial's layer map)."""
    uses_hidden = cfg.objective.hidden.weight > 0 or "objective.hidden.weight" in cfg.search.space
    teachers = pipeline.load_teachers(cfg, data, progress=progress) if uses_hidden else None
    return teacher_signal(cfg, data, progress=progress, models=teachers).targets, teachers


def _write_outputs(study: optuna.Study, cfg: RunConfig, out: Path, finished: int, examples: tuple[int, int]) -> None:
    trials, space = study.get_trials(deepcopy=False), cfg.search.space
    write_results(out, cfg, trials, {t.number: overrides_of(t.params, space) for t in trials}, finished=finished,
                  training_examples=examples)
    best = best_trial(trials)
    if best is None:
        raise KdistillError(f"no trial of the search completed (see {out / 'results.md'}); widen search.space "
                            "or raise search.subsample, then search again with more --trials.")
    write_best_config(out / "best.yaml", with_overrides(cfg, overrides_of(best.params, space)), best,
                      cfg.search.subsample)


def search(config: RunConfig | str | Path | None = None, *, trials: int | None = None,
           progress: bool = True) -> Path:
    """Run (or resume) the config's search until ``trials`` (default search.trials) trials are finished;
    returns the search folder, which holds results.md, results.json and best.yaml."""
    cfg = config if isinstance(config, RunConfig) else load_config(config)
    if cfg.task.kind == "generation":
        raise KdistillError("kdistill search scores trials by validation macro-F1, so it works on classification and "
                            "multiple-choice tasks for now; for a generation task, run `kdistill run` with --set "
                            "overrides of objective.kd.* and training.*.")
    if not cfg.search.space:
        raise KdistillError("search.space is empty: give the config a `search:` section naming the fields to "
                            "search, e.g. space: {objective.kd.temperature: {low: 1, high: 8}} (the built-in "
                            "`default` config has one).")
    num_trials = cfg.search.trials if trials is None else trials
    if num_trials < 1:
        raise KdistillError(f"--trials must be at least 1; found {num_trials}.")
    preflight(cfg)
    data = prepare_data(cfg.data, cfg.task)  # a bad row stops the search before anything is written
    if not data.validation:
        raise KdistillError("kdistill search scores trials on the validation split, which is empty here: set "
                            "data.validation_fraction above 0 (e.g. 0.1).")
    out = cfg.paths.search
    out.mkdir(parents=True, exist_ok=True)
    with _exclusive(out / ".lock"):
        targets, teachers = _teacher_side(cfg, data, progress)
        trial_data = subsample(data, cfg.search.subsample, cfg.search.seed)
        storage = optuna.storages.RDBStorage(f"sqlite:///{(out / 'study.sqlite3').resolve()}")
        study = _open_study(cfg, storage, cfg.search.seed)
        _check_same_config(study, cfg, out / "study.sqlite3")
        _retry_interrupted(study)
        done = len(finished_trials(study))
        bar = tqdm(total=num_trials, initial=min(done, num_trials), desc="search", unit="trial", disable=not progress)
        while done < num_trials:
            # seeded by the trial's place, not the process: a resumed search draws what an uninterrupted one would
            study = _open_study(cfg, storage, cfg.search.seed + done)
            trial = _run_trial(study, cfg, trial_data, targets, teachers, out / "trials")
            log.info("trial %d %s: validation macro-F1 %s, %s", trial.number, trial.state.name.lower(),
                     trial.value, overrides_of(trial.params, cfg.search.space))
            done = len(finished_trials(study))
            bar.update(1)
        bar.close()
        _write_outputs(study, cfg, out, done, (len(trial_data.train), len(data.train)))
    return out
