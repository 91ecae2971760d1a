"""Generation tasks end to end on tiny models: QA on data targets, summaries the teacher writes, resume,
accumulation invariance of the token-level step, and multiple choice through the label-space api."""

from __future__ import annotations

import json
import random
import statistics

import pytest
import torch

from conftest import FILLER, NEGATIVE, POSITIVE, crash_then_resume, save_tiny_lm

WORDS = FILLER + POSITIVE + NEGATIVE


def _write_qa(path, n: int = 48, seed: int = 0, answers=tuple(POSITIVE + NEGATIVE)):
    """Questions whose answer is the one sentiment word they contain: a task a tiny LM can learn."""
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            answer = rng.choice(answers)
            words = rng.sample(FILLER, 4) + [answer]
            rng.shuffle(words)
            f.write(json.dumps({"text": " ".join(words) + f" {FILLER[i % len(FILLER)]}" * (i % 3),
                                "target": answer}) + "\n")
    return path


def _gen_config(tmp_path, tiny_models, **sections):
    from kdistill.config import RunConfig, from_dict

    return from_dict(RunConfig, _gen_config_dict(tmp_path, tiny_models, **sections))


def _gen_config_dict(tmp_path, tiny_models, **sections) -> dict:
    config = {
        "name": "tiny-gen", "output_dir": str(tmp_path / "runs"),
        "task": {"name": "tiny-qa", "kind": "generation", "targets": "data", "evaluate_as": "qa",
                 "max_new_tokens": 4, "prompt_template": "{text} Answer:"},
        "data": {"source": "jsonl", "path": str(_write_qa(tmp_path / "qa.jsonl")), "test_fraction": 0.25,
                 "validation_fraction": 0.125},
        "teacher": {"model": str(tiny_models["lm"]), "batch_size": 8, "token_top_k": 8},
        "student": {"model": str(tiny_models["lm2"]), "max_length": 32, "batch_size": 8},
        "objective": {"ce": {"weight": 0.5}, "kd": {"weight": 0.5, "temperature": 1.0}},
        "training": {"epochs": 2, "batch_size": 8, "learning_rate": 3e-3, "checkpoint_every_steps": 2},
        "evaluation": {"seeds": [0], "latency_examples": 2, "similarity_model": "", "num_examples_shown": 2},
    }
    for section, values in sections.items():
        config[section] = {**config.get(section, {}), **values}
    return config


def _qa_card(run_dir) -> dict:
    """A QA run's results.json, checked to hold every model with exact match and token F1."""
    results = json.loads((run_dir / "eval" / "results.json").read_text())
    assert set(results["models"]) == {"teacher", "student_untrained", "student_sequence_kd", "student_distilled"}
    for key, entry in results["models"].items():
        metrics = entry["metrics"] if "metrics" in entry else entry["seeds"]["0"]
        assert 0.0 <= metrics["exact_match"] <= 1.0 and 0.0 <= metrics["token_f1"] <= 1.0, key
    return results


def test_a_qa_run_completes_end_to_end_and_reports_every_model(tmp_path, tiny_models):
    from kdistill import api
    cfg = _gen_config(tmp_path, tiny_models)
    run_dir = api.run(cfg, progress=False)
    results = _qa_card(run_dir)
    for key, entry in results["models"].items():
        assert entry["cost"]["tokens_per_s"] > 0 and entry["cost"]["parameters"] > 0
        # timed again with every output exactly max_new_tokens long: the length-fair tokens/s the speed-up uses
        assert entry["cost"]["fixed_length_tokens"] == 2 * 4 and entry["cost"]["fixed_length_tokens_per_s"] > 0
    for row in results["comparison"]:  # each student against the teacher, prompt by prompt: the median ratio
        cost = results["models"][row["model"]]["cost"]
        student = row["model"] != "teacher"
        assert row["speedup_at_fixed_length"] and row["speedup_tokens_per_s"] == pytest.approx(
            statistics.median(cost["fixed_length_speedups"]) if student else 1.0)
        assert row["speedup_paired_median"] == student
        if student:
            assert len(cost["fixed_length_speedups"]) == 2 and cost["teacher_fixed_length_tokens_per_s"] > 0
    training = json.loads((run_dir / "students" / "distilled-seed0.training.json").read_text())
    history = training["history"]
    assert any("train_kd" in r for r in history) and any("val_target_ce" in r for r in history)
    # the kept weights are the best validation's, and the figure reported is that validation's target CE
    # (a -CE score below the loop's old -1.0 start once left best_step 0 and reported 1.0)
    validations = [r for r in history if "val_target_ce" in r]
    best = min(validations, key=lambda r: r["val_target_ce"])
    assert training["best_val_target_ce"] == pytest.approx(best["val_target_ce"])
    assert training["best_step"] == best["step"] > 0
    seq_history = json.loads((run_dir / "students" / "sequence_kd-seed0.training.json").read_text())["history"]
    assert not any("train_kd" in r for r in seq_history)  # sequence-level KD is CE on the targets only
    assert len(results["examples"]) == 2 and "student_distilled" in results["examples"][0]
    assert not any("copy_gap_2" in entry for entry in results["models"].values()), "an answer is meant to be new"
    rows = [json.loads(line) for line in (run_dir / "eval" / "outputs.jsonl").read_text().splitlines()]
    assert len(rows) == results["test_examples"] and rows[0]["reference"] == results["examples"][0]["reference"].split(" | ")
    card = (run_dir / "report.md").read_text()
    assert "every output written to exactly 4 tokens" in card
    assert "the median, over those prompts, of its tokens/s over the teacher's on the same prompt" in card
    assert (run_dir / "report.html").exists()
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(run_dir / "student") is not None  # the exported student loads


