"""The run as a whole: training, evaluation, stages, and the RunConfig that holds every section.

Every field's default lives here and nowhere else; contradictions are errors raised in ``__post_init__``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from kdistill.config.checks import check_ranges
from kdistill.config.models import EnsembleConfig, ModelConfig, TeacherConfig
from kdistill.config.objective import ObjectiveConfig
from kdistill.config.search import SearchConfig, checked_space
from kdistill.config.task_data import DataConfig, TaskConfig
from kdistill.errors import KdistillError
from kdistill.rundir import RunDir


@dataclass(kw_only=True)
class StageConfig:
    """One stage of a multi-stage run: this run's config with `set` applied; its students start
    from the previous stage's students of the same variant and seed."""

    name: str
    """Short name of the stage (its folder is <run>/stages/<i>-<name>)."""
    set: dict[str, Any] = field(default_factory=dict)
    """Overrides of this run's config for the stage, as dotted keys (e.g. task: sentiment3,
    data.max_examples: 1500, teacher.few_shot_per_label: 1). A built-in task named here brings its own data."""
    optimizer: Literal["reset", "carry"] = "reset"
    """From the second stage on: a fresh optimizer (reset), or the previous stage's AdamW moments for
    every parameter of the same name and shape (carry; a new head starts fresh)."""

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", self.name):
            raise KdistillError(f"stages: name {self.name!r} must be letters, digits, '.', '_' or '-' (it names a folder).")
        for key in self.set:
            if key in ("name", "output_dir", "stages") or key.startswith("stages."):
                raise KdistillError(f"stages[{self.name}].set: {key!r} cannot be set per stage; stages are "
                                    "named by `name` and run inside this run's folder.")


