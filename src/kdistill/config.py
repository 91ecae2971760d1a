"""Typed run configuration: keyword-only dataclasses, strict YAML loading, round-trip to YAML.

Every field's default lives here and nowhere else. Unknown keys are errors with a suggestion;
contradictions are errors raised in ``__post_init__``.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from kdistill.errors import KdistillError
from kdistill.objective_config import (DIVERGENCE_KINDS, BalanceTerm, CETerm, HiddenTerm, KDTerm,  # noqa: F401 (re-exported)
                                       ObjectiveConfig)
from kdistill.search_config import SearchConfig


@dataclass(kw_only=True)
class TaskConfig:
    """What the model must do and how a generative model is asked to do it."""

    name: str = "custom"
    """A short name for the task, shown in reports."""
    kind: Literal["classification", "multiple_choice", "generation"] = "classification"
    """classification: one label per text. multiple_choice: a question with `num_options` options,
    answered by the option's number (the seeds' standardized output format: labels '1'..'N' and
    verbalizers ' 1'..' N' are filled in), distilled in label space like a classification.
    generation: a prompt and a target text (an answer, a summary), from the data or the teacher."""
    num_options: int = 0
    """multiple_choice only: options per question (Winogrande 2, Social IQA 3, AQuA-RAT 5)."""
    choice_scoring: Literal["number", "likelihood"] = "number"
    """multiple_choice only, for causal LMs: number (the next-token logit of each option's number after
    the question and its numbered options) or likelihood (each option's mean token log-probability
    after the question). Encoder students always read the numbered options."""
    targets: Literal["data", "teacher"] = "data"
    """generation only: where the training targets and test references come from: the data, or
    the teacher's own generations (sequence-level KD; cached with their decoding settings and seed)."""
    evaluate_as: Literal["summary", "qa"] = "summary"
    """generation only: summary (ROUGE against references, similarity, faithfulness, copying) or
    qa (exact match and token F1 against every gold answer, and ROUGE)."""
    max_new_tokens: int = 64
    """generation only: the longest output in tokens (teacher references, evaluation, timing)."""
    stop: list[str] = field(default_factory=list)
    """generation only: an output ends at the first of these strings (cut off, with what follows) or at
    EOS, for the teacher's written targets and every model's outputs alike; e.g. a raw-prompted
    instruct model that goes on past its answer."""
    labels: list[str] = field(default_factory=list)
    """The label set, in a fixed order (this order is the order of every probability vector)."""
    prompt_template: str = "{text}\nAnswer:"
    """How a causal LM is asked: `{text}` is replaced by the example's text."""
    verbalizers: dict[str, str] = field(default_factory=dict)
    """Label -> the word a causal LM answers with (scored by its first token, e.g. ' positive')."""
    few_shot_template: str = "{prompt}{verbalizer}\n\n"
    """How one solved example is shown before the question: `{prompt}` and `{verbalizer}`."""
    description: str = ""
    """One line for `kdistill ls`."""

    def __post_init__(self) -> None:
        if self.kind == "multiple_choice":
            self._fill_option_labels()
        if self.kind == "generation" and (self.labels or self.verbalizers):
            raise KdistillError("task.labels and task.verbalizers belong to classification and multiple_choice "
                                "tasks; a generation task has a prompt and a target text. Remove them.")
        if self.max_new_tokens < 1:
            raise KdistillError(f"task.max_new_tokens must be >= 1; found {self.max_new_tokens}.")
        if self.labels and len(set(self.labels)) != len(self.labels):
            raise KdistillError(f"task.labels has duplicates: {self.labels}; list each label once.")
        if "{text}" not in self.prompt_template:
            raise KdistillError(
                "task.prompt_template must contain '{text}' where the example goes; "
                f"found {self.prompt_template!r}."
            )
        missing = [label for label in self.labels if label not in self.verbalizers]
        extra = [key for key in self.verbalizers if key not in self.labels]
        if self.verbalizers and (missing or extra):
            raise KdistillError(
                f"task.verbalizers must have exactly one entry per label; missing {missing}, "
                f"unknown {extra}. Labels are {self.labels}."
            )

    def _fill_option_labels(self) -> None:
        if self.num_options < 2:
            raise KdistillError(f"task.num_options must be >= 2 for a multiple_choice task; found {self.num_options}.")
        numbers = [str(i) for i in range(1, self.num_options + 1)]
        if self.labels and self.labels != numbers:
            raise KdistillError(f"task.labels of a multiple_choice task are the option numbers {numbers}; "
                                f"found {self.labels}. Remove task.labels (they are filled in).")
        self.labels = numbers
        self.verbalizers = self.verbalizers or {n: f" {n}" for n in numbers}


