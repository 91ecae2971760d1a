"""Generation tasks with several teachers and with the hidden term: the per-token mixture's identities and its
agreement with the dense mixture, runs that train on the mixture and record the hidden term, the hidden term's
zero and gradient, the refusals, and a resumed student that equals an uninterrupted one."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from conftest import crash_then_resume, save_tiny_lm
from kdistill.errors import KdistillError
from kdistill.losses.divergences import SparseTargets
from kdistill.teachers.ensemble import token_confidence_weights, token_mixture
from test_gen_pipeline import _gen_config_dict


def _config(tmp_path, tiny_models, *, teachers=(), **sections):
    from kdistill.config import RunConfig, from_dict

    config = _gen_config_dict(tmp_path, tiny_models, **sections)
    if teachers:
        config["teachers"] = list(teachers)
    return from_dict(RunConfig, config)


def _member(tmp_path, name: str = "lm3", seed: int = 2, **fields) -> dict:
    """A teacher of the ensemble: a tiny LM of another seed that shares the tokenizer."""
    return {"model": str(save_tiny_lm(tmp_path / name, seed=seed)), "name": name, "batch_size": 8, **fields}


# ------------------------------------------------------------------ the mixture as a tensor function
def _rows(num_tokens: int, vocab_size: int, k: int, seed: int) -> SparseTargets:
    gen = torch.Generator().manual_seed(seed)
    return SparseTargets.from_logits(3 * torch.randn(num_tokens, vocab_size, generator=gen, dtype=torch.float64), k)


def _dense(rows: SparseTargets, vocab_size: int) -> torch.Tensor:
    """(N, V) probabilities with the tail spread evenly over the unseen ids: the completion the mixture assumes."""
    k = rows.token_ids.shape[1]
    spread_n = rows.tail_logmass.exp() / (vocab_size - k) if vocab_size > k else torch.zeros(len(rows.tail_logmass))
    dense_nv = spread_n.to(torch.float64)[:, None].expand(-1, vocab_size).clone()
    return dense_nv.scatter(-1, rows.token_ids, rows.logprobs.to(torch.float64).exp())


def _total_logmass(rows: SparseTargets) -> torch.Tensor:
    return torch.cat([rows.logprobs, rows.tail_logmass[:, None]], -1).logsumexp(-1)


def test_the_mixture_of_two_identical_members_is_the_member():
    member = _rows(20, 30, 6, seed=0)
    mixed = token_mixture([member, member], torch.tensor([0.3, 0.7], dtype=torch.float64), k=6, vocab_size=30)
    assert torch.equal(mixed.token_ids, member.token_ids)
    torch.testing.assert_close(mixed.logprobs, member.logprobs)
    torch.testing.assert_close(mixed.tail_logmass, member.tail_logmass)


def test_weights_one_and_zero_give_the_first_member():
    first, second = _rows(20, 30, 6, seed=0), _rows(20, 30, 6, seed=1)
    mixed = token_mixture([first, second], torch.tensor([1.0, 0.0]), k=6, vocab_size=30)
    assert torch.equal(mixed.token_ids.sort(-1).values, first.token_ids.sort(-1).values)
    torch.testing.assert_close(_dense(mixed, 30), _dense(first, 30))


@pytest.mark.parametrize("seed", range(4))
def test_with_k_equal_to_the_vocabulary_the_mixture_is_the_dense_mixture_of_the_softmaxes(seed):
    vocab_size = 11
    gen = torch.Generator().manual_seed(100 + seed)
    logits = [3 * torch.randn(7, vocab_size, generator=gen, dtype=torch.float64) for _ in range(3)]
    weights_nk = torch.rand(7, 3, generator=gen, dtype=torch.float64)  # per-token weights, not normalized
    mixed = token_mixture([SparseTargets.from_logits(z, vocab_size) for z in logits], weights_nk, k=vocab_size,
                          vocab_size=vocab_size)
    weights_nk = weights_nk / weights_nk.sum(-1, keepdim=True)
    expected_nv = sum(w_n[:, None] * z.softmax(-1) for w_n, z in zip(weights_nk.T, logits))
    torch.testing.assert_close(_dense(mixed, vocab_size), expected_nv)
    assert torch.isneginf(mixed.tail_logmass).all()


@pytest.mark.parametrize("seed", range(4))
def test_with_k_below_the_vocabulary_the_mixture_keeps_the_top_k_of_the_completed_members(seed):
    """Members of different k: the kept ids are the k most probable of sum_i w_i (completed p_i), their values
    are that mixture's, and the tail is the rest, so the rows stay a distribution."""
    vocab_size, k = 25, 5
    members = [_rows(9, vocab_size, 4, seed=seed), _rows(9, vocab_size, 7, seed=50 + seed)]
    weights_k = torch.tensor([0.6, 0.4], dtype=torch.float64)
    mixed = token_mixture(members, weights_k, k=k, vocab_size=vocab_size)
    dense_nv = sum(w * _dense(m, vocab_size) for w, m in zip(weights_k, members))
    torch.testing.assert_close(mixed.logprobs.exp(), dense_nv.gather(-1, mixed.token_ids))
    torch.testing.assert_close(mixed.logprobs.exp().sum(-1), dense_nv.topk(k, -1).values.sum(-1))  # ties aside
    torch.testing.assert_close(_total_logmass(mixed), torch.zeros(9, dtype=torch.float64), atol=1e-12, rtol=0)
    assert all(len(set(row.tolist())) == k for row in mixed.token_ids)


