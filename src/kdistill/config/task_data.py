"""What the run is about: the task (labels, prompt, verbalizers, targets) and where its data comes from."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from kdistill.errors import KdistillError


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


SPLIT_FILE_KEYS = ("train", "validation", "test", "unlabeled")
"""The data keys that name a user's own split files (and the unlabelled pool)."""


@dataclass(kw_only=True)
class DataConfig:
    """Where the examples come from and how they are cleaned and split."""

    source: Literal["csv", "jsonl", "parquet", "folder", "hf", "hf_disk", "winogrande", "social_iqa", "aqua_rat",
                    "triviaqa", "chatterbot", "bbc_articles"] = "csv"
    """File format: csv, jsonl, parquet, folder (`<label>/*.txt`), hf (a 🤗 datasets name) or hf_disk (a folder
    written by 🤗 `Dataset.save_to_disk`);
    multiple choice: winogrande, social_iqa, aqua_rat (their public jsonl files); generation:
    jsonl (`text_field` the prompt, `target_field` the target), triviaqa (its json), chatterbot
    (chatterbot-corpus YAML question/answer pairs), bbc_articles (a folder of <topic>/*.txt)."""
    path: str = ""
    """File or folder path (relative paths are relative to the config file), `asset:NAME` for a
    built-in data asset, or the 🤗 datasets name when `source: hf`."""
    train: str = ""
    """Your own training file, instead of `path`: csv, jsonl, parquet (by its extension) or a saved 🤗 dataset
    folder, relative to the config file. Splits not given (validation, test) are carved from it."""
    validation: str = ""
    """With `train`: your own validation file (early stopping, model selection); empty = `validation_fraction`
    of the training file, stratified."""
    test: str = ""
    """With `train`: your own test file, used as it is for the report card (texts also in it are dropped from
    the other splits); empty = `test_fraction` of the training file, stratified."""
    unlabeled: str = ""
    """A file of texts without labels (a label column is not read), added to the training split as a transfer
    set that only the teacher labels: the distilled student learns from it, the labels-only one does not.
    Works with `path` or `train`; texts also in another split are dropped from it."""
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

    @property
    def split_files(self) -> dict[str, str]:
        """Each of data.train / validation / test / unlabeled that is given -> its path."""
        return {key: getattr(self, key) for key in SPLIT_FILE_KEYS if getattr(self, key)}

    def __post_init__(self) -> None:
        if self.path and self.train:
            raise KdistillError("data.path and data.train are both given: use data.path for one source that kdistill "
                                "splits, or data.train (with data.validation / data.test) for your own split files.")
        for key in ("validation", "test"):
            if getattr(self, key) and not self.train:
                raise KdistillError(f"data.{key} needs data.train: give your training file as data.train (with "
                                    f"data.path, kdistill carves the {key} split itself).")
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