def test_teacher_written_summaries_are_cached_with_their_seed_and_become_the_references(tmp_path, tiny_models):
    from kdistill import api
    from kdistill.cache.entry import open_entry
    from kdistill.data.gen_data import prepare_generation
    from kdistill.eval.generation import copy_gap

    judge = save_tiny_lm(tmp_path / "judge", extra_words=("Yes", "No", "Article:", "Summary:"))
    cfg = _gen_config(tmp_path, tiny_models,
                      task={"targets": "teacher", "evaluate_as": "summary", "prompt_template": "{text} Summary:"},
                      teacher={"sampling": True, "sampling_seed": 7, "sampling_temperature": 1.0},
                      evaluation={"judge": str(judge), "seeds": [0, 1]}, training={"epochs": 1})
    run_dir = api.run(cfg, progress=False)
    entries = [open_entry(p.parent) for p in (run_dir / "teacher_cache").glob("*/manifest.json")]
    assert len(entries) == 1 and entries[0].fields["written_targets"]["seed"] == 7
    entry = entries[0]
    results = json.loads((run_dir / "eval" / "results.json").read_text())
    assert results["references"] == "teacher"
    test_ids = json.loads((run_dir / "data" / "splits.json").read_text())["test"]
    first = results["examples"][0]
    assert first["reference"] == entry.generation(first["id"])[0] and entry.generation(first["id"])[1] == 7
    teacher = results["models"]["teacher"]["metrics"]
    assert teacher["rougeL"] == pytest.approx(1.0)  # the references are the teacher's own summaries
    assert 0.0 <= teacher["faithfulness"] <= 1.0 and "copy_rate_2" in teacher
    assert results["scorers"]["faithfulness"]["model"] == str(judge)
    check = results["scorers"]["faithfulness"]["check"]  # the judge's own reliability, measured in the run
    assert check["pairs"] == len(test_ids) and 0.0 <= check["auc"] <= 1.0
    assert "ROC AUC" in (run_dir / "report.md").read_text()
    assert set(test_ids) <= set(entry.ids())
    # every output of every model and seed, one line per test article; the card's copying figures are theirs
    rows = [json.loads(line) for line in (run_dir / "eval" / "outputs.jsonl").read_text().splitlines()]
    assert [row["id"] for row in rows] == test_ids and rows[0]["reference"] == first["reference"]
    assert set(rows[0]["outputs"]) == {"teacher", "student_untrained", *(f"student_{variant}_seed{seed}" for seed in (0, 1)
                                                                         for variant in ("sequence_kd", "distilled"))}
    assert [row["outputs"]["teacher"] for row in rows] == [entry.generation(i)[0] for i in test_ids]
    assert rows[0]["outputs"]["student_distilled_seed0"] == first["student_distilled"]
    sources = {e.id: e.prompt for e in prepare_generation(cfg.data, cfg.task).test}
    column = lambda key: [row["outputs"][key] for row in rows]
    gap = results["models"]["student_distilled"]["copy_gap_2"]
    assert gap == copy_gap(column("teacher"), [column("student_distilled_seed0"), column("student_distilled_seed1")],
                           [sources[i] for i in test_ids]) and gap["seeds"] == 2 and gap["sources"] == len(test_ids)
    assert results["models"]["student_untrained"]["copy_gap_2"]["seeds"] == 1
    assert "minus the teacher's" in (run_dir / "report.md").read_text()
    # asked again, nothing is generated anew: the same entry is read back
    before = {p.name: p.stat().st_mtime_ns for p in entry.shards_dir.iterdir()}
    api.elicit(cfg, progress=False)
    assert {p.name: p.stat().st_mtime_ns for p in entry.shards_dir.iterdir()} == before


