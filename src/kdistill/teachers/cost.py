"""What asking the teachers cost a run: calls, prompt tokens and wall seconds, per teacher and in all.

A call is one text a teacher computed an answer for, for this run directory; each member of an ensemble
counts for itself. An answer read back from the teacher cache (or an endpoint's journal) is not a call: it
cost nothing this time. The counts are summed over every command that elicited into the run directory, so
a run killed and resumed counts each text it asked once (the cache keeps what the killed run asked).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kdistill.config import TeacherConfig
from kdistill.io import atomic_write_json
from kdistill.models import LabelModel

CALLS_NOTE = ("calls = texts a teacher computed an answer for, for this run (every ensemble member counted); "
              "answers read from the teacher cache are not calls")


def prompt_tokens(model: LabelModel, member: TeacherConfig, texts: list[str],
                  usage_before: dict[str, Any] | None) -> tuple[int | None, str | None]:
    """(prompt tokens of the calls on ``texts``, where the count comes from). A local teacher's tokenizer counts
    each whole prompt (few-shot prefix and template included: what a paid API bills; in-process the prefix is
    computed once). An endpoint's count is the server's own `usage`, None where a reply carried none."""
    if model.kind == "endpoint":
        before, after = usage_before or {}, model.stats()
        if after["replies_without_usage"] > before.get("replies_without_usage", 0):
            return None, None
        return after["prompt_tokens"] - before.get("prompt_tokens", 0), "endpoint usage"
    if model.tokenizer is None:
        return None, None
    as_prompt = getattr(model, "prompt", lambda text: member.input_template.replace("{text}", text))
    ids = model.tokenizer([as_prompt(t) for t in texts])["input_ids"]
    return sum(len(row) for row in ids), "teacher tokenizer"


def record_calls(path: Path, teacher: str, *, calls: int, tokens: int | None, tokens_source: str | None,
                 seconds: float) -> None:
    """Add one elicitation's calls to the run's record (read, add, written atomically; the main process only)."""
    record = read_calls(path)
    member = record.setdefault(teacher, {"calls": 0, "prompt_tokens": 0, "prompt_tokens_source": tokens_source,
                                         "seconds": 0.0})
    member["calls"] += calls
    member["seconds"] += seconds
    if tokens is None or member["prompt_tokens"] is None:  # one uncounted call makes the sum unknown
        member["prompt_tokens"] = None
    else:
        member["prompt_tokens"] += tokens
    member["prompt_tokens_source"] = member["prompt_tokens_source"] or tokens_source
    atomic_write_json(path, {"teachers": record})


def read_calls(path: Path) -> dict[str, dict[str, Any]]:
    """teacher name → its summed calls, prompt tokens and seconds; {} before any call was recorded."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))["teachers"]
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def teacher_cost(path: Path, answered: dict[str, int]) -> dict[str, Any]:
    """results.json's `teacher_cost`: per teacher (``answered``: teacher name → texts whose answers the run
    uses) its calls, the answers that came from the cache, prompt tokens and seconds; and their total."""
    calls = read_calls(path)
    members = {}
    for name, num_answered in answered.items():
        made = calls.get(name, {"calls": 0, "prompt_tokens": 0, "prompt_tokens_source": None, "seconds": 0.0})
        members[name] = {"texts_answered": num_answered, **made,
                         "from_cache": max(num_answered - made["calls"], 0)}
    tokens = [m["prompt_tokens"] for m in members.values()]
    total = {key: sum(m[key] for m in members.values()) for key in ("texts_answered", "calls", "from_cache", "seconds")}
    total["prompt_tokens"] = None if None in tokens else sum(tokens)
    return {"teachers": members, "total": total, "note": CALLS_NOTE}
