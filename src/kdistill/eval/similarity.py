"""Semantic similarity of texts with a sentence-embedding model, and the human judgements that check it.

:class:`SimilarityScorer` embeds texts the way sentence-transformers does for its
``all-*`` models (a transformers encoder, mean pooling over the attention mask, L2 normalization;
read from the folder's ``1_Pooling/config.json`` and ``sentence_bert_config.json`` when present)
and scores a pair by the cosine of the two embeddings. It uses transformers directly, not the
sentence-transformers package.

A cosine between a summary and its reference is a similarity, not a correlation. Whether the scorer
agrees with people is a separate question, answered on the Lee corpus (:func:`lee_similarity`):
the Pearson correlation, over document pairs, between its cosines and human similarity ratings
(``benchmarks/sts_scorer.py``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from kdistill.errors import KdistillError

DEFAULT_SCORER = "all-MiniLM-L6-v2"
LEE_NUM_DOCUMENTS = 50


def _pooling_mode(folder: Path) -> str:
    """``mean`` or ``cls``, from a sentence-transformers folder's pooling config (``mean`` without one)."""
    config_path = folder / "1_Pooling" / "config.json"
    if not config_path.exists():
        return "mean"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    modes = [key.removeprefix("pooling_mode_").removesuffix("_token").removesuffix("_tokens")
             for key, on in config.items() if key.startswith("pooling_mode_") and on]
    if modes not in (["mean"], ["cls"]):
        raise KdistillError(f"{config_path}: pooling {modes} is not supported; use a model pooled by "
                            "mean or the CLS token alone.")
    return modes[0]


def _max_seq_length(folder: Path, tokenizer, encoder_config) -> int:
    """The model's trained input length (``sentence_bert_config.json``), else the smallest of the
    tokenizer's limit, the position table and 512."""
    config_path = folder / "sentence_bert_config.json"
    if config_path.exists():
        return int(json.loads(config_path.read_text(encoding="utf-8"))["max_seq_length"])
    return min(int(tokenizer.model_max_length), getattr(encoder_config, "max_position_embeddings", 512), 512)


class SimilarityScorer:
    """Cosine similarity of texts under a sentence-embedding model.

    ``model`` is a built-in asset name (``all-MiniLM-L6-v2``, ``all-mpnet-base-v2``), a local
    folder, or a hub id. Texts longer than ``max_length`` tokens (default: the model's own
    ``max_seq_length``) are truncated; :meth:`num_truncated` counts them.
    """

    def __init__(self, model: str = DEFAULT_SCORER, *, device: str = "auto", batch_size: int = 32,
                 max_length: int | None = None) -> None:
        from transformers import AutoModel, AutoTokenizer

        from kdistill.models import pick_device, resolve_model_path

        folder = Path(resolve_model_path(model))
        self.name = model
        self.device = pick_device(device)
        self.batch_size = batch_size
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.encoder = AutoModel.from_pretrained(folder).to(self.device).eval()
        self.pooling = _pooling_mode(folder)
        self.max_length = max_length or _max_seq_length(folder, self.tokenizer, self.encoder.config)

    @torch.no_grad()
    def embed(self, texts: Sequence[str]) -> torch.Tensor:
        """L2-normalized embeddings, one row per text, on the CPU. # (N, D)"""
        rows = []
        for start in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(list(texts[start:start + self.batch_size]), padding=True, truncation=True,
                                   max_length=self.max_length, return_tensors="pt").to(self.device)
            hidden_btd = self.encoder(**batch).last_hidden_state  # (B, T, D)
            rows.append(torch.nn.functional.normalize(self._pool(hidden_btd, batch["attention_mask"]), dim=-1))
        if not rows:
            return torch.empty(0, self.encoder.config.hidden_size)
        return torch.cat(rows).float().cpu()

    def _pool(self, hidden_btd: torch.Tensor, mask_bt: torch.Tensor) -> torch.Tensor:
        if self.pooling == "cls":
            return hidden_btd[:, 0]  # (B, D)
        mask_bt1 = mask_bt.unsqueeze(-1).to(hidden_btd.dtype)  # (B, T, 1)
        return (hidden_btd * mask_bt1).sum(1) / mask_bt1.sum(1).clamp(min=1e-9)  # (B, D)

    def similarity(self, a_texts: Sequence[str], b_texts: Sequence[str]) -> list[float]:
        """The cosine similarity of ``a_texts[i]`` and ``b_texts[i]`` for every i, in [-1, 1]."""
        if len(a_texts) != len(b_texts):
            raise KdistillError(f"similarity needs parallel lists, got {len(a_texts)} and {len(b_texts)} texts.")
        return (self.embed(a_texts) * self.embed(b_texts)).sum(-1).tolist()

    def similarity_matrix(self, texts: Sequence[str]) -> np.ndarray:
        """The cosine of every pair of ``texts``. # (N, N)"""
        embeddings_nd = self.embed(texts)
        return (embeddings_nd @ embeddings_nd.T).numpy()

    def num_truncated(self, texts: Sequence[str]) -> int:
        """How many of ``texts`` are longer than ``max_length`` tokens (special tokens included)."""
        lengths = [len(ids) for ids in self.tokenizer(list(texts), truncation=False)["input_ids"]]
        return sum(length > self.max_length for length in lengths)


def lee_similarity() -> tuple[list[str], np.ndarray]:
    """The Lee corpus: 50 news documents and the (50, 50) matrix of their mean human similarity ratings.

    From Lee, Pincombe & Welsh (2005), "An empirical evaluation of models of text document
    similarity", as shipped in gensim's test data (built-in asset ``lee-similarity``): ``lee.cor``
    holds one document per line (Latin-1), ``similarities0-1.txt`` the ratings of each pair, rescaled
    to [0, 1] (the 1-5 ratings divided by 5), as an upper triangle. It is returned symmetric, with 1
    on the diagonal. Compare a scorer on the 1,225 pairs above the diagonal, as gensim's own test does.
    """
    from kdistill.assets import fetch_data_asset

    folder = fetch_data_asset("lee-similarity")
    documents = (folder / "lee.cor").read_text(encoding="latin-1").splitlines()
    upper_dd = np.loadtxt(folder / "similarities0-1.txt")  # (D, D), zeros below the diagonal
    expected = (LEE_NUM_DOCUMENTS, LEE_NUM_DOCUMENTS)
    if len(documents) != LEE_NUM_DOCUMENTS or upper_dd.shape != expected or np.tril(upper_dd, -1).any():
        raise KdistillError(f"{folder}: expected {LEE_NUM_DOCUMENTS} documents and an upper-triangular {expected} "
                            f"matrix, found {len(documents)} and {upper_dd.shape}; delete the folder to fetch it "
                            "again.")
    return documents, np.triu(upper_dd) + np.triu(upper_dd, 1).T


def human_pearson(scorer: SimilarityScorer) -> float:
    """How far ``scorer`` can be trusted: the Pearson correlation of its cosines with the mean human
    ratings of the Lee corpus's 1,225 document pairs (the "STS Pearson" a report card quotes)."""
    from scipy import stats

    documents, human_dd = lee_similarity()
    upper = np.triu_indices(len(documents), k=1)
    return float(stats.pearsonr(scorer.similarity_matrix(documents)[upper], human_dd[upper]).statistic)