def test_the_elicit_command_says_where_a_generation_tasks_targets_are(tmp_path, tiny_models, capsys):
    """`kdistill elicit` on a generation task fills the cache and names it (it used to end in an AttributeError)."""
    import yaml

    from kdistill.cli import main

    task = {"targets": "teacher", "evaluate_as": "summary", "prompt_template": "{text} Summary:"}
    path = tmp_path / "gen.yaml"
    path.write_text(yaml.safe_dump(_gen_config_dict(tmp_path, tiny_models, task=task)))
    assert main(["elicit", str(path)]) == 0
    out = capsys.readouterr().out
    entry = next((tmp_path / "runs" / "tiny-gen" / "teacher_cache").glob("*/entry.json")).parent
    assert "written targets and token rows of 48 examples" in out and str(entry) in out  # every split of _write_qa's 48


def test_a_grown_data_set_copies_the_greedy_teachers_targets_it_already_has(tmp_path, tiny_models, monkeypatch):
    from kdistill.data.gen_data import prepare_generation
    from kdistill.teachers import generation as gen_teacher
    from kdistill.teachers.generation import targets_for

    task = {"targets": "teacher", "evaluate_as": "summary", "prompt_template": "{text} Summary:"}
    small = _gen_config(tmp_path, tiny_models, task=task, data={"max_examples": 24})
    grown = _gen_config(tmp_path, tiny_models, task=task, data={"max_examples": 40})
    asked = []
    real_generate = gen_teacher.generate
    monkeypatch.setattr(gen_teacher, "generate", lambda model, tok, prompts, **kw: asked.extend(prompts) or
                        real_generate(model, tok, prompts, **kw))

    def everything(cfg):
        data = prepare_generation(cfg.data, cfg.task)
        return data.train + data.validation + data.test, targets_for(cfg, data, progress=False)

    small_examples, small_targets = everything(small)
    asked.clear()
    grown_examples, grown_targets = everything(grown)
    shared = {e.id for e in small_examples} & {e.id for e in grown_examples}
    assert shared and small_targets.entry.folder != grown_targets.entry.folder  # another entry (other examples)
    assert len(asked) == len(grown_examples) - len(shared)  # the teacher wrote only the new examples' targets
    for e in grown_examples:
        if e.id in shared:
            assert grown_targets.target(e) == small_targets.target(e)
            a, b = grown_targets.rows(e.id), small_targets.rows(e.id)
            assert torch.equal(a.token_ids, b.token_ids) and torch.equal(a.logprobs, b.logprobs)
    # a sampled teacher's summaries are never shared: another key, and asked anew
    sampled = _gen_config(tmp_path, tiny_models, task=task, data={"max_examples": 40},
                          teacher={"sampling": True, "sampling_seed": 3})
    asked.clear()
    everything(sampled)
    assert len(asked) == len(grown_examples)


# the last case stops after its first validation (step 4), so the weights kept by validation ROUGE-L must
# come back from the checkpoint
@pytest.mark.parametrize("on_policy_fraction, trainable_layers, select_by, stop_at",
                         [(0.0, None, "target_ce", 3), (0.5, None, "target_ce", 3), (0.0, 1, "rouge_l", 5)])
def test_a_resumed_generative_student_equals_an_uninterrupted_one(tmp_path, tiny_models, on_policy_fraction,
                                                                  trainable_layers, select_by, stop_at):
    from safetensors.torch import load_file

    from kdistill.data.gen_data import prepare_generation
    from kdistill.recipes.generation import train as train_generation
    from kdistill.teachers.generation import targets_for

    cfg = _gen_config(tmp_path, tiny_models, training={"epochs": 2, "checkpoint_every_steps": 1,
                                                       "on_policy_fraction": on_policy_fraction,
                                                       "trainable_layers": trainable_layers,
                                                       "select_by": select_by})
    data = prepare_generation(cfg.data, cfg.task)
    targets = targets_for(cfg, data, progress=False)
    whole = train_generation(cfg, variant="distilled", seed=0, data=data, targets=targets, progress=False)
    expected = load_file(str(whole / "model.safetensors"))

    def inspect(checkpoint):
        saved = set(load_file(str(checkpoint / "model.safetensors")))
        if trainable_layers:  # the frozen blocks are the pretrained weights: not in the checkpoint
            assert saved and not any("layers.0." in k or "embed_tokens" in k for k in saved)
            assert all("layers.1." in k or k.startswith("model.norm") for k in saved)
        else:
            assert saved == set(expected)

    resumed = crash_then_resume(
        lambda resume: train_generation(cfg, variant="distilled", seed=0, data=data, targets=targets,
                                        progress=False, resume=resume),
        stop_at=stop_at, checkpoints=cfg.run_dir / "checkpoints" / "distilled-seed0", inspect=inspect)
    got = load_file(str(resumed / "model.safetensors"))
    assert all(torch.equal(expected[k], got[k]) for k in expected)
    training = json.loads((resumed.parent / "distilled-seed0.training.json").read_text())
    history = training["history"]
    assert training["select_by"] == select_by and any(r.get("step") == 4 and "val_target_ce" in r for r in history)
    shares = [r["train_on_policy"] for r in history if "train_on_policy" in r]
    assert (shares and 0.0 <= min(shares) and 0.0 < max(shares) <= 1.0) if on_policy_fraction else not shares


