"""`kdistill search` on tiny models: results and a best.yaml that runs, pruning, the teacher asked once,
resumed equals uninterrupted (after an in-process crash and after a real SIGKILL), the best config
reproduces its score, the subsample is stratified and deterministic, and bad spaces are sentences."""

import fcntl
import json
import random
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml

from conftest import FILLER, NEGATIVE, POSITIVE, tiny_config_dict, write_csv
from kdistill.config import RunConfig, SearchConfig, from_dict, load_config
from kdistill.data import prepare_data
from kdistill.errors import KdistillError
from kdistill.recipes import label as pipeline
from kdistill.recipes.search import search, subsample
from kdistill.teachers import signal as teachers

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from search_demo import rerun_best, search_killed_once  # noqa: E402

# a good and a hopeless learning rate: on the tiny task the second never leaves chance, so it is pruned
CHOICE_SPACE = {"training.learning_rate": {"choices": [1e-7, 3e-3]},
                "objective.kd.weight": {"low": 0.2, "high": 0.8, "complement": "objective.ce.weight"}}
RANGE_SPACE = {"training.learning_rate": {"low": 3e-3, "high": 3e-2, "log": True},
               "objective.kd.temperature": {"low": 1.0, "high": 4.0},
               "objective.kd.divergence": {"choices": ["forward_kl", "jsd"]}}


def _mixed_reviews(tmp_path: Path, n: int = 240) -> dict:
    """A harder tiny task (3 sentiment words of both kinds, the majority wins), so scores vary between trials
    instead of jumping from chance to 1.0."""
    rng, rows, seen = random.Random(0), [], set()
    while len(rows) < n:
        num_positive = rng.choice([0, 1, 2, 3])
        words = rng.sample(FILLER, 3) + rng.sample(POSITIVE, num_positive) + rng.sample(NEGATIVE, 3 - num_positive)
        rng.shuffle(words)
        if " ".join(words) not in seen:
            seen.add(" ".join(words))
            rows.append((" ".join(words), "positive" if num_positive >= 2 else "negative"))
    return {"path": str(write_csv(tmp_path / "mixed.csv", rows))}


def _search_section(space, **settings):
    return {"trials": 6, "sampler": "random", "startup_trials": 2, "subsample": 0.8, "space": space, **settings}


def _results(out: Path) -> dict:
    return json.loads((out / "results.json").read_text())


def test_search_prunes_writes_results_and_a_best_config_that_runs(tiny_config, monkeypatch):
    asked = Counter()
    member_targets = teachers.member_targets
    monkeypatch.setattr(teachers, "member_targets", lambda *a, **k: asked.update([1]) or member_targets(*a, **k))
    cfg = tiny_config(training={"epochs": 4}, search=_search_section(CHOICE_SPACE))
    out = search(cfg, progress=False)

    assert asked[1] == 1  # the teacher is asked once, not once per trial
    results = _results(out)
    states = Counter(row["state"] for row in results["trials"])
    assert results["finished"] == 6 and states["complete"] + states["pruned"] == 6 and states["pruned"] >= 1
    for row in results["trials"]:
        assert row["params"]["objective.ce.weight"] == pytest.approx(1 - row["params"]["objective.kd.weight"])
        if row["state"] == "pruned":
            assert row["params"]["training.learning_rate"] == 1e-7 and row["note"].startswith("pruned at step")
    completed = [row for row in results["trials"] if row["state"] == "complete"]
    assert results["best"]["value"] == max(row["value"] for row in completed)
    assert "| trial | state | val macro-F1 |" in (out / "results.md").read_text()

    best = load_config(out / "best.yaml")
    params = results["best"]["params"]
    assert best.training.learning_rate == params["training.learning_rate"]
    assert best.objective.kd.weight == params["objective.kd.weight"]
    assert best.objective.ce.weight == params["objective.ce.weight"]
    assert best.search == SearchConfig() and "search" not in yaml.safe_load((out / "best.yaml").read_text())
    assert best.name == cfg.name and best.data == cfg.data
    # trials keep numbers, not weights
    assert not (out / "trials").exists() or not any((out / "trials").iterdir())
    assert not (cfg.run_dir / "students").exists() and not (cfg.run_dir / "checkpoints").exists()

    # the finished search is not run again, and its study refuses another config
    assert search(cfg, progress=False) == out and len(_results(out)["trials"]) == 6
    other = tiny_config(training={"epochs": 4}, search=_search_section(RANGE_SPACE))
    with pytest.raises(KdistillError, match="started with another config.*search.space"):
        search(other, progress=False)


class Crash(Exception):
    """Stands in for a kill: not a KdistillError, so the search does not catch it."""


def _trial_summary(out: Path) -> list:
    rows = [r for r in _results(out)["trials"] if not r["note"].startswith("interrupted")]
    return [(r["state"], r["params"], r["value"]) for r in rows]