@dataclass(kw_only=True)
class TrainingConfig:
    """The one training loop's settings."""

    epochs: int = 3
    """Passes over the training split."""
    batch_size: int = 32
    """Examples per optimizer step (split into `grad_accum_steps` micro-batches)."""
    grad_accum_steps: int = 1
    """Micro-batches per optimizer step; the result does not depend on it."""
    learning_rate: float | None = None
    """Peak AdamW learning rate. Not set: the student's own default, 2e-4 for an encoder classifier (a new head on
    a small encoder: 5e-5 left MiniLM undertrained and collapsing onto one class, benchmarks/results/collapse.md)
    and 5e-5 for a causal LM student."""
    weight_decay: float = 0.01
    """AdamW weight decay (not applied to biases and norms)."""
    warmup_ratio: float = 0.1
    """Share of steps with linear warm-up; linear decay to 0 afterwards."""
    max_grad_norm: float = 1.0
    """Gradient clipping norm; 0 disables clipping."""
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"
    """auto: bf16 on a CUDA device that supports it, fp32 on CPU."""
    device: str = "auto"
    """auto, cpu, cuda, cuda:1, mps ..."""
    group_by_length: bool = True
    """Batch examples of similar length together (less padding; same examples every epoch)."""
    eval_every_steps: int = 0
    """Validate every N optimizer steps; 0 validates at the end of every epoch."""
    early_stopping_patience: int = 3
    """Stop after this many validations without a better validation score (macro-F1; for a generation
    task, the `select_by` figure); 0 never stops."""
    select_by: Literal["target_ce", "rouge_l"] = "target_ce"
    """Generation tasks: the validation figure whose best weights are kept (and early stopping watches).
    target_ce: the lowest CE per token on the validation targets (one forward pass). rouge_l: the highest
    ROUGE-L of the student's greedy outputs against the validation references (one generation per
    validation example at every validation; val_copy_rate_2 is recorded beside it). A student can fit the
    targets' token distributions better and still write worse text: on bbc-summary the lowest target CE
    kept the weights that copy the article most."""
    checkpoint_every_steps: int = 50
    """Write a resumable checkpoint every N optimizer steps (and at every validation)."""
    keep_checkpoints: int = 2
    """How many of the newest checkpoints to keep while a student trains. Every checkpoint is verified
    against the checksums it was written with before a resume loads it, and a damaged newest one (a bad
    sector, a file truncated by a full disk) falls back to the one before; with 1 there is none to fall
    back to, and the student trains again from its start. Each one costs the student's size on disk (and
    its optimizer state's), until the student is saved."""
    keep_finished_checkpoints: bool = False
    """Keep a student's checkpoints once it is trained and saved (they hold its optimizer state, to train it on
    by hand). By default they are deleted then: a resumed run skips a saved student, so neither resume nor the
    report card needs them, and for the default job they are most of the run directory's size."""
    trainable_layers: int | None = None
    """Generative students: train only the top N transformer blocks and the final norm, keeping the
    embeddings, the output head and the blocks below as they are (a few CPU-minutes for a 0.5B
    student instead of hours); None trains every parameter."""
    on_policy_fraction: float = 0.0
    """Generation tasks, distilled variant (GKD's lambda): the share of training examples, drawn anew at
    every step, whose target is the student's own continuation, sampled at `on_policy_temperature` and
    scored by the teacher live (kd term only: CE on its own words would teach the student itself). Keeps
    the teacher in memory during training and costs one generation per chosen example; 0 trains on the
    cached targets alone."""
    on_policy_temperature: float = 1.0
    """Sampling temperature of those student continuations; 0 takes the greedy one."""
    novel_token_weight: float = 1.0
    """Generation tasks: the weight, in each example's mean of CE and KD, of a target token the target writes
    rather than copies from the prompt (it and the token before it are not a bigram of the prompt), the
    copied ones weighing 1. Above 1, a summarization student is pressed hardest where the teacher
    paraphrases; 1 weighs every target token alike."""
    tensorboard: bool = True
    """Log every training-history record (each loss term, lr, validation macro-F1) for TensorBoard
    to `runs/<name>/tensorboard/<variant>-seed<N>/`."""
    sharding: Literal["none", "fsdp"] = "none"
    """Launched as several processes (`accelerate launch` with a DDP config, `torchrun`): none keeps a
    whole copy of the student in every process (DDP); fsdp shards the student's weights, gradients
    and optimizer state over the processes with torch's FSDP2 (each transformer block, then the rest).
    Checkpoints and the saved student stay whole either way. One process ignores it."""

    def __post_init__(self) -> None:
        check_ranges("training.", self, epochs=">= 1", batch_size=">= 1", grad_accum_steps=">= 1",
                     learning_rate="> 0", weight_decay=">= 0", warmup_ratio="in [0, 1]", max_grad_norm=">= 0",
                     eval_every_steps=">= 0", early_stopping_patience=">= 0", checkpoint_every_steps=">= 0",
                     keep_checkpoints=">= 1", trainable_layers=">= 1", on_policy_fraction="in [0, 1]",
                     on_policy_temperature=">= 0", novel_token_weight="> 0")
        if not re.fullmatch(r"auto|cpu|mps|(cuda|xpu)(:\d+)?", self.device):
            raise KdistillError(f"training.device must be auto, cpu, cuda, cuda:N or mps; found {self.device!r}.")
        if self.batch_size % self.grad_accum_steps:
            raise KdistillError(
                f"training.batch_size ({self.batch_size}) must be divisible by training.grad_accum_steps "
                f"({self.grad_accum_steps})."
            )
        if self.sharding == "fsdp" and self.mixed_precision == "fp16":
            raise KdistillError("training.sharding: fsdp does not train in fp16 (its loss scaler would have to agree "
                                "across the processes): set training.mixed_precision to bf16, no or auto.")
        if self.on_policy_fraction > 0 and self.sharding == "fsdp":
            raise KdistillError("training.on_policy_fraction needs the student whole in every process to generate; "
                                "set training.sharding: none (DDP) or on_policy_fraction: 0.")


@dataclass(kw_only=True)
class EvaluationConfig:
    """What the report card compares and how cost is measured."""

    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    """Student variants are trained once per seed; the report gives mean ± std."""
    baselines: bool = True
    """Also train the labels-only student and evaluate the untrained student."""
    latency_examples: int = 30
    """Test examples timed one by one (batch 1) for p50 / p95 latency."""
    throughput_batch_size: int = 32
    """Batch size of the throughput measurement."""
    throughput_batches: int = 3
    """Batches timed for throughput."""
    warmup_batches: int = 2
    """Untimed calls before each timing, so one-off set-up is not counted."""
    judge: str = ""
    """generation (summary): the prompted LLM that judges whether the source supports each summary
    (faithfulness; no NLI model is reachable offline): a model name, folder or hub id; empty = the teacher."""
    similarity_model: str = "all-MiniLM-L6-v2"
    """generation: the sentence-embedding model of semantic similarity to the reference; empty skips it."""
    num_examples_shown: int = 3
    """generation: test examples shown side by side (source, reference, every model's output) on the card."""

    def __post_init__(self) -> None:
        if not self.seeds:
            raise KdistillError("evaluation.seeds must list at least one seed.")
        repeated = sorted({seed for seed in self.seeds if self.seeds.count(seed) > 1})
        if repeated or min(self.seeds) < 0:
            raise KdistillError(f"evaluation.seeds must be distinct seeds >= 0 (each trains a student once); found "
                                f"{self.seeds}.")
        check_ranges("evaluation.", self, latency_examples=">= 1", throughput_batch_size=">= 1",
                     throughput_batches=">= 1", warmup_batches=">= 0", num_examples_shown=">= 0")