@dataclass(kw_only=True)
class DataConfig:
    """Where the examples come from and how they are cleaned and split."""

    source: Literal["csv", "jsonl", "parquet", "folder", "hf", "winogrande", "social_iqa", "aqua_rat",
                    "triviaqa", "chatterbot", "bbc_articles"] = "csv"
    """File format: csv, jsonl, parquet, folder (`<label>/*.txt`) or hf (a 🤗 datasets name);
    multiple choice: winogrande, social_iqa, aqua_rat (their public jsonl files); generation:
    jsonl (`text_field` the prompt, `target_field` the target), triviaqa (its json), chatterbot
    (chatterbot-corpus YAML question/answer pairs), bbc_articles (a folder of <topic>/*.txt)."""
    path: str = ""
    """File or folder path (relative paths are relative to the config file), `asset:NAME` for a
    built-in data asset, or the 🤗 datasets name when `source: hf`."""
    text_field: str = "text"
    """Column holding the input text."""
    label_field: str = "label"
    """Column holding the gold label."""
    target_field: str = "target"
    """generation, jsonl: the field holding the reference target (may be absent when the teacher writes them)."""
    labels_path: str = ""
    """social_iqa only: the `*-labels.lst` file with one answer (1-3) per line, if the answers are not in the jsonl."""
    columns: list[str] = field(default_factory=list)
    """For a CSV without a header row: the column names in order."""
    encoding: str = "utf-8"
    """Text encoding of csv / jsonl / folder files (e.g. utf-8-sig, latin-1); several, comma-separated,
    are tried in order per file (utf-8,latin-1 for a folder that mixes them)."""
    hf_config: str | None = None
    """🤗 datasets configuration name, if the dataset has several."""
    hf_split: str = "train"
    """🤗 datasets split to read; kdistill makes its own train / validation / test split from it."""
    label_map: dict[str, str] = field(default_factory=dict)
    """Raw label value -> task label (e.g. '-1': negative). Unmapped values must be task labels."""
    ignore_labels: list[str] = field(default_factory=list)
    """Raw label values whose rows are skipped on purpose (e.g. the BBC topics a task leaves out)."""
    max_examples: int | None = None
    """Keep at most this many examples (a stratified sample, after deduplication)."""
    num_labelled: int | None = None
    """Keep gold labels for only this many training examples (stratified); the rest of the training
    split becomes a transfer set of unlabelled text that only the teacher labels. The labels-only
    student then trains on the labelled part. None keeps every label."""
    min_chars: int = 1
    """Texts shorter than this after normalization are reported as bad rows."""
    max_chars: int = 2000
    """Texts are cut to this many characters (at a word boundary) after normalization."""
    validation_fraction: float = 0.1
    """Share of examples held out for early stopping and model selection."""
    test_fraction: float = 0.2
    """Share of examples held out for the report card; never seen in training."""
    split_seed: int = 0
    """Seed of the stratified split and of the `max_examples` sample."""

    def __post_init__(self) -> None:
        if not 0 < self.test_fraction < 1 or not 0 <= self.validation_fraction < 1:
            raise KdistillError("data.test_fraction must be in (0, 1) and data.validation_fraction in [0, 1).")
        if self.test_fraction + self.validation_fraction >= 0.9:
            raise KdistillError(
                "data.test_fraction + data.validation_fraction must leave at least 10 % for training; "
                f"found {self.test_fraction} + {self.validation_fraction}."
            )
        if self.max_examples is not None and self.max_examples < 10:
            raise KdistillError(f"data.max_examples must be at least 10; found {self.max_examples}.")
        if self.num_labelled is not None and self.num_labelled < 2:
            raise KdistillError(f"data.num_labelled must be at least 2 (or null for all); found {self.num_labelled}.")
        if self.min_chars < 1 or self.max_chars < self.min_chars:
            raise KdistillError("data.min_chars must be >= 1 and data.max_chars >= data.min_chars.")


