"""Which pool texts to ask the teacher about next: scores of a student's uncertainty and a diverse pick.

Pure functions of tensors (and one read-only pass of a student over texts); the rounds, the teacher and
the record live in `kdistill.recipes.selection`.

Active selection takes the texts the current student is least sure of: the predictive entropy of its
label distribution. The most uncertain texts of a pool are often near-copies of one another (one
confusing phrasing, many times), so a batch of them teaches the student one thing; clustering the
candidates' embeddings and taking the most uncertain text of each cluster spreads the batch over the
pool (Zhdanov, 2019, "Diverse mini-batch active learning").

Typical selection does the opposite: it takes the most representative text of each k-means cluster of
the candidates, no uncertainty at all. With a teacher that is itself wrong on the hard texts, the most
uncertain texts are where its answers are noise (measured on the default job: docs/how-it-works.md).
At small budgets typical texts taught more than uncertain ones in Hacohen et al., 2022 ("Active learning
on a budget"); on the default job neither beat a random draw (docs/how-it-works.md), so random is the default.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from kdistill.models import LabelModel

# k-means runs over this many times the batch's most uncertain candidates: enough choice for every cluster to
# hold an uncertain text, few enough that a certain text never wins a cluster of its own (Zhdanov's beta)
PREFILTER_FACTOR = 10
# a text's typicality: the inverse of its mean distance to this many nearest candidates (TypiClust's K)
TYPICALITY_NEIGHBOURS = 20


def round_sizes(budget: int, rounds: int) -> list[int]:
    """New texts asked each round: the budget split as evenly as it goes, the earlier rounds taking the rest."""
    return [budget // rounds + (1 if r < budget % rounds else 0) for r in range(rounds)]


def predictive_entropy(logits_nl: torch.Tensor) -> torch.Tensor:
    """(N,) entropy of each row's label distribution, in nats (0: sure; log L: no idea)."""
    logp_nl = F.log_softmax(logits_nl.float(), dim=-1)
    return -(logp_nl.exp() * logp_nl).sum(-1)


@torch.no_grad()
def student_view(model: LabelModel, texts: list[str], *, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, L) label logits and (N, D) pooled last-layer embeddings of ``texts``, in input order; length-sorted
    batches, as elicitation does, so padding costs little."""
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    logits_nl = torch.empty(len(texts), len(model.labels))
    embeddings_nd = torch.empty(len(texts), model.hidden_size)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        logits_bl, pooled_b1d = model.predict_logits_and_hidden([texts[i] for i in idx], [model.num_layers],
                                                                model.default_pool)
        logits_nl[idx], embeddings_nd[idx] = logits_bl, pooled_b1d[:, 0]
    return logits_nl, embeddings_nd


def pick_random(num_candidates: int, size: int, seed: int | tuple[int, ...]) -> list[int]:
    """``size`` distinct candidate indices, a seeded uniform draw (the baseline), in ascending order."""
    return sorted(np.random.default_rng(seed).choice(num_candidates, size=size, replace=False).tolist())


def pick_active(entropy_n: torch.Tensor, embeddings_nd: torch.Tensor, size: int, *, diversity: str,
                seed: int) -> list[int]:
    """``size`` candidate indices, in ascending order: the most uncertain (``diversity`` none), or the most
    uncertain of each of ``size`` k-means clusters of the most uncertain PREFILTER_FACTOR × size candidates."""
    # ties broken by index, so the same scores give the same pick on any machine
    by_uncertainty = sorted(range(len(entropy_n)), key=lambda i: (-float(entropy_n[i]), i))
    if diversity == "none" or size == 1:
        return sorted(by_uncertainty[:size])
    shortlist = by_uncertainty[:PREFILTER_FACTOR * size]
    if len(shortlist) == size:
        return sorted(shortlist)
    clusters = _kmeans(embeddings_nd[shortlist], size, seed)
    # the shortlist runs most uncertain first: the first seen of each cluster is its most uncertain
    return _first_of_each_cluster(shortlist, dict(zip(shortlist, clusters)), size)


def _unit(embeddings_nd: torch.Tensor) -> np.ndarray:
    """Unit rows: a cluster or a neighbourhood is a direction of meaning, not a text's length or norm."""
    return F.normalize(embeddings_nd.double(), dim=-1).numpy()


def _kmeans(embeddings_nd: torch.Tensor, clusters: int, seed: int) -> np.ndarray:
    """(N,) the k-means cluster of each row's unit vector."""
    from sklearn.cluster import KMeans

    return KMeans(n_clusters=clusters, n_init=4, random_state=seed).fit_predict(_unit(embeddings_nd))


def _first_of_each_cluster(ranked: list[int], cluster_of: dict[int, int], size: int) -> list[int]:
    """``size`` indices, in ascending order: the best-ranked index of each cluster. Identical embeddings can
    leave a cluster empty; the next best-ranked indices fill the batch then."""
    best: dict[int, int] = {}
    for i in ranked:
        best.setdefault(int(cluster_of[i]), i)
    picked = list(best.values())
    if len(picked) < size:
        taken = set(picked)
        picked += [i for i in ranked if i not in taken][:size - len(picked)]
    return sorted(picked)


def typicality(embeddings_nd: torch.Tensor, neighbours: int = TYPICALITY_NEIGHBOURS) -> torch.Tensor:
    """(N,) how typical each row is of the rows around it: the inverse of its mean distance to its ``neighbours``
    nearest other rows, as unit vectors (Euclidean between unit vectors: the order cosine distance gives;
    higher: a denser neighbourhood)."""
    from sklearn.neighbors import NearestNeighbors

    points_nd = _unit(embeddings_nd)
    k = min(neighbours, len(points_nd) - 1)
    if k < 1:
        return torch.ones(len(points_nd), dtype=torch.float64)
    # k + 1: each point is its own nearest neighbour, at distance 0
    distances_nk, _ = NearestNeighbors(n_neighbors=k + 1).fit(points_nd).kneighbors(points_nd)
    return torch.from_numpy(1.0 / (distances_nk[:, 1:].mean(axis=1) + 1e-12))


def pick_typical(embeddings_nd: torch.Tensor, size: int, *, seed: int) -> list[int]:
    """``size`` candidate indices, in ascending order: the most typical text of each of ``size`` k-means
    clusters of all the candidates' unit embeddings (TypiClust, Hacohen et al., 2022)."""
    if size >= len(embeddings_nd):
        return list(range(len(embeddings_nd)))
    typical_n = typicality(embeddings_nd)
    # ties broken by index, so the same embeddings give the same pick on any machine
    by_typicality = sorted(range(len(typical_n)), key=lambda i: (-float(typical_n[i]), i))
    clusters = _kmeans(embeddings_nd, size, seed)
    return _first_of_each_cluster(by_typicality, dict(enumerate(clusters)), size)
