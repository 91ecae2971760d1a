"""Benchmark: what each teacher-budget strategy chose, read off the efficacy suite's runs (real models).

    python benchmarks/selection_analysis.py [--task sentiment] [--labels 200] [--runs benchmarks/runs/efficacy]

For every budget run of one task and label count that `benchmarks/efficacy.py` left in its run folder
(active, typical, random at 25 % and 50 % of the pool), the texts its rounds chose are compared with the
pool's gold labels (kept in the data, never shown to the student) and with the teacher's answers (read
from the suite's teacher cache): how often the teacher is right on them, their gold classes, their
length, how unsure the teacher is (its probability before recalibration), and how close each test text
is to its nearest chosen text in the student body's sentence space (all-MiniLM-L6-v2, unit vectors;
lower: the chosen texts cover the test). Each row also carries the run's median distilled macro-F1.
Writes benchmarks/results/selection_analysis.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

from kdistill.cache.entry import open_entry
from kdistill.config import load_config
from kdistill.io import atomic_write_json, atomic_write_text
from kdistill.models import resolve_model_path

HERE = Path(__file__).resolve().parent
CONFIGS = {"sentiment": "default", "sentiment3": "sentiment3"}
UNSURE = 0.6  # a teacher answer below this top probability counts as unsure (the pool's median is about 0.62)


def teacher_answers(store: Path, ids: set[str]) -> dict[str, torch.Tensor]:
    """Each id's teacher label probabilities, from whichever complete entry of the suite's cache holds it."""
    found: dict[str, torch.Tensor] = {}
    for folder in sorted(store.iterdir()):
        if not (folder / "manifest.json").exists():
            continue
        entry = open_entry(folder)
        wanted = [i for i in entry.ids() if i in ids and i not in found]
        if wanted:
            found.update(zip(wanted, entry.labels(wanted).float().exp()))  # the cache holds log-probs
    return found


def sentence_space(texts: list[str]) -> torch.Tensor:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(resolve_model_path("all-MiniLM-L6-v2"), device="cpu")
    return torch.tensor(model.encode(texts, batch_size=64, normalize_embeddings=True))


def analyse(task: str, n_labels: int, runs: Path) -> dict:
    from kdistill.data.prepare import prepare_data

    cfg = load_config(CONFIGS[task], {"data.num_labelled": n_labels})
    data = prepare_data(cfg.data, cfg.task)
    labels, pool = cfg.task.labels, {e.id: e for e in data.pool}
    answers = teacher_answers(runs / task / "teacher_cache", set(pool))
    order = list(pool)
    pool_nd = sentence_space([pool[i].text for i in order])
    test_nd = sentence_space([e.text for e in data.test])
    position = {i: n for n, i in enumerate(order)}
    cells = json.loads((runs / "partial.json").read_text(encoding="utf-8"))["cells"]

    def describe(name: str, chosen: list[str], method: str) -> dict:
        probs = torch.stack([answers[i] for i in chosen])
        chosen_nd = pool_nd[[position[i] for i in chosen]]
        f1 = [c["macro_f1"] for c in cells.values() if (c["task"], c["n_labels"], c["method"]) == (task, n_labels, method)]
        return {"method": name, "chosen": len(chosen),
                "teacher_right": sum(labels[int(p.argmax())] == pool[i].label for i, p in zip(chosen, probs)) / len(chosen),
                "gold_classes": {label: sum(pool[i].label == label for i in chosen) for label in labels},
                "median_chars": statistics.median(len(pool[i].text) for i in chosen),
                "teacher_unsure_share": float((probs.max(-1).values < UNSURE).float().mean()),
                "test_to_nearest_chosen": float((1 - test_nd @ chosen_nd.T).min(dim=1).values.median()),
                "distilled_macro_f1_median": statistics.median(f1) if f1 else None}

    rows = [describe("whole pool", order, "distilled_full")]
    for folder in sorted((runs / task / f"labels{n_labels}").glob("*_*")):
        record = folder / cfg.name / "selection" / "rounds.json"
        if record.exists():
            rounds = json.loads(record.read_text(encoding="utf-8"))["rounds"]
            rows.append(describe(folder.name, [i for r in rounds for i in r["chosen"]], folder.name))
    return {"task": task, "n_labels": n_labels, "pool": len(pool), "test": len(data.test), "rows": rows}


def markdown(summary: dict) -> str:
    lines = [f"# What each selection strategy chose: `{summary['task']}`, {summary['n_labels']} labels", "",
             f"Pool of {summary['pool']} texts without gold labels; {summary['test']} test texts. Teacher right: its "
             "answer equals the text's gold label. Unsure: the teacher's top probability (before recalibration) "
             f"below {UNSURE}. Test → nearest chosen: median cosine distance from a test text to the closest chosen "
             "text, in all-MiniLM-L6-v2's sentence space. Distilled macro-F1: the efficacy suite's median over seeds.",
             "", "| texts | chosen | teacher right | gold classes | median chars | teacher unsure | test → nearest "
             "chosen | distilled macro-F1 |", "|---|---|---|---|---|---|---|---|"]
    for r in summary["rows"]:
        f1 = "" if r["distilled_macro_f1_median"] is None else f"{r['distilled_macro_f1_median']:.3f}"
        classes = " / ".join(f"{k} {v}" for k, v in r["gold_classes"].items())
        lines.append(f"| {r['method']} | {r['chosen']} | {100 * r['teacher_right']:.1f} % | {classes} | "
                     f"{r['median_chars']:.0f} | {100 * r['teacher_unsure_share']:.1f} % | "
                     f"{r['test_to_nearest_chosen']:.3f} | {f1} |")
    return "\n".join(lines + [""])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="sentiment", choices=list(CONFIGS))
    parser.add_argument("--labels", type=int, default=200)
    parser.add_argument("--runs", default=str(HERE / "runs" / "efficacy"))
    args = parser.parse_args()
    summary = analyse(args.task, args.labels, Path(args.runs))
    atomic_write_json(HERE / "results" / "selection_analysis.json", summary)
    atomic_write_text(HERE / "results" / "selection_analysis.md", markdown(summary))


if __name__ == "__main__":
    main()
