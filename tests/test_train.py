"""The training loop's invariants: accumulation does not change the step; resume is bit-identical."""

import pytest
import torch

from kdistill.config import BalanceTerm, CETerm, ContrastiveTerm, HiddenTerm, KDTerm, ObjectiveConfig, TrainingConfig
from kdistill.data import prepare_data
from kdistill.losses.objective import HiddenTarget, Objective, layer_pairs
from kdistill.models import load_label_model
from kdistill.targets import TeacherTargets
from kdistill.train.loop import StopTraining, Trainer


def _setup(tiny_config, student_key="encoder", **training):
    cfg = tiny_config()
    data = prepare_data(cfg.data, cfg.task)
    gen = torch.Generator().manual_seed(1)
    ids = [e.id for e in data.train]
    targets = TeacherTargets(ids, torch.randn(len(ids), 2, generator=gen).log_softmax(-1))
    return cfg, data, targets


def _trainer(cfg, data, targets, model_path, tmp_path, name, objective_cfg=None, labelled_ids=None, **training):
    from dataclasses import replace

    torch.manual_seed(0)
    student = load_label_model(replace(cfg.student, model=str(model_path)), cfg.task)
    train_cfg = TrainingConfig(**{"epochs": 2, "batch_size": 8, "learning_rate": 1e-3, "checkpoint_every_steps": 4,
                                  "early_stopping_patience": 0, **training})
    objective_cfg = objective_cfg or ObjectiveConfig()
    hidden_targets, hidden = [], None
    if objective_cfg.hidden.weight > 0:  # a made-up 3-layer teacher of width 12
        pairs = layer_pairs(objective_cfg.hidden.layers, student.num_layers, 3)
        gen = torch.Generator().manual_seed(2)
        hidden_targets = [HiddenTarget("made-up", pairs, 12)]
        hidden = [TeacherTargets(targets.ids, torch.randn(len(targets.ids), len(pairs), 12, generator=gen))]
    objective = Objective(objective_cfg, hidden_targets=hidden_targets, student_width=student.hidden_size)
    return student, Trainer(student, train_examples=data.train, val_examples=data.validation, targets=targets,
                            teacher_hidden=hidden, label_prior=torch.tensor([0.7, 0.3]), objective=objective,
                            labelled_ids=labelled_ids, cfg=train_cfg, seed=3, checkpoint_dir=tmp_path / name, progress=False)


ALL_TERMS = ObjectiveConfig(hidden=HiddenTerm(weight=0.5), balance=BalanceTerm(weight=0.3),
                            kd=KDTerm(weight=0.5, divergence="jsd", schedule="linear_decay"))


def _weights(model):
    return {k: v.detach().clone() for k, v in model.module.state_dict().items()}


@pytest.mark.parametrize("objective_cfg", [None, ALL_TERMS], ids=["ce+kd", "every-term"])
def test_accumulation_1x8_equals_8x1(tiny_config, tiny_models, tmp_path, objective_cfg):
    cfg, data, targets = _setup(tiny_config)
    data.train = data.train[:8]  # exactly one optimizer step per epoch
    results, projections = [], []
    for accum in (1, 2, 8):
        student, trainer = _trainer(cfg, data, targets, tiny_models["encoder_nodrop"], tmp_path, f"acc{accum}",
                                    objective_cfg, epochs=1, grad_accum_steps=accum, warmup_ratio=0.0,
                                    max_grad_norm=0.0)
        trainer.run()
        results.append(_weights(student))
        projections.append({k: v.clone() for k, v in trainer.objective.state_dict().items()})
    for other, other_projection in zip(results[1:], projections[1:]):
        for name in results[0]:
            torch.testing.assert_close(other[name], results[0][name], rtol=1e-5, atol=1e-6, msg=name)
        for name in projections[0]:
            torch.testing.assert_close(other_projection[name], projections[0][name], rtol=1e-5, atol=1e-6, msg=name)
    for name in results[0]:
        torch.testing.assert_close(results[0][name], results[1][name], rtol=1e-5, atol=1e-6, msg=name)
    assert any(not torch.equal(results[0][n], _weights(load_label_model(cfg.student, cfg.task))[n])
               for n in results[0] if "classifier" not in n)  # the step really moved the weights


