"""Multi-stage runs: stage configs, a student carried into a task with other labels, the optimizer carried
by parameter name, and a two-stage run whose report.md and report.html show both stages."""

from __future__ import annotations

import base64
import json
import logging
import random
import re

import pytest
import torch

from conftest import FILLER, make_texts, write_csv
from kdistill import api
from kdistill.config import RunConfig, from_dict
from kdistill.errors import KdistillError
from kdistill.models import load_saved
from kdistill.recipes.stages import stage_configs
from kdistill.train.stage_start import init_student

THREE_LABELS = {"name": "tiny-sentiment3", "labels": ["negative", "neutral", "positive"],
                "prompt_template": "Review: {text} Sentiment? Answer:",
                "verbalizers": {"negative": " negative", "neutral": " neutral", "positive": " positive"}}


def _three_label_csv(tmp_path):
    rng = random.Random(1)
    neutral = [(" ".join(rng.sample(FILLER, 5)) + f" {i}", "neutral") for i in range(60)]
    return write_csv(tmp_path / "tweets.csv", make_texts(120, seed=3) + neutral)


def _two_stages(tiny_config, tmp_path, optimizer="carry"):
    stage2 = {"task": THREE_LABELS, "data.path": str(_three_label_csv(tmp_path)), "training.epochs": 1}
    return tiny_config(evaluation={"seeds": [0], "baselines": True},
                       stages=[{"name": "reviews"}, {"name": "tweets", "set": stage2, "optimizer": optimizer}])


def test_stage_configs_apply_each_stages_overrides(tiny_config, tmp_path):
    cfg = _two_stages(tiny_config, tmp_path)
    first, second = stage_configs(cfg)
    assert first.run_dir == cfg.run_dir / "stages" / "1-reviews" and not first.stages
    assert first.task == cfg.task and first.training.epochs == cfg.training.epochs
    assert second.run_dir == cfg.run_dir / "stages" / "2-tweets"
    assert second.task.labels == ["negative", "neutral", "positive"] and second.training.epochs == 1
    assert second.teacher == cfg.teacher  # what a stage does not set stays the run's


def test_a_stage_naming_a_builtin_task_takes_its_data(tiny_config):
    cfg = tiny_config(stages=[{"name": "a"}, {"name": "b", "set": {"task": "sentiment3", "data.max_examples": 300}}])
    second = stage_configs(cfg)[1]
    assert second.task.name == "sentiment3" and second.data.path == "asset:tweets-sentiment"
    assert second.data.max_examples == 300


def test_stage_config_errors_are_sentences(tiny_config):
    with pytest.raises(KdistillError, match="cannot be set per stage"):
        tiny_config(stages=[{"name": "a", "set": {"output_dir": "x"}}])
    with pytest.raises(KdistillError, match=r"stages\[1\] \(b\).*trainning"):
        stage_configs(tiny_config(stages=[{"name": "a"}, {"name": "b", "set": {"trainning.epochs": 1}}]))
    staged = tiny_config(stages=[{"name": "a"}, {"name": "b"}])
    with pytest.raises(KdistillError, match="`kdistill train` works on one run"):
        api.train(staged, progress=False)
    assert api.validate(staged, check_models=False).count("config ok") == 2


def test_student_moves_to_a_task_with_more_labels_keeping_the_shared_rows(tiny_config, tiny_models, tmp_path):
    cfg = tiny_config(evaluation={"seeds": [0], "baselines": False})
    folder = api.train(cfg, variant="distilled", seed=0, progress=False)
    second = from_dict(RunConfig, {**json.loads(json.dumps(_plain(cfg))), "task": THREE_LABELS})
    old = load_saved(folder)
    torch.manual_seed(0)
    new = init_student(folder, second, torch.device("cpu"))
    assert new.labels == THREE_LABELS["labels"]
    old_head, new_head = old.module.classifier.weight, new.module.classifier.weight  # (L, D)
    torch.testing.assert_close(new_head[0], old_head[0])  # negative
    torch.testing.assert_close(new_head[2], old_head[1])  # positive
    assert not torch.equal(new_head[1], old_head[0]) and not torch.equal(new_head[1], old_head[1])
    body = [k for k in old.module.state_dict() if "classifier" not in k]
    assert all(torch.equal(old.module.state_dict()[k], new.module.state_dict()[k]) for k in body)


