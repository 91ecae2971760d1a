"""Config: strict keys, contradictions, round trip, and every shipped config validates."""

from pathlib import Path

import pytest

from conftest import tiny_config_dict
from kdistill.config import RunConfig, dump_yaml, from_dict, load_config
from kdistill.errors import KdistillError

REPO = Path(__file__).resolve().parents[1]


def test_round_trip(tmp_path, tiny_models):
    cfg = from_dict(RunConfig, tiny_config_dict(tmp_path, tiny_models))
    path = tmp_path / "again.yaml"
    path.write_text(dump_yaml(cfg))
    assert load_config(path) == cfg


@pytest.mark.parametrize("section,field,value,message", [
    ("training", "batchsize", 8, "Did you mean 'batch_size'?"),
    ("objective", "alpha", 0.5, "write `ce: {weight: 1 - alpha}` and `kd: {weight: alpha}`"),
    ("objective", "kd", {"temperature": 0}, "objective.kd.temperature must be > 0"),
    ("objective", "kd", {"divergence": "forward_lk"}, "Did you mean 'forward_kl'?"),
    ("objective", "hidden", {"layers": 3}, "objective.hidden.layers"),
    ("training", "grad_accum_steps", 3, "must be divisible"),
    ("training", "mixed_precision", "bf61", "Did you mean 'bf16'?"),
    ("training", "epochs", "three", "expected int"),
    ("training", "select_by", "rouge_l", "is for generation tasks"),
    ("training", "select_by", "rouge", "Did you mean 'rouge_l'?"),
])
def test_bad_fields_name_the_field(tmp_path, tiny_models, section, field, value, message):
    data = tiny_config_dict(tmp_path, tiny_models)
    data[section][field] = value
    with pytest.raises(KdistillError, match=None) as err:
        from_dict(RunConfig, data)
    assert message in str(err.value) and section in str(err.value)


def test_every_shipped_config_validates():
    """Every run config in the repo, found by a recursive search, loads and its data prepares."""
    from kdistill.data import prepare_data
    from kdistill.recipes.stages import stage_configs

    found = [p for p in REPO.rglob("*.yaml") if ".venv" not in p.parts and "runs" not in p.parts
             and "teacher:" in p.read_text(encoding="utf-8")]
    assert len(found) == 9, found  # default, sentiment-prompted, news-topics, sentiment3, sentiment-two-stage,
    # bbc-summary, trivia-qa, the parity benchmark's summary-small and the efficacy suite's news-topics-5
    for path in found:
        cfg = load_config(path)
        if cfg.task.kind == "generation":
            from kdistill.data.gen_data import prepare_generation

            data = prepare_generation(cfg.data, cfg.task)
            assert len(data.test) > 0 and len(data.train) > len(data.test), path
            continue
        for stage_cfg in stage_configs(cfg) if cfg.stages else [cfg]:
            data = prepare_data(stage_cfg.data, stage_cfg.task)
            assert len(data.test) > 0 and len(data.train) > len(data.test) / 2, path


def test_every_builtin_task_loads():
    from kdistill.config import DataConfig, TaskConfig
    from kdistill.config.builtin import builtin_tasks, load_builtin_task

    tasks = builtin_tasks()
    assert len(tasks) == 5
    for name in tasks:
        raw = load_builtin_task(name)
        from_dict(TaskConfig, raw["task"]), from_dict(DataConfig, raw["data"])


def test_a_data_override_keeps_the_builtin_tasks_data():
    cfg = load_config("sentiment3", {"data.num_labelled": 300})
    assert cfg.data.num_labelled == 300 and cfg.data.path == "asset:tweets-sentiment"


def test_a_setting_inside_a_builtin_task_overrides_it_and_a_bad_path_is_named():
    """`kdistill run trivia-qa --set task.max_new_tokens=8`: `task` is still the name "trivia-qa" when the
    overrides apply, and setting inside it ended in a bare TypeError."""
    cfg = load_config("trivia-qa", {"task.max_new_tokens": 8, "data.max_examples": 40})
    assert cfg.task.max_new_tokens == 8 and cfg.task.name == "trivia-qa"  # the rest of the built-in task stays
    assert cfg.data.max_examples == 40 and cfg.data.path == "asset:trivia-pairs"
    with pytest.raises(KdistillError, match=r"--set name\.first=1: name is the value 'trivia-qa', not a section"):
        load_config("trivia-qa", {"name.first": 1})
