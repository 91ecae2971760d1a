"""The teacher of a generation task: loaded once, asked once, its answers kept in the teacher cache.

    load_causal_lm(model_cfg, device)              -> (module, tokenizer)
    teacher_targets(cfg, examples, module, tok, ...) -> GenTargets: per example, the target text and
                                                      the teacher's top-k + tail per target token

With `task.targets: teacher` the teacher first writes each target (greedy, or sampled with a seed:
sequence-level KD) and the cache keeps the text with its seed; then, data-given or teacher-written, the
teacher's distribution at every target token is kept as top-k log-probs plus the tail mass
(token-level KD). One cache entry of kind `tokens`, keyed by the teacher's weights and tokenizer, the
prompt template, the decoding settings, k and the examples, so any change asks the teacher again.

With `teachers` (an ensemble), the first teacher still writes the targets; every other teacher scores the
same training target tokens teacher-forced into an entry of its own (keyed by that teacher and the target
texts), so adding a teacher asks only the new one, and the students learn from their per-token mixture
(`TokenEnsemble`, `teachers.ensemble.token_mixture`). The teachers must share one tokenizer.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch

from kdistill import distributed
from kdistill.cache.entry import CacheEntry, TeacherCache, open_entry
from kdistill.cache.keys import fingerprint, key_fields
from kdistill.cache.resumable import elicit_resumable
from kdistill.cache.shard import TokenRow
from kdistill.config import RunConfig, TeacherConfig
from kdistill.data.gen_data import GenData
from kdistill.data.generative import prompt_text
from kdistill.data.records import GenExample
from kdistill.errors import KdistillError
from kdistill.losses.divergences import SparseTargets
from kdistill.losses.token_kd import ends_with_eos
from kdistill.models import pick_device, resolve_model_path
from kdistill.models.generate import generate
from kdistill.models.generative import load_causal_lm
from kdistill.models.token_rows import token_targets
from kdistill.teachers.elicit import tokenizer_fingerprint, weights_fingerprint
from kdistill.teachers.ensemble import token_confidence_weights, token_mixture

log = logging.getLogger(__name__)


@dataclass
class TokenEnsemble:
    """The other teachers of an ensemble: their rows on the training split's target tokens, one cache entry
    each (``entries``, in `teachers` order), mixed with the first teacher's rows token by token. ``weights_k``
    (K,) for mean and weighted; None for confidence, whose weights are each teacher's top probability there."""

    entries: list[CacheEntry]
    weights_k: torch.Tensor | None
    k: int
    vocab_sizes: list[int]
    info: dict[str, Any]

    def rows(self, first: SparseTargets, example_id: str) -> SparseTargets:
        members = [first, *(entry.tokens(example_id) for entry in self.entries)]
        weights = token_confidence_weights(members) if self.weights_k is None else self.weights_k
        return token_mixture(members, weights, k=self.k, vocab_size=self.vocab_sizes)


@dataclass
class GenTargets:
    """What the students learn from: each example's target text and the teacher's token rows (with an
    ensemble, the teachers' mixture)."""

    entry: CacheEntry
    written_by_teacher: bool
    eos_id: int | None = None
    ensemble: TokenEnsemble | None = None
    token_rows: bool = True
    """False when a served teacher's tokenizer differs and the user chose sequence-level KD: written targets only."""

    def target(self, example: GenExample) -> str:
        if not self.written_by_teacher:
            return example.target
        generation = self.entry.generation(example.id)
        if generation is None:
            raise KdistillError(f"teacher cache {self.entry.folder}: example {example.id} has no generation.")
        return generation[0]

    def where(self) -> str:
        """What was elicited and where it is kept (`kdistill elicit` prints it)."""
        held = "written targets and token rows" if self.written_by_teacher else "token rows"
        lines = [f"the teacher's {held} of {len(self.entry.ids())} examples are in {self.entry.folder}"]
        members = zip(self.ensemble.info["teachers"][1:], self.ensemble.entries) if self.ensemble else []
        lines += [f"teacher {name}'s token rows along them ({len(entry.ids())} training examples) are in "
                  f"{entry.folder}" for name, entry in members]  # an ensemble's other teachers
        return "\n".join(lines)

    def rows(self, example_id: str) -> SparseTargets:
        rows = self.entry.tokens(example_id)
        if self.ensemble is not None:  # mixed first: the written target still ends where the writer stopped
            rows = self.ensemble.rows(rows, example_id)
        return ends_with_eos(rows, self.eos_id) if self.written_by_teacher and self.eos_id is not None else rows


