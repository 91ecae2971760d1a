"""Benchmark: a Gemma-3-270m student made of every other teacher layer (18 -> 9), then briefly distilled.

    .venv/bin/python benchmarks/layer_subset_init.py [--steps 30] [--batch 8] [--lr 1e-4] [--train-embeddings]

Shrinks the built-in Gemma-3-270m with `shrink_model(..., "every-2", ...)`, reloads the result with plain
transformers, and distills it from the full teacher with token-level forward KL on Rotten Tomatoes
sentences (<= 64 tokens). Reports on 32 training and 32 held-out sentences, before and after training:
the KD loss, top-1 agreement with the teacher's next-token prediction and perplexity of the real next
token, plus a randomly initialized 9-layer student of the same shape as the baseline that layer-subset
initialization must beat. The teacher's logits are computed once per sentence and reused. By default the
tied embedding / head (168 M of the student's parameters, copied whole from the teacher) stays frozen, so
30 steps fit in minutes on 2 CPU cores. Writes benchmarks/results/layer_subset_init.{json,md}.
"""

from __future__ import annotations

import argparse
import csv
import functools
import math
import random
import resource
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from kdistill.assets import fetch_data_asset, model_dir
from kdistill.io import atomic_write_json, atomic_write_text
from kdistill.losses.chunked import chunked_token_loss
from kdistill.losses.divergences import divergence, token_mean
from kdistill.train.student_init import shrink_model

HERE = Path(__file__).resolve().parent
MAX_TOKENS = 64
NUM_TEXTS = 32


def sentences(seed: int = 0) -> tuple[list[str], list[str]]:
    """32 training and 32 held-out Rotten Tomatoes sentences, both labels mixed by a fixed shuffle."""
    with open(fetch_data_asset("rotten-tomatoes"), encoding="utf-8-sig", newline="") as f:
        texts = [text.strip() for _, text in csv.reader(f)]
    random.Random(seed).shuffle(texts)
    return texts[:NUM_TEXTS], texts[NUM_TEXTS: 2 * NUM_TEXTS]


@dataclass
class Split:
    """Tokenized batches with the teacher's logits on their real tokens, computed once and reused by every
    evaluation and training step (the teacher's 262,144-wide head is the costliest matmul here)."""

    batches: list[dict[str, torch.Tensor]]
    teacher_logits: list[torch.Tensor]  # per batch, (N, V) at the batch's real tokens
    teacher_perplexity: float


@torch.no_grad()
def split(teacher, tokenizer, texts: list[str], batch_size: int) -> Split:
    texts = sorted(texts, key=len)  # similar lengths per batch: less padding
    batches = [dict(tokenizer(texts[i: i + batch_size], return_tensors="pt", padding=True, truncation=True,
                              max_length=MAX_TOKENS)) for i in range(0, len(texts), batch_size)]
    logits, nll, count = [], 0.0, 0
    for batch in batches:
        logits_btv = teacher(**batch).logits
        logits.append(logits_btv.flatten(0, 1)[real_tokens(batch)])
        batch_nll, batch_count = next_token_nll(logits_btv, batch)
        nll, count = nll + batch_nll, count + batch_count
    return Split(batches, logits, math.exp(nll / count))


def real_tokens(batch) -> torch.Tensor:
    return batch["attention_mask"].flatten().bool()  # (B * T,)


def next_token_nll(logits_btv: torch.Tensor, batch) -> tuple[float, int]:
    """Summed -log p(real next token) and the number of such tokens."""
    next_real_bt = batch["attention_mask"][:, 1:].bool()  # (B, T-1)
    logp_btv = logits_btv[:, :-1].log_softmax(-1)
    nll_bt = -logp_btv.gather(-1, batch["input_ids"][:, 1:, None]).squeeze(-1)
    return nll_bt[next_real_bt].sum().item(), int(next_real_bt.sum())


def final_hidden(model, batch) -> torch.Tensor:
    """(B, T, H) last hidden state; Gemma-3-270m's logits are this times the tied embedding."""
    assert not model.config.final_logit_softcapping, "the chunked head would skip the soft-capping"
    return model.model(**batch).last_hidden_state


@torch.no_grad()
def evaluate(student, data: Split) -> dict[str, float]:
    """Token-averaged KD loss, top-1 agreement with the teacher, and the student's next-token perplexity."""
    student.eval()
    kd_sum = agree = num_tokens = nll_sum = num_next = 0
    for batch, teacher_logits_nv in zip(data.batches, data.teacher_logits):
        student_logits_btv = student(**batch).logits
        student_logits_nv = student_logits_btv.flatten(0, 1)[real_tokens(batch)]  # (N, V)
        kd_sum += divergence(student_logits_nv, teacher_logits_nv, kind="forward_kl").sum().item()
        agree += (student_logits_nv.argmax(-1) == teacher_logits_nv.argmax(-1)).sum().item()
        num_tokens += teacher_logits_nv.shape[0]
        batch_nll, batch_count = next_token_nll(student_logits_btv, batch)
        nll_sum, num_next = nll_sum + batch_nll, num_next + batch_count
    return {"kd_forward_kl": kd_sum / num_tokens, "top1_agreement": agree / num_tokens,
            "perplexity": math.exp(nll_sum / num_next), "tokens": num_tokens}


