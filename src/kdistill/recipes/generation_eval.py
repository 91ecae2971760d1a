"""Evaluation of a generation task (summaries, answers): every model's outputs on the test split, scored
against the references (ROUGE, EM / F1, copying, judged faithfulness, similarity), with each model's cost."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from kdistill.checksums import verify_student
from kdistill.config import RunConfig
from kdistill.data.gen_data import GenData, prepare_generation
from kdistill.data.generative import prompt_text
from kdistill.data.records import GenExample
from kdistill.errors import KdistillError
from kdistill.io import atomic_write_json, atomic_write_text
from kdistill.models import pick_device, resolve_model_path
from kdistill.models.generate import generation_cost, greedy_texts, paired_fixed_length_cost
from kdistill.models.generative import load_causal_lm
from kdistill.recipes.common import read_training, verify_students
from kdistill.teachers.generation import GenTargets, targets_for


def _outputs(module, tokenizer, prompts: list[str], cfg: RunConfig, who: str | None = None) -> list[str]:
    return greedy_texts(module, tokenizer, prompts, max_new_tokens=cfg.task.max_new_tokens,
                        max_length=cfg.student.max_length, batch_size=cfg.student.batch_size, stop=cfg.task.stop,
                        desc=f"test outputs: {who}" if who else None)


def _max_prompt_tokens(cfg: RunConfig) -> int:
    return cfg.student.max_length - cfg.task.max_new_tokens


def _cost(module, tokenizer, prompts: list[str], cfg: RunConfig, model_dir: str | Path | None,
          teacher=None) -> dict[str, Any]:
    """The model's generation cost (see `generation_cost`), also at a fixed output length; with ``teacher``
    (its module and tokenizer), that fixed-length timing takes each prompt on the model and right after on the
    teacher (`paired_fixed_length_cost`), and the speed-up is the median of the per-prompt ratios: two timings
    seconds apart, not two taken at either end of the evaluation."""
    from kdistill.eval.labels import size_on_disk

    n = max(1, min(cfg.evaluation.latency_examples, len(prompts)))
    cost = generation_cost(module, tokenizer, prompts[:n], max_new_tokens=cfg.task.max_new_tokens, desc="timing",
                           max_prompt_tokens=_max_prompt_tokens(cfg), stop=cfg.task.stop)
    # the same prompts again, each written to exactly max_new_tokens (EOS and stop strings held back): the
    # speed-up in tokens/s then compares the models, not the lengths of what each chose to write
    if teacher is not None:
        paired = paired_fixed_length_cost(module, tokenizer, teacher, prompts[:n],
                                          max_new_tokens=cfg.task.max_new_tokens,
                                          max_prompt_tokens=_max_prompt_tokens(cfg))
        fixed = {"tokens_per_s": paired["tokens_per_s"], "generated_tokens": paired["generated_tokens"]}
        cost |= {"teacher_fixed_length_tokens_per_s": paired["reference_tokens_per_s"],
                 "fixed_length_speedups": paired["speedups"], "fixed_length_speedup_median": paired["speedup_median"]}
    else:
        fixed = generation_cost(module, tokenizer, prompts[:n], max_new_tokens=cfg.task.max_new_tokens, warmup=0,
                                max_prompt_tokens=_max_prompt_tokens(cfg), fixed_length=True)
    folder = Path(model_dir) if model_dir is not None and Path(model_dir).is_dir() else None
    return {**cost, "fixed_length_tokens_per_s": fixed["tokens_per_s"],
            "fixed_length_tokens": fixed["generated_tokens"], "parameters": sum(p.numel() for p in module.parameters()),
            "size_on_disk_bytes": size_on_disk(folder) if folder else None}


def _references(cfg: RunConfig, test: list[GenExample], targets: GenTargets | None) -> list:
    if cfg.task.targets == "teacher":
        return [targets.target(e) for e in test]
    return [list(e.answers) or [e.target] for e in test] if cfg.task.evaluate_as == "qa" else [e.target for e in test]


def _scorers(cfg: RunConfig, teacher) -> tuple[Any, Any, dict[str, Any]]:
    """The similarity scorer and the faithfulness judge (summaries only), and how the card names them."""
    from kdistill.eval.judge import FaithfulnessJudge
    from kdistill.eval.similarity import SimilarityScorer, human_pearson

    similarity = SimilarityScorer(cfg.evaluation.similarity_model) if cfg.evaluation.similarity_model else None
    judge = None
    if cfg.task.evaluate_as == "summary":
        name = cfg.evaluation.judge or cfg.teacher.model
        module, tokenizer = teacher if not cfg.evaluation.judge else load_causal_lm(
            replace(cfg.teacher, model=cfg.evaluation.judge), pick_device(cfg.training.device))
        judge = FaithfulnessJudge(module, tokenizer, name=name)
    info = {"similarity": {"model": cfg.evaluation.similarity_model, "pearson_with_humans": human_pearson(similarity),
                           "measured_on": "Lee corpus, 1,225 document pairs rated by people"} if similarity else None,
            "faithfulness": judge.describe() if judge else None}
    return similarity, judge, info


def judge_check(judge, sources: list[str], references: list[str]) -> dict[str, Any] | None:
    """Can the judge tell a source's own reference summary from another source's? Its scores on the matched
    pairs against the pairs shifted by one, as an ROC AUC (0.5: chance, 1: always right), measured in the run."""
    from sklearn.metrics import roc_auc_score

    if len(sources) < 2:
        return None
    matched = judge.scores(sources, references)
    mismatched = judge.scores(sources, references[1:] + references[:1])
    return {"auc": float(roc_auc_score([1] * len(matched) + [0] * len(mismatched), matched + mismatched)),
            "mean_matched": sum(matched) / len(matched), "mean_mismatched": sum(mismatched) / len(mismatched),
            "pairs": len(matched), "what": "the test sources with their own reference vs the next source's reference"}


def evaluate(cfg: RunConfig, *, progress: bool = True, teachers: Any = None, data: GenData | None = None,
             targets: GenTargets | None = None) -> Path:
    """Every model's outputs on the test split, scored against the references; cost of each; results.json, and
    every output of every model and seed in outputs.jsonl. ``teachers``: the loaded teacher (module, tokenizer)."""
    from kdistill.eval.generation import comparison_rows, score_generations, summarize_seeds

    verify_students(cfg, variants(cfg))  # a damaged student is found before the teacher is loaded
    data = data or prepare_generation(cfg.data, cfg.task)
    test = data.test
    prompts = [prompt_text(cfg.task.prompt_template, e) for e in test]
    sources = [e.prompt for e in test]
    device = pick_device(cfg.training.device)
    if teachers is None and cfg.teacher.is_endpoint and not cfg.teacher.endpoint.serve:
        raise KdistillError(f"the card of a generation task times the teacher and (for summaries) judges with it "
                            f"in-process, and teacher.model {cfg.teacher.model!r} is only a name on a server: use "
                            "endpoint.serve with a .gguf or built-in model (kdistill then loads the same file for the "
                            "card), or stop after `kdistill elicit` and `kdistill train`.")
    teacher = teachers or load_causal_lm(cfg.teacher, device)  # a served GGUF: the same file, in-process
    if targets is None:
        targets = targets_for(cfg, data, progress=progress, teacher=teacher)
    references = _references(cfg, test, targets)
    similarity, judge, scorer_info = _scorers(cfg, teacher)
    if judge is not None:
        scorer_info["faithfulness"]["check"] = judge_check(judge, sources, [r if isinstance(r, str) else r[0]
                                                                            for r in references])
    score = lambda outputs: score_generations(outputs, sources=sources, references=references,
                                              evaluate_as=cfg.task.evaluate_as, similarity=similarity, judge=judge)
    outputs: dict[str, list[str]] = {}  # each model's outputs (a student's first seed's): the examples shown
    seed_outputs: dict[str, dict[str, list[str]]] = {}  # a trained variant's outputs, per seed
    models: dict[str, Any] = {}
    outputs["teacher"] = ([targets.target(e) for e in test] if cfg.task.targets == "teacher"
                          else _outputs(*teacher, prompts, cfg, "teacher"))
    models["teacher"] = {"name": cfg.teacher.model, "metrics": score(outputs["teacher"]),
                         "cost": _cost(*teacher, prompts, cfg, resolve_model_path(cfg.teacher.model))}
    if cfg.evaluation.baselines:
        torch.manual_seed(cfg.evaluation.seeds[0])
        untrained = load_causal_lm(cfg.student, device)
        outputs["student_untrained"] = _outputs(*untrained, prompts, cfg, "untrained student")
        models["student_untrained"] = {"name": cfg.student.model, "metrics": score(outputs["student_untrained"]),
                                       "cost": _cost(*untrained, prompts, cfg, resolve_model_path(cfg.student.model),
                                                     teacher)}
        del untrained
    for variant in variants(cfg):
        entry = _evaluate_variant(cfg, variant, prompts, score, outputs, seed_outputs, teacher)
        if entry:
            entry["summary"] = summarize_seeds(entry["seeds"])
            models[f"student_{variant}"] = entry
    if cfg.task.evaluate_as == "summary":
        _add_copy_gaps(models, outputs, seed_outputs, sources)
    results = {"run": cfg.name, "task": cfg.task.name, "task_kind": "generation", "evaluate_as": cfg.task.evaluate_as,
               "references": cfg.task.targets, "test_examples": len(test), "data": data.report,
               "scorers": scorer_info, "models": models, "comparison": comparison_rows(models, evaluate_as=cfg.task.evaluate_as),
               "examples": _examples(cfg, test, references, outputs),
               **({"teacher_ensemble": targets.ensemble.info} if targets.ensemble is not None else {})}
    _write_outputs(cfg.paths.outputs, test, references, outputs, seed_outputs)
    path = cfg.paths.results
    atomic_write_json(path, results)
    return path


def _add_copy_gaps(models: dict[str, Any], outputs: dict[str, list[str]], seed_outputs: dict[str, dict[str, list[str]]],
                   sources: list[str]) -> None:
    """Each model's copying against the teacher's, paired by article, with its interval (summaries)."""
    from kdistill.eval.generation import copy_gap

    for key, entry in models.items():
        if key != "teacher":
            texts = list(seed_outputs[key].values()) if key in seed_outputs else [outputs[key]]
            entry["copy_gap_2"] = copy_gap(outputs["teacher"], texts, sources)


def _write_outputs(path: Path, test: list[GenExample], references: list, outputs: dict[str, list[str]],
                   seed_outputs: dict[str, dict[str, list[str]]]) -> None:
    """One line per test example: its id, reference, and the output of every model (a trained variant's per
    seed, keyed ``student_<variant>_seed<seed>``), so that any figure of the card can be checked by hand."""
    columns = {key: texts for key, texts in outputs.items() if key not in seed_outputs}
    columns |= {f"{key}_seed{seed}": texts for key, per_seed in seed_outputs.items() for seed, texts in per_seed.items()}
    lines = [json.dumps({"id": example.id, "reference": references[i],
                         "outputs": {key: texts[i] for key, texts in columns.items()}}, ensure_ascii=False)
             for i, example in enumerate(test)]
    atomic_write_text(path, "\n".join(lines) + "\n")


def _evaluate_variant(cfg: RunConfig, variant: str, prompts: list[str], score, outputs: dict,
                      seed_outputs: dict, teacher) -> dict | None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    per_seed, training, cost = {}, {}, None
    for seed in cfg.evaluation.seeds:
        folder = cfg.paths.student(variant, seed)
        if not folder.exists():
            continue
        verify_student(folder)  # every file, before any is loaded
        module = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).to(pick_device(cfg.training.device))
        tokenizer = AutoTokenizer.from_pretrained(folder)
        texts = _outputs(module, tokenizer, prompts, cfg, f"{variant} seed {seed}")
        seed_outputs.setdefault(f"student_{variant}", {})[str(seed)] = texts
        if seed == cfg.evaluation.seeds[0]:
            outputs[f"student_{variant}"] = texts
            cost = _cost(module, tokenizer, prompts, cfg, folder, teacher)
        per_seed[str(seed)] = score(texts)
        training[str(seed)] = {k: v for k, v in read_training(folder).items() if k != "history"}
    if not per_seed:
        return None
    return {"name": cfg.student.model, "seeds": per_seed, "training": training, "cost": cost}


def _examples(cfg: RunConfig, test: list[GenExample], references: list, outputs: dict[str, list[str]]) -> list[dict]:
    shown = []
    for i, example in enumerate(test[:cfg.evaluation.num_examples_shown]):
        reference = references[i] if isinstance(references[i], str) else " | ".join(references[i])
        shown.append({"id": example.id, "source": example.prompt, "reference": reference,
                      **{key: texts[i] for key, texts in outputs.items()}})
    return shown


GEN_VARIANTS = {"sequence_kd": "CE on the target texts (sequence-level KD when the teacher wrote them)",
                "distilled": "token-level KD + CE on the target tokens"}


def variants(cfg: RunConfig) -> list[str]:
    """The variants this config trains: without a kd term, `distilled` would equal `sequence_kd`."""
    return [v for v in GEN_VARIANTS if v != "distilled" or cfg.objective.kd.weight > 0]