def test_ce_averaged_over_the_labelled_examples_is_accumulation_invariant(tiny_config, tiny_models, tmp_path):
    # the scale is the whole step's (size / labelled), so splitting the step into micro-batches changes nothing
    cfg, data, targets = _setup(tiny_config)
    data.train = data.train[:8]
    labelled = {e.id for e in data.train[:3]}
    objective_cfg = ObjectiveConfig(ce=CETerm(weight=0.5, average="labelled"))
    results = []
    for accum in (1, 8):
        student, trainer = _trainer(cfg, data, targets, tiny_models["encoder_nodrop"], tmp_path, f"lab{accum}",
                                    objective_cfg, labelled_ids=labelled, epochs=1, grad_accum_steps=accum,
                                    warmup_ratio=0.0, max_grad_norm=0.0)
        trainer.run()
        results.append(_weights(student))
    for name in results[0]:
        torch.testing.assert_close(results[1][name], results[0][name], rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize("labels", ["gold", "gold_and_teacher"])
def test_contrastive_term_sees_gold_labels_and_the_teacher_only_where_asked(tiny_config, tiny_models, tmp_path,
                                                                           labels):
    cfg, data, targets = _setup(tiny_config)
    data.train = data.train[:8]
    labelled = {e.id for e in data.train[:3]}
    objective_cfg = ObjectiveConfig(contrastive=ContrastiveTerm(weight=1.0, labels=labels))
    student, trainer = _trainer(cfg, data, targets, tiny_models["encoder_nodrop"], tmp_path, labels, objective_cfg,
                                labelled_ids=labelled, epochs=1)
    chunk = data.train
    got = trainer.steps._contrastive_labels(chunk, [e.id for e in chunk]).tolist()
    label_ids = {label: i for i, label in enumerate(student.labels)}
    teacher = targets.rows([e.id for e in chunk]).argmax(-1).tolist()
    expected = [label_ids[e.label] if e.id in labelled else (teacher[i] if labels == "gold_and_teacher" else -100)
                for i, e in enumerate(chunk)]
    assert got == expected
    before = _weights(student)
    result = trainer.run()
    assert any(not torch.equal(before[n], v) for n, v in _weights(student).items())
    assert any("train_contrastive" in record for record in result.state.history)  # the term was in the loss


@pytest.mark.parametrize("crash_at,objective_cfg", [(3, None), (9, None), (5, ALL_TERMS)])
def test_kill_and_resume_is_bit_identical(tiny_config, tiny_models, tmp_path, crash_at, objective_cfg):
    cfg, data, targets = _setup(tiny_config)
    student, trainer = _trainer(cfg, data, targets, tiny_models["encoder"], tmp_path, "straight", objective_cfg)
    straight = trainer.run()
    reference = _weights(student)
    reference_projection = trainer.objective.state_dict()

    _, crashing = _trainer(cfg, data, targets, tiny_models["encoder"], tmp_path, "crashed", objective_cfg)
    with pytest.raises(StopTraining):
        crashing.run(stop_after_steps=crash_at)  # everything in memory is lost with this trainer
    resumed_student, resumed = _trainer(cfg, data, targets, tiny_models["encoder"], tmp_path, "crashed", objective_cfg)
    result = resumed.run(resume=True)
    for name, tensor in reference_projection.items():
        assert torch.equal(tensor, resumed.objective.state_dict()[name]), name

    assert result.state.global_step == straight.state.global_step
    assert result.state.history == straight.state.history
    for name, tensor in reference.items():
        assert torch.equal(tensor, _weights(resumed_student)[name]), name  # bit-identical, dropout included


def test_early_stopping_restores_best_weights(tiny_config, tiny_models, tmp_path):
    cfg, data, targets = _setup(tiny_config)
    student, trainer = _trainer(cfg, data, targets, tiny_models["encoder"], tmp_path, "es", epochs=6,
                                eval_every_steps=3, early_stopping_patience=2, learning_rate=5e-2)
    result = trainer.run()
    vals = [h["val_macro_f1"] for h in result.state.history if "val_macro_f1" in h]
    assert result.state.best_metric == max(vals)
    from kdistill.train.label_steps import macro_f1

    assert macro_f1(student, data.validation, batch_size=32) == pytest.approx(result.state.best_metric)


def test_causal_lm_student_trains_in_label_space(tiny_config, tiny_models, tmp_path):
    cfg, data, targets = _setup(tiny_config)
    student, trainer = _trainer(cfg, data, targets, tiny_models["lm2"], tmp_path, "lm", epochs=3, learning_rate=3e-3)
    before = _weights(student)
    result = trainer.run()
    assert result.state.global_step == 3 * -(-len(data.train) // 8)
    losses = [h["train_ce"] for h in result.state.history if "train_ce" in h]
    assert losses[-1] < losses[0]
    assert any(not torch.equal(before[n], v) for n, v in _weights(student).items())


def test_sigkill_then_resume_gives_identical_weights(tmp_path, tiny_models):
    """A real `kill -9` of `kdistill train` mid-run, then `--resume`, against an uninterrupted run."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import yaml
    from safetensors.torch import load_file

    from conftest import tiny_config_dict

    def config(name):
        data = tiny_config_dict(tmp_path, tiny_models, training={"epochs": 4, "checkpoint_every_steps": 2,
                                                                 "early_stopping_patience": 0})
        data["output_dir"] = str(tmp_path / name)
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(data))
        return path

    def train(path, *extra):
        return [sys.executable, "-m", "kdistill.cli", "train", str(path), "--variant", "labels_only", *extra]

    env = {**os.environ, "TQDM_DISABLE": "1"}
    subprocess.run(train(config("straight")), check=True, capture_output=True, env=env)
    killed_cfg = config("killed")
    proc = subprocess.Popen(train(killed_cfg), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    checkpoints = tmp_path / "killed" / "tiny" / "checkpoints" / "labels_only-seed0"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and len(list(checkpoints.glob("step-*"))) == 0:
        time.sleep(0.05)
    time.sleep(0.3)  # somewhere between checkpoints
    assert proc.poll() is None, "training finished before it could be killed; make it longer"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "killed" / "tiny" / "students" / "labels_only-seed0").exists()
    subprocess.run(train(killed_cfg, "--resume"), check=True, capture_output=True, env=env)
    straight = load_file(tmp_path / "straight" / "tiny" / "students" / "labels_only-seed0" / "model.safetensors")
    resumed = load_file(tmp_path / "killed" / "tiny" / "students" / "labels_only-seed0" / "model.safetensors")
    assert straight.keys() == resumed.keys()
    for name in straight:
        assert torch.equal(straight[name], resumed[name]), name


def test_on_record_sees_every_history_record_as_it_is_made(tiny_config, tiny_models, tmp_path):
    cfg, data, targets = _setup(tiny_config)
    seen = []
    student, trainer = _trainer(cfg, data, targets, tiny_models["encoder"], tmp_path, "hook")
    trainer.on_record = seen.append
    result = trainer.run()
    assert seen == result.state.history
    assert any("train_kd" in r for r in seen) and any("val_macro_f1" in r for r in seen)