def test_weights_kept_by_validation_rouge_l_write_the_best_validations_outputs(tmp_path, tiny_models):
    """training.select_by: rouge_l generates on the validation split at every validation and keeps the
    weights of the highest ROUGE-L against the validation targets; the saved student writes those outputs."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from kdistill.data.gen_data import prepare_generation
    from kdistill.data.generative import prompt_text
    from kdistill.eval.text_metrics import rouge
    from kdistill.recipes.generation import train as train_generation
    from kdistill.recipes.generation_eval import _outputs
    from kdistill.teachers.generation import targets_for

    # two answers: a tiny student gets some right within a few steps, so ROUGE-L moves from one validation to the next
    two = _write_qa(tmp_path / "two.jsonl", answers=("great", "dull"))
    cfg = _gen_config(tmp_path, tiny_models, data={"path": str(two)},
                      training={"epochs": 6, "learning_rate": 1e-2, "select_by": "rouge_l", "checkpoint_every_steps": 0,
                                "early_stopping_patience": 0})
    data = prepare_generation(cfg.data, cfg.task)
    targets = targets_for(cfg, data, progress=False)
    out = train_generation(cfg, variant="distilled", seed=0, data=data, targets=targets, progress=False)
    training = json.loads((out.parent / "distilled-seed0.training.json").read_text())
    validations = [r for r in training["history"] if "val_rouge_l" in r]
    assert len(validations) == 6 and len({r["val_rouge_l"] for r in validations}) > 1
    assert all(r["val_target_ce"] > 0 and 0.0 <= r["val_copy_rate_2"] <= 1.0 for r in validations)
    best = max(validations, key=lambda r: r["val_rouge_l"])  # the first of equals, as the loop keeps it
    # on this data the lowest target CE comes at another validation: the test tells the two choices apart
    assert best["step"] != min(validations, key=lambda r: r["val_target_ce"])["step"]
    assert training["select_by"] == "rouge_l" and training["best_step"] == best["step"]
    assert training["best_val_score"] == pytest.approx(best["val_rouge_l"])
    assert training["best_val_target_ce"] == pytest.approx(best["val_target_ce"])
    module, tokenizer = AutoModelForCausalLM.from_pretrained(out), AutoTokenizer.from_pretrained(out)
    texts = _outputs(module, tokenizer, [prompt_text(cfg.task.prompt_template, e) for e in data.validation], cfg)
    again = rouge(texts, [targets.target(e) for e in data.validation])["rougeL"].mean
    assert again == pytest.approx(best["val_rouge_l"])


def test_on_policy_examples_learn_the_live_teachers_rows_on_the_students_own_text(tmp_path, tiny_models):
    """GKD mixing: a chosen example's target is the student's continuation, its rows are the live teacher's
    on that text, it takes no CE; the draw depends on (step, example) only, so splitting the batch or
    asking again changes nothing, and about `fraction` of the examples are chosen."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from kdistill.data.gen_data import prepare_generation
    from kdistill.data.generative import prompt_text
    from kdistill.losses.token_kd import encode_targets
    from kdistill.models.generative import GenStudent
    from kdistill.models.token_rows import token_targets
    from kdistill.teachers.generation import targets_for
    from kdistill.train.token_steps import OnPolicy, TokenSteps, concat_rows

    cfg = _gen_config(tmp_path, tiny_models)
    data = prepare_generation(cfg.data, cfg.task)
    targets = targets_for(cfg, data, progress=False)
    module = AutoModelForCausalLM.from_pretrained(tiny_models["lm2"])
    tokenizer = AutoTokenizer.from_pretrained(tiny_models["lm2"])
    student = GenStudent(module, tokenizer, max_length=32)
    teacher = AutoModelForCausalLM.from_pretrained(tiny_models["lm"]).eval()
    batch = data.train[:8]

    def steps_with(fraction):
        on_policy = OnPolicy(teacher, fraction=fraction, temperature=1.0, seed=0, k=8, max_new_tokens=4,
                             eos_id=tokenizer.eos_token_id)
        return TokenSteps(student, cfg.objective, template=cfg.task.prompt_template, target_of=targets.target,
                          teacher_rows=targets.rows, batch_size=8, on_policy=on_policy)

    everything = steps_with(1.0)
    tokens, rows, ce_mask = everything.arguments(batch, torch.device("cpu"), 3)
    assert ce_mask.tolist() == [0.0] * 8
    own = [everything.on_policy.continuation(student, prompt_text(cfg.task.prompt_template, e), 3, e.id) for e in batch]
    prompts = [prompt_text(cfg.task.prompt_template, e) for e in batch]
    assert torch.equal(tokens.input_ids_bt, encode_targets(tokenizer, prompts, own, max_length=32).input_ids_bt)
    assert own != [targets.target(e) for e in batch]  # not the cached targets
    live = concat_rows([everything.on_policy.rows(student, p, t) for p, t in zip(prompts, own)])
    assert torch.equal(rows.token_ids, live.token_ids) and torch.equal(rows.logprobs, live.logprobs)
    # no stop strings here: every row but the last is the teacher's own; the last is its own chance of ending,
    # EOS or the pad token (another end token), summed on EOS, not all the mass forced there. At k = V both
    # are always in the row, so the sum is checked, not skipped
    vocab = teacher.config.vocab_size
    full = OnPolicy(teacher, fraction=1.0, temperature=1.0, seed=0, k=vocab, max_new_tokens=4,
                    eos_id=tokenizer.eos_token_id)
    for prompt, text in zip(prompts[:3], own[:3]):
        [raw] = token_targets(teacher, tokenizer, [prompt], [text], k=vocab, max_length=32, batch_size=1)
        mine = full.rows(student, prompt, text)
        torch.testing.assert_close(mine.logprobs[:-1], torch.from_numpy(raw.logprobs[:-1]))
        raw_last = dict(zip(raw.token_ids[-1].tolist(), torch.from_numpy(raw.logprobs[-1]).exp().tolist()))
        last = dict(zip(mine.token_ids[-1].tolist(), mine.logprobs[-1].exp().tolist()))
        ending = raw_last[tokenizer.eos_token_id] + raw_last[tokenizer.pad_token_id]
        assert last[tokenizer.eos_token_id] == pytest.approx(ending, rel=1e-5)
        assert tokenizer.pad_token_id not in last or last[tokenizer.pad_token_id] < 1e-12
    loss_b, terms = everything.module(0.0, tokens, rows, ce_mask)
    assert terms["on_policy"].tolist() == [1.0] * 8
    assert torch.allclose(loss_b, cfg.objective.kd.weight * terms["kd"])  # the kd term alone

    half = steps_with(0.5)
    chosen = [half.on_policy.chosen(step, e.id) for step in range(20) for e in data.train]
    assert 0.35 < sum(chosen) / len(chosen) < 0.65

    def grads(split: int) -> torch.Tensor:
        module.zero_grad()
        size = len(batch) // split
        for s in range(0, len(batch), size):
            loss_b, _ = half.module(0.0, *half.arguments(batch[s:s + size], torch.device("cpu"), 5))
            (loss_b.sum() / len(batch)).backward()
        return torch.cat([p.grad.flatten() for p in module.parameters() if p.grad is not None])

    assert 0 < sum(half.on_policy.chosen(5, e.id) for e in batch) < 8
    whole, quarters = grads(1), grads(4)
    assert torch.allclose(whole, quarters, atol=1e-6)


