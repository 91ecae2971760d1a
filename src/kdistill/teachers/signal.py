"""The teacher side of a run: each member loaded (fine-tuned first if asked), elicited once into the
store, recalibrated, and, with several members, combined into one ensemble target.

Each member has its own store entry, keyed by its own identity, so adding a teacher to a run asks
only the new one; removing one asks none.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from kdistill import distributed
from kdistill.cache.entry import TeacherCache
from kdistill.config import ObjectiveConfig, RunConfig, TeacherConfig
from kdistill.data import PreparedData
from kdistill.io import atomic_write_json
from kdistill.losses.objective import Objective
from kdistill.models import LabelModel, load_label_model, load_saved, pick_device, resolve_model_path
from kdistill.targets import TeacherTargets
from kdistill.teachers.cost import prompt_tokens, record_calls
from kdistill.teachers.elicit import cache_fields, few_shot_prefix, fit_recalibration, weights_fingerprint
from kdistill.teachers.elicit import elicit as elicit_targets
from kdistill.teachers.ensemble import confidence_weights, fit_weights, gold_agreement_weights, mixture

log = logging.getLogger(__name__)


@dataclass
class TeacherSignal:
    """What the students learn from: the (ensemble) targets, and each member's, for the report card."""

    targets: TeacherTargets
    members: dict[str, TeacherTargets] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    def where(self) -> str:
        """What was elicited (`kdistill elicit` prints it)."""
        return (f"targets of {len(self.members)} teacher(s) ({', '.join(self.members)}) for {len(self.targets.ids)} "
                "examples are in the store")


def elicited_examples(data: PreparedData) -> list:
    """Every example a teacher is asked about: train (targets), validation (ensemble weights), test (report)."""
    return data.train + data.validation + data.test


def elicited_parts(data: PreparedData) -> list[list]:
    """`elicited_examples` in the groups a teacher is asked about together, one cache entry each: all at once;
    or, under a teacher budget, the texts always asked (labelled training, validation, test) and then each
    selection round's pool texts, so a later round adds an entry and never re-keys (re-asks) an earlier one."""
    if data.selection_rounds is None:
        return [elicited_examples(data)]
    by_id = {e.id: e for e in data.train}
    return [data.labelled + data.validation + data.test, *([by_id[i] for i in ids] for ids in data.selection_rounds)]


# ------------------------------------------------------------------ fine-tuned teachers
def _finetune_dir(cfg: RunConfig, data: PreparedData, member: TeacherConfig) -> Path:
    labelled = [(e.id, e.text, e.label) for e in data.labelled]
    fields = {"model": member.model, "revision": member.revision,
              "weights": weights_fingerprint(resolve_model_path(member.model)), "labels": cfg.task.labels,
              "epochs": member.finetune_epochs, "learning_rate": member.finetune_learning_rate,
              "max_length": member.max_length, "input_template": member.input_template,
              "batch_size": cfg.training.batch_size, "data": hashlib.sha256(json.dumps(labelled).encode()).hexdigest()}
    key = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()
    return cfg.paths.finetuned_teacher(member.display_name, key)


def finetune(cfg: RunConfig, data: PreparedData, member: TeacherConfig, *, progress: bool = True) -> Path:
    """Fine-tune ``member`` on the labelled training examples once; later calls find the saved folder."""
    from kdistill.train.loop import Trainer

    out = _finetune_dir(cfg, data, member)
    if (out / "kdistill.json").exists():
        return out
    log.info("fine-tuning teacher %s on %d labelled examples", member.display_name, len(data.labelled))
    torch.manual_seed(0)
    model = load_label_model(member, cfg.task, device=pick_device(cfg.training.device))
    training = replace(cfg.training, epochs=member.finetune_epochs, learning_rate=member.finetune_learning_rate)
    start = time.perf_counter()
    with distributed.alone():  # under several processes, the main one fine-tunes alone (see pipeline.run)
        result = Trainer(model, train_examples=data.labelled, val_examples=data.validation,
                         objective=Objective(ObjectiveConfig().labels_only()), cfg=training, seed=0,
                         checkpoint_dir=out.with_name(out.name + ".checkpoints"), progress=progress).run(resume=True)
    model.save(out)
    atomic_write_json(out.with_name(out.name + ".training.json"), {
        "seconds": time.perf_counter() - start, "steps": result.state.global_step,
        "best_val_macro_f1": result.state.best_metric, "history": result.state.history})
    return out


def member_path(cfg: RunConfig, data: PreparedData, member: TeacherConfig) -> str | None:
    """Where the member's weights are: its fine-tuned folder, or the model as named; None for a
    teacher behind an endpoint, whose weights are on its server."""
    if member.is_endpoint:
        return None
    return str(_finetune_dir(cfg, data, member)) if member.finetune else resolve_model_path(member.model)