def _token_fields(cfg: RunConfig, member: TeacherConfig, tokenizer, vocab_size: int, examples: list[GenExample],
                  data: str, **elicitation: Any) -> dict[str, Any]:
    """The key fields of a teacher's token rows along the examples' prompt + target tokens."""
    task = cfg.task
    return key_fields(
        kind="tokens", teacher=f"{member.model}@{member.revision or 'default'}",
        weights=weights_fingerprint(resolve_model_path(member.model)), tokenizer=tokenizer_fingerprint(tokenizer),
        prompt=fingerprint([task.prompt_template, task.targets, task.stop]), data=data,
        example_ids=[e.id for e in examples], k=member.token_top_k, temperature=1.0, vocab_size=vocab_size,
        max_length=cfg.student.max_length,
        target_after_prompt="continuation: a space unless either side has one",  # the rows are along these tokens
        **elicitation)


def _entry(cfg: RunConfig, examples: list[GenExample], tokenizer, vocab_size: int) -> CacheEntry:
    t, task = cfg.teacher, cfg.task
    decoding = ({"sampling": True, "sampling_temperature": t.sampling_temperature, "top_p": t.top_p,
                 "seed": t.sampling_seed} if t.sampling else {"sampling": False})
    fields = _token_fields(
        cfg, t, tokenizer, vocab_size, examples, fingerprint([(e.id, e.prompt, e.target) for e in examples]),
        written_targets=decoding | {"max_new_tokens": task.max_new_tokens, "ends": "eos, pad, generation config eos"}
        if task.targets == "teacher" else None)
    return TeacherCache(cfg.paths.teacher_cache).entry(fields)


def donor_entries(entry: CacheEntry) -> list[CacheEntry]:
    """Complete entries of the same cache whose key differs from ``entry``'s only in the examples (data,
    example_ids), when the teacher writes its targets greedily: its summary of a prompt and the rows along
    it do not depend on which other prompts were asked, so a grown or re-split data set copies them instead
    of asking again. An example id is the hash of its prompt text. Sampled targets are not shared (a sample
    depends on its batch), nor data-given ones (the id does not cover the target)."""
    written = entry.fields.get("written_targets")
    if not written or written.get("sampling") or not entry.folder.parent.is_dir():
        return []
    same = lambda fields: {k: v for k, v in fields.items() if k not in ("data", "example_ids")}
    donors = []
    for folder in sorted(p for p in entry.folder.parent.iterdir() if p != entry.folder and p.is_dir()):
        try:
            other = open_entry(folder)
        except KdistillError:  # an unfinished or damaged folder is no donor
            continue
        if other.complete and same(other.fields) == same(entry.fields):
            donors.append(other)
    return donors


def _donated(donors: list[CacheEntry], ids: list[str]) -> dict[str, TokenRow]:
    rows = {}
    for donor in donors:
        held = set(donor.ids())
        for example_id in ids:
            if example_id in held and example_id not in rows:
                sparse, (text, seed) = donor.tokens(example_id), donor.generation(example_id)
                rows[example_id] = TokenRow(sparse.token_ids.numpy(), sparse.logprobs.numpy(),
                                            sparse.tail_logmass.numpy(), generation=text, seed=seed)
    return rows