@dataclass(kw_only=True)
class ModelConfig:
    """A teacher or student model."""

    model: str = ""
    """A built-in model name (see `kdistill ls`), a local directory, a .gguf file, or a hub id."""
    kind: Literal["auto", "causal_lm", "encoder"] = "auto"
    """Adapter: causal_lm (label logits from verbalizer tokens) or encoder (classification head)."""
    revision: str | None = None
    """Hub revision (branch, tag or commit) when `model` is a hub id."""
    trust_remote_code: bool = False
    """Allow code shipped with a hub model to run. Off unless you trust the model's authors."""
    max_length: int = 256
    """Longest input in tokens; longer inputs are truncated from the left of the text."""
    batch_size: int = 16
    """Batch size for inference (elicitation, evaluation)."""
    input_template: str = "{text}"
    """Encoder students: how the text is given to the model (`{text}`)."""


@dataclass(kw_only=True)
class EndpointConfig:
    """A teacher behind an OpenAI-compatible HTTP API (llama-server, vLLM, TGI, a hosted API).

    The teacher's `model` is the model name sent with each request. The API key is read from the
    environment variable `api_key_env` when a request is sent; it is never written anywhere.
    """

    base_url: str
    """OpenAI-style base URL, e.g. http://127.0.0.1:8080/v1; a bare http://host:port means /v1."""
    api: Literal["completions", "chat"] = "completions"
    """completions: /v1/completions on the raw prompt (comparable with an in-process teacher);
    chat: /v1/chat/completions with the prompt as one user message (for chat-only APIs)."""
    api_key_env: str = "KDISTILL_API_KEY"
    """Name of the environment variable holding the API key; unset or empty sends no key."""
    top_logprobs: int = 20
    """Alternatives asked for the first answer token (OpenAI allows 20 for chat, 5 for completions)."""
    max_concurrency: int = 4
    """Requests in flight at once."""
    timeout_s: float = 60.0
    """Seconds to wait for the server to send data before the attempt counts as timed out."""
    max_retries: int = 6
    """Retries per request after the first attempt, for timeouts, 5xx, 429 and malformed replies."""
    backoff_s: float = 1.0
    """First retry delay; doubled each retry, with jitter, up to max_backoff_s."""
    max_backoff_s: float = 30.0
    """Longest delay between retries (a Retry-After header may ask for longer, up to 300 s)."""
    extra_body: dict[str, Any] = field(default_factory=dict)
    """Extra JSON fields for every request (server-specific options); part of the journal key."""

    def __post_init__(self) -> None:
        url = self.base_url.rstrip("/")
        if not re.match(r"^https?://[^/@\s]+(/\S*)?$", url):
            raise KdistillError(
                f"teacher.endpoint.base_url {hide_userinfo(self.base_url)!r} is not an http(s) URL without "
                f"credentials; write it like http://127.0.0.1:8080/v1 and put the key in ${self.api_key_env}.")
        self.base_url = url if re.match(r"^https?://[^/]+/.", url) else url + "/v1"
        if self.top_logprobs < 1 or self.max_concurrency < 1 or self.max_retries < 0:
            raise KdistillError("teacher.endpoint.top_logprobs and max_concurrency must be >= 1 and max_retries "
                                f">= 0; found {self.top_logprobs}, {self.max_concurrency}, {self.max_retries}.")
        if self.timeout_s <= 0 or self.backoff_s < 0 or self.max_backoff_s < self.backoff_s:
            raise KdistillError("teacher.endpoint.timeout_s must be > 0 and 0 <= backoff_s <= max_backoff_s.")

    @property
    def server_root(self) -> str:
        """Where llama.cpp's non-OpenAI routes (/tokenize, /health) live."""
        return re.sub(r"/v1$", "", self.base_url)


def hide_userinfo(url: str) -> str:
    """``url`` with any user:password@ masked, for error messages."""
    return re.sub(r"//[^/@]*@", "//***@", url)


