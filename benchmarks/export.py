"""Benchmark: the student as PyTorch fp32, ONNX fp32 and ONNX int8, and the teacher, timed by the card's one
cost harness in the same run; test quality of each; size on disk.

    python benchmarks/export.py --run-dir RUN_DIR [--gen-run-dir DIR] [--only label|generation] [--repeats 3]

Label part (RUN_DIR: a finished run of a label task, e.g. the default job): `kdistill export` writes both ONNX
forms (with their parity checks); then every form is timed `--repeats` times in turn (pytorch, onnx_fp32,
onnx_int8, teacher, pytorch, ...) with `eval.labels.measure_cost`, and each figure is the median over the
rounds. Student quality is macro-F1 on the whole test split; the teacher's is the run's evaluation of it (its
calibrated answers, from eval/results.json). Diagnostics: tokenization alone at batch 1, and each student
form's model call alone on pre-tokenized inputs, to say where batch-1 time goes.

Generation part (`--gen-run-dir`, written if absent): bbc-summary's student on the first `--gen-test` test
articles. Without a trained bbc-summary run, the student is the pretrained Qwen2.5-Coder-0.5B-Instruct (the
student a bbc-summary run starts from and fine-tunes 4 of 24 blocks of), saved as a run's student; the
1.5B teacher writes the references on those articles, as in a bbc-summary run, and is timed doing so. Quality
is ROUGE-L against them; speed is ms per greedy output at batch 1 and generated tokens/s.

Writes benchmarks/results/export.json (`rows`: {task, form, quality, p50_ms_batch1, p95_ms_batch1,
per_s_batch32, size_mb}) and export.md; a part not run keeps its rows from the previous results file.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
FORMS = ("pytorch", "onnx_fp32", "onnx_int8", "teacher")


def _median_row(rounds: list[dict]) -> dict:
    keys = ("p50_ms_batch1", "p95_ms_batch1", "per_s_batch32")
    return {k: statistics.median(r[k] for r in rounds) if rounds[0].get(k) is not None else None for k in keys} | {
        "p50_ms_rounds": [r["p50_ms_batch1"] for r in rounds]}


def _cost_row(cost: dict) -> dict:
    return {"p50_ms_batch1": cost["latency_p50_ms"], "p95_ms_batch1": cost["latency_p95_ms"],
            "per_s_batch32": cost["throughput_examples_per_s"]}


def _batch1_diagnostics(models: dict, texts: list[str]) -> dict:
    """Where batch-1 time goes: the tokenizer alone, and each student form's model call on pre-tokenized input."""
    out = {}
    tokenizer = models["pytorch"].tokenizer
    encoded = [models["pytorch"].encode([t]) for t in texts]
    took = []
    for text in texts:
        start = time.perf_counter()
        models["pytorch"].encode([text])
        took.append(time.perf_counter() - start)
    out["tokenize_ms_p50"] = 1000 * statistics.median(took)
    for form in ("pytorch", "onnx_fp32", "onnx_int8"):
        model, took = models[form], []
        batches = encoded if form == "pytorch" else [model.encode([t]) for t in texts]
        for batch in batches[:3]:
            _forward(model, batch)
        for batch in batches:
            start = time.perf_counter()
            _forward(model, batch)
            took.append(time.perf_counter() - start)
        out[f"{form}_model_only_ms_p50"] = 1000 * statistics.median(took)
    out["tokens_per_text_p50"] = statistics.median(len(tokenizer(t)["input_ids"]) for t in texts)
    out |= _int8_settings(models["onnx_int8"], texts)
    return out


def _int8_settings(model, texts: list[str]) -> dict:
    """The int8 graph's model call under other onnxruntime settings: 1 thread, and threads that spin."""
    import onnxruntime as ort

    out = {}
    for name, threads, spin in (("1_thread", 1, "0"), ("spinning", torch.get_num_threads(), "1")):
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.add_session_config_entry("session.intra_op.allow_spinning", spin)
        session = ort.InferenceSession(str(model.path), options, providers=["CPUExecutionProvider"])
        feeds = [{n: v.astype("int64") for n, v in model.encode([t]).items() if n in model.input_names} for t in texts]
        for feed in feeds[:3]:
            session.run(["logits"], feed)
        took = []
        for feed in feeds:
            start = time.perf_counter()
            session.run(["logits"], feed)
            took.append(time.perf_counter() - start)
        out[f"onnx_int8_model_only_{name}_ms_p50"] = 1000 * statistics.median(took)
        del session
    return out