def test_confidence_weights_are_each_teachers_top_probability_at_each_token():
    members = [_rows(5, 12, 3, seed=0), _rows(5, 12, 4, seed=1)]
    expected = torch.stack([m.logprobs.exp().amax(-1) for m in members], -1)
    torch.testing.assert_close(token_confidence_weights(members), expected)


# ------------------------------------------------------------------ the ensemble in a run
def test_a_generation_run_with_two_teachers_trains_the_distilled_student_on_their_mixture(tmp_path, tiny_models,
                                                                                           monkeypatch):
    from kdistill import api
    from kdistill.cache.entry import open_entry
    from kdistill.data.gen_data import prepare_generation
    from kdistill.losses.token_kd import ends_with_eos
    from kdistill.teachers import generation as gen_teachers

    sections = {"task": {"targets": "teacher"}, "training": {"epochs": 1}}
    single = _config(tmp_path, tiny_models, **sections)
    data = prepare_generation(single.data, single.task)
    first = gen_teachers.targets_for(single, data, progress=False)  # the first teacher alone, asked once
    cfg = _config(tmp_path, tiny_models, teachers=[_member(tmp_path, token_top_k=6)],
                  ensemble={"combine": "weighted", "weights": [3.0, 1.0]}, **sections)
    mixed_calls = []
    real_mixture = gen_teachers.token_mixture
    monkeypatch.setattr(gen_teachers, "token_mixture", lambda *a, **kw: mixed_calls.append(1) or real_mixture(*a, **kw))
    run_dir = api.run(cfg, progress=False)
    history = json.loads((run_dir / "students" / "distilled-seed0.training.json").read_text())["history"]
    assert any("train_kd" in r for r in history)
    results = json.loads((run_dir / "eval" / "results.json").read_text())
    assert results["teacher_ensemble"] == {"combine": "weighted", "teachers": ["lm", "lm3"],
                                           "weights": {"lm": 0.75, "lm3": 0.25}}
    assert "per-token mixture of the teachers lm, lm3 (weighted: weights lm 0.75, lm3 0.25)" in (
        run_dir / "report.md").read_text()
    assert len(mixed_calls) >= len(data.train)  # every training example's rows were mixed for the student
    entries = {p.parent.name: open_entry(p.parent) for p in (run_dir / "teacher_cache").glob("*/manifest.json")}
    assert first.entry.folder.name in entries and len(entries) == 2  # the first teacher was not asked again
    [member_entry] = [e for name, e in entries.items() if name != first.entry.folder.name]
    assert member_entry.fields["teacher"].startswith(str(tmp_path / "lm3")) and member_entry.fields["k"] == 6
    assert sorted(member_entry.ids()) == sorted(e.id for e in data.train)
    targets = gen_teachers.targets_for(cfg, data, progress=False)
    assert targets.ensemble.info["weights"] == {"lm": 0.75, "lm3": 0.25}
    for example in data.train[:4]:
        members = [first.entry.tokens(example.id), member_entry.tokens(example.id)]
        expected = token_mixture(members, torch.tensor([0.75, 0.25]), k=8, vocab_size=targets.ensemble.vocab_sizes)
        got = targets.rows(example.id)
        want = ends_with_eos(expected, targets.eos_id)
        assert torch.equal(got.token_ids, want.token_ids) and torch.equal(got.logprobs, want.logprobs)
        # as much mass as the members hold (their cached rows are rounded: a total of 1 only to about 1e-4)
        members_total = 0.75 * _total_logmass(members[0]).exp() + 0.25 * _total_logmass(members[1]).exp()
        torch.testing.assert_close(_total_logmass(expected).exp(), members_total)