@dataclass(kw_only=True)
class TeacherConfig(ModelConfig):
    """A teacher and how its knowledge is elicited."""

    name: str = ""
    """Its name on the report card and in logs; default: the model's name."""
    finetune: bool = False
    """Fine-tune this teacher on the task's labelled training examples first (seed 000's "fine-tune
    the instructor"; teacher correction). Needed for an encoder without a task head."""
    finetune_epochs: int = 3
    """Epochs of that fine-tuning (early stopping on validation macro-F1 as for students)."""
    finetune_learning_rate: float = 5e-5
    """Peak learning rate of that fine-tuning."""
    few_shot_per_label: int = 0
    """Solved training examples per label shown in the prompt (seed knowledge)."""
    calibrate: bool = False
    """Divide out the label bias the prompt has on content-free inputs (Zhao et al., 2021)."""
    content_free_inputs: list[str] = field(default_factory=lambda: ["N/A", "", "[MASK]"])
    """Inputs whose averaged label distribution is the prompt's bias, when `calibrate` is on."""
    recalibrate: Literal["none", "temperature", "affine"] = "affine"
    """Fit the teacher's label probabilities to the labelled training examples: `temperature`
    (one scalar: confidence that matches accuracy; never changes the argmax) or `affine`
    (temperature + one offset per label: also removes the prompt's lean towards one label).
    A prompted LLM is often timid (0.55 where it is right 80 % of the time) and biased."""
    token_top_k: int = 32
    """generation: the teacher's top-k log-probs kept per target token (plus the tail mass) for token-level KD."""
    sampling: bool = False
    """generation: sample the teacher's written targets (with sampling_temperature, top_p and
    sampling_seed, all part of the cache key) instead of greedy decoding."""
    sampling_temperature: float = 1.0
    """generation with sampling: the decoding temperature (not the KD temperature)."""
    top_p: float = 1.0
    """generation with sampling: nucleus sampling's probability mass."""
    sampling_seed: int = 0
    """generation with sampling: the seed that makes the teacher's targets reproducible."""
    endpoint: EndpointConfig | None = None
    """Ask this teacher over an OpenAI-compatible API instead of loading it: `model` is then the
    name sent to the server (see `kdistill ls` for the fields). Causal-LM prompting only."""

    def __post_init__(self) -> None:
        if self.endpoint is not None:
            if self.kind == "encoder" or self.finetune:
                raise KdistillError(f"teacher {self.display_name!r}: an endpoint teacher is a prompted LM on its "
                                    "server; it cannot be an encoder or be fine-tuned here (remove `endpoint`, "
                                    "or set kind: auto and finetune: false).")
            self.kind = "causal_lm"

    @property
    def is_endpoint(self) -> bool:
        return self.endpoint is not None

    @property
    def display_name(self) -> str:
        return self.name or Path(self.model.rstrip("/")).name