def teacher_targets(cfg: RunConfig, examples: list[GenExample], module: torch.nn.Module, tokenizer, *,
                    progress: bool = True) -> GenTargets:
    """Targets for ``examples`` from the cache, asking the teacher only for what it lacks (resumable)."""
    t, task = cfg.teacher, cfg.task
    vocab_size = int(module.get_output_embeddings().weight.shape[0])
    entry = _entry(cfg, examples, tokenizer, vocab_size)
    by_id = {e.id: e for e in examples}
    donors = donor_entries(entry) if not entry.complete else []

    def compute(ids: list[str]) -> list[TokenRow]:
        reused = _donated(donors, ids)
        asked = [i for i in ids if i not in reused]
        if reused:
            log.info("teacher cache: %d of %d examples copied from an entry with the same teacher and settings",
                     len(reused), len(ids))
        rows = dict(zip(asked, _ask(asked))) if asked else {}
        return [reused[i] if i in reused else rows[i] for i in ids]

    def _ask(ids: list[str]) -> list[TokenRow]:
        chunk = [by_id[i] for i in ids]
        prompts = [prompt_text(task.prompt_template, e) for e in chunk]
        if task.targets == "teacher":
            written = generate(module, tokenizer, prompts, max_new_tokens=task.max_new_tokens, batch_size=t.batch_size,
                               do_sample=t.sampling, temperature=t.sampling_temperature, top_p=t.top_p,
                               seed=t.sampling_seed, max_prompt_tokens=cfg.student.max_length - task.max_new_tokens,
                               stop=task.stop)
            targets, seed = [g.text.strip() for g in written], t.sampling_seed if t.sampling else 0
        else:
            targets, seed = [e.target for e in chunk], None
        rows = token_targets(module, tokenizer, prompts, targets, k=t.token_top_k, max_length=cfg.student.max_length,
                             batch_size=t.batch_size)
        return [TokenRow(r.token_ids, r.logprobs, r.tail_logmass, generation=text if seed is not None else None,
                         seed=seed) for r, text in zip(rows, targets)]

    share = distributed.elicitation_share() if distributed.launched() else None
    # small shards: a teacher writing text is slow, so a kill loses at most a few examples and progress shows
    elicit_resumable(entry, list(by_id), compute, shard_size=8, progress=progress, **(share or {}))
    return GenTargets(entry, written_by_teacher=task.targets == "teacher", eos_id=tokenizer.eos_token_id)


def check_same_tokenizer(teacher_tokenizer, student_tokenizer, student_name: str, *, teacher_name: str = "") -> None:
    """Token-level KD needs the student to tokenize targets exactly as the teacher did; with ``teacher_name``, the
    "student" is another teacher of an ensemble, whose rows are mixed with the first teacher's token by token."""
    if tokenizer_fingerprint(teacher_tokenizer) == tokenizer_fingerprint(student_tokenizer):
        return
    if teacher_name:
        raise KdistillError(f"teacher {student_name!r} has another tokenizer than the first teacher {teacher_name!r}; "
                            "a generation task mixes its teachers token by token, so they must share one tokenizer. "
                            "Remove it from `teachers`, or pick a teacher of the same family.")
    raise KdistillError(f"student {student_name!r} has another tokenizer than the teacher, so the teacher's "
                        "per-token distributions do not line up with the student's tokens. Set "
                        "objective.kd.weight: 0 for sequence-level KD only (the student learns from the "
                        "teacher's written targets), or pick a student of the teacher's family.")