def journal_path(cfg: RunConfig, member: TeacherConfig) -> Path:
    """An endpoint teacher's journal of answered requests: kept with the run's teacher cache."""
    return cfg.paths.endpoint_journal(member.display_name)


def load_member(cfg: RunConfig, data: PreparedData, member: TeacherConfig, *, progress: bool = True) -> LabelModel:
    device = pick_device(cfg.training.device)
    if member.finetune:
        return load_saved(finetune(cfg, data, member, progress=progress), device=device)
    prefix = few_shot_prefix(cfg.task, data.labelled, member.few_shot_per_label, cfg.data.split_seed)
    if member.endpoint is not None:
        from kdistill.teachers.endpoint import EndpointLabelModel
        from kdistill.teachers.served import serving

        settings, server = serving(member.endpoint, member.model, _config_key(cfg, member))
        model = EndpointLabelModel(settings, model=member.model, labels=cfg.task.labels,
                                   verbalizers=[cfg.task.verbalizers[label] for label in cfg.task.labels],
                                   prompt_template=cfg.task.prompt_template, prefix=prefix,
                                   journal_path=journal_path(cfg, member), config_key=_config_key(cfg, member))
        model.transport.revive = server.revive if server is not None else None
        return model
    return load_label_model(member, cfg.task, prefix=prefix, device=device)


def _config_key(cfg: RunConfig, member: TeacherConfig) -> str:
    """Where the config holds ``member``: teacher, or teachers[i]."""
    index = next(i for i, m in enumerate(cfg.members) if m is member)
    return "teacher" if index == 0 else f"teachers[{index - 1}]"


# ------------------------------------------------------------------ targets
def member_targets(cfg: RunConfig, data: PreparedData, member: TeacherConfig, *, model: LabelModel | None = None,
                   progress: bool = True) -> TeacherTargets:
    """The member's raw label log-probs for every elicited example: from the store, or asked once."""
    model = model or load_member(cfg, data, member, progress=progress)
    parts = [_entry_targets(cfg, data, member, model, examples, progress=progress)
             for examples in elicited_parts(data)]
    if len(parts) == 1:
        return parts[0]
    return TeacherTargets([i for part in parts for i in part.ids], torch.cat([part.values for part in parts]))


def _entry_targets(cfg: RunConfig, data: PreparedData, member: TeacherConfig, model: LabelModel, examples: list, *,
                   progress: bool) -> TeacherTargets:
    """The member's label log-probs for ``examples``, one cache entry: read back, or the missing ones asked."""
    entry = TeacherCache(cfg.paths.teacher_cache).entry(
        cache_fields(member, model, member_path(cfg, data, member), examples))
    # every shard is checked against its sha256 here; a missing or damaged one is asked again
    missing = set(entry.missing([e.id for e in examples]))
    if not missing:
        log.info("teacher %s: targets found in the cache (%d examples)", member.display_name, len(examples))
    usage_before = model.stats() if model.kind == "endpoint" else None
    start = time.perf_counter()
    if not distributed.launched():
        targets = elicit_targets(model, examples, member, entry, progress=progress)
    elif model.kind == "endpoint":  # the server is the bottleneck: the main process asks, the others read
        with distributed.main_first():
            targets = elicit_targets(model, examples, member, entry, progress=progress)
    else:  # every process of the launch computes its share of the shards
        targets = elicit_targets(model, examples, member, entry, progress=progress,
                                 share=distributed.elicitation_share())
    if missing and distributed.is_main():
        asked, seconds = [e.text for e in examples if e.id in missing], time.perf_counter() - start
        _log_speed(cfg, member, model, asked, seconds)
        tokens, source = prompt_tokens(model, member, asked, usage_before)
        record_calls(cfg.paths.teacher_calls, member.display_name, calls=len(asked), tokens=tokens,
                     tokens_source=source, seconds=seconds)
    return targets