def test_on_policy_mixing_is_refused_where_it_cannot_apply(tmp_path, tiny_models, tiny_config):
    from kdistill.errors import KdistillError

    with pytest.raises(KdistillError, match="on_policy_fraction must be in"):
        _gen_config(tmp_path, tiny_models, training={"on_policy_fraction": 1.5})
    with pytest.raises(KdistillError, match="for generation tasks"):
        tiny_config(training={"on_policy_fraction": 0.5})
    with pytest.raises(KdistillError, match="novel_token_weight must be > 0"):
        _gen_config(tmp_path, tiny_models, training={"novel_token_weight": 0.0})
    with pytest.raises(KdistillError, match="novel_token_weight is for generation tasks"):
        tiny_config(training={"novel_token_weight": 2.0})


def test_the_run_trains_with_its_configs_novel_token_weight(tmp_path, tiny_models):
    """training.novel_token_weight reaches the student's loss: the same seed and data give other weights."""
    from safetensors.torch import load_file

    from kdistill.data.gen_data import prepare_generation
    from kdistill.recipes.generation import train as train_generation
    from kdistill.teachers.generation import targets_for

    saved = {}
    for weight in (1.0, 3.0):
        (tmp_path / f"w{weight}").mkdir()
        cfg = _gen_config(tmp_path / f"w{weight}", tiny_models,
                          training={"epochs": 1, "checkpoint_every_steps": 0, "novel_token_weight": weight})
        data = prepare_generation(cfg.data, cfg.task)
        folder = train_generation(cfg, variant="distilled", seed=0, data=data,
                                  targets=targets_for(cfg, data, progress=False), progress=False)
        saved[weight] = load_file(str(folder / "model.safetensors"))
    assert saved[1.0].keys() == saved[3.0].keys()
    assert not all(torch.equal(saved[1.0][k], saved[3.0][k]) for k in saved[1.0])