def _member_tokenizer(cfg: RunConfig, member: TeacherConfig, first_tokenizer) -> Any:
    """An ensemble member's tokenizer, checked to be the first teacher's."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(member.model), revision=member.revision,
                                              trust_remote_code=member.trust_remote_code)
    check_same_tokenizer(first_tokenizer, tokenizer, member.display_name, teacher_name=cfg.teacher.display_name)
    return tokenizer


def member_entry(cfg: RunConfig, member: TeacherConfig, examples: list[GenExample], first: GenTargets,
                 first_tokenizer, *, progress: bool = True) -> tuple[CacheEntry, int]:
    """Another teacher's rows along the first's targets of ``examples``, teacher-forced, in an entry of its own
    (keyed by it and the target texts); (the entry, its vocabulary size). Loaded only if the entry lacks rows; a
    member behind an endpoint is asked on its server."""
    from transformers import AutoConfig

    if member.is_endpoint:
        from kdistill.teachers.served_generation import served_member_entry

        key = f"teachers[{cfg.teachers.index(member)}]"
        return served_member_entry(cfg, member, key, examples, {e.id: first.target(e) for e in examples},
                                   first_tokenizer, progress=progress)
    tokenizer = _member_tokenizer(cfg, member, first_tokenizer)
    path = resolve_model_path(member.model)
    hf = AutoConfig.from_pretrained(path, revision=member.revision, trust_remote_code=member.trust_remote_code)
    vocab_size = int(hf.get_text_config().vocab_size)
    texts = {e.id: first.target(e) for e in examples}
    entry = TeacherCache(cfg.paths.teacher_cache).entry(_token_fields(
        cfg, member, tokenizer, vocab_size, examples, fingerprint([(e.id, e.prompt, texts[e.id]) for e in examples])))
    by_id, loaded = {e.id: e for e in examples}, []

    def compute(ids: list[str]) -> list[TokenRow]:
        if not loaded:  # a member whose rows are all cached is never loaded
            loaded.append(load_causal_lm(member, pick_device(cfg.training.device))[0])
        prompts = [prompt_text(cfg.task.prompt_template, by_id[i]) for i in ids]
        return token_targets(loaded[0], tokenizer, prompts, [texts[i] for i in ids], k=member.token_top_k,
                             max_length=cfg.student.max_length, batch_size=member.batch_size)

    share = distributed.elicitation_share() if distributed.launched() else None
    elicit_resumable(entry, list(by_id), compute, shard_size=8, progress=progress, **(share or {}))
    return entry, vocab_size


def token_ensemble(cfg: RunConfig, examples: list[GenExample], first: GenTargets, first_tokenizer,
                   first_vocab_size: int, *, progress: bool = True) -> TokenEnsemble:
    """The ensemble of the first teacher and `teachers` over ``examples`` (the training split)."""
    built = [member_entry(cfg, m, examples, first, first_tokenizer, progress=progress) for m in cfg.teachers]
    combine, names = cfg.ensemble.resolved(cfg.task.kind), [m.display_name for m in cfg.members]
    weights_k = None
    if combine != "confidence":  # mean or weighted (the config refuses the label-space ones)
        weights_k = (torch.tensor(cfg.ensemble.weights, dtype=torch.float64) if combine == "weighted"
                     else torch.ones(len(names), dtype=torch.float64))
        weights_k = weights_k / weights_k.sum()
    info = {"combine": combine, "teachers": names,
            "weights": dict(zip(names, weights_k.tolist())) if weights_k is not None else None}
    log.info("teacher ensemble (%s) of %s, per target token", combine, ", ".join(names))
    return TokenEnsemble([entry for entry, _ in built], weights_k, cfg.teacher.token_top_k,
                         [first_vocab_size, *(size for _, size in built)], info)


def targets_for(cfg: RunConfig, data: GenData, *, progress: bool, teacher=None) -> GenTargets:
    """The cached teacher targets: of every split when the teacher writes the references, else of train; with
    `teachers` and a kd term, mixed per token with theirs on the training split."""
    examples = data.train + data.validation + data.test if cfg.task.targets == "teacher" else data.train
    if cfg.teacher.is_endpoint:  # on its server, along the student's tokens (see served_generation)
        from transformers import AutoTokenizer

        from kdistill.teachers.served_generation import served_targets

        tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(cfg.student.model), revision=cfg.student.revision)
        entry, with_rows, vocab_size = served_targets(cfg, examples, tokenizer, progress=progress)
        targets = GenTargets(entry, written_by_teacher=cfg.task.targets == "teacher", eos_id=tokenizer.eos_token_id,
                             token_rows=with_rows)
        if cfg.teachers and cfg.objective.kd.weight > 0 and with_rows:  # rows along the student's tokens
            targets.ensemble = token_ensemble(cfg, data.train, targets, tokenizer, vocab_size, progress=progress)
        return targets
    module, tokenizer = teacher or load_causal_lm(cfg.teacher, pick_device(cfg.training.device))
    targets = teacher_targets(cfg, examples, module, tokenizer, progress=progress)
    if cfg.teachers and cfg.objective.kd.weight > 0:  # only the kd term reads the other teachers' rows
        vocab_size = int(module.get_output_embeddings().weight.shape[0])
        del module  # one teacher in memory at a time (unless the caller holds it)
        targets.ensemble = token_ensemble(cfg, data.train, targets, tokenizer, vocab_size, progress=progress)
    return targets
