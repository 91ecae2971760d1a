"""A teacher budget: the teacher is asked about exactly the texts chosen, in rounds that resume to the same
choice; active and random selection; the teacher's cost on the card. Tiny models (tests/conftest.py)."""

import json
from pathlib import Path

import pytest
import torch

from conftest import tiny_config_dict
from fault_proxy import FakeOpenAI
from kdistill import api
from kdistill.cache.entry import open_entry
from kdistill.config import EndpointConfig, RunConfig, TeacherConfig, from_dict
from kdistill.recipes import selection as selection_recipe
from kdistill.recipes.label import prepared_data
from kdistill.teachers.cost import prompt_tokens
from kdistill.teachers.endpoint import EndpointLabelModel
from kdistill.teachers.signal import load_teachers
from kdistill.train.selection import pick_active, pick_random, pick_typical, predictive_entropy, round_sizes, typicality

NUM_LABELLED, BUDGET, ROUNDS = 20, 15, 3


def budget_config(root: Path, models: dict, **teacher) -> RunConfig:
    """The tiny job with 20 gold labels (a pool of 80 texts), one seed, one epoch, active selection (the default is
    random): the budget's rounds are the news."""
    teacher = {"budget": BUDGET, "selection": {"rounds": ROUNDS, "strategy": "active"}, **teacher}
    root.mkdir(parents=True, exist_ok=True)
    return from_dict(RunConfig, tiny_config_dict(root, models, data={"num_labelled": NUM_LABELLED}, teacher=teacher,
                                                 training={"epochs": 1},
                                                 evaluation={"seeds": [0], "baselines": False}))


def chosen_ids(run_dir: Path) -> list[list[str]]:
    return [r["chosen"] for r in json.loads((run_dir / "selection" / "rounds.json").read_text())["rounds"]]


def cached_ids(run_dir: Path) -> list[str]:
    """Every example id of every complete entry of the run's teacher cache (an id twice would show twice)."""
    folders = [p for p in (run_dir / "teacher_cache").iterdir() if (p / "manifest.json").exists()]
    return [i for folder in folders for i in open_entry(folder).ids()]


def student_weights(run_dir: Path) -> bytes:
    return (run_dir / "students" / "distilled-seed0" / "model.safetensors").read_bytes()


@pytest.fixture(scope="module")
def active_run(tmp_path_factory, tiny_models) -> Path:
    return api.run(budget_config(tmp_path_factory.mktemp("active"), tiny_models), progress=False)


# ------------------------------------------------------------------ the scores, alone
def test_the_budget_is_split_over_the_rounds_as_evenly_as_it_goes():
    assert round_sizes(15, 3) == [5, 5, 5] and round_sizes(10, 4) == [3, 3, 2, 2] and sum(round_sizes(7, 7)) == 7


def test_entropy_is_zero_when_sure_and_log_l_when_not():
    entropy_n = predictive_entropy(torch.tensor([[30.0, -30.0, -30.0], [1.0, 1.0, 1.0]]))
    assert entropy_n[0] == pytest.approx(0, abs=1e-6) and entropy_n[1] == pytest.approx(torch.log(torch.tensor(3.0)))


def test_kmeans_spreads_the_batch_that_uncertainty_alone_would_take_from_one_cluster():
    # three tight clusters; the six most uncertain texts all lie in the first
    centres_cd = torch.eye(3, 8) * 10
    embeddings_nd = torch.cat([centres_cd[c] + 0.01 * torch.randn(10, 8, generator=torch.Generator().manual_seed(c))
                               for c in range(3)])
    entropy_n = torch.cat([torch.linspace(0.9, 0.8, 10), torch.linspace(0.5, 0.4, 10), torch.linspace(0.3, 0.2, 10)])
    alone = pick_active(entropy_n, embeddings_nd, 3, diversity="none", seed=0)
    spread = pick_active(entropy_n, embeddings_nd, 3, diversity="kmeans", seed=0)
    assert alone == [0, 1, 2]
    assert spread == [0, 10, 20]  # the most uncertain text of each cluster