def _log_speed(cfg: RunConfig, member: TeacherConfig, model: LabelModel, texts: list[str], seconds: float) -> None:
    """examples/s and text tokens/s of an elicitation, logged and kept beside the cache."""
    speed: dict[str, Any] = {"examples": len(texts), "seconds": seconds, "examples_per_s": len(texts) / seconds}
    if model.tokenizer is not None:
        tokens = sum(len(ids) for ids in model.tokenizer(texts, add_special_tokens=False)["input_ids"])
        speed.update(text_tokens=tokens, text_tokens_per_s=tokens / seconds,
                     note="text tokens = the examples' own tokens; a shared few-shot prefix is computed once")
    if hasattr(model, "stats"):  # an endpoint: how many answers came from its journal, how many retries
        speed["endpoint"] = model.stats()
    atomic_write_json(cfg.paths.elicitation_speed(member.display_name), speed)
    log.info("teacher %s: elicited %d examples in %.1f s (%.1f examples/s%s)", member.display_name, len(texts),
             seconds, speed["examples_per_s"],
             f", {speed['text_tokens_per_s']:.0f} text tokens/s" if "text_tokens_per_s" in speed else "")


def _recalibrate(cfg: RunConfig, data: PreparedData, member: TeacherConfig,
                 targets: TeacherTargets) -> tuple[TeacherTargets, dict[str, Any] | None]:
    """Applied on read: the store keeps the teacher's own answers."""
    if member.recalibrate == "none":
        return targets, None
    labelled = data.labelled
    gold = torch.tensor([cfg.task.labels.index(e.label) for e in labelled])
    fit = fit_recalibration(targets.rows([e.id for e in labelled]), gold, with_bias=member.recalibrate == "affine")
    log.info("teacher %s recalibrated on %d labelled examples: temperature %.3f, bias %s", member.display_name,
             len(labelled), fit.temperature, [round(b, 3) for b in fit.bias])
    return fit.apply(targets), {"method": member.recalibrate, "examples": len(labelled), **asdict(fit)}


def teacher_signal(cfg: RunConfig, data: PreparedData, *, progress: bool = True,
                   models: dict[str, LabelModel] | None = None) -> TeacherSignal:
    """Every member's recalibrated targets and, with several, their ensemble."""
    models = models or {}
    members, info = {}, {"members": {}}
    for member in cfg.members:
        raw = member_targets(cfg, data, member, model=models.get(member.display_name), progress=progress)
        members[member.display_name], info["members"][member.display_name] = _recalibrate(cfg, data, member, raw)
    if len(members) == 1:
        return TeacherSignal(next(iter(members.values())), members, info)
    targets, info["ensemble"] = _combine(cfg, data, members)
    return TeacherSignal(targets, members, info)


def _combine(cfg: RunConfig, data: PreparedData,
             members: dict[str, TeacherTargets]) -> tuple[TeacherTargets, dict[str, Any]]:
    ids = [e.id for e in elicited_examples(data)]
    logprobs_knl = torch.stack([t.rows(ids) for t in members.values()])  # (K, N, L)
    combine, names = cfg.ensemble.resolved(cfg.task.kind), list(members)
    label_index = {label: i for i, label in enumerate(cfg.task.labels)}
    info: dict[str, Any] = {"combine": combine, "teachers": names}
    if combine in ("mean", "weighted", "learned"):
        if combine == "learned":
            val_ids = [e.id for e in data.validation]
            val_logprobs_knl = torch.stack([t.rows(val_ids) for t in members.values()])
            weights_k = fit_weights(val_logprobs_knl, torch.tensor([label_index[e.label] for e in data.validation]))
        elif combine == "weighted":
            weights_k = torch.tensor(cfg.ensemble.weights, dtype=torch.float32)
        else:
            weights_k = torch.ones(len(names))
        weights_k = weights_k / weights_k.sum()
        info["weights"] = dict(zip(names, weights_k.tolist()))
        weights_nk = weights_k.expand(len(ids), -1)
    elif combine == "confidence":
        weights_nk = confidence_weights(logprobs_knl)
    else:  # gold_agreement: only the labelled training examples' gold labels may be looked at
        labelled = {e.id for e in data.labelled}
        examples = elicited_examples(data)
        gold_n = torch.tensor([label_index[e.label] if e.id in labelled else 0 for e in examples])  # 0: never read
        has_gold_n = torch.tensor([e.id in labelled for e in examples])
        weights_nk = gold_agreement_weights(logprobs_knl, gold_n, has_gold_n)
    if "weights" not in info:
        mean_k = (weights_nk / weights_nk.sum(-1, keepdim=True)).mean(0)
        info["mean_weights"] = dict(zip(names, mean_k.tolist()))
    log.info("teacher ensemble (%s): %s", combine, info.get("weights") or info.get("mean_weights"))
    return TeacherTargets(ids, mixture(logprobs_knl, weights_nk)), info


def load_teachers(cfg: RunConfig, data: PreparedData, *, progress: bool = True) -> dict[str, LabelModel]:
    """Every teacher of the run, by name (fine-tuned first where asked)."""
    return {t.display_name: load_member(cfg, data, t, progress=progress) for t in cfg.members}
