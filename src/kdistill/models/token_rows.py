"""A causal-LM teacher's token-level targets for prompt + target sequences: per target token, its top-k
log-probabilities and the log of the mass left over (the "tail"), as the teacher cache stores them.

Only the target tokens are elicited (the positions whose next token is a target token, as in
`token_kd`), so the cache holds exactly the rows the student trains on, in order. Batches are
left-padded so that every target ends at the last position, and the teacher computes logits only for
the last (longest target + 1) positions (`logits_to_keep`); no vocabulary-wide tensor outlives its batch.

`sequence_states` gives the hidden term's teacher side: pooled hidden states of chosen layers over the same
prompt + target sequences, as the student reads them in training.
"""

from __future__ import annotations

import numpy as np
import torch

from kdistill.cache.shard import TokenRow
from kdistill.errors import KdistillError
from kdistill.losses.divergences import SparseTargets
from kdistill.losses.token_kd import encode_targets
from kdistill.models.base import pool_states


@torch.no_grad()
def token_targets(model, tokenizer, prompts: list[str], targets: list[str], *, k: int, temperature: float = 1.0,
                  max_length: int, batch_size: int = 4) -> list[TokenRow]:
    """One TokenRow per example: (T_i, k) ids and log-probs at ``temperature`` and (T_i,) tail log-mass,
    T_i = the example's number of target tokens (target + EOS). Length-sorted batches; input order kept."""
    if k < 1 or k > model.config.get_text_config().vocab_size:
        raise KdistillError(f"token targets: k must be in [1, vocab size]; found {k}.")
    model.eval()
    device = next(model.parameters()).device
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]) + len(targets[i]))
    rows: list[TokenRow | None] = [None] * len(prompts)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        batch = encode_targets(tokenizer, [prompts[i] for i in idx], [targets[i] for i in idx], max_length=max_length)
        ids_bt, attention_bt, mask_bt = _left_aligned(batch)
        keep = int(mask_bt.sum(-1).max()) + 1  # every target ends at the last position after left-alignment
        position_ids_bt = (attention_bt.cumsum(-1) - 1).clamp(min=0)  # left padding: positions count real tokens
        logits_bkv = model(input_ids=ids_bt.to(device), attention_mask=attention_bt.to(device),
                           position_ids=position_ids_bt.to(device), logits_to_keep=keep).logits
        mask_bk = mask_bt[:, -keep:]
        for b, i in enumerate(idx):
            sparse = SparseTargets.from_logits(logits_bkv[b][mask_bk[b].to(device)].float(), k, temperature=temperature)
            rows[i] = TokenRow(token_ids=sparse.token_ids.cpu().numpy().astype(np.int64),
                               logprobs=sparse.logprobs.cpu().numpy().astype(np.float32),
                               tail_logmass=sparse.tail_logmass.cpu().numpy().astype(np.float32))
    return rows


@torch.no_grad()
def sequence_states(model, tokenizer, prompts: list[str], targets: list[str], *, layers: list[int], pool: str,
                    max_length: int, batch_size: int = 4) -> torch.Tensor:
    """(N, n, D) float32 on CPU: each prompt + target sequence (tokenized as `encode_targets` does for the
    student) pooled over its real tokens at each of ``layers`` (0 = embeddings). Length-sorted batches."""
    model.eval()
    device = next(model.parameters()).device
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]) + len(targets[i]))
    out: torch.Tensor | None = None
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        batch = encode_targets(tokenizer, [prompts[i] for i in idx], [targets[i] for i in idx], max_length=max_length)
        # right padding: each real token sees only real tokens before it, at its own position
        outputs = model.base_model(input_ids=batch.input_ids_bt.to(device),
                                   attention_mask=batch.attention_mask_bt.to(device), output_hidden_states=True)
        states = outputs.hidden_states
        pooled_bnd = pool_states(states, batch.attention_mask_bt, layers, pool).float().cpu()
        if out is None:
            out = torch.empty(len(prompts), *pooled_bnd.shape[1:])
        out[idx] = pooled_bnd
    return out


def _left_aligned(batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The right-padded batch rolled so that each sequence ends at the last column (left padding): the
    pads wrap round to the front, where the attention mask already marks them."""
    shift_b = batch.input_ids_bt.shape[1] - batch.attention_mask_bt.sum(-1)
    roll = lambda t_bt: torch.stack([torch.roll(row, shifts=int(s), dims=0) for row, s in zip(t_bt, shift_b)])
    return roll(batch.input_ids_bt), roll(batch.attention_mask_bt), roll(batch.loss_mask_bt)