@torch.no_grad()
def _forward(model, batch) -> None:
    model.label_logits(batch)


def label_part(run_dir: Path, *, repeats: int, latency_examples: int) -> tuple[list[dict], dict]:
    from kdistill import api
    from kdistill.data.prepare import prepare_data
    from kdistill.eval.labels import measure_cost
    from kdistill.export import load_export
    from kdistill.export.measure import label_row
    from kdistill.export.student import run_config
    from kdistill.models import load_saved
    from kdistill.teachers.signal import load_teachers

    cfg = run_config(run_dir)
    cfg = dataclasses.replace(cfg, evaluation=dataclasses.replace(cfg.evaluation, latency_examples=latency_examples))
    folders = {"onnx_fp32": api.export(run_dir, fmt="onnx", measure=False),
               "onnx_int8": api.export(run_dir, fmt="onnx-int8", measure=False)}
    parity = {form: json.loads((folder / "export.json").read_text())["parity"] for form, folder in folders.items()}
    data = prepare_data(cfg.data, cfg.task)
    test = data.test
    models = {"pytorch": load_saved(cfg.paths.exported_student),
              **{form: load_export(folder) for form, folder in folders.items()}}
    (teacher,) = load_teachers(cfg, data, progress=False).values()
    rows = {form: label_row(models[form], test, cfg, cfg.paths.exported_student if form == "pytorch"
                            else folders[form]) for form in models}  # quality + a first round of timing
    rounds = {form: [rows[form]] for form in models} | {"teacher": []}
    ev = cfg.evaluation
    settings = dict(latency_examples=latency_examples, throughput_batch_size=ev.throughput_batch_size,
                    throughput_batches=ev.throughput_batches, warmup_batches=ev.warmup_batches)
    for _ in range(repeats):
        for form in models:
            if len(rounds[form]) < repeats:
                rounds[form].append(_cost_row(measure_cost(models[form], test, **settings)))
        rounds["teacher"].append(_cost_row(measure_cost(teacher, test, **settings)))
    results = json.loads(cfg.paths.results.read_text())
    teacher_entry = results["models"]["teacher"]
    out = []
    for form in FORMS:
        if form == "teacher":
            quality, size = teacher_entry["metrics"]["macro_f1"], (teacher_entry["cost"]["size_on_disk_bytes"] or 0) / 1e6
        else:
            quality, size = rows[form]["quality"], rows[form]["size_mb"]
        out.append({"task": cfg.task.name, "form": form, "quality": quality, "quality_metric": "macro_f1",
                    **_median_row(rounds[form]), "size_mb": size})
    pytorch_predictions = rows["pytorch"]["predictions"]
    extra = {"run_dir": str(run_dir), "test_examples": len(test), "latency_examples": latency_examples,
             "repeats": repeats, "threads": torch.get_num_threads(), "parity_on_validation": parity,
             "test_agreement_with_pytorch": {form: sum(a == b for a, b in zip(pytorch_predictions,
                                                                            rows[form]["predictions"])) / len(test)
                                             for form in folders},
             "batch1_diagnostics": _batch1_diagnostics(models, [e.text for e in test[:latency_examples]])}
    return out, extra


def _gen_run(gen_run_dir: Path, latency_examples: int):
    """A bbc-summary run directory whose student is the pretrained 0.5B student (see the module docstring)."""
    from kdistill.config import dump_yaml, load_config
    from kdistill.io import atomic_write_text
    from kdistill.models.generative import GenStudent, load_causal_lm

    cfg = load_config("bbc-summary", {"output_dir": str(gen_run_dir.parent), "name": gen_run_dir.name,
                                      "evaluation.latency_examples": latency_examples})
    if not (cfg.paths.exported_student / "kdistill.json").exists():
        atomic_write_text(cfg.paths.config, dump_yaml(cfg))
        module, tokenizer = load_causal_lm(cfg.student, torch.device("cpu"))
        GenStudent(module, tokenizer, max_length=cfg.student.max_length, name=cfg.student.model).save(
            cfg.paths.exported_student)
    return cfg


