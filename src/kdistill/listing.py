"""`kdistill ls`: what is built in (tasks, configs, models, data, losses, teacher sources)."""

from __future__ import annotations

import yaml

from kdistill.assets import ASSETS
from kdistill.config.builtin import builtin_configs, builtin_tasks
from kdistill.losses.objective import describe_terms

TEACHER_SOURCES = {
    "local": "an in-process transformers model (built-in name, local folder, .gguf file or hub id); "
             "causal LMs are prompted, encoders use their classification head",
    "finetuned": "finetune: true: an encoder kdistill fine-tunes on the task's labelled examples first",
    "endpoint": "endpoint: {base_url, api, api_key_env, top_logprobs, max_concurrency, timeout_s, max_retries, "
                "backoff_s, max_backoff_s, extra_body}: a model behind an OpenAI-compatible API (llama-server, "
                "vLLM, TGI, hosted); the key is read from $api_key_env and never written",
    "served": "endpoint: {serve: true, parallel, threads, ctx_per_slot, server_args}: kdistill starts llama-server "
              "on the teacher's .gguf (or built-in GGUF model) on a loopback port, sized to the machine, and stops it "
              "when the run ends; label and generation tasks",
}


def listing(what: str = "all") -> str:
    sections = {
        "tasks": {name: yaml.safe_load(p.read_text(encoding="utf-8"))["task"].get("description", "")
                  for name, p in builtin_tasks().items()},
        "configs": {name: (p.read_text(encoding="utf-8").splitlines() or [""])[0].lstrip("# ")
                    for name, p in builtin_configs().items()},
        "models": {a.name: f"{a.description} [{a.licence}]" for a in ASSETS.values() if a.kind == "model"},
        "data": {a.name: f"{a.description} [{a.licence}]" for a in ASSETS.values() if a.kind == "data"},
        "losses": describe_terms(),
        "teachers": TEACHER_SOURCES,
    }
    chosen = sections if what == "all" else {what: sections[what]}
    lines = []
    for title, entries in chosen.items():
        lines.append(f"{title}:")
        width = max(map(len, entries), default=0)  # the section's longest name sets its column
        lines += [f"  {name:<{width}}  {text}" for name, text in entries.items()]
    return "\n".join(lines)