@dataclass(kw_only=True)
class EnsembleConfig:
    """How several teachers' label distributions become one (used when `teachers` lists any)."""

    combine: Literal["mean", "weighted", "learned", "confidence", "gold_agreement"] = "learned"
    """mean: equal weights; weighted: `weights`; learned: weights that maximize the validation split's
    gold-label likelihood; confidence: per example, by each teacher's top probability; gold_agreement:
    per example, by the probability each teacher gives the gold label (confidence where there is none)."""
    weights: list[float] = field(default_factory=list)
    """Fixed weights for `weighted`, one per teacher in order (teacher first, then `teachers`)."""


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
    learning_rate: float = 5e-5
    """Peak AdamW learning rate."""
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
    keep_checkpoints: int = 1
    """How many of the newest checkpoints to keep."""
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
        if self.batch_size % self.grad_accum_steps:
            raise KdistillError(
                f"training.batch_size ({self.batch_size}) must be divisible by training.grad_accum_steps "
                f"({self.grad_accum_steps})."
            )
        if self.trainable_layers is not None and self.trainable_layers < 1:
            raise KdistillError(f"training.trainable_layers must be >= 1 (or null for all); found {self.trainable_layers}.")
        if self.sharding == "fsdp" and self.mixed_precision == "fp16":
            raise KdistillError("training.sharding: fsdp does not train in fp16 (its loss scaler would have to agree "
                                "across the processes): set training.mixed_precision to bf16, no or auto.")
        if not 0.0 <= self.on_policy_fraction <= 1.0 or self.on_policy_temperature < 0:
            raise KdistillError("training.on_policy_fraction must be in [0, 1] and training.on_policy_temperature "
                                f">= 0; found {self.on_policy_fraction} and {self.on_policy_temperature}.")
        if self.novel_token_weight <= 0:
            raise KdistillError(f"training.novel_token_weight must be > 0 (1 weighs every target token alike); "
                                f"found {self.novel_token_weight}.")
        if self.on_policy_fraction > 0 and self.sharding == "fsdp":
            raise KdistillError("training.on_policy_fraction needs the student whole in every process to generate; "
                                "set training.sharding: none (DDP) or on_policy_fraction: 0.")
        if self.epochs < 1 or self.learning_rate <= 0:
            raise KdistillError("training.epochs must be >= 1 and training.learning_rate > 0.")


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
    """More teachers: with any, the student learns from the ensemble of `teacher` and these."""
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

    def _check_generation(self) -> None:
        unsupported = [name for name, on in [("teachers (an ensemble)", bool(self.teachers)),
                                             ("objective.hidden", self.objective.hidden.weight > 0),
                                             ("objective.balance", self.objective.balance.weight > 0),
                                             ("teacher.endpoint", self.teacher.is_endpoint),
                                             ("teacher.finetune", self.teacher.finetune),
                                             ("data.num_labelled", self.data.num_labelled is not None)] if on]
        if unsupported:
            raise KdistillError(f"a generation task does not support {', '.join(unsupported)} yet: one in-process "
                                "causal-LM teacher, and the ce and kd terms. Remove them from the config.")
        if "encoder" in (self.teacher.kind, self.student.kind):
            raise KdistillError("a generation task needs causal-LM teacher and student (kind: auto or causal_lm); "
                                "an encoder cannot write text.")

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