def generation_part(gen_run_dir: Path, *, test_articles: int, parity_examples: int, latency_examples: int,
                    previous: dict | None = None) -> tuple[list[dict], dict]:
    """``previous`` (`--gen-reuse-teacher`): the teacher's references and row from an earlier run of this part,
    whose fp32 export is reused too; the three student forms are then timed again, in this run."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from kdistill import api
    from kdistill.data.gen_data import prepare_generation
    from kdistill.data.generative import prompt_text
    from kdistill.eval.labels import size_on_disk
    from kdistill.export import load_export
    from kdistill.export.measure import generation_row
    from kdistill.models import resolve_model_path
    from kdistill.models.generate import greedy_texts
    from kdistill.models.generative import load_causal_lm

    cfg = _gen_run(gen_run_dir, latency_examples)
    folders, parity = {}, {}
    for form, fmt in (("onnx_fp32", "onnx"), ("onnx_int8", "onnx-int8")):
        if previous and form == "onnx_fp32":
            folders[form], parity[form] = cfg.paths.exports(fmt), previous["parity_on_validation"][form]
            continue
        start = time.perf_counter()
        folders[form] = api.export(gen_run_dir, fmt=fmt, measure=False, parity_examples=parity_examples,
                                   min_agreement=0.0, max_quality_drop=1.0,
                                   max_logit_diff=float("inf"))  # reported here, judged below
        parity[form] = json.loads((folders[form] / "export.json").read_text())["parity"]
        parity[form]["export_seconds"] = time.perf_counter() - start
    test = prepare_generation(cfg.data, cfg.task).test[:test_articles]
    prompts = [prompt_text(cfg.task.prompt_template, e) for e in test]
    if previous:
        references = previous["outputs"]["teacher"]
        rows = {"teacher": {**previous["teacher_row"], "outputs": references}}
    else:
        teacher = load_causal_lm(cfg.teacher, torch.device("cpu"))
        references = greedy_texts(*teacher, prompts, max_new_tokens=cfg.task.max_new_tokens, stop=cfg.task.stop,
                                  max_length=cfg.student.max_length, batch_size=cfg.teacher.batch_size)
        rows = {"teacher": generation_row(*teacher, prompts, references, cfg, None, texts=references)}
        rows["teacher"]["size_mb"] = (size_on_disk(resolve_model_path(cfg.teacher.model)) or 0) / 1e6
        del teacher
    student = cfg.paths.exported_student
    tokenizer = AutoTokenizer.from_pretrained(student)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    module = AutoModelForCausalLM.from_pretrained(student, dtype=torch.float32).eval()
    rows["pytorch"] = generation_row(module, tokenizer, prompts, references, cfg, student)
    del module
    for form, folder in folders.items():
        rows[form] = generation_row(*load_export(folder), prompts, references, cfg, folder)
    out = [{"task": cfg.task.name, "form": form, "quality": rows[form]["quality"], "quality_metric": "rougeL",
            "p50_ms_batch1": rows[form]["p50_ms_batch1"], "p95_ms_batch1": rows[form]["p95_ms_batch1"],
            "per_s_batch32": None, "tokens_per_s": rows[form]["tokens_per_s"],
            "fixed_length_tokens_per_s": rows[form]["fixed_length_tokens_per_s"], "size_mb": rows[form]["size_mb"]}
           for form in FORMS]
    extra = {"gen_run_dir": str(gen_run_dir), "student": "pretrained " + cfg.student.model + " (no bbc-summary run)",
             "test_articles": len(test), "parity_on_validation": parity,
             "outputs": {form: rows[form]["outputs"] for form in FORMS}, "references": "the teacher's greedy outputs",
             "teacher_row": {k: v for k, v in rows["teacher"].items() if k != "outputs"},
             "teacher_timed": "in an earlier run of this part" if previous else "in this run"}
    return out, extra


def _fmt(value, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def write_markdown(results: dict) -> str:
    lines = ["# Export: the student as PyTorch fp32, ONNX fp32 and ONNX int8, beside the teacher", "",
             f"`python benchmarks/export.py` ({results['when']}); {results['machine']}. Source: "
             "[export.json](export.json).", "",
             "| task | form | quality | size MB | p50 ms (batch 1) | p95 ms (batch 1) | per s (batch 32) | tokens/s |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results["rows"]:
        lines.append(f"| {r['task']} | {r['form']} | {_fmt(r['quality'], '.4f')} ({r.get('quality_metric', '')}) | "
                     f"{_fmt(r['size_mb'], '.1f')} | {_fmt(r['p50_ms_batch1'], '.2f')} | "
                     f"{_fmt(r['p95_ms_batch1'], '.2f')} | {_fmt(r['per_s_batch32'], '.1f')} | "
                     f"{_fmt(r.get('tokens_per_s'), '.2f')} |")
    lines += [""] + [f"- {line}" for line in results.get("findings", [])]
    return "\n".join(lines) + "\n"


def findings(results: dict) -> list[str]:
    """The acceptance figures, computed from the rows."""
    out = []
    for task in dict.fromkeys(r["task"] for r in results["rows"]):
        by = {r["form"]: r for r in results["rows"] if r["task"] == task}
        base = by["pytorch"]
        for form in ("onnx_fp32", "onnx_int8"):
            r = by[form]
            delta = 100 * (r["quality"] - base["quality"]) if r["quality"] is not None else None
            speed = base["p50_ms_batch1"] / r["p50_ms_batch1"]
            tps = (r.get("tokens_per_s") or 0) / base["tokens_per_s"] if base.get("tokens_per_s") else None
            out.append(f"{task} {form}: quality {_fmt(delta, '+.2f')} points vs PyTorch, batch-1 p50 "
                       f"{speed:.2f}× PyTorch's" + (f", tokens/s {tps:.2f}× PyTorch's" if tps else ""))
    return out


def _previous_generation(rows: list[dict], details: dict) -> dict:
    """The last generation part's details, with its teacher row."""
    previous = details["generation"]
    teacher = next(r for r in rows if r["form"] == "teacher" and r.get("quality_metric") == "rougeL")
    return {**previous, "teacher_row": previous.get("teacher_row") or teacher}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", type=Path, help="a finished label-task run (the default job's)")
    parser.add_argument("--gen-run-dir", type=Path, help="bbc-summary run directory (written if absent)")
    parser.add_argument("--only", choices=["label", "generation"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--latency-examples", type=int, default=60)
    parser.add_argument("--gen-test", type=int, default=8, help="test articles of the generation part")
    parser.add_argument("--gen-parity", type=int, default=4, help="validation articles of its parity checks")
    parser.add_argument("--gen-latency", type=int, default=4, help="test articles timed one by one")
    parser.add_argument("--gen-reuse-teacher", action="store_true",
                        help="take the teacher's references and row (and the fp32 export) from the last results")
    args = parser.parse_args()
    path = RESULTS / "export.json"
    old = json.loads(path.read_text()) if path.exists() else {"rows": [], "details": {}}
    rows, details = list(old["rows"]), dict(old.get("details", {}))
    parts = [p for p in ("label", "generation") if args.only in (None, p)]
    if "label" in parts and args.run_dir:
        new, details["label"] = label_part(args.run_dir, repeats=args.repeats, latency_examples=args.latency_examples)
        rows = [r for r in rows if r["task"] != new[0]["task"]] + new
    if "generation" in parts and args.gen_run_dir:
        new, details["generation"] = generation_part(args.gen_run_dir, test_articles=args.gen_test,
                                                     parity_examples=args.gen_parity,
                                                     latency_examples=args.gen_latency,
                                                     previous=_previous_generation(rows, details)
                                                     if args.gen_reuse_teacher else None)
        rows = [r for r in rows if r["task"] != new[0]["task"]] + new
    import onnxruntime

    results = {"when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
               "machine": f"{torch.get_num_threads()} threads, torch {torch.__version__}, onnxruntime "
                          f"{onnxruntime.__version__}", "rows": rows, "details": details}
    results["findings"] = findings(results)
    from kdistill.io import atomic_write_json, atomic_write_text

    atomic_write_json(path, results)
    atomic_write_text(RESULTS / "export.md", write_markdown(results))
    print(write_markdown(results))


if __name__ == "__main__":
    main()