def test_token_steps_gradient_does_not_depend_on_how_the_batch_is_split(tmp_path, tiny_models):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from kdistill.data.gen_data import prepare_generation
    from kdistill.models.generative import GenStudent
    from kdistill.teachers.generation import targets_for
    from kdistill.train.token_steps import TokenSteps

    cfg = _gen_config(tmp_path, tiny_models)
    data = prepare_generation(cfg.data, cfg.task)
    targets = targets_for(cfg, data, progress=False)
    module = AutoModelForCausalLM.from_pretrained(tiny_models["lm2"])
    student = GenStudent(module, AutoTokenizer.from_pretrained(tiny_models["lm2"]), max_length=32)
    batch = data.train[:8]

    def grads(steps: TokenSteps, split: int) -> torch.Tensor:
        module.zero_grad()
        size = len(batch) // split
        for s in range(0, len(batch), size):
            loss_b, terms = steps.module(0.0, *steps.arguments(batch[s:s + size], torch.device("cpu"), 0))
            assert set(terms) == {"ce", "kd"}
            (loss_b.sum() / len(batch)).backward()
        return torch.cat([p.grad.flatten() for p in module.parameters() if p.grad is not None])

    plain = None
    for novel_token_weight in (1.0, 3.0):  # weighted means per example are as invariant as plain ones
        steps = TokenSteps(student, cfg.objective, template=cfg.task.prompt_template, target_of=targets.target,
                           teacher_rows=targets.rows, batch_size=8, novel_token_weight=novel_token_weight)
        weights = steps.arguments(batch, torch.device("cpu"), 0)[0].weight_bt
        assert (weights is None) == (novel_token_weight == 1.0)
        whole, halves, singles = grads(steps, 1), grads(steps, 2), grads(steps, 8)
        assert torch.allclose(whole, halves, atol=1e-6) and torch.allclose(whole, singles, atol=1e-6)
        if plain is None:
            plain = whole
        else:
            assert set(weights.unique().tolist()) == {0.0, 1.0, 3.0} and not torch.allclose(whole, plain)


def test_a_student_with_another_tokenizer_is_refused_token_level_kd_with_the_way_out(tmp_path, tiny_models):
    from kdistill import api
    from kdistill.errors import KdistillError

    other = save_tiny_lm(tmp_path / "other", extra_words=("zebra",))
    cfg = _gen_config(tmp_path, tiny_models, student={"model": str(other)})
    with pytest.raises(KdistillError, match="objective.kd.weight: 0"):
        api.train(cfg, variant="distilled", progress=False)
    cfg = _gen_config(tmp_path, tiny_models, student={"model": str(other)},
                      objective={"ce": {"weight": 1.0}, "kd": {"weight": 0.0}})
    from kdistill.recipes.generation import variants

    assert variants(cfg) == ["sequence_kd"]  # sequence-level KD only


def _write_winogrande(path, n: int = 40, seed: int = 0):
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            good, bad = rng.choice(POSITIVE), rng.choice(NEGATIVE)
            options = [good, bad] if i % 2 == 0 else [bad, good]
            sentence = " ".join(rng.sample(FILLER, 4)) + f" _ {i}"
            f.write(json.dumps({"qID": str(i), "sentence": sentence, "option1": options[0], "option2": options[1],
                                "answer": "1" if i % 2 == 0 else "2"}) + "\n")
    return path


def test_a_multiple_choice_run_completes_end_to_end_on_a_winogrande_file(tmp_path, tiny_models, tiny_config):
    from kdistill import api
    from kdistill.config import TaskConfig

    default = TaskConfig(kind="multiple_choice", num_options=2)
    assert default.labels == ["1", "2"] and default.verbalizers == {"1": " 1", "2": " 2"}
    # the tiny tokenizer has no digits: answer with words it knows
    cfg = tiny_config(task={"name": "tiny-winogrande", "kind": "multiple_choice", "num_options": 2, "labels": [],
                            "verbalizers": {"1": " positive", "2": " negative"}, "prompt_template": "{text} Answer:"},
                      data={"source": "winogrande", "path": str(_write_winogrande(tmp_path / "wg.jsonl"))},
                      evaluation={"seeds": [0]}, training={"epochs": 1})
    run_dir = api.run(cfg, progress=False)
    results = json.loads((run_dir / "eval" / "results.json").read_text())
    assert results["labels"] == ["1", "2"] and results["test_examples"] == 10
    assert {"teacher", "student_distilled", "student_labels_only"} <= set(results["models"])
    splits = json.loads((run_dir / "data" / "splits.json").read_text())
    assert sum(len(v) for v in splits.values()) == 40


