"""Benchmark: which training settings bring a summarization student's copying down to the teacher's.

    python benchmarks/summary_ablation.py [--config bbc-summary] [--run-out benchmarks/runs] [--extra 24]
                                          [--only NAME ...] [--keep-students]

Reuses the teacher cache of a finished `benchmarks/summarization.py` run (no teacher targets are asked again)
and trains seed 0 of a student under each setting of SETTINGS, each in its own run folder (the run_* settings
score that run's own seed-0 students instead of training). A trained setting's student and checkpoints are
deleted once it is scored (a whole 0.5B student is about 3 GB; --keep-students keeps them). Every setting is
scored without touching the test split, so the choice it informs is not made on test figures:
- ROUGE-L against the teacher's references on the validation split;
- copy rate (share of output word bigrams found in the article) on the validation split and on `--extra`
  BBC articles outside the run's data, where the teacher writes a summary once (kept in extra_teacher.json)
  so that its copy rate is measured on the same articles.
Writes benchmarks/results/summary_ablation.json and .md. Nothing is asserted: the table is what was measured.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

# name -> (variant, overrides); every setting starts from the built-in config, epochs always named;
# run_* settings score the seed-0 students of the last summarization run into the run folder, without training
# (the built-in config unless that run was given --set overrides)
SETTINGS = {
    "run_sequence_kd": ("sequence_kd", {}),
    "run_distilled": ("distilled", {}),
    "kd_2ep": ("distilled", {"training.epochs": 2}),
    "kd_6ep_reverse": ("distilled", {"training.epochs": 6, "objective.kd.divergence": "reverse_kl"}),
    "kd_6ep_12layers": ("distilled", {"training.epochs": 6, "training.trainable_layers": 12}),
    "seq_kd_2ep": ("sequence_kd", {"training.epochs": 2}),
    "kd_6ep_on_policy": ("distilled", {"training.epochs": 6, "training.on_policy_fraction": 0.5}),
    "kd_1ep": ("distilled", {"training.epochs": 1}),
    "kd_4ep_reverse": ("distilled", {"training.epochs": 4, "objective.kd.divergence": "reverse_kl"}),
    "kd_1ep_on_policy": ("distilled", {"training.epochs": 1, "training.on_policy_fraction": 0.5}),
    "kd_1ep_12layers": ("distilled", {"training.epochs": 1, "training.trainable_layers": 12}),
    "kd_1ep_on_policy_reverse": ("distilled", {"training.epochs": 1, "training.on_policy_fraction": 0.5,
                                               "objective.kd.divergence": "reverse_kl"}),
    "kd_1ep_all_lr2e-5": ("distilled", {"training.epochs": 1, "training.trainable_layers": None,
                                        "training.learning_rate": 2.0e-5}),
    "kd_1ep_novel3": ("distilled", {"training.epochs": 1, "training.novel_token_weight": 3.0}),
    "seq_kd_1ep_novel3": ("sequence_kd", {"training.epochs": 1, "training.novel_token_weight": 3.0}),
    "kd_1ep_novel1": ("distilled", {"training.epochs": 1, "training.novel_token_weight": 1.0}),
    "seq_kd_1ep_novel1": ("sequence_kd", {"training.epochs": 1, "training.novel_token_weight": 1.0}),
    "kd_4ep_T0.5": ("distilled", {"training.epochs": 4, "objective.kd.temperature": 0.5}),
    "kd_6ep_lr2e-4": ("distilled", {"training.epochs": 6, "training.learning_rate": 2.0e-4}),
    "kd_6ep_8layers_lr1e-4": ("distilled", {"training.epochs": 6, "training.trainable_layers": 8,
                                            "training.learning_rate": 1.0e-4}),
}


def _extra_articles(cfg, data, n: int):
    """``n`` BBC articles outside the run's data, chosen by a hash of their id (stable, not the split's order)."""
    from kdistill.data.gen_data import load_generation

    used = {e.id for split in (data.train, data.validation, data.test) for e in split}
    rest = [e for e in load_generation(cfg.data) if e.id not in used]
    return sorted(rest, key=lambda e: hashlib.sha256(e.id.encode()).hexdigest())[:n]


def _copy_rate(outputs, sources) -> float:
    from kdistill.eval import text_metrics as gen_metrics
    return gen_metrics.copying(outputs, sources)["copy_rate_2"].mean


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="bbc-summary")
    parser.add_argument("--run-out", default=str(HERE / "runs"))
    parser.add_argument("--extra", type=int, default=24)
    parser.add_argument("--only", nargs="*", default=None)
    parser.add_argument("--keep-students", action="store_true",
                        help="keep each trained setting's student and checkpoints (about 3 GB each) after scoring")
    args = parser.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from kdistill.config import load_config
    from kdistill.data.gen_data import prepare_generation
    from kdistill.data.generative import prompt_text
    from kdistill.eval import text_metrics as gen_metrics
    from kdistill.models import pick_device
    from kdistill.recipes.generation import train as train_generation
    from kdistill.recipes.generation_eval import _outputs
    from kdistill.recipes.search import with_overrides
    from kdistill.teachers.generation import targets_for

    cfg = load_config(args.config, {"output_dir": args.run_out})
    if not (cfg.run_dir / "teacher_cache").exists():
        sys.exit(f"{cfg.run_dir}/teacher_cache: no teacher cache; run benchmarks/summarization.py first.")
    data = prepare_generation(cfg.data, cfg.task)
    targets = targets_for(cfg, data, progress=True)  # from the cache
    val, extra = data.validation, _extra_articles(cfg, data, args.extra)
    val_prompts = [prompt_text(cfg.task.prompt_template, e) for e in val]
    extra_prompts = [prompt_text(cfg.task.prompt_template, e) for e in extra]
    val_refs = [targets.target(e) for e in val]

    out_dir = cfg.run_dir.parent / f"{cfg.name}-ablation"
    out_dir.mkdir(parents=True, exist_ok=True)
    teacher_file = out_dir / "extra_teacher.json"
    teacher_extra = json.loads(teacher_file.read_text()) if teacher_file.exists() else {}
    if [e.id for e in extra] != teacher_extra.get("ids"):
        from kdistill.models.generative import load_causal_lm

        teacher = load_causal_lm(cfg.teacher, pick_device(cfg.training.device))
        teacher_extra = {"ids": [e.id for e in extra], "outputs": _outputs(*teacher, extra_prompts, cfg)}
        teacher_file.write_text(json.dumps(teacher_extra, indent=1))
        del teacher
    rows = {"teacher": {"variant": "teacher", "overrides": {}, "val_rougeL": 1.0,
                        "val_copy_rate_2": _copy_rate(val_refs, [e.prompt for e in val]),
                        "extra_copy_rate_2": _copy_rate(teacher_extra["outputs"], [e.prompt for e in extra]),
                        "extra_words": sum(len(o.split()) for o in teacher_extra["outputs"]) / len(extra)}}
    results_file = HERE / "results" / "summary_ablation.json"
    if results_file.exists():
        rows = {**json.loads(results_file.read_text())["rows"], **rows}
    for name, (variant, overrides) in SETTINGS.items():
        if args.only and name not in args.only:
            continue
        if name.startswith("run_"):  # the summarization run's own seed-0 student, trained with the config as it is
            folder = cfg.run_dir / "students" / f"{variant}-seed0"
            if not folder.exists():
                print(f"{name}: {folder} is missing; run benchmarks/summarization.py first", flush=True)
                continue
        else:
            scfg = with_overrides(cfg, {**overrides, "name": f"{cfg.name}-ablation-{name}", "output_dir": str(out_dir)})
            folder = train_generation(scfg, variant=variant, seed=0, data=data, targets=targets, progress=True)
        module = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(folder)
        val_out = _outputs(module, tokenizer, val_prompts, cfg)
        extra_out = _outputs(module, tokenizer, extra_prompts, cfg)
        training = json.loads(folder.with_name(f"{folder.name}.training.json").read_text())
        rows[name] = {"variant": variant, "overrides": overrides, "train_s": training["seconds"],
                      "steps": training["steps"], "best_step": training["best_step"],
                      "kept_by": training.get("select_by", "target_ce"),
                      "best_val_target_ce": training["best_val_target_ce"],
                      "val_rougeL": gen_metrics.rouge(val_out, val_refs)["rougeL"].mean,
                      "val_copy_rate_2": _copy_rate(val_out, [e.prompt for e in val]),
                      "extra_copy_rate_2": _copy_rate(extra_out, [e.prompt for e in extra]),
                      "extra_words": sum(len(o.split()) for o in extra_out) / len(extra),
                      "extra_examples": extra_out[:3]}
        print(name, {k: v for k, v in rows[name].items() if k != "extra_examples"}, flush=True)
        _write(rows, len(val), len(extra))
        if not name.startswith("run_") and not args.keep_students:  # scored: its figures are in the table
            del module
            shutil.rmtree(folder)
            shutil.rmtree(scfg.run_dir / "checkpoints", ignore_errors=True)


def _write(rows: dict, n_val: int, n_extra: int) -> None:
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "summary_ablation.json").write_text(json.dumps({"rows": rows}, indent=2) + "\n")
    lines = ["# summary_ablation: seed 0 of each setting, scored off the test split", "",
             f"Validation: {n_val} articles (ROUGE-L against the teacher's references). Extra: {n_extra} BBC articles "
             "outside the run's data (copy rate only; the teacher summarized them once).", "",
             "| setting | variant | overrides | steps (kept) | kept by | kept val target CE | val ROUGE-L | "
             "val copy rate 2 | extra copy rate 2 | extra words | train s |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        ce = r.get("best_val_target_ce")
        lines.append(f"| {name} | {r['variant']} | {json.dumps(r['overrides']) if r['overrides'] else '—'} | "
                     f"{r.get('steps', '—')} ({r.get('best_step', '—')}) | {r.get('kept_by', '—')} | "
                     f"{'—' if ce is None else f'{ce:.3f}'} | "
                     f"{r['val_rougeL']:.3f} | {r['val_copy_rate_2']:.3f} | {r['extra_copy_rate_2']:.3f} | "
                     f"{r['extra_words']:.1f} | {r.get('train_s', 0):.0f} |")
    (HERE / "results" / "summary_ablation.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
