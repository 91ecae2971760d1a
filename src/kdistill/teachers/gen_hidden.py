"""The hidden term of a generation task: each hidden teacher's pooled hidden states over the training
examples' prompt + target sequences, cached as `vectors` entries as the label path keeps its own.

    generation_pool(cfg)                                  -> how a sequence becomes one vector, on both sides
    hidden_inputs(cfg, train, targets, num_student_layers) -> per hidden teacher: its HiddenTarget (layer
                                                              pairs, width) and its pooled states by example id

The sequence is the one the student trains on (the prompt, then the target as its continuation, then EOS),
so with a shared tokenizer teacher and student pool the very same tokens. Each entry is keyed by the
teacher, its tokenizer, the prompt template, the target texts, the layers and the pooling: the first
teacher's written targets change the key when they change, and a teacher is loaded only for what it lacks.
"""

from __future__ import annotations

from typing import Any

from kdistill import distributed
from kdistill.cache.entry import TeacherCache
from kdistill.cache.keys import fingerprint, key_fields
from kdistill.cache.resumable import elicit_resumable
from kdistill.config import RunConfig, TeacherConfig
from kdistill.data.generative import prompt_text
from kdistill.data.records import GenExample
from kdistill.losses.objective import HiddenTarget, layer_pairs
from kdistill.models import pick_device, resolve_model_path
from kdistill.models.generative import load_causal_lm
from kdistill.models.token_rows import sequence_states
from kdistill.targets import TeacherTargets
from kdistill.teachers.elicit import tokenizer_fingerprint, weights_fingerprint
from kdistill.teachers.generation import GenTargets


def generation_pool(cfg: RunConfig) -> str:
    """objective.hidden.pool for a generation task: auto is the mean over real tokens, since the last token
    (the label path's causal-LM choice) is the same EOS in every example."""
    return "mean" if cfg.objective.hidden.pool == "auto" else cfg.objective.hidden.pool


def _shape(member: TeacherConfig) -> tuple[int, int]:
    """(layers, width) of a teacher, from its config alone: the weights need not be loaded."""
    from transformers import AutoConfig

    hf = AutoConfig.from_pretrained(resolve_model_path(member.model), revision=member.revision,
                                    trust_remote_code=member.trust_remote_code).get_text_config()
    return int(hf.num_hidden_layers), int(hf.hidden_size)


def _tokenizer(member: TeacherConfig) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve_model_path(member.model), revision=member.revision,
                                         trust_remote_code=member.trust_remote_code)


def teacher_states(cfg: RunConfig, member: TeacherConfig, examples: list[GenExample], targets: GenTargets,
                   layers: list[int], width: int, *, progress: bool = True) -> TeacherTargets:
    """(N, len(layers), width) pooled states of ``member`` over each example's prompt + target, from the cache
    or computed once (resumable, split over the processes of a launch)."""
    tokenizer, pool = _tokenizer(member), generation_pool(cfg)
    texts = {e.id: targets.target(e) for e in examples}
    entry = TeacherCache(cfg.paths.teacher_cache).entry(key_fields(
        kind="vectors", teacher=f"{member.model}@{member.revision or 'default'}",
        weights=weights_fingerprint(resolve_model_path(member.model)), tokenizer=tokenizer_fingerprint(tokenizer),
        prompt=fingerprint(cfg.task.prompt_template),
        data=fingerprint([(e.id, e.prompt, texts[e.id]) for e in examples]), example_ids=list(texts),
        shape=[len(layers), width], layers=layers, pool=pool, max_length=cfg.student.max_length,
        sequence="prompt, target as its continuation, EOS"))
    by_id, loaded = {e.id: e for e in examples}, []

    def compute(ids: list[str]):
        if not loaded:  # a teacher whose states are all cached is never loaded
            loaded.append(load_causal_lm(member, pick_device(cfg.training.device))[0])
        prompts = [prompt_text(cfg.task.prompt_template, by_id[i]) for i in ids]
        return sequence_states(loaded[0], tokenizer, prompts, [texts[i] for i in ids], layers=layers, pool=pool,
                               max_length=cfg.student.max_length, batch_size=member.batch_size).numpy()

    share = distributed.elicitation_share() if distributed.launched() else None
    elicit_resumable(entry, list(by_id), compute, shard_size=256, progress=progress, **(share or {}))
    return TeacherTargets(list(by_id), entry.vectors(list(by_id)))


def hidden_inputs(cfg: RunConfig, train: list[GenExample], targets: GenTargets, num_student_layers: int, *,
                  progress: bool = True) -> tuple[list[HiddenTarget], list[TeacherTargets]]:
    """For each teacher the hidden term aligns with (objective.hidden.teachers, else the first): its layer
    pairs with the student and its width, and its pooled states of the training examples."""
    hidden_targets, states = [], []
    for member in cfg.hidden_teachers:
        num_teacher_layers, width = _shape(member)
        pairs = layer_pairs(cfg.objective.hidden.layers, num_student_layers, num_teacher_layers)
        hidden_targets.append(HiddenTarget(member.display_name, pairs, width))
        states.append(teacher_states(cfg, member, train, targets, [t for _, t in pairs], width, progress=progress))
    return hidden_targets, states
