"""The teacher store: hit on the same key, miss on any change, damage detected; cached equals live."""

from dataclasses import replace

import torch

from kdistill import pipeline
from kdistill.data import prepare_data
from kdistill.elicit import label_logprobs, teacher_key
from kdistill.models import load_label_model
from kdistill.store import TeacherStore, TeacherTargets
from kdistill.teachers import load_member


def _entries(cfg):
    return sorted(p.name for p in (cfg.run_dir / "teacher_cache").iterdir() if p.is_dir())


def test_same_config_hits_and_cached_equals_live(tiny_config):
    cfg = tiny_config(teacher={"calibrate": False, "recalibrate": "none"})  # the store keeps raw answers
    first = pipeline.elicit(cfg, progress=False).targets
    second = pipeline.elicit(cfg, progress=False).targets
    assert len(_entries(cfg)) == 1
    assert second.ids == first.ids and torch.equal(second.values, first.values)
    data = prepare_data(cfg.data, cfg.task)
    teacher = load_member(cfg, data, cfg.teacher, progress=False)
    examples = data.train + data.validation + data.test
    live = label_logprobs(teacher, [e.text for e in examples], batch_size=8, progress=False)
    torch.testing.assert_close(second.rows([e.id for e in examples]), live, rtol=1e-4, atol=1e-5)


def test_any_change_misses(tiny_config, tiny_models):
    base = tiny_config()
    pipeline.elicit(base, progress=False)
    changes = {
        "prompt": replace(base, task=replace(base.task, prompt_template="Review: {text} Answer:")),
        "teacher": replace(base, teacher=replace(base.teacher, model=str(tiny_models["lm2"]))),
        "few-shot": replace(base, teacher=replace(base.teacher, few_shot_per_label=2)),
        "calibration": replace(base, teacher=replace(base.teacher, calibrate=False)),
        "data": replace(base, data=replace(base.data, split_seed=7)),
    }
    for n, (what, cfg) in enumerate(changes.items(), start=2):
        pipeline.elicit(cfg, progress=False)
        assert len(_entries(base)) == n, f"changing the {what} reused a stored entry"


def test_flipped_byte_is_detected(tmp_path):
    store = TeacherStore(tmp_path)
    key = {"teacher": "x", "data": "y"}
    folder = store.save(key, TeacherTargets(["a", "b"], torch.randn(2, 3).log_softmax(-1)))
    assert store.load(key) is not None
    shard = folder / "targets.safetensors"
    raw = bytearray(shard.read_bytes())
    raw[-3] ^= 0xFF
    shard.write_bytes(bytes(raw))
    assert store.load(key) is None


def test_targets_are_looked_up_by_id_not_position():
    targets = TeacherTargets(["a", "b", "c"], torch.tensor([[0.0], [1.0], [2.0]]))
    assert targets.rows(["c", "a"]).flatten().tolist() == [2.0, 0.0]


def test_prefix_reuse_equals_full_prompt(tiny_config):
    cfg = tiny_config()
    data = prepare_data(cfg.data, cfg.task)
    teacher = load_member(cfg, data, cfg.teacher, progress=False)
    assert teacher.prefix  # few-shot on
    texts = [e.text for e in data.test[:10]]
    reused = teacher.predict_logits(texts)
    from kdistill.models.base import LabelModel

    full = LabelModel.predict_logits(teacher, texts)  # the whole prompt, no cache
    torch.testing.assert_close(reused, full, rtol=1e-4, atol=1e-5)
    alone = torch.cat([LabelModel.predict_logits(teacher, [t]) for t in texts])  # no padding at all
    torch.testing.assert_close(full, alone, rtol=1e-4, atol=1e-5)