def test_a_teacher_with_another_tokenizer_is_refused_in_one_line_that_names_it(tmp_path, tiny_models):
    from kdistill import api

    other = save_tiny_lm(tmp_path / "other", extra_words=("zebra",))
    cfg = _config(tmp_path, tiny_models, teachers=[{"model": str(other), "name": "zebra-lm"}],
                  ensemble={"combine": "mean"})
    for call in (lambda: api.elicit(cfg, progress=False), lambda: api.validate(cfg)):
        with pytest.raises(KdistillError, match="teacher 'zebra-lm' has another tokenizer than the first") as err:
            call()
        assert "\n" not in str(err.value)


def test_generation_ensembles_take_per_token_combines_and_refuse_the_label_space_ones(tmp_path, tiny_models):
    from kdistill.config import EnsembleConfig

    member = _member(tmp_path)
    assert _config(tmp_path, tiny_models, teachers=[member]).ensemble.resolved("generation") == "mean"
    assert EnsembleConfig().resolved("classification") == "learned"  # a label task's default is as it was
    for combine in ("learned", "gold_agreement"):
        with pytest.raises(KdistillError, match="set ensemble.combine to mean"):
            _config(tmp_path, tiny_models, teachers=[member], ensemble={"combine": combine})
    with pytest.raises(KdistillError, match="one live teacher, not an ensemble"):
        _config(tmp_path, tiny_models, teachers=[member], training={"on_policy_fraction": 0.5})
    with pytest.raises(KdistillError, match=r"teachers\[0\].finetune"):
        _config(tmp_path, tiny_models, teachers=[{**member, "finetune": True}])