@dataclass(kw_only=True)
class RunConfig:
    """One distillation run: task, data, teacher, student, objective, training, evaluation."""

    name: str = "run"
    """Run name; outputs go to `<output_dir>/<name>/`."""
    output_dir: str = "runs"
    """Folder that holds run directories (relative to the working directory)."""
    task: TaskConfig = field(default_factory=TaskConfig)
    data: DataConfig = field(default_factory=DataConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    teachers: list[TeacherConfig] = field(default_factory=list)
    """More teachers: with any, the student learns from the ensemble of `teacher` and these (a generation task:
    causal LMs, in-process or served, with the first teacher's tokenizer, mixed per target token)."""
    ensemble: EnsembleConfig = field(default_factory=EnsembleConfig)
    student: ModelConfig = field(default_factory=ModelConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    """`kdistill search` only: the hyper-parameter search (`kdistill run` ignores it)."""
    stages: list[StageConfig] = field(default_factory=list)
    """Run these stages in order instead of one run (seed 001: Winogrande, then Social IQA); see StageConfig."""
    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", self.name):  # no "..", "/" or "~": it stays in output_dir
            raise KdistillError(f"name {self.name!r} must be a plain folder name of letters, digits, '.', '_' and '-' "
                                f"(not starting with '.'): the run is written to <output_dir>/<name>/; to write "
                                "elsewhere, set output_dir.")
        if not self.output_dir.strip():
            raise KdistillError("output_dir is empty: name the folder that holds run directories, e.g. runs.")
        self.search.space = checked_space(self.search.space, RunConfig)
        if self.task.kind == "generation":
            self._check_generation()
        elif self.training.on_policy_fraction > 0:
            raise KdistillError("training.on_policy_fraction is for generation tasks (the student writes text); "
                                f"task {self.task.name!r} is {self.task.kind}. Set it to 0.")
        elif self.training.novel_token_weight != 1.0:
            raise KdistillError("training.novel_token_weight is for generation tasks (it weighs target tokens); "
                                f"task {self.task.name!r} is {self.task.kind}. Set it to 1.")
        elif self.training.select_by != "target_ce":
            raise KdistillError(f"training.select_by: {self.training.select_by} is for generation tasks (the student "
                                f"writes text); task {self.task.name!r} is {self.task.kind}, whose weights are kept by "
                                "validation macro-F1. Remove training.select_by.")
        elif not self.task.labels:
            raise KdistillError("task.labels is empty: name the labels (or use a built-in task with `task: NAME`).")
        if not self.teacher.model:
            raise KdistillError("teacher.model is empty: name a built-in model, a local folder, a .gguf file or a hub id.")
        if not self.student.model:
            raise KdistillError("student.model is empty: name a built-in model, a local folder, a .gguf file or a hub id.")
        if self.task.kind != "generation" and not self.task.verbalizers and "causal_lm" in [t.kind for t in self.members] + [self.student.kind]:
            raise KdistillError("task.verbalizers are needed to ask a causal LM: give one word per label.")
        for i, member in enumerate(self.teachers):
            if not member.model:
                raise KdistillError(f"teachers[{i}].model is empty: name a built-in model, a local folder or a hub id.")
        self._check_budget()
        names = [t.display_name for t in self.members]
        if len(set(names)) < len(names):
            raise KdistillError(f"teacher names must differ; found {names}. Give each one a `name`.")
        if self.ensemble.combine == "weighted" and len(self.ensemble.weights) != len(names):
            raise KdistillError(f"ensemble.weights must give one weight per teacher ({len(names)}: {', '.join(names)}); "
                                f"found {len(self.ensemble.weights)}.")
        if any(w < 0 for w in self.ensemble.weights) or (self.ensemble.weights and sum(self.ensemble.weights) <= 0):
            raise KdistillError(f"ensemble.weights must be >= 0 and not all 0; found {self.ensemble.weights}.")
        if self.objective.hidden.weight > 0:
            unknown = [n for n in self.objective.hidden.teachers if n not in names]
            if unknown:
                raise KdistillError(f"objective.hidden.teachers names {unknown}, which are not teachers of this run; "
                                    f"the teachers are {names}.")
            remote = [t.display_name for t in self.hidden_teachers if t.is_endpoint]
            if remote:
                raise KdistillError(f"objective.hidden: teacher {remote[0]!r} is behind an endpoint, which exposes no "
                                    "hidden states; list in-process teachers in objective.hidden.teachers, or set "
                                    "objective.hidden.weight to 0.")

    def _check_budget(self) -> None:
        """teacher.budget is the ensemble's, and a label task's: one place to set it, one family that reads it."""
        for i, member in enumerate(self.teachers):
            if member.budget is not None:
                raise KdistillError(f"teachers[{i}].budget: the teacher budget is the whole ensemble's (each chosen "
                                    "text is asked of every teacher); set teacher.budget instead.")
        if self.teacher.budget is not None and self.task.kind == "generation":
            raise KdistillError("teacher.budget is for label tasks (classification, multiple choice); a generation "
                                "task asks the teacher about every prompt. Remove teacher.budget.")
        if self.teacher.budget is not None and self.teacher.selection.rounds > self.teacher.budget:
            raise KdistillError(f"teacher.selection.rounds ({self.teacher.selection.rounds}) must be at most "
                                f"teacher.budget ({self.teacher.budget}): each round asks about at least one new text.")

    def _check_generation(self) -> None:
        if self.data.split_files:
            keys = ", ".join(f"data.{key}" for key in self.data.split_files)
            raise KdistillError(f"{keys}: your own split files are for label tasks (classification, multiple choice) "
                                "for now; a generation task reads data.path and splits it. Remove them.")
        unsupported = [name for name, on in [("objective.balance", self.objective.balance.weight > 0),
                                             ("objective.contrastive", self.objective.contrastive.weight > 0),
                                             ("data.num_labelled", self.data.num_labelled is not None)] if on]
        for i, member in enumerate(self.members):
            where = "teacher" if i == 0 else f"teachers[{i - 1}]"
            unsupported += [f"{where}.finetune"] if member.finetune else []
        if self.teacher.is_endpoint and self.training.on_policy_fraction > 0:
            raise KdistillError("teacher.endpoint: a served generation teacher writes targets and scores them; "
                                "training.on_policy_fraction needs it in-process. Set it to 0, or remove "
                                "teacher.endpoint.")
        if unsupported:
            raise KdistillError(f"a generation task does not support {', '.join(unsupported)} yet: causal-LM "
                                "teachers (the first may be served), and the ce, kd and hidden terms. Remove them "
                                "from the config.")
        if "encoder" in [t.kind for t in self.members] + [self.student.kind]:
            raise KdistillError("a generation task needs causal-LM teachers and student (kind: auto or causal_lm); "
                                "an encoder cannot write text.")
        combine = self.ensemble.resolved(self.task.kind)
        if self.teachers and combine in ("learned", "gold_agreement"):
            raise KdistillError(f"ensemble.combine: {combine} weighs label-space answers against gold labels; a "
                                "generation task mixes its teachers per target token: set ensemble.combine to mean "
                                "(equal weights), weighted (with ensemble.weights) or confidence.")
        if self.teachers and self.training.on_policy_fraction > 0:
            raise KdistillError("training.on_policy_fraction scores the student's own text with one live teacher, not "
                                "an ensemble: set it to 0, or remove `teachers`.")

    @property
    def members(self) -> list[TeacherConfig]:
        """Every teacher: `teacher`, then `teachers`."""
        return [self.teacher, *self.teachers]

    @property
    def hidden_teachers(self) -> list[TeacherConfig]:
        """The teachers the hidden term aligns with: those named in objective.hidden.teachers, else the first."""
        named = self.objective.hidden.teachers
        return [t for t in self.members if t.display_name in named] if named else [self.teacher]

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name

    @property
    def paths(self) -> RunDir:
        """Where each thing of this run lives (kdistill.rundir)."""
        return RunDir(self.run_dir)