def test_multiple_choice_files_give_clear_errors(tmp_path, tiny_config):
    from kdistill.data import prepare_data
    from kdistill.errors import KdistillError

    path = _write_winogrande(tmp_path / "wg.jsonl", n=12)
    cfg = tiny_config(task={"name": "mc", "kind": "multiple_choice", "num_options": 3, "labels": [], "verbalizers": {},
                            "prompt_template": "{text} Answer:"},
                      data={"source": "winogrande", "path": str(path)})
    with pytest.raises(KdistillError, match=r"wg.jsonl:1: 2 options, but task.num_options is 3"):
        prepare_data(cfg.data, cfg.task)


def test_trainable_layers_keeps_the_lower_blocks_and_embeddings_fixed(tmp_path, tiny_models):
    from safetensors.torch import load_file

    from kdistill.data.gen_data import prepare_generation
    from kdistill.recipes.generation import train as train_generation
    from kdistill.teachers.generation import targets_for

    cfg = _gen_config(tmp_path, tiny_models, training={"epochs": 1, "trainable_layers": 1})
    data = prepare_generation(cfg.data, cfg.task)
    folder = train_generation(cfg, variant="distilled", seed=0, data=data, targets=targets_for(cfg, data, progress=False),
                              progress=False)
    before, after = load_file(str(tiny_models["lm2"] / "model.safetensors")), load_file(str(folder / "model.safetensors"))
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith(("model.layers.1.", "model.norm.")) for k in changed)  # 2 blocks: the top one


