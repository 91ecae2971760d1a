"""Benchmark: what only a CUDA GPU can check — bf16 training, the chunked KD loss at scale, CPU/GPU equality, generation.

    python benchmarks/gpu_check.py [--sections training chunked equality generation] [--out DIR]
    python benchmarks/gpu_check.py --allow-cpu --tiny --out /tmp/x     # dry run of every section on the CPU

Sections (each timed; the whole check takes a few minutes on one H100/H200):

training    the default job's distilled student trained by the real pipeline (`kdistill.api.train`) with
            training.mixed_precision bf16 and again with no autocast, same seed: the autocast dtype the
            label step used, the training losses of both, wall time. The GPU machine has no network and no
            prepared assets, so the models are built here with random weights: a student of MiniLM-L6's
            shape (6 layers, hidden 384, 12 heads, vocab 30,522; the default job's student is this
            architecture, pretrained) and a tiny Llama teacher, on synthetic sentiment texts. The JSON says so.
chunked     the chunked token-level KD loss against the naive one on the GPU, N = 16,384 tokens,
            V = 151,936, H = 896: ms per token (median of 3) and peak CUDA memory above the inputs; the
            naive loss, if it does not fit, again at N / 4.
equality    the same inputs in float32 (TF32 off) on the CPU and on the GPU: values and gradients of the chunked
            loss (forward KL dense and top-k, JSD, CE) and of the naive forward KL, relative differences.
generation  greedy generation by a causal LM of Qwen2.5-0.5B's shape (random weights, bf16), in process with
            transformers' generate: new tokens per second at batch 1 and 8.

Without CUDA it refuses with one line and exit status 2, unless --allow-cpu (then every size is tiny). Writes
<out>/gpu_check.json and .md (default benchmarks/results/); the exit status is 1 if any section failed.
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
import statistics
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from kdistill.io import atomic_write_text
from kdistill.losses.chunked import chunked_token_loss
from kdistill.losses.divergences import SparseTargets, divergence, token_mean
from kdistill.losses.terms import cross_entropy

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))  # the tests' synthetic task: the same tiny models, one definition
from synthetic import make_texts, word_tokenizer  # noqa: E402

SECTIONS = ("training", "chunked", "equality", "generation")


@dataclass(frozen=True)
class Sizes:
    """Every size the check uses; `FULL` on a GPU, `TINY` for a dry run."""

    student_layers: int = 6  # MiniLM-L6's shape
    student_hidden: int = 384
    student_heads: int = 12
    student_vocab: int = 30_522
    train_examples: int = 1200
    epochs: int = 2
    chunk_tokens_n: int = 16_384  # the chunked-loss section's tokens
    vocab: int = 151_936
    hidden: int = 896
    chunk_sizes: tuple[int, ...] = (32, 256, 1024)
    equality_tokens: int = 256
    gen_layers: int = 24  # Qwen2.5-0.5B's shape
    gen_hidden: int = 896
    gen_heads: int = 14
    gen_kv_heads: int = 2
    gen_intermediate: int = 4864
    gen_prompt_tokens: int = 64
    gen_new_tokens: int = 128
    repeats: int = 3


FULL = Sizes()
TINY = Sizes(student_layers=2, student_hidden=32, student_heads=4, student_vocab=100, train_examples=96, epochs=1,
             chunk_tokens_n=96, vocab=500, hidden=16, chunk_sizes=(8, 32), equality_tokens=24, gen_layers=2,
             gen_hidden=32, gen_heads=4, gen_kv_heads=2, gen_intermediate=64, gen_prompt_tokens=8, gen_new_tokens=8,
             repeats=1)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_seconds(fn, device: torch.device, repeats: int) -> float:
    fn()  # warm-up: kernels, allocator
    seconds = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds)


# ---- training: the default job's objective and settings, bf16 autocast against none ----------------------------

def _save_models(root: Path, sizes: Sizes) -> tuple[Path, Path]:
    from transformers import BertConfig, BertModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    tokenizer = word_tokenizer("encoder")
    student = BertModel(BertConfig(vocab_size=sizes.student_vocab, hidden_size=sizes.student_hidden,
                                   num_hidden_layers=sizes.student_layers, num_attention_heads=sizes.student_heads,
                                   intermediate_size=4 * sizes.student_hidden, max_position_embeddings=512,
                                   pad_token_id=tokenizer.pad_token_id))
    student.save_pretrained(root / "student")
    tokenizer.save_pretrained(root / "student")
    tokenizer = word_tokenizer("lm")
    teacher = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                           num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                           max_position_embeddings=512, pad_token_id=tokenizer.pad_token_id,
                                           bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id))
    teacher.save_pretrained(root / "teacher")
    tokenizer.save_pretrained(root / "teacher")
    return root / "student", root / "teacher"


def _train_config(root: Path, student: Path, teacher: Path, sizes: Sizes, device: torch.device, precision: str):
    import csv

    from kdistill.config import RunConfig, from_dict

    data = root / "reviews.csv"
    if not data.exists():
        with open(data, "w", newline="", encoding="utf-8") as f:
            csv.writer(f).writerows([("text", "label"), *make_texts(sizes.train_examples, filler=6)])
    default_job = {  # benchmarks' copy of configs/default.yaml's objective and training sections
        "objective": {"ce": {"weight": 0.5}, "kd": {"weight": 0.5, "divergence": "forward_kl", "temperature": 2.0}},
        "training": {"epochs": sizes.epochs, "batch_size": 32, "learning_rate": 2.0e-4, "early_stopping_patience": 3,
                     "checkpoint_every_steps": 0, "mixed_precision": precision, "device": device.type},
    }
    return from_dict(RunConfig, {
        "name": "gpu-check", "output_dir": str(root / f"runs-{precision}"),
        "task": {"name": "synthetic-sentiment", "labels": ["negative", "positive"],
                 "prompt_template": "Review: {text} Sentiment? Answer:",
                 "verbalizers": {"negative": " negative", "positive": " positive"}},
        "data": {"source": "csv", "path": str(data), "num_labelled": sizes.train_examples // 6,
                 "validation_fraction": 0.1, "test_fraction": 0.3},
        "teacher": {"model": str(teacher), "few_shot_per_label": 1, "calibrate": True, "batch_size": 32},
        "student": {"model": str(student), "max_length": 96, "batch_size": 64},
        "evaluation": {"seeds": [0]},
        **default_job,
    })


def training(device: torch.device, sizes: Sizes) -> dict:
    import kdistill.train.label_steps as label_steps
    from kdistill import api

    seen_dtypes: set[str] = set()
    autocast = label_steps.autocast

    def spy(dev, mode):  # which autocast the label step really entered
        context = autocast(dev, mode)
        seen_dtypes.add(str(getattr(context, "fast_dtype", "none")))
        return context

    runs = {}
    with tempfile.TemporaryDirectory(prefix="kdistill-gpu-check-") as tmp:
        root = Path(tmp)
        student, teacher = _save_models(root, sizes)
        label_steps.autocast = spy
        try:
            for precision in ("bf16", "no"):
                seen_dtypes.clear()
                records: list[dict] = []
                cfg = _train_config(root, student, teacher, sizes, device, precision)
                start = time.perf_counter()
                api.train(cfg, variant="distilled", seed=0, progress=False, on_record=records.append)
                terms = [(r["train_ce"], r["train_kd"]) for r in records if "train_ce" in r and "train_kd" in r]
                val = [r["val_macro_f1"] for r in records if "val_macro_f1" in r]
                runs[precision] = {"wall_s": time.perf_counter() - start, "autocast_dtypes": sorted(seen_dtypes),
                                   "train_ce_kd": terms, "last_val_macro_f1": val[-1] if val else None,
                                   "records": records}
        finally:
            label_steps.autocast = autocast
    bf16, fp32 = runs["bf16"]["train_ce_kd"], runs["no"]["train_ce_kd"]
    # the same seed and batches: the two runs' logged terms differ only by bf16's rounding
    gap = max(abs(a - b) for pa, pb in zip(bf16, fp32) for a, b in zip(pa, pb)) if bf16 and fp32 else None
    return {"models": "random weights: a MiniLM-L6-shaped BERT student (the default job's architecture, not its "
                      "pretrained weights) and a 2-layer Llama teacher, on synthetic texts; no download, no "
                      "prepared assets" if sizes == FULL else "tiny random models on synthetic texts (dry run)",
            "runs": runs, "max_term_gap_bf16_vs_fp32": gap,
            "ok": bool(bf16) and all(_finite(x) for pair in bf16 for x in pair) and runs["bf16"]["autocast_dtypes"] == ["torch.bfloat16"]}


def _finite(x: float) -> bool:
    return x == x and abs(x) != float("inf")


# ---- chunked: the chunked loss against naive at scale -----------------------------------------------------------

def _loss_inputs(tokens: int, vocab: int, hidden: int, device: torch.device, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    hidden_nh = torch.randn(tokens, hidden, generator=gen)
    lm_head_vh = torch.randn(vocab, hidden, generator=gen).mul_(hidden**-0.5)
    teacher_hidden_nh, teacher_head_vh = (torch.randn(n, hidden, generator=gen).to(device) for n in (tokens, vocab))
    teacher_nv = (teacher_hidden_nh @ teacher_head_vh.T).mul_(2.0 * hidden**-0.5)  # (N, V) logits, std ~2, made on
    return hidden_nh.to(device), lm_head_vh.to(device), teacher_nv  # the device (on 16 CPU cores: a minute at N = 16k)


def _time_and_memory(loss, hidden_nh, lm_head_vh, device, repeats) -> dict:
    """ms per token (median) and peak memory above the inputs, less the two gradients every variant returns."""
    h, w = hidden_nh.clone().requires_grad_(), lm_head_vh.clone().requires_grad_()

    def step():
        h.grad = w.grad = None
        value = loss(h, w)
        value.backward()
        return value

    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        baseline = torch.cuda.memory_allocated(device)
    seconds = _median_seconds(step, device, repeats)
    out = {"tokens": h.shape[0], "ms_per_token": 1000 * seconds / h.shape[0], "loss": float(step().detach())}
    if device.type == "cuda":
        grads = sum(t.numel() * t.element_size() for t in (h, w))
        above = torch.cuda.max_memory_allocated(device) - baseline
        out |= {"peak_above_inputs_mb": above / 2**20, "working_kb_per_token": (above - grads) / 1024 / h.shape[0]}
    return out


def chunked(device: torch.device, sizes: Sizes) -> dict:
    forward_kl = functools.partial(divergence, kind="forward_kl")
    hidden_nh, lm_head_vh, teacher_nv = _loss_inputs(sizes.chunk_tokens_n, sizes.vocab, sizes.hidden, device)
    rows = {}
    for chunk in sizes.chunk_sizes:
        def loss(h, w, chunk=chunk):
            return token_mean(chunked_token_loss(h, w, teacher_nv, forward_kl, chunk_tokens=chunk))
        rows[f"chunked:{chunk}"] = _time_and_memory(loss, hidden_nh, lm_head_vh, device, sizes.repeats)
    for tokens in (sizes.chunk_tokens_n, sizes.chunk_tokens_n // 4):
        try:
            def naive(h, w, tokens=tokens):
                return token_mean(forward_kl(h @ w.T, teacher_nv[:tokens]))  # (N, V) logits at once
            rows["naive"] = _time_and_memory(naive, hidden_nh[:tokens], lm_head_vh, device, sizes.repeats)
            break
        except torch.OutOfMemoryError as err:
            rows[f"naive@{tokens}"] = {"error": f"out of memory: {str(err).splitlines()[0]}"}
            torch.cuda.empty_cache()
    naive = rows.get("naive", {})
    for row in rows.values():
        if "ms_per_token" in row and "ms_per_token" in naive:
            row["time_vs_naive"] = row["ms_per_token"] / naive["ms_per_token"]
    same = [r["loss"] for r in rows.values() if r.get("tokens") == sizes.chunk_tokens_n]
    return {"tokens": sizes.chunk_tokens_n, "vocab": sizes.vocab, "hidden": sizes.hidden, "variants": rows,
            "loss_spread": max(same) - min(same), "ok": "naive" in rows and max(same) - min(same) <= 1e-4}


# ---- equality: CPU and GPU, float32 ----------------------------------------------------------------------------

def _values_and_grads(loss_fn, targets, hidden_nh, lm_head_vh, *, chunked_loss: bool):
    h, w = hidden_nh.clone().requires_grad_(), lm_head_vh.clone().requires_grad_()
    values = chunked_token_loss(h, w, targets, loss_fn, chunk_tokens=32) if chunked_loss else loss_fn(h @ w.T, targets)
    token_mean(values).backward()
    return [t.detach().double().cpu() for t in (values, h.grad, w.grad)]


def equality(device: torch.device, sizes: Sizes) -> dict:
    matmul_tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False  # float32 means float32 here
    try:
        hidden_nh, lm_head_vh, teacher_nv = _loss_inputs(sizes.equality_tokens, sizes.vocab, sizes.hidden, torch.device("cpu"), 1)
        labels_n = torch.randint(0, sizes.vocab, (sizes.equality_tokens,), generator=torch.Generator().manual_seed(2))
        sparse = SparseTargets.from_logits(teacher_nv, 64)
        cases = {"chunked forward_kl dense": (functools.partial(divergence, kind="forward_kl"), teacher_nv, True),
                 "chunked forward_kl top-64": (functools.partial(divergence, kind="forward_kl", temperature=2.0),
                                               sparse, True),
                 "chunked jsd dense": (functools.partial(divergence, kind="jsd", beta=0.5), teacher_nv, True),
                 "chunked ce": (cross_entropy, labels_n, True),
                 "naive forward_kl dense": (functools.partial(divergence, kind="forward_kl"), teacher_nv, False)}
        rows = {}
        for name, (loss_fn, targets, is_chunked) in cases.items():
            on_device = targets.to(device) if isinstance(targets, torch.Tensor) else SparseTargets(
                targets.token_ids.to(device), targets.logprobs.to(device), targets.tail_logmass.to(device),
                targets.stored_temperature)
            cpu = _values_and_grads(loss_fn, targets, hidden_nh, lm_head_vh, chunked_loss=is_chunked)
            gpu = _values_and_grads(loss_fn, on_device, hidden_nh.to(device), lm_head_vh.to(device),
                                    chunked_loss=is_chunked)
            rows[name] = {part: ((g - c).norm() / c.norm().clamp(min=1e-30)).item()
                          for part, c, g in zip(("values", "grad_hidden", "grad_lm_head"), cpu, gpu)}
    finally:
        torch.backends.cuda.matmul.allow_tf32 = matmul_tf32
    worst = max(max(r.values()) for r in rows.values())
    return {"tokens": sizes.equality_tokens, "relative_differences": rows, "max": worst, "ok": worst <= 1e-5}


# ---- generation: tokens per second of a small causal LM, in process ------------------------------------------------

def generation(device: torch.device, sizes: Sizes) -> dict:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(vocab_size=sizes.vocab, hidden_size=sizes.gen_hidden, intermediate_size=sizes.gen_intermediate,
                         num_hidden_layers=sizes.gen_layers, num_attention_heads=sizes.gen_heads,
                         num_key_value_heads=sizes.gen_kv_heads, max_position_embeddings=4096, tie_word_embeddings=True)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    torch.manual_seed(0)
    with torch.device(device):  # initialised where it runs: no half-minute of CPU init for 0.5B weights
        model = Qwen2ForCausalLM(config).to(dtype).eval()
    rows = {}
    for batch in (1, 8):
        prompt = torch.randint(0, sizes.vocab, (batch, sizes.gen_prompt_tokens), device=device)
        generate = functools.partial(model.generate, prompt, attention_mask=torch.ones_like(prompt), do_sample=False,
                                     max_new_tokens=sizes.gen_new_tokens, min_new_tokens=sizes.gen_new_tokens,
                                     eos_token_id=None, pad_token_id=0)
        with torch.no_grad():
            seconds = _median_seconds(generate, device, sizes.repeats)
            new_tokens = generate().shape[1] - sizes.gen_prompt_tokens
        rows[f"batch_{batch}"] = {"new_tokens": new_tokens, "seconds": seconds,
                                  "tokens_per_s": batch * new_tokens / seconds}
    return {"model": f"Qwen2 architecture, {sum(p.numel() for p in model.parameters()) / 1e6:.0f} M parameters, "
                     f"random weights, {str(dtype).removeprefix('torch.')}, transformers generate (greedy, KV cache)",
            "prompt_tokens": sizes.gen_prompt_tokens, "rows": rows,
            "ok": all(r["new_tokens"] == sizes.gen_new_tokens for r in rows.values())}


# ---- report ----------------------------------------------------------------------------------------------------

def _markdown(result: dict) -> str:
    md = ["# GPU check", "", f"{result['device']}; torch {result['torch']}, CUDA {result['cuda']}; "
          f"{result['total_s']:.0f} s in all; sizes: {'tiny (dry run)' if result['tiny'] else 'full'}.", ""]
    s = result["sections"]
    for name, sec in s.items():
        status = "error: " + sec["error"].splitlines()[0] if "error" in sec else ("ok" if sec.get("ok") else "FAILED")
        md.append(f"- **{name}** ({sec.get('seconds', 0):.0f} s): {status}")
    if "runs" in s.get("training", {}):
        t = s["training"]
        md += ["", "## bf16 training", "", t["models"] + ".", "",
               "| precision | autocast dtype | wall s | train CE, KD: first | last | last val macro-F1 |",
               "|---|---|---|---|---|---|"]
        for precision, run in t["runs"].items():
            terms = run["train_ce_kd"] or [(float("nan"),) * 2]
            md.append(f"| {precision} | {', '.join(run['autocast_dtypes'])} | {run['wall_s']:.1f} | "
                      f"{terms[0][0]:.4f}, {terms[0][1]:.4f} | {terms[-1][0]:.4f}, {terms[-1][1]:.4f} | "
                      f"{run['last_val_macro_f1']} |")
        md += ["", f"Largest difference of a logged term, bf16 vs fp32: {t['max_term_gap_bf16_vs_fp32']}."]
    if "variants" in s.get("chunked", {}):
        c = s["chunked"]
        md += ["", f"## Chunked KD loss on the GPU (N = {c['tokens']:,}, V = {c['vocab']:,}, H = {c['hidden']})", "",
               "| variant | tokens | ms/token | time vs naive | peak above inputs, MB | working KB/token |",
               "|---|---|---|---|---|---|"]
        for name, r in c["variants"].items():
            if "error" in r:
                md.append(f"| {name} | — | — | — | {r['error'][:80]} | — |")
                continue
            md.append(f"| {name} | {r['tokens']:,} | {r['ms_per_token']:.4f} | {r.get('time_vs_naive', 0):.2f}x | "
                      f"{r.get('peak_above_inputs_mb', float('nan')):,.0f} | {r.get('working_kb_per_token', float('nan')):,.1f} |")
    if "relative_differences" in s.get("equality", {}):
        md += ["", "## CPU vs GPU, float32 (TF32 off): |GPU - CPU| / |CPU|", "",
               "| loss | values | grad hidden | grad lm_head |", "|---|---|---|---|"]
        for name, r in s["equality"]["relative_differences"].items():
            md.append(f"| {name} | {r['values']:.1e} | {r['grad_hidden']:.1e} | {r['grad_lm_head']:.1e} |")
    if "rows" in s.get("generation", {}):
        g = s["generation"]
        md += ["", "## Generation", "", g["model"] + f"; prompt {g['prompt_tokens']} tokens.", ""]
        md += [f"- {name}: {r['tokens_per_s']:,.0f} new tokens/s ({r['new_tokens']} tokens, {r['seconds']:.2f} s)"
               for name, r in g["rows"].items()]
    return "\n".join(md) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument("--allow-cpu", action="store_true", help="without CUDA, dry-run every section on the CPU")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes (implied on the CPU)")
    parser.add_argument("--out", type=Path, default=HERE / "results", help="folder for gpu_check.json and .md")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available() and not args.allow_cpu:
        print("gpu_check: no CUDA device here (torch.cuda.is_available() is False); run it on a machine with an "
              "NVIDIA GPU, or add --allow-cpu for a dry run at tiny sizes.", file=sys.stderr)
        return 2
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    sizes = TINY if args.tiny or device.type == "cpu" else FULL
    result = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.processor() or platform.machine()})",
              "torch": torch.__version__, "cuda": torch.version.cuda, "tiny": sizes == TINY, "sizes": asdict(sizes),
              "sections": {}}
    start = time.perf_counter()
    for name in args.sections:
        began = time.perf_counter()
        try:
            section = globals()[name](device, sizes)
        except Exception as err:  # one section's failure is reported, and the others still run
            section = {"error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()[-2000:], "ok": False}
        section["seconds"] = time.perf_counter() - began
        result["sections"][name] = section
        print(f"{name}: {'ok' if section.get('ok') else 'FAILED'} ({section['seconds']:.0f} s)", flush=True)
    result["total_s"] = time.perf_counter() - start
    result["ok"] = all(s.get("ok") for s in result["sections"].values())
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "gpu_check.json", json.dumps(result, indent=2) + "\n")
    atomic_write_text(args.out / "gpu_check.md", _markdown(result))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
