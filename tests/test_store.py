"""The teacher cache as the pipeline uses it: hit on the same key, miss on any change, damage detected and
re-elicited; cached equals live."""

from dataclasses import replace

import pytest
import torch

from kdistill import api
from kdistill.cache import cache_verify
from kdistill.data import prepare_data
from kdistill.targets import TeacherTargets
from kdistill.teachers.elicit import label_logprobs
from kdistill.teachers.signal import load_member


def _entries(cfg):
    return sorted(p.parent.name for p in (cfg.run_dir / "teacher_cache").glob("*/entry.json"))


def test_same_config_hits_and_cached_equals_live(tiny_config):
    cfg = tiny_config(teacher={"calibrate": False, "recalibrate": "none"})  # the store keeps raw answers
    first = api.elicit(cfg, progress=False).targets
    second = api.elicit(cfg, progress=False).targets
    assert len(_entries(cfg)) == 1
    assert second.ids == first.ids and torch.equal(second.values, first.values)
    data = prepare_data(cfg.data, cfg.task)
    teacher = load_member(cfg, data, cfg.teacher, progress=False)
    examples = data.train + data.validation + data.test
    live = label_logprobs(teacher, [e.text for e in examples], batch_size=8, progress=False)
    torch.testing.assert_close(second.rows([e.id for e in examples]), live, rtol=1e-4, atol=1e-5)


def test_any_change_misses(tiny_config, tiny_models):
    base = tiny_config()
    api.elicit(base, progress=False)
    changes = {
        "prompt": replace(base, task=replace(base.task, prompt_template="Review: {text} Answer:")),
        "teacher": replace(base, teacher=replace(base.teacher, model=str(tiny_models["lm2"]))),
        "few-shot": replace(base, teacher=replace(base.teacher, few_shot_per_label=2)),
        "calibration": replace(base, teacher=replace(base.teacher, calibrate=False)),
        "data": replace(base, data=replace(base.data, split_seed=7)),
    }
    for n, (what, cfg) in enumerate(changes.items(), start=2):
        api.elicit(cfg, progress=False)
        assert len(_entries(base)) == n, f"changing the {what} reused a stored entry"


def test_flipped_byte_is_detected_and_re_elicited(tiny_config):
    cfg = tiny_config(teacher={"recalibrate": "none"})
    before = api.elicit(cfg, progress=False).targets
    shard = sorted((cfg.run_dir / "teacher_cache").glob("*/shards/shard-*.bin"))[0]
    raw = bytearray(shard.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    shard.write_bytes(bytes(raw))
    assert not cache_verify(cfg.run_dir / "teacher_cache")[0]
    after = api.elicit(cfg, progress=False).targets
    assert cache_verify(cfg.run_dir / "teacher_cache")[0]
    torch.testing.assert_close(after.rows(before.ids), before.values)


def test_an_interrupted_elicitation_continues_where_it_stopped(tiny_config, monkeypatch):
    from kdistill.teachers import elicit as elicit_module
    cfg = tiny_config(teacher={"recalibrate": "none", "calibrate": False})
    reference = api.elicit(cfg, progress=False).targets
    cfg = tiny_config(teacher={"recalibrate": "none", "calibrate": False}, output_dir=str(cfg.run_dir.parent / "again"))
    real, calls = elicit_module.label_logprobs, []

    def crash_on_third_shard(model, texts, **kw):
        calls.append(len(texts))
        if len(calls) == 3:
            raise KeyboardInterrupt  # what Ctrl-C does mid-elicitation
        return real(model, texts, **kw)

    monkeypatch.setattr(elicit_module, "label_logprobs", crash_on_third_shard)
    monkeypatch.setattr(elicit_module.elicit, "__kwdefaults__", {**elicit_module.elicit.__kwdefaults__, "shard_size": 32})
    try:
        api.elicit(cfg, progress=False)
    except KeyboardInterrupt:
        pass
    monkeypatch.setattr(elicit_module, "label_logprobs", lambda *a, **kw: calls.append(len(a[1])) or real(*a, **kw))
    resumed = api.elicit(cfg, progress=False).targets
    shards = -(-len(reference.ids) // 32)
    assert len(calls) == 2 + 1 + (shards - 2)  # two kept, the crashed one again, and the rest: nothing twice
    torch.testing.assert_close(resumed.rows(reference.ids), reference.values)


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


def test_cache_commands(tiny_config, tmp_path, capsys):
    from kdistill.cli import main

    cfg = tiny_config(teacher={"recalibrate": "none"})
    targets = api.elicit(cfg, progress=False).targets
    cache = str(cfg.run_dir / "teacher_cache")
    assert main(["cache", "info", cache]) == 0 and "complete" in capsys.readouterr().out
    assert main(["cache", "verify", cache]) == 0
    entry = next((cfg.run_dir / "teacher_cache").glob("*/entry.json")).parent
    out = tmp_path / "export.jsonl"
    assert main(["cache", "export", str(entry), "--out", str(out)]) == 0
    import json

    rows = {r["id"]: r["label_logprobs"] for r in map(json.loads, out.read_text().splitlines())}
    assert set(rows) == set(targets.ids)
    first = targets.ids[0]
    assert list(rows[first].values()) == pytest.approx(targets.rows([first])[0].tolist())
    shard = next(entry.glob("shards/*.bin"))
    shard.write_bytes(shard.read_bytes()[:-5])  # truncated
    assert main(["cache", "verify", cache]) == 2
    assert "damaged" in capsys.readouterr().err