def test_resumed_search_equals_uninterrupted(tmp_path, tiny_models, monkeypatch):
    def config(name):
        return from_dict(RunConfig, tiny_config_dict(tmp_path, tiny_models, name=name, data=_mixed_reviews(tmp_path),
                                                     training={"epochs": 4},
                                                     search=_search_section(RANGE_SPACE, trials=5, sampler="tpe")))

    whole = search(config("whole"), progress=False)

    train, calls = pipeline.train, []

    def crash_in_third_trial(*args, on_record=None, **kwargs):
        calls.append(1)
        if len(calls) != 3:
            return train(*args, on_record=on_record, **kwargs)

        def record(rec):  # dies after the trial's first validation was reported
            on_record(rec)
            if "val_macro_f1" in rec:
                raise Crash()
        return train(*args, on_record=record, **kwargs)

    monkeypatch.setattr(pipeline, "train", crash_in_third_trial)
    with pytest.raises(Crash):
        search(config("cut"), progress=False)
    calls.clear()
    monkeypatch.setattr(pipeline, "train", lambda *a, **k: calls.append(1) or train(*a, **k))
    cut = search(config("cut"), progress=False)

    assert len(calls) == 3  # the interrupted trial again, then the two never started: none redone
    notes = [r["note"] for r in _results(cut)["trials"]]
    assert notes[2] == "interrupted; run again as trial 3" and notes[3] == "retry of trial 2"
    assert _results(cut)["finished"] == 5
    assert len({value for _, _, value in _trial_summary(whole)}) > 1  # the sampler had scores to go by
    assert _trial_summary(cut) == _trial_summary(whole)  # same points drawn, same scores


def test_sigkilled_search_resumes_and_its_best_config_reproduces(tmp_path, tiny_models):
    data = tiny_config_dict(tmp_path, tiny_models, data=_mixed_reviews(tmp_path), training={"epochs": 4},
                            search=_search_section(RANGE_SPACE, trials=4, pruner="none"))
    path = tmp_path / "search.yaml"
    path.write_text(yaml.safe_dump(data))
    kill = search_killed_once(str(path), {}, kill_after=1, log_path=tmp_path / "search.log", poll_s=0.1)
    out = load_config(path).run_dir / "search"
    results = _results(out)
    assert kill["killed"] and kill["killed_mid_trial"], (tmp_path / "search.log").read_text()[-3000:]
    assert results["finished"] == 4
    assert any(r["note"].startswith("interrupted") for r in results["trials"])

    rerun = rerun_best(out, load_config(path).search)
    assert rerun["rerun_value"] == pytest.approx(rerun["best_trial_value"], abs=1e-9)


def test_subsample_is_stratified_and_deterministic(tiny_config):
    cfg = tiny_config(data={"num_labelled": 40})
    data = prepare_data(cfg.data, cfg.task)
    sub = subsample(data, 0.5, seed=0)
    assert [e.id for e in sub.train] == [e.id for e in subsample(data, 0.5, seed=0).train]
    assert [e.id for e in sub.train] != [e.id for e in subsample(data, 0.5, seed=1).train]
    assert sub.validation == data.validation and sub.test == data.test
    labelled = {e.id for e in data.labelled_train}
    assert len(sub.labelled_train) == 20 and {e.id for e in sub.labelled_train} <= labelled
    for part, whole in ((sub.labelled_train, data.labelled_train),
                        ([e for e in sub.train if e.id not in labelled], [e for e in data.train if e.id not in labelled])):
        counts, full = Counter(e.label for e in part), Counter(e.label for e in whole)
        for label in full:  # each label's share, to within one example of the exact quota
            assert abs(counts[label] - full[label] * len(part) / len(whole)) < 1
    assert subsample(data, 1.0, seed=0) is data
    with pytest.raises(KdistillError, match="raise search.subsample"):
        subsample(data, 0.001, seed=0)


@pytest.mark.parametrize("space,message", [
    ({"objective.kd.temprature": {"low": 1, "high": 2}}, "Did you mean 'objective.kd.temperature'?"),
    ({"objectve.kd.temperature": {"low": 1, "high": 2}}, "Did you mean 'objective'?"),
    ({"teacher.few_shot_per_label": {"low": 0, "high": 4}}, "only objective.*, training.* and student.*"),
    ({"objective.kd.divergence": {"choices": ["forward_kl", "jds"]}}, "Did you mean 'jsd'?"),
    ({"objective.kd.divergence": {"low": 0, "high": 1}}, "choices: [...]"),
    ({"objective.kd": {"low": 0, "high": 1}}, "is a section"),
    ({"training.epochs": {"low": 1.5, "high": 3}}, "expected int"),
    ({"training.learning_rate": {"low": 0, "high": 1e-3, "log": True}}, "low > 0 with log"),
    ({"objective.kd.weight": {"low": 0, "high": 1, "complement": "objective.ce.wieght"}}, "Did you mean"),
    ({"objective.kd.temperature": {"lo": 1, "high": 2}}, "expected a range"),
])
def test_bad_space_is_a_sentence_naming_the_key(tmp_path, tiny_models, space, message):
    with pytest.raises(KdistillError) as err:
        from_dict(RunConfig, tiny_config_dict(tmp_path, tiny_models, search={"space": space}))
    assert message in str(err.value) and "search.space" in str(err.value)


def test_a_search_needs_a_space_and_the_run_to_itself(tiny_config):
    with pytest.raises(KdistillError, match="search.space is empty"):
        search(tiny_config(), progress=False)
    cfg = tiny_config(search=_search_section(CHOICE_SPACE))
    lock = cfg.run_dir / "search" / ".lock"
    lock.parent.mkdir(parents=True)
    with open(lock, "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(KdistillError, match="another `kdistill search` of this run is running"):
            search(cfg, progress=False)