def test_typical_takes_a_text_from_each_clusters_dense_core_not_its_edge():
    # three clusters of 30; in each, texts 0-9 form a tight core and texts 10-29 lie scattered around it
    generator = torch.Generator().manual_seed(0)
    scale_n1 = torch.tensor([0.01] * 10 + [1.5] * 20).unsqueeze(1)
    embeddings_nd = torch.cat([torch.eye(3, 8)[c] * 10 + scale_n1 * torch.randn(30, 8, generator=generator)
                               for c in range(3)])
    typical_n = typicality(embeddings_nd)
    assert all(typical_n[30 * c:30 * c + 10].min() > typical_n[30 * c + 10:30 * c + 30].max() for c in range(3))
    picked = pick_typical(embeddings_nd, 3, seed=0)
    assert [i // 30 for i in picked] == [0, 1, 2] and all(i % 30 < 10 for i in picked)
    assert pick_typical(embeddings_nd, 3, seed=0) == picked
    assert pick_typical(embeddings_nd[:2], 5, seed=0) == [0, 1]  # a batch larger than the candidates takes them all


def test_random_picks_are_distinct_and_seeded():
    assert pick_random(50, 10, (0, 1)) == pick_random(50, 10, (0, 1)) != pick_random(50, 10, (0, 2))
    assert len(set(pick_random(50, 10, (0, 1)))) == 10


# ------------------------------------------------------------------ a run under a budget
def test_the_teacher_is_asked_about_the_labelled_texts_the_budget_and_the_held_out_splits_only(active_run):
    splits = json.loads((active_run / "data" / "splits.json").read_text())
    rounds = chosen_ids(active_run)
    assert [len(ids) for ids in rounds] == round_sizes(BUDGET, ROUNDS)
    chosen = [i for ids in rounds for i in ids]
    ids = cached_ids(active_run)
    assert len(ids) == len(set(ids)) == NUM_LABELLED + BUDGET + len(splits["validation"]) + len(splits["test"])
    assert set(chosen) <= set(splits["train"]) and set(splits["validation"]) | set(splits["test"]) <= set(ids)
    results = json.loads((active_run / "eval" / "results.json").read_text())
    assert results["data"]["totals"]["train"] == NUM_LABELLED + BUDGET
    assert results["teacher_cost"]["total"]["calls"] == len(ids)  # a fresh run: every answer was a call
    assert [r["teacher_calls"] for r in results["selection"]["rounds"]] == [len(ids) - BUDGET + 5 * r for r in range(3)]
    assert "select_s" in results["timings"]


def test_under_a_budget_the_student_trains_as_many_steps_as_on_the_whole_pool(active_run):
    """The budget limits what the teacher is asked, not how long the student trains."""
    splits = json.loads((active_run / "data" / "splits.json").read_text())
    batch = 8  # tiny_config_dict's training.batch_size; one epoch
    whole_pool_steps = -(-len(splits["train"]) // batch)
    assert len(splits["train"]) > NUM_LABELLED + BUDGET  # the pool before the budget cut it
    training = json.loads((active_run / "students" / "distilled-seed0.training.json").read_text())
    assert training["steps"] == whole_pool_steps > -(-(NUM_LABELLED + BUDGET) // batch)


def test_the_card_shows_the_teachers_cost_and_the_selection_curve(active_run):
    results = json.loads((active_run / "eval" / "results.json").read_text())
    calls = results["teacher_cost"]["total"]["calls"]
    tokens = results["teacher_cost"]["teachers"]["lm"]["prompt_tokens"]
    assert tokens > calls and results["teacher_cost"]["teachers"]["lm"]["prompt_tokens_source"] == "teacher tokenizer"
    report = (active_run / "report.md").read_text()
    assert f"Teacher cost: **{calls:,} calls**" in report and f"{tokens:,} prompt tokens" in report
    assert f"asked about **{BUDGET}** of the 80 texts without gold labels" in report
    page = (active_run / "report.html").read_text()
    assert f"<strong>{calls:,} calls</strong>" in page and 'id="selection.png"' in page
    assert (active_run / "plots" / "selection.png").exists()


def test_a_run_killed_mid_rounds_resumes_to_the_same_texts_and_student(active_run, tmp_path, tiny_models, monkeypatch):
    cfg = budget_config(tmp_path, tiny_models)
    choose = selection_recipe._choose

    def killed_in_round_3(cfg, student, candidates, size, number):
        if number == 3:
            raise KeyboardInterrupt
        return choose(cfg, student, candidates, size, number)

    monkeypatch.setattr(selection_recipe, "_choose", killed_in_round_3)
    with pytest.raises(KeyboardInterrupt):
        api.run(cfg, progress=False)
    assert len(chosen_ids(cfg.run_dir)) == 2
    monkeypatch.setattr(selection_recipe, "_choose", choose)
    api.run(cfg, resume=True, progress=False)
    assert chosen_ids(cfg.run_dir) == chosen_ids(active_run)
    assert student_weights(cfg.run_dir) == student_weights(active_run)
    # the texts the killed run asked were read back from the cache, not asked again
    calls = json.loads(cfg.paths.teacher_calls.read_text())["teachers"]["lm"]["calls"]
    assert calls == len(cached_ids(cfg.run_dir))


def test_random_selection_is_seeded_and_differs_from_active(active_run, tmp_path, tiny_models):
    def random_choice(folder: str) -> list[list[str]]:
        cfg = budget_config(tmp_path / folder, tiny_models, selection={"rounds": ROUNDS, "strategy": "random"})
        data = prepared_data(cfg)
        selection_recipe.select_pool(cfg, data, load_teachers(cfg, data, progress=False), progress=False)
        return chosen_ids(cfg.run_dir)

    first = random_choice("a")
    assert first == random_choice("b")
    assert {i for ids in first for i in ids} != {i for ids in chosen_ids(active_run) for i in ids}


def test_typical_selection_asks_the_budget_and_chooses_other_texts_than_active(active_run, tmp_path, tiny_models,
                                                                              monkeypatch):
    picks = []

    def recording_pick_typical(*args, **kwargs):
        picks.append(pick_typical(*args, **kwargs))
        return picks[-1]

    monkeypatch.setattr(selection_recipe, "pick_typical", recording_pick_typical)
    cfg = budget_config(tmp_path / "typical", tiny_models, selection={"rounds": ROUNDS, "strategy": "typical"})
    api.run(cfg, progress=False)
    assert len(picks) == ROUNDS  # every round chose by typicality, not by another strategy
    chosen = chosen_ids(cfg.run_dir)
    assert [len(ids) for ids in chosen] == round_sizes(BUDGET, ROUNDS)
    assert len({i for ids in chosen for i in ids}) == BUDGET  # no text chosen twice
    assert {i for ids in chosen for i in ids} != {i for ids in chosen_ids(active_run) for i in ids}
    assert json.loads(cfg.paths.results.read_text())["selection"]["strategy"] == "typical"
    assert "by the most typical text of each k-means cluster" in cfg.paths.report_md.read_text()


def test_without_a_budget_below_the_pool_nothing_changes(tmp_path, tiny_models):
    plain = budget_config(tmp_path / "plain", tiny_models, budget=None)
    covering = budget_config(tmp_path / "covering", tiny_models, budget=80)  # the whole pool: no choice to make
    for cfg in (plain, covering):
        api.run(cfg, progress=False)
        assert not (cfg.run_dir / "selection").exists()
        assert "selection" not in json.loads(cfg.paths.results.read_text())
        assert len([p for p in cfg.paths.teacher_cache.iterdir() if (p / "manifest.json").exists()]) == 1
    assert student_weights(plain.run_dir) == student_weights(covering.run_dir)


@pytest.mark.parametrize("usage", [True, False])
def test_an_endpoint_teachers_prompt_tokens_are_the_servers_usage_or_unknown(tmp_path, usage):
    texts = [f"review {i}: a {'great' if i % 2 else 'dull'} film" for i in range(6)]
    with FakeOpenAI(usage=usage) as server:
        model = EndpointLabelModel(EndpointConfig(base_url=server.url, top_logprobs=4), model="fake-lm",
                                   labels=["negative", "positive"], verbalizers=[" negative", " positive"],
                                   prompt_template="Review: {text}\nSentiment:", journal_path=tmp_path / "j.jsonl")
        before = model.stats()
        model.label_logprobs(texts)
        counted = prompt_tokens(model, TeacherConfig(model="fake-lm"), texts, before)
    words = sum(len(model.prompt(text).split()) for text in texts)
    assert counted == ((words, "endpoint usage") if usage else (None, None))