# --------------------------------------------------------------------------------------------
# Loading from plain data, with errors that name the field and suggest the fix


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def _convert(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        errors = []
        for alternative in inner:
            try:
                return _convert(value, alternative, where)
            except KdistillError as err:
                errors.append(str(err))
        raise KdistillError(errors[0] if len(errors) == 1 else
                            f"{where}: {value!r} fits none of {', '.join(_type_name(a) for a in inner)}.")
    if origin is Literal:
        if value not in args:
            hint = difflib.get_close_matches(str(value), [str(a) for a in args], n=1)
            extra = f" Did you mean {hint[0]!r}?" if hint else ""
            raise KdistillError(f"{where}: {value!r} is not one of {list(args)}.{extra}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise KdistillError(f"{where}: expected a list, found {type(value).__name__} {value!r}.")
        return [_convert(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise KdistillError(f"{where}: expected a mapping, found {type(value).__name__} {value!r}.")
        return {str(k): _convert(v, args[1], f"{where}.{k}") for k, v in value.items()}
    if tp is float:
        try:  # YAML reads 2e-4 (no dot) as a string
            if not isinstance(value, bool):
                return float(value)
        except (TypeError, ValueError):
            pass
        raise KdistillError(f"{where}: expected a number, found {type(value).__name__} {value!r}.")
    if tp is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if tp in (int, str, bool) and not (isinstance(value, tp) and (tp is bool or not isinstance(value, bool))):
        raise KdistillError(f"{where}: expected {_type_name(tp)}, found {type(value).__name__} {value!r}.")
    return value


_RENAMED = {  # fields of earlier releases, and what replaces them
    "alpha": "write `ce: {weight: 1 - alpha}` and `kd: {weight: alpha}` instead.",
    "kd_temperature": "write `kd: {temperature: T}` instead.",
}


def from_dict(cls: type, data: Any, where: str = "config") -> Any:
    """Build dataclass ``cls`` from ``data``; unknown keys and wrong types raise KdistillError."""
    if isinstance(data, cls):
        return data
    if not isinstance(data, dict):
        raise KdistillError(f"{where}: expected a mapping of fields, found {type(data).__name__} {data!r}.")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    kwargs = {}
    for key, value in data.items():
        if key not in names and key in _RENAMED:
            raise KdistillError(f"{where}: {key!r} is gone; {_RENAMED[key]}")
        if key not in names:
            hint = difflib.get_close_matches(str(key), names, n=1)
            extra = f" Did you mean {hint[0]!r}?" if hint else f" Known fields: {', '.join(names)}."
            raise KdistillError(f"{where}: unknown field {key!r}.{extra}")
        kwargs[key] = _convert(value, hints[key], f"{where}.{key}")
    try:
        return cls(**kwargs)
    except KdistillError as err:
        raise KdistillError(f"{where}: {err}") from None


def field_docs(cls: type) -> dict[str, str]:
    """The docstring under each field of a config dataclass (what `kdistill ls` and the README show)."""
    import ast
    import inspect
    import textwrap

    body = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0].body
    docs = {}
    for node, after in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant):
            docs[node.target.id] = " ".join(str(after.value.value).split())
    return docs


def to_dict(obj: Any) -> dict[str, Any]:
    """Plain-data form of a config (what `config.yaml` in a run directory holds)."""
    return dataclasses.asdict(obj)


def dump_yaml(config: RunConfig) -> str:
    data = to_dict(config)
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise KdistillError(f"{path}: no such config file.") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark else ""
        raise KdistillError(f"{path}:{line} is not valid YAML: {getattr(err, 'problem', err)}.") from None
    if not isinstance(data, dict):
        raise KdistillError(f"{path}: a config must be a YAML mapping of sections (task, data, teacher, ...).")
    return data


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Load a run config from YAML (``None`` = the built-in default job).

    ``task: NAME`` pulls a built-in task, whose YAML also gives the default ``data`` section.
    """
    from kdistill.tasks import builtin_config_path  # tasks imports this module

    if path is None:
        path = builtin_config_path("default")
    elif not Path(path).exists() and not str(path).endswith((".yaml", ".yml")):
        path = builtin_config_path(str(path))  # a built-in config by name, e.g. `kdistill run news-topics`
    path = Path(path)
    data = _read_yaml(path)
    apply_overrides(data, overrides or {})
    config = from_dict(RunConfig, data, str(path))
    _resolve_data_path(config.data, path.parent)
    return config


def _resolve_data_path(data: DataConfig, config_dir: Path) -> None:
    """Make a relative data path absolute, so the resolved config.yaml runs from anywhere."""
    if data.source == "hf" or not data.path or data.path.startswith("asset:"):
        return
    if not Path(data.path).is_absolute():
        data.path = str((config_dir / data.path).resolve())


def expand_builtin_task(data: dict[str, Any]) -> None:
    """``task: NAME`` in plain config data -> the built-in task's section, and the task's own data with
    the data settings already there (e.g. --set data.num_labelled=300) on top, unless they name a path
    or source of their own."""
    from kdistill.tasks import load_builtin_task  # tasks imports this module

    task = data.get("task")
    if not isinstance(task, str):
        return
    builtin = load_builtin_task(task)
    data["task"] = builtin["task"]
    user_data = data.get("data") or {}
    if "data" in builtin and not {"path", "source"} & set(user_data):
        data["data"] = {**builtin["data"], **user_data}


def apply_overrides(data: dict[str, Any], overrides: dict[str, Any]) -> None:
    """Set each dotted key of ``overrides`` in plain config data, and expand a built-in task name. A setting
    inside the task (``task.max_new_tokens``) goes on after the expansion, onto the built-in task's
    section: before it, ``task`` is still a name."""
    inside_task = {key: value for key, value in overrides.items() if key.startswith("task.")}
    for key, value in overrides.items():
        if key not in inside_task:
            set_dotted(data, key, value)
    expand_builtin_task(data)
    for key, value in inside_task.items():
        set_dotted(data, key, value)


def set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    node = data
    *parents, leaf = dotted.split(".")
    for depth, key in enumerate(parents, 1):
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            where = ".".join(parents[:depth])
            raise KdistillError(f"cannot set {dotted}: {where} is the value {node!r}, not a section; set {where} "
                                "itself, or give it as a section first.")
    node[leaf] = value