def _plain(cfg: RunConfig) -> dict:
    import yaml

    from kdistill.config import dump_yaml

    return yaml.safe_load(dump_yaml(cfg))


def test_two_stage_run_reports_both_stages_and_carries_the_optimizer(tiny_config, tmp_path, caplog):
    cfg = _two_stages(tiny_config, tmp_path)
    with caplog.at_level(logging.INFO, logger="kdistill.recipes.label"):
        run_dir = api.run(cfg, progress=False)
    report = (run_dir / "report.md").read_text()
    assert "## Stage 1: reviews" in report and "## Stage 2: tweets" in report
    assert report.count("student, distilled") >= 2 and report.count("student, labels only") >= 2
    results = json.loads((run_dir / "eval" / "results.json").read_text())
    assert [s["name"] for s in results["stages"]] == ["reviews", "tweets"]
    assert results["stages"][1]["results"]["labels"] == ["negative", "neutral", "positive"]
    assert (run_dir / "student" / "kdistill.json").exists()
    assert json.loads((run_dir / "student" / "kdistill.json").read_text())["labels"] == THREE_LABELS["labels"]
    # each variant carried its own optimizer: everything but the new head (its weight and bias)
    carried = [r.getMessage() for r in caplog.records if r.getMessage().startswith("carried the optimizer")]
    assert len(carried) == 2  # distilled and labels-only, seed 0
    for message in carried:
        done, total = (int(x) for x in message.split()[5:8:2])
        assert done == total - 2, message
    _assert_combined_page(run_dir, results)
    # `kdistill report` rebuilds the same page from the stages' results, and each stage's own page too
    page = (run_dir / "report.html").read_text()
    (run_dir / "report.html").unlink()
    (run_dir / "stages" / "2-tweets" / "report.html").unlink()
    assert api.report(cfg) == run_dir / "report.md"
    assert (run_dir / "report.html").read_text() == page
    assert (run_dir / "stages" / "2-tweets" / "report.html").exists()


def _assert_combined_page(run_dir, results):
    """report.html: a section per stage, in order, with the stage's name, its card and its figures embedded."""
    page = (run_dir / "report.html").read_text()
    sections = re.findall(r'<section class="stage" id="stage-(\d)">(.*?)</section>', page, re.S)
    assert [int(number) for number, _ in sections] == [1, 2]
    for stage, (_, section) in zip(results["stages"], sections):
        assert f"Stage {stage['stage']}: {stage['name']} (task {stage['task']})" in section
        own_page = (run_dir / "stages" / f"{stage['stage']}-{stage['name']}" / "report.html").read_text()
        card = re.search(r'<table class="card">.*?</table>', own_page, re.S).group(0)
        assert card in section, "the stage's section carries the stage's own report card"
        images = re.findall(r'<img src="data:image/png;base64,([^"]+)"', section)
        # comparison, training curves of both variants, confusion matrices of the four models
        assert len(images) == 1 + 2 + 4 and all(base64.b64decode(i).startswith(b"\x89PNG") for i in images)
    assert not re.search(r'(src|href)="(?!data:|#)', page), "nothing is fetched"


def test_report_of_an_unfinished_multi_stage_run_names_the_missing_stage(tiny_config):
    cfg = tiny_config(stages=[{"name": "a"}, {"name": "b"}])
    with pytest.raises(KdistillError, match=r"1-a/eval/results.json: stage 1 \(a\) has no results yet.*--resume"):
        api.report(cfg)
    assert not (cfg.run_dir / "report.html").exists()
