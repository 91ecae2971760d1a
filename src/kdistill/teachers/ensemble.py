"""Several teachers in label space: their distributions mixed into one, by fixed, learned or per-example weights.

Teachers may be of any family and tokenizer (a prompted LLM, a fine-tuned encoder): in label space
they all answer the same question. The mixture is of probabilities, log sum_k w_k p_k computed with
logsumexp (never the log of a sum of exps, which underflows to -inf and then NaN).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def mixture(logprobs_knl: torch.Tensor, weights_nk: torch.Tensor) -> torch.Tensor:
    """(N, L) log of sum_k w_nk p_knl, with the weights of each example normalized to sum to 1."""
    weights_nk = weights_nk / weights_nk.sum(-1, keepdim=True)
    log_w_kn1 = weights_nk.clamp(min=0).log().T.unsqueeze(-1)  # (K, N, 1); log 0 = -inf drops a teacher
    return torch.logsumexp(logprobs_knl + log_w_kn1, dim=0)


def confidence_weights(logprobs_knl: torch.Tensor) -> torch.Tensor:
    """(N, K) each teacher's top probability for each example: the more certain count more."""
    return logprobs_knl.exp().amax(-1).T


def gold_agreement_weights(logprobs_knl: torch.Tensor, gold_n: torch.Tensor, has_gold_n: torch.Tensor) -> torch.Tensor:
    """(N, K) the probability each teacher gives the gold label; its confidence where there is no gold label.

    Only for training targets: it looks at the answer, so it must never weigh a test example.
    """
    gold_kn = logprobs_knl.exp().gather(-1, gold_n.view(1, -1, 1).expand(logprobs_knl.shape[0], -1, 1)).squeeze(-1)
    weights_nk = torch.where(has_gold_n[:, None], gold_kn.T, confidence_weights(logprobs_knl))
    return weights_nk.clamp(min=1e-6)  # a teacher wrong on every label still counts a little, never 0/0


def fit_weights(logprobs_knl: torch.Tensor, gold_n: torch.Tensor, *, steps: int = 100) -> torch.Tensor:
    """(K,) mixture weights that maximize the gold labels' likelihood (fitted on the validation split)."""
    num_teachers = logprobs_knl.shape[0]
    logits_k = torch.zeros(num_teachers, requires_grad=True)
    optimizer = torch.optim.LBFGS([logits_k], lr=0.5, max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        weights_nk = F.softmax(logits_k, -1).expand(logprobs_knl.shape[1], -1)
        loss = F.nll_loss(mixture(logprobs_knl, weights_nk), gold_n)
        loss.backward()
        return loss

    optimizer.step(closure)
    return F.softmax(logits_k.detach(), -1)