# ------------------------------------------------------------------ the hidden term
def _hidden_setup(tmp_path, tiny_models, *, loss: str = "mse"):
    """A student, its Objective with one hidden target of the student's own width, and six training examples."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from kdistill.config import HiddenTerm
    from kdistill.data.gen_data import prepare_generation
    from kdistill.losses.objective import HiddenTarget, Objective
    from kdistill.models.generative import GenStudent

    cfg = _config(tmp_path, tiny_models)
    chunk = prepare_generation(cfg.data, cfg.task).train[:6]
    module = AutoModelForCausalLM.from_pretrained(tiny_models["lm2"])
    student = GenStudent(module, AutoTokenizer.from_pretrained(tiny_models["lm2"]), max_length=32)
    width = module.config.hidden_size
    objective = Objective(replace(cfg.objective, hidden=HiddenTerm(weight=1.0, loss=loss)),
                          hidden_targets=[HiddenTarget("self", [(1, 1), (2, 2)], width)], student_width=width)
    return cfg, chunk, student, objective


def _token_steps(cfg, student, objective, teacher_hidden):
    from kdistill.train.token_steps import TokenSteps

    return TokenSteps(student, objective, template=cfg.task.prompt_template, target_of=lambda e: e.target,
                      teacher_rows=None, batch_size=8, teacher_hidden=teacher_hidden)


@pytest.mark.parametrize("loss", ["mse", "cosine"])
def test_the_hidden_term_is_zero_when_the_teacher_is_the_student_through_identity_projections(tmp_path, tiny_models,
                                                                                              loss):
    """The teacher side (`sequence_states`) and the student side (the token step) pool the same sequence alike."""
    from kdistill.data.generative import prompt_text
    from kdistill.models.token_rows import sequence_states
    from kdistill.targets import TeacherTargets

    cfg, chunk, student, objective = _hidden_setup(tmp_path, tiny_models, loss=loss)
    for projection in objective.projections[0]:
        torch.nn.init.eye_(projection.weight)
        torch.nn.init.zeros_(projection.bias)
    prompts = [prompt_text(cfg.task.prompt_template, e) for e in chunk]
    states = sequence_states(student.module, student.tokenizer, prompts, [e.target for e in chunk], layers=[1, 2],
                             pool="mean", max_length=32, batch_size=4)
    steps = _token_steps(cfg, student, objective, [TeacherTargets([e.id for e in chunk], states)])
    _, terms = steps.module(0.0, *steps.arguments(chunk, torch.device("cpu"), 0))
    assert terms["hidden"].abs().max() < 1e-5
    moved = [TeacherTargets([e.id for e in chunk], states + torch.randn_like(states))]
    shifted = _token_steps(cfg, student, objective, moved)
    _, terms = shifted.module(0.0, *shifted.arguments(chunk, torch.device("cpu"), 0))
    assert (terms["hidden"] > 1e-3).all()


def test_the_hidden_terms_gradient_reaches_its_projections_and_the_student(tmp_path, tiny_models):
    from kdistill.targets import TeacherTargets

    cfg, chunk, student, objective = _hidden_setup(tmp_path, tiny_models)
    teacher = [TeacherTargets([e.id for e in chunk], torch.randn(len(chunk), 2, objective.hidden_targets[0].width))]
    steps = _token_steps(cfg, student, objective, teacher)
    trained = {id(p) for p in steps.module.parameters()}
    assert all(id(p) in trained for p in objective.parameters())  # the optimizer sees the projections
    loss_b, terms = steps.module(0.0, *steps.arguments(chunk, torch.device("cpu"), 0))
    assert set(terms) == {"ce", "hidden"}
    terms["hidden"].sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in objective.parameters())
    assert student.module.model.layers[0].mlp.up_proj.weight.grad.abs().sum() > 0


def test_the_student_asks_for_every_layers_states_only_when_the_hidden_term_is_on(tmp_path, tiny_models):
    from kdistill.losses.objective import Objective
    from kdistill.targets import TeacherTargets

    cfg, chunk, student, objective = _hidden_setup(tmp_path, tiny_models)
    asked = []
    student.module.base_model.register_forward_pre_hook(
        lambda module, args, kwargs: asked.append(kwargs.get("output_hidden_states")), with_kwargs=True)
    plain = _token_steps(cfg, student, Objective(cfg.objective), None)
    plain.module(0.0, *plain.arguments(chunk, torch.device("cpu"), 0))
    teacher = [TeacherTargets([e.id for e in chunk], torch.zeros(len(chunk), 2, objective.hidden_targets[0].width))]
    with_hidden = _token_steps(cfg, student, objective, teacher)
    with_hidden.module(0.0, *with_hidden.arguments(chunk, torch.device("cpu"), 0))
    assert asked == [None, True]


def test_a_generation_run_with_the_hidden_term_completes_and_records_it(tmp_path, tiny_models):
    from kdistill import api
    from kdistill.cache.entry import open_entry

    cfg = _config(tmp_path, tiny_models, objective={"hidden": {"weight": 0.5}}, training={"epochs": 1})
    run_dir = api.run(cfg, progress=False)
    training = json.loads((run_dir / "students" / "distilled-seed0.training.json").read_text())
    assert any("train_hidden" in r and r["train_hidden"] > 0 for r in training["history"])
    assert training["layer_pairs"] == {"lm": [[1, 1], [2, 2]]}
    baseline = json.loads((run_dir / "students" / "sequence_kd-seed0.training.json").read_text())
    assert not any("train_hidden" in r for r in baseline["history"]) and "layer_pairs" not in baseline
    [vectors] = [e for e in map(open_entry, (p.parent for p in (run_dir / "teacher_cache").glob("*/manifest.json")))
                 if e.kind == "vectors"]
    fields = vectors.fields
    assert fields["shape"] == [2, 32] and fields["pool"] == "mean" and fields["layers"] == [1, 2]


def test_a_resumed_student_of_an_ensemble_with_the_hidden_term_equals_an_uninterrupted_one(tmp_path, tiny_models):
    """The projections are checkpointed with the student; the mixture is read the same after a restart."""
    from safetensors.torch import load_file

    from kdistill.data.gen_data import prepare_generation
    from kdistill.recipes.generation import train as train_generation
    from kdistill.teachers.generation import targets_for

    cfg = _config(tmp_path, tiny_models, teachers=[_member(tmp_path)], ensemble={"combine": "confidence"},
                  objective={"hidden": {"weight": 0.5, "teachers": ["lm", "lm3"], "layers": "last-1"}},
                  training={"epochs": 2, "checkpoint_every_steps": 1})
    data = prepare_generation(cfg.data, cfg.task)
    targets = targets_for(cfg, data, progress=False)
    whole = train_generation(cfg, variant="distilled", seed=0, data=data, targets=targets, progress=False)
    expected = load_file(str(whole / "model.safetensors"))
    history = json.loads((whole.parent / "distilled-seed0.training.json").read_text())["history"]
    assert any({"train_hidden:lm", "train_hidden:lm3", "train_hidden", "train_kd"} <= set(r) for r in history)

    def inspect(checkpoint):
        assert len(load_file(str(checkpoint / "objective.safetensors"))) == 4  # weight and bias, per teacher

    resumed = crash_then_resume(
        lambda resume: train_generation(cfg, variant="distilled", seed=0, data=data, targets=targets,
                                        progress=False, resume=resume),
        stop_at=3, checkpoints=cfg.run_dir / "checkpoints" / "distilled-seed0", inspect=inspect)
    got = load_file(str(resumed / "model.safetensors"))
    assert all(torch.equal(expected[k], got[k]) for k in expected)