def test_likelihood_scoring_is_each_options_mean_token_logprob_after_the_question(tiny_models):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from kdistill.data.choice import render_choice
    from kdistill.data.records import ChoiceExample
    from kdistill.models.choice_lm import ChoiceLikelihoodModel, split_choice

    module, tokenizer = AutoModelForCausalLM.from_pretrained(tiny_models["lm"]), AutoTokenizer.from_pretrained(tiny_models["lm"])
    model = ChoiceLikelihoodModel(module, tokenizer, labels=["1", "2", "3"], prompt_template="{text} Answer:")
    examples = [ChoiceExample("a", "the film was", ("great fun", "dull", "really quite boring"), 0, "x:1"),
                ChoiceExample("b", "the plot is really", ("moving", "awful story", "bland"), 2, "x:2")]
    texts = [render_choice(e) for e in examples]
    assert split_choice(texts[0], 3) == ("the film was", ["great fun", "dull", "really quite boring"])
    got_bn = model.predict_logits(texts)
    for b, example in enumerate(examples):
        prompt = tokenizer(f"{example.question} Answer:")["input_ids"]
        for n, option in enumerate(example.options):
            option_ids = tokenizer(" " + option, add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                logprobs = module(torch.tensor([prompt + option_ids])).logits[0].log_softmax(-1)  # unpadded, alone
            expected = sum(float(logprobs[len(prompt) - 1 + j, t]) for j, t in enumerate(option_ids)) / len(option_ids)
            assert got_bn[b, n].item() == pytest.approx(expected, abs=1e-5)


def test_a_likelihood_scored_multiple_choice_run_completes(tmp_path, tiny_models, tiny_config):
    from kdistill import api
    cfg = tiny_config(task={"name": "tiny-winogrande", "kind": "multiple_choice", "num_options": 2, "labels": [],
                            "verbalizers": {}, "choice_scoring": "likelihood", "prompt_template": "{text} Answer:"},
                      data={"source": "winogrande", "path": str(_write_winogrande(tmp_path / "wg.jsonl"))},
                      teacher={"few_shot_per_label": 0, "calibrate": False},
                      student={"model": str(tiny_models["lm2"])}, evaluation={"seeds": [0]}, training={"epochs": 1})
    run_dir = api.run(cfg, progress=False)
    results = json.loads((run_dir / "eval" / "results.json").read_text())
    assert {"teacher", "student_distilled", "student_labels_only"} <= set(results["models"])
    assert json.loads((run_dir / "student" / "kdistill.json").read_text())["choice_scoring"] == "likelihood"


def test_a_teacher_written_target_ends_where_the_teachers_decoding_stopped_it(tmp_path, tiny_models):
    """The last row of a written target is EOS with all the mass (the decoding policy stopped there), so KD
    never teaches the student to go on past the end; the cache keeps the raw rows, and data targets are as
    cached."""
    from kdistill.data.gen_data import prepare_generation
    from kdistill.losses.divergences import divergence
    from kdistill.teachers.generation import targets_for

    cfg = _gen_config(tmp_path, tiny_models, task={"targets": "teacher", "evaluate_as": "summary"})
    data = prepare_generation(cfg.data, cfg.task)
    targets = targets_for(cfg, data, progress=False)
    example = data.train[0]
    raw, read = targets.entry.tokens(example.id), targets.rows(example.id)
    assert torch.equal(raw.token_ids[:-1], read.token_ids[:-1]) and torch.equal(raw.logprobs[:-1], read.logprobs[:-1])
    eos = targets.eos_id
    buckets = read.rows(slice(-1, None)).bucket_logprobs(1.0, 64)  # (1, k + 1)
    assert read.token_ids[-1, 0] == eos and buckets[0, 0].exp().item() > 1 - 1e-6
    assert len(set(read.token_ids[-1].tolist())) == read.token_ids.shape[1]  # ids stay distinct
    # a student sure of EOS there has (almost) no KD loss; one that goes on has a large one
    sure = torch.full((1, 64), -20.0)
    sure[0, eos] = 20.0
    assert divergence(sure, read.rows(slice(-1, None)), kind="forward_kl").item() < 1e-6
    (tmp_path / "d").mkdir()
    data_cfg = _gen_config(tmp_path / "d", tiny_models)
    data_targets = targets_for(data_cfg, prepare_generation(data_cfg.data, data_cfg.task), progress=False)
    first = prepare_generation(data_cfg.data, data_cfg.task).train[0]
    assert torch.equal(data_targets.rows(first.id).logprobs, data_targets.entry.tokens(first.id).logprobs)


def test_a_student_sample_ends_on_the_teachers_own_chance_of_stopping():
    """For a student's sample, the last row is the teacher's: EOS holds the top-k mass of EOS and of the stop
    tokens, not all of it (which made an on-policy student that once wrote nothing learn to write nothing)."""
    from kdistill.losses.divergences import SparseTargets
    from kdistill.losses.token_kd import stopping_as_eos

    eos, newline = 7, 3
    probs = torch.tensor([[0.5, 0.2, 0.1, 0.1], [0.4, 0.2, 0.2, 0.1]])  # the last row: 0.2 EOS, 0.2 a newline
    rows = SparseTargets(torch.tensor([[1, 2, 4, 5], [9, eos, newline, 0]]), probs.log(),
                         (1 - probs.sum(1)).log())
    ended = stopping_as_eos(rows, eos, {newline})
    assert torch.equal(ended.token_ids[0], rows.token_ids[0]) and torch.equal(ended.logprobs[0], rows.logprobs[0])
    last = dict(zip(ended.token_ids[-1].tolist(), ended.logprobs[-1].exp().tolist()))
    assert last[eos] == pytest.approx(0.4) and last[9] == pytest.approx(0.4) and last[0] == pytest.approx(0.1)
    assert newline not in last and len(last) == 4, "the stop token's slot is an unused id with no mass"
    assert sum(last.values()) == pytest.approx(0.9) and torch.equal(ended.tail_logmass, rows.tail_logmass)
    going_on = SparseTargets(torch.tensor([[1, 2, 4, 5]]), probs[:1].log(), (1 - probs[:1].sum(1)).log())
    assert stopping_as_eos(going_on, eos, {newline}) is going_on, "neither EOS nor a stop: the teacher's row"


def test_search_refuses_a_generation_task_with_the_way_out(tmp_path, tiny_models):
    from kdistill.errors import KdistillError
    from kdistill.recipes.search import search

    with pytest.raises(KdistillError, match="generation task, run `kdistill run`"):
        search(_gen_config(tmp_path, tiny_models))


@pytest.mark.slow
def test_the_built_in_trivia_qa_config_runs_end_to_end_on_its_real_pairs(tmp_path, tiny_models):
    """The QA run on its built-in data: the `trivia-qa` config and the real trivia pairs (from the package
    index), with tiny models in place of the Qwen pair, whose run is a benchmark rather than a test."""
    from kdistill import api
    from kdistill.config import load_config
    from kdistill.data.generative import load_trivia_pairs

    cfg = load_config("trivia-qa", overrides={
        "output_dir": str(tmp_path / "runs"), "teacher.model": str(tiny_models["lm"]),
        "student.model": str(tiny_models["lm2"]), "student.max_length": 48, "data.max_examples": 40,
        "task.max_new_tokens": 4, "training.trainable_layers": 1, "training.epochs": 1,
        "evaluation.seeds": [0], "evaluation.latency_examples": 2})
    run_dir = api.run(cfg, progress=False)
    _qa_card(run_dir)
    splits = json.loads((run_dir / "data" / "splits.json").read_text())
    real_ids = {e.id for e in load_trivia_pairs()}
    assert len(splits["test"]) == 10 and set(splits["test"]) <= real_ids  # 40 x test_fraction 0.25, real pairs
