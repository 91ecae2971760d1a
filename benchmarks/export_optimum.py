"""Benchmark: do 🤗 Optimum and `transformers.pipeline` load a `kdistill export` folder and agree with
`kdistill predict`?

    python benchmarks/export_optimum.py expect EXPORT_DIR [EXPORT_DIR ...]   # kdistill's environment
    OTHER_ENV/bin/python benchmarks/export_optimum.py check                                   # optimum's env

optimum-onnx 0.1.0 (the registry's newest) requires transformers < 4.58, so it cannot be installed beside
kdistill's pinned transformers 5.23: the check runs in a second environment (`pip install torch==2.13.0
optimum-onnx onnxruntime`), which never imports kdistill. `expect` writes what `kdistill predict` says for
every test text of the run (label exports) or for the first `--gen-prompts` test texts (generation exports:
greedy outputs); `check` loads each folder with ORTModelForSequenceClassification in a
`pipeline("text-classification")`, or ORTModelForCausalLM's `generate` (greedy), and counts agreements.
Writes benchmarks/results/export_optimum.json and .md.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
EXPECTED = Path("/tmp/kdistill-export-optimum-expected.json")  # handed from one environment to the other


def expect(folders: list[Path], run_dir: Path | None, gen_prompts: int) -> None:
    from kdistill import api
    from kdistill.export.folder import metadata
    from kdistill.export.student import run_config

    out = {}
    for folder in folders:
        cfg = run_config(run_dir or folder.parent.parent)  # an export's default place: RUN/exports/<format>
        meta = metadata(folder)
        if meta["kind"] == "causal_lm_generator":
            from kdistill.data.gen_data import prepare_generation

            texts = [e.prompt for e in prepare_generation(cfg.data, cfg.task).test[:gen_prompts]]
            out[str(folder)] = {"kind": "generation", "texts": texts, "task": meta["task"],
                                "expected": [r["output"] for r in api.predict(folder, texts)]}
        else:
            from kdistill.data.prepare import prepare_data

            texts = [e.text for e in prepare_data(cfg.data, cfg.task).test]
            # one text at a time: int8 activations are quantized with the range of the whole batch, so with
            # dynamic int8 a text's label can depend on the texts batched with it (see `check`)
            out[str(folder)] = {"kind": "label", "texts": texts,
                                "expected": [api.predict(folder, [text])[0]["label"] for text in texts]}
    EXPECTED.write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {EXPECTED}")


def _label_check(folder: str, case: dict, batch_size: int = 1) -> list[str]:
    from optimum.onnxruntime import ORTModelForSequenceClassification
    from transformers import AutoTokenizer, pipeline

    model = ORTModelForSequenceClassification.from_pretrained(folder)
    classify = pipeline("text-classification", model=model, tokenizer=AutoTokenizer.from_pretrained(folder),
                        truncation=True)
    return [row["label"] for row in classify(case["texts"], batch_size=batch_size)]


def _generation_check(folder: str, case: dict) -> list[str]:
    from optimum.onnxruntime import ORTModelForCausalLM
    from transformers import AutoTokenizer

    model, tokenizer = ORTModelForCausalLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)
    task, outputs = case["task"], []
    tokenizer.truncation_side = "left"  # a long prompt loses its beginning, as kdistill's generation does
    ends = [i for i in {tokenizer.eos_token_id, tokenizer.pad_token_id} if i is not None]
    for text in case["texts"]:  # one at a time: no padding
        enc = tokenizer(task["prompt_template"].replace("{text}", text), return_tensors="pt",
                        return_token_type_ids=False, truncation=True,
                        max_length=task["max_length"] - task["max_new_tokens"])
        ids = model.generate(**enc, max_new_tokens=task["max_new_tokens"], do_sample=False, eos_token_id=ends)
        written = tokenizer.decode(ids[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
        cuts = [written.find(s) for s in task["stop"] if s and s in written]
        outputs.append((written[:min(cuts)] if cuts else written).strip())
    return outputs


def check() -> None:
    import onnxruntime
    import optimum.version
    import transformers

    cases = json.loads(EXPECTED.read_text(encoding="utf-8"))
    rows = []
    for folder, case in cases.items():
        got = (_label_check if case["kind"] == "label" else _generation_check)(folder, case)
        agree = sum(a == b for a, b in zip(got, case["expected"]))
        row = {"export": folder, "kind": case["kind"], "texts": len(got), "agree": agree, "agreement": agree / len(got)}
        if case["kind"] == "label":  # the same texts in batches of 32: padding and the batch's activation range
            batched = _label_check(folder, case, batch_size=32)
            row["agree_batch32"] = sum(a == b for a, b in zip(batched, case["expected"]))
        rows.append(row)
    versions = {"transformers": transformers.__version__, "optimum": optimum.version.__version__,
                "onnxruntime": onnxruntime.__version__, "python": sys.version.split()[0]}
    results = {"rows": rows, "versions": versions}
    (HERE / "results" / "export_optimum.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    lines = ["# Optimum and pipeline load kdistill's exports and agree with `kdistill predict`", "",
             "`python benchmarks/export_optimum.py expect ...` then `check` in a second environment "
             f"({', '.join(f'{k} {v}' for k, v in versions.items())}). Source: "
             "[export_optimum.json](export_optimum.json).", "",
             "Both sides take one text at a time; the last column batches the pipeline's texts by 32 (kdistill's "
             "side still one at a time).", "",
             "| export | kind | texts | same answer as kdistill predict | same, pipeline at batch 32 |",
             "|---|---|---|---|---|"]
    lines += [f"| {Path(r['export']).parent.parent.name}/{Path(r['export']).name} | {r['kind']} | {r['texts']} | "
              f"{r['agree']} ({100 * r['agreement']:.1f} %) | {r.get('agree_batch32', '–')} |" for r in rows]
    (HERE / "results" / "export_optimum.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["expect", "check"])
    parser.add_argument("folders", nargs="*", type=Path)
    parser.add_argument("--run-dir", type=Path, help="the run the exports are of (default: the folder two up)")
    parser.add_argument("--gen-prompts", type=int, default=4)
    args = parser.parse_args()
    if args.mode == "expect":
        expect(args.folders, args.run_dir, args.gen_prompts)
    else:
        check()


if __name__ == "__main__":
    main()
