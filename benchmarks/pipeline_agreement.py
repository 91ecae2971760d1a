"""Benchmark: does the saved student answer in plain 🤗 transformers as `kdistill predict` (and the card) do?

    python benchmarks/pipeline_agreement.py RUN_DIR [--long 200] [--name pipeline_agreement]

Loads the run's exported student (RUN_DIR/student) with `transformers.pipeline("text-classification",
truncation=True)` and with `kdistill.api.predict`, on every test text of the run (its config.yaml and
data/splits.json), and counts the texts on which the two labels agree, the long ones (over the student's
max_length tokens) separately. The default job's test sentences all fit in 96 tokens, so ``--long N`` adds
N long texts, each a run of consecutive test texts joined until it is at least twice the student's
max_length: where truncation decides, the two must still agree. Writes benchmarks/results/<name>.json and .md.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

HERE = Path(__file__).resolve().parent


def joined(texts: list[str], count: int, long_enough) -> list[str]:
    """``count`` texts, each consecutive ``texts`` (wrapping around) joined until ``long_enough`` says so."""
    out, i = [], 0
    while len(out) < count and texts:
        parts = [texts[i % len(texts)]]
        while not long_enough(" ".join(parts)):
            i += 1
            parts.append(texts[i % len(texts)])
        out.append(" ".join(parts))
        i += 1
    return out


def main() -> None:
    from transformers import AutoTokenizer, pipeline

    from kdistill import api
    from kdistill.config import load_config
    from kdistill.data import prepare_data

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--long", type=int, default=200, help="long texts made of joined test texts")
    parser.add_argument("--name", default="pipeline_agreement")
    args = parser.parse_args()
    cfg = load_config(args.run_dir / "config.yaml")
    test_ids = set(json.loads((args.run_dir / "data" / "splits.json").read_text())["test"])
    texts = [e.text for e in prepare_data(cfg.data, cfg.task).test if e.id in test_ids]
    student = args.run_dir / "student"
    tokenizer = AutoTokenizer.from_pretrained(student)
    texts += joined(texts, args.long, lambda text: len(tokenizer(text)["input_ids"]) >= 2 * cfg.student.max_length)
    ours = [row["label"] for row in api.predict(student, texts)]
    plain = [row["label"] for row in pipeline("text-classification", model=str(student), truncation=True)(texts)]
    long = [len(tokenizer(t)["input_ids"]) > tokenizer.model_max_length for t in texts]
    agree = [a == b for a, b in zip(ours, plain)]
    summary = {"run_dir": str(args.run_dir), "test_texts": len(texts), "agree": sum(agree),
               "agreement": sum(agree) / len(texts), "long_texts": sum(long),
               "long_agree": sum(a for a, is_long in zip(agree, long) if is_long),
               "tokenizer_model_max_length": tokenizer.model_max_length, "student_max_length": cfg.student.max_length}
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / f"{args.name}.json").write_text(json.dumps(summary, indent=2) + "\n")
    lines = [f"# {args.name}: the saved student in `transformers.pipeline` against `kdistill predict`", "",
             f"On the {len(texts) - args.long} test texts of `{args.run_dir}` and {args.long} long texts joined from them: **{summary['agreement']:.1%}** agree "
             f"({sum(agree)} of {len(texts)}); of the {sum(long)} texts longer than the student's "
             f"{cfg.student.max_length} tokens, {summary['long_agree']} agree. The saved tokenizer's "
             f"model_max_length is {tokenizer.model_max_length}, so `pipeline(..., truncation=True)` cuts where "
             "training and `kdistill predict` cut."]
    (HERE / "results" / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
