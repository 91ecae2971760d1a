"""The models of a run: the student, each teacher (local, endpoint, fine-tuned) and how an ensemble weighs them."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from kdistill.config.checks import check_ranges
from kdistill.errors import KdistillError


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

    def __post_init__(self) -> None:
        check_ranges("", self, max_length=">= 1", batch_size=">= 1")


@dataclass(kw_only=True)
class EndpointConfig:
    """A teacher behind an OpenAI-compatible HTTP API (llama-server, vLLM, TGI, a hosted API), either one you
    run (`base_url`) or one kdistill starts and stops itself (`serve`).

    The teacher's `model` is the model name sent with each request (with `serve`: the .gguf file or the built-in
    model with a GGUF to serve). The API key is read from the environment variable `api_key_env` when a request
    is sent; it is never written anywhere.
    """

    base_url: str = ""
    """OpenAI-style base URL, e.g. http://127.0.0.1:8080/v1; a bare http://host:port means /v1. Empty with `serve`."""
    serve: bool = False
    """kdistill starts llama.cpp's llama-server on the teacher's `model` (a .gguf file, or a built-in model with a
    GGUF such as qwen2.5-coder-1.5b-instruct) on a free loopback port, and stops it when the run ends however it
    ends; a server that dies mid-run is started again. Needs the binary `.ci/llama_server.sh` builds."""
    parallel: int = 0
    """With `serve`: llama-server's parallel slots (requests decoded together); 0 sizes it to the machine's cores.
    The client then keeps as many requests in flight (at least max_concurrency)."""
    threads: int = 0
    """With `serve`: llama-server's CPU threads; 0 means every core this process may use."""
    ctx_per_slot: int = 4096
    """With `serve`: context tokens per slot (prompt + answer); the server gets parallel x this."""
    server_args: list[str] = field(default_factory=list)
    """With `serve`: extra llama-server command-line arguments (part of the cache key, as they may change answers)."""
    tokenizer_mismatch: Literal["error", "sequence_kd"] = "error"
    """Generation tasks: token-level KD needs the served teacher to tokenize as the student does (checked with the
    server's /tokenize on probe texts). error stops with the differences; sequence_kd goes on with the teacher's
    written targets alone (no per-token rows; the distilled student then equals sequence_kd)."""
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
        if self.serve == bool(self.base_url):
            raise KdistillError("teacher.endpoint: give either base_url (a server you run) or serve: true (kdistill "
                                f"starts llama-server on teacher.model); found base_url={self.base_url!r}, "
                                f"serve={self.serve}.")
        check_ranges("teacher.endpoint.", self, parallel=">= 0", threads=">= 0", ctx_per_slot=">= 1")
        if self.serve:
            return
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
class SelectionConfig:
    """How `teacher.budget` pool texts are chosen: in rounds, each scored by a student trained on what the teacher
    has answered so far."""

    strategy: Literal["random", "active", "typical"] = "random"
    """random: a seeded random draw each round (measured best on the default job's pool, docs/how-it-works.md);
    active: the texts the current student is least sure of (predictive entropy), spread over k-means clusters of its
    embeddings; typical: the most representative text of each k-means cluster of its embeddings (TypiClust)."""
    rounds: int = 4
    """Rounds of selection; each trains one student and asks the teacher about budget / rounds new texts."""
    diversity: Literal["kmeans", "none"] = "kmeans"
    """active: kmeans picks the most uncertain text of each of budget / rounds clusters of the student's pooled
    embeddings (of the 10x most uncertain candidates); none takes the most uncertain texts as they come."""

    def __post_init__(self) -> None:
        check_ranges("", self, rounds=">= 1")


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
    """generation: the teacher's top-k log-probs kept per target token (plus the tail mass) for token-level KD;
    with `teachers`, each one's own, and the first teacher's is also the k kept of their per-token mixture."""
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
    budget: int | None = None
    """Label tasks: the most training texts without gold labels (the transfer set of data.num_labelled, the
    data.unlabeled pool) the teacher is asked about, chosen in rounds (`selection`); null asks about all of them.
    The labelled training texts, validation and test are always asked besides. With `teachers`, set it here only:
    it is the ensemble's, and every member is asked about each chosen text."""
    selection: SelectionConfig = field(default_factory=SelectionConfig)
    """With `budget`: how the pool texts are chosen (ignored without one)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_ranges("", self, finetune_epochs=">= 1", finetune_learning_rate="> 0", few_shot_per_label=">= 0",
                     token_top_k=">= 1", sampling_temperature="> 0", top_p="in (0, 1]", budget=">= 1")
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
    """How several teachers' distributions become one (used when `teachers` lists any): over the labels, or
    for a generation task at each target token."""

    combine: Literal["auto", "mean", "weighted", "learned", "confidence", "gold_agreement"] = "auto"
    """mean: equal weights; weighted: `weights`; learned: weights that maximize the validation split's
    gold-label likelihood; confidence: per example, by each teacher's top probability; gold_agreement:
    per example, by the probability each teacher gives the gold label (confidence where there is none).
    auto: learned for a label task, mean for a generation task. A generation task mixes the teachers per
    target token and takes mean, weighted or confidence (per token, by each teacher's top probability there)."""

    def resolved(self, task_kind: str) -> str:
        """The combine actually used for a task of ``task_kind``: `auto` spelt out."""
        if self.combine != "auto":
            return self.combine
        return "mean" if task_kind == "generation" else "learned"
    weights: list[float] = field(default_factory=list)
    """Fixed weights for `weighted`, one per teacher in order (teacher first, then `teachers`)."""