def distill(student, data: Split, *, steps: int, lr: float) -> list[float]:
    """Forward KL on every real token, one batch per step, through the chunked head (V = 262,144)."""
    kd = functools.partial(divergence, kind="forward_kl")
    trainable = [p for p in student.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=lr, weight_decay=0.0)
    head_vh = student.get_output_embeddings().weight  # (V, H), tied to the input embedding
    losses = []
    for step in range(steps):
        index = step % len(data.batches)
        batch, teacher_logits_nv = data.batches[index], data.teacher_logits[index]
        student.train()
        hidden_nh = final_hidden(student, batch).flatten(0, 1)[real_tokens(batch)]  # (N, H)
        loss = token_mean(chunked_token_loss(hidden_nh, head_vh, teacher_logits_nv, kd, chunk_tokens=64))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        print(f"step {step + 1:2d}/{steps}  kd {loss.item():.4f}", flush=True)
    return losses


def random_student(config):
    """The same 9-layer shape with transformers' own random initialization: the baseline to beat."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()


def load_shrunk(teacher_path: Path, spec: str):
    """shrink_model into a temporary folder, loaded back with plain transformers; and the seconds it took."""
    from transformers import AutoModelForCausalLM

    with tempfile.TemporaryDirectory() as tmp:
        clock = time.perf_counter()
        path = shrink_model(teacher_path, spec, Path(tmp) / "student")
        seconds = time.perf_counter() - clock
        return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32), seconds


def describe(teacher, student, spec: str, args) -> dict:
    return {"teacher": "gemma-3-270m", "layer_spec": spec,
            "teacher_layers": teacher.config.num_hidden_layers, "student_layers": student.config.num_hidden_layers,
            "student_layer_types": student.config.layer_types,
            "teacher_parameters": sum(p.numel() for p in teacher.parameters()),
            "student_parameters": sum(p.numel() for p in student.parameters()),
            "embedding_parameters": student.get_input_embeddings().weight.numel(),
            "trainable_parameters": sum(p.numel() for p in student.parameters() if p.requires_grad),
            "loads_with": "transformers.AutoModelForCausalLM.from_pretrained",
            "steps": args.steps, "batch": args.batch, "lr": args.lr,
            "optimizer": "AdamW" + (", all parameters" if args.train_embeddings else ", tied embedding frozen"),
            "threads": torch.get_num_threads()}


def compare_uniform(teacher_path: Path, train: Split, heldout: Split) -> dict:
    """The same size through 'uniform-9', which keeps the last layer, evaluated before any training."""
    student, _ = load_shrunk(teacher_path, "uniform-9")
    return {"layer_types": student.config.layer_types,
            "train": evaluate(student, train), "heldout": evaluate(student, heldout)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--train-embeddings", action="store_true",
                        help="also train the tied embedding / head (168 M parameters; slower)")
    args = parser.parse_args()
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    torch.manual_seed(0)
    started = time.perf_counter()
    teacher_path = model_dir("gemma-3-270m")
    student, shrink_s = load_shrunk(teacher_path, "every-2")
    teacher = AutoModelForCausalLM.from_pretrained(teacher_path, dtype=torch.float32).eval().requires_grad_(False)
    if not args.train_embeddings:
        student.get_input_embeddings().requires_grad_(False)  # tied: the head is frozen with it
    clock = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(teacher_path)
    train_texts, heldout_texts = sentences()
    train = split(teacher, tokenizer, train_texts, args.batch)
    heldout = split(teacher, tokenizer, heldout_texts, args.batch)
    result = describe(teacher, student, "every-2", args)
    result |= {"shrink_s": shrink_s, "teacher_logits_s": time.perf_counter() - clock,
               "texts": {"train": len(train_texts), "heldout": len(heldout_texts), "max_tokens": MAX_TOKENS,
                         "source": "rotten-tomatoes"},
               "teacher_perplexity": {"train": train.teacher_perplexity, "heldout": heldout.teacher_perplexity}}
    clock = time.perf_counter()
    result["random_init"] = {"train": evaluate(random_student(student.config), train)}
    result["uniform9_init"] = compare_uniform(teacher_path, train, heldout)
    result["before"] = {"train": evaluate(student, train), "heldout": evaluate(student, heldout)}
    eval_s = time.perf_counter() - clock
    clock = time.perf_counter()
    result["train_losses"] = distill(student, train, steps=args.steps, lr=args.lr)
    result["train_s"] = time.perf_counter() - clock
    clock = time.perf_counter()
    result["after"] = {"train": evaluate(student, train), "heldout": evaluate(student, heldout)}
    result["eval_s"] = eval_s + time.perf_counter() - clock
    result["total_s"] = time.perf_counter() - started
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result["kd_decreased"] = result["after"]["train"]["kd_forward_kl"] < result["before"]["train"]["kd_forward_kl"]
    write(result)


def write(result: dict) -> None:
    (HERE / "results").mkdir(exist_ok=True)
    atomic_write_json(HERE / "results" / "layer_subset_init.json", result)
    md = markdown(result)
    atomic_write_text(HERE / "results" / "layer_subset_init.md", md)
    print(md)


def markdown(r: dict) -> str:
    rows = [("random init (9 layers), before KD", r["random_init"]["train"], None),
            ("uniform-9 init, before KD", r["uniform9_init"]["train"], r["uniform9_init"]["heldout"]),
            ("every-2 init, before KD", r["before"]["train"], r["before"]["heldout"]),
            (f"every-2 init, after {r['steps']} KD steps", r["after"]["train"], r["after"]["heldout"])]
    lines = [
        "# Layer-subset student initialization: Gemma-3-270m, 18 -> 9 layers (every-2)", "",
        f"Teacher {r['teacher_parameters']:,} parameters, {r['teacher_layers']} layers; student "
        f"{r['student_parameters']:,} parameters, {r['student_layers']} layers (of which "
        f"{r['embedding_parameters']:,} are the tied embedding, kept whole). The student is saved with "
        f"`shrink_model` in {r['shrink_s']:.1f} s and loads with `{r['loads_with']}`.", "",
        f"Distillation: token-level forward KL (T = 1) against the full teacher on every real token, "
        f"{r['texts']['train']} Rotten Tomatoes sentences (<= {r['texts']['max_tokens']} tokens), batch {r['batch']}, "
        f"{r['steps']} steps of {r['optimizer']} ({r['trainable_parameters']:,} trainable parameters) at lr "
        f"{r['lr']:g}, {r['threads']} threads, fp32 on CPU: {r['train_s']:.0f} s (teacher logits, computed once: "
        f"{r['teacher_logits_s']:.0f} s; evaluations: {r['eval_s']:.0f} s). Evaluated on those sentences (train) "
        f"and {r['texts']['heldout']} others (held-out).",
        "",
        "| student | KD loss train | KD loss held-out | top-1 agreement train | top-1 agreement held-out "
        "| perplexity train | perplexity held-out |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, train, heldout in rows:
        lines.append(f"| {name} | {train['kd_forward_kl']:.3f} | {_cell(heldout, 'kd_forward_kl', '.3f')} "
                     f"| {train['top1_agreement']:.1%} | {_cell(heldout, 'top1_agreement', '.1%')} "
                     f"| {train['perplexity']:,.1f} | {_cell(heldout, 'perplexity', ',.1f')} |")
    lines.append(f"| teacher (18 layers) | 0 | 0 | 100% | 100% | {r['teacher_perplexity']['train']:,.1f} "
                 f"| {r['teacher_perplexity']['heldout']:,.1f} |")
    losses = r["train_losses"]
    kept_types = (r["student_layer_types"], r["uniform9_init"]["layer_types"])
    num_full = [types.count("full_attention") for types in kept_types]
    lines += ["", f"Training-batch KD loss: {losses[0]:.3f} at step 1, {losses[-1]:.3f} at step {len(losses)} "
                  f"(decreased on the training sentences: {'yes' if r['kd_decreased'] else 'NO'}). "
                  f"Total wall time {r['total_s']:.0f} s, peak resident memory {r['peak_rss_mb']:,.0f} MB.", "",
              f"every-2 keeps teacher layers 0, 2, ..., 16: not the last layer, and {num_full[0]} of the teacher's "
              f"3 full-attention layers (5, 11, 17); uniform-9 keeps 0, 2, 4, 6, 9, 11, 13, 15, 17, with "
              f"{num_full[1]} of them. Only every-2 was trained; the uniform-9 and random rows are starting points."]
    random_kd = r["random_init"]["train"]["kd_forward_kl"]
    untrained = {"every-2": r["before"]["train"]["kd_forward_kl"],
                 "uniform-9": r["uniform9_init"]["train"]["kd_forward_kl"]}
    worse = [name for name, kd in untrained.items() if kd > random_kd]
    if worse:
        lines += ["", f"Untrained, {' and '.join(worse)} {'is' if len(worse) == 1 else 'are'} further from the "
                      "teacher than a random initialization: half the layers, unchanged, give confident wrong "
                      f"predictions (KD loss {', '.join(f'{untrained[n]:.1f}' for n in worse)} vs {random_kd:.1f}). "
                      f"Training recovers it (every-2: {r['after']['train']['kd_forward_kl']:.1f} after "
                      f"{r['steps']} steps); a randomly initialized student trained the same way is not measured here."]
    return "\n".join(lines) + "\n"


def _cell(values: dict | None, key: str, fmt: str) -> str:
    return "–" if values is None else format(values[key], fmt)


if __name__ == "__main__":
    main()
