"""Per-token logprobs of given sequences under a model: the trainer's scoring pass.

One function serves the three passes of a policy-gradient step: the *old* logprobs
(the policy before this rollout batch's updates; `torch.no_grad()` around the call),
the *reference* logprobs (a frozen model, for the KL term) and the *new* logprobs
(with gradients, for the loss). The rollout engines compute the logprobs of the
tokens they sample with `gather_logprobs` too, on the same `logits / temperature`,
so a freshly sampled batch scores to the same numbers (the PPO ratio is 1 at the
first optimiser step, up to float error, which the tests bound at 1e-4).

Alignment: output column t is log p(token t | tokens < t), the same column as the
token itself (and as `RolloutTensors.rollout_logprobs`). Column 0 has no prefix and
is 0; so is every column outside `response_mask`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class TokenLogprobs:
    """Logprobs and entropies of a batch of sequences, aligned to the tokens."""

    logprobs: torch.Tensor  # [N, T] float32, 0 outside the response mask
    entropy: torch.Tensor  # [N, T] float32, entropy of the distribution token t was drawn from


def gather_logprobs(
    logits: torch.Tensor,  # [..., V] any float dtype
    tokens: torch.Tensor,  # [...] long
    temperature: float = 1.0,
) -> torch.Tensor:  # [...] float32
    """log_softmax(logits / temperature)[tokens], in fp32, over the whole vocabulary."""
    scaled = logits.float() / temperature  # [..., V]
    return scaled.gather(-1, tokens.unsqueeze(-1)).squeeze(-1) - scaled.logsumexp(-1)


def entropy_from_logits(
    logits: torch.Tensor,  # [..., V]
    temperature: float = 1.0,
) -> torch.Tensor:  # [...] float32
    """Entropy of softmax(logits / temperature), in fp32."""
    logp = F.log_softmax(logits.float() / temperature, dim=-1)  # [..., V]
    return -(logp.exp() * logp).sum(-1)


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:  # [N, T]
    """0, 1, 2, ... over the real tokens of each row, whichever side the padding is on
    (the positions a left-padded generation batch uses, so both passes agree)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def sequence_logprobs(
    model: Callable[..., object],
    input_ids: torch.Tensor,  # [N, T] long
    attention_mask: torch.Tensor,  # [N, T] 1 on real tokens
    response_mask: torch.Tensor,  # [N, T] true/1 on the tokens to score
    temperature: float = 1.0,
    *,
    micro_batch_size: int | None = None,
) -> torch.Tensor:  # [N, T] float32
    """log p(token t | tokens < t) under `model` at `temperature`, on response tokens.

    Pass the rollout's `SamplingParams.logprob_temperature`. Gradients flow when the
    caller has them enabled; rows go through the model `micro_batch_size` at a time
    (all at once when None) to bound the memory of the `[rows, T, V]` logits.
    """
    return _score(
        model, input_ids, attention_mask, response_mask, temperature, micro_batch_size, False
    ).logprobs


def sequence_logprobs_with_entropy(
    model: Callable[..., object],
    input_ids: torch.Tensor,  # [N, T]
    attention_mask: torch.Tensor,  # [N, T]
    response_mask: torch.Tensor,  # [N, T]
    temperature: float = 1.0,
    *,
    micro_batch_size: int | None = None,
) -> TokenLogprobs:
    """`sequence_logprobs` plus the per-token entropy (0 outside the response mask)."""
    return _score(
        model, input_ids, attention_mask, response_mask, temperature, micro_batch_size, True
    )


def _score(
    model: Callable[..., object],
    input_ids: torch.Tensor,  # [N, T]
    attention_mask: torch.Tensor,  # [N, T]
    response_mask: torch.Tensor,  # [N, T]
    temperature: float,
    micro_batch_size: int | None,
    with_entropy: bool,
) -> TokenLogprobs:
    if temperature <= 0:
        raise ValueError(
            f"temperature must be > 0, got {temperature}; "
            "for greedy rollouts pass SamplingParams.logprob_temperature (1.0)"
        )
    if input_ids.shape != attention_mask.shape or input_ids.shape != response_mask.shape:
        raise ValueError(
            f"shape mismatch: input_ids {tuple(input_ids.shape)}, attention_mask "
            f"{tuple(attention_mask.shape)}, response_mask {tuple(response_mask.shape)}"
        )
    n = input_ids.shape[0]
    step = micro_batch_size or max(n, 1)
    logprob_chunks, entropy_chunks = [], []
    for start in range(0, n, step):
        ids = input_ids[start : start + step]  # [n, T]
        mask = attention_mask[start : start + step]  # [n, T]
        scored = response_mask[start : start + step].bool().clone()  # [n, T]
        scored[:, 0] = False  # no prefix to condition on
        logits = model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=position_ids_from_mask(mask),
            use_cache=False,
        ).logits  # [n, T, V]
        shifted = logits[:, :-1]  # [n, T-1, V]: position t-1 predicts token t
        logprobs = gather_logprobs(shifted, ids[:, 1:], temperature)  # [n, T-1]
        logprobs = F.pad(logprobs, (1, 0))  # [n, T]
        logprob_chunks.append(torch.where(scored, logprobs, torch.zeros_like(logprobs)))
        if with_entropy:
            entropy = F.pad(entropy_from_logits(shifted, temperature), (1, 0))  # [n, T]
            entropy_chunks.append(torch.where(scored, entropy, torch.zeros_like(entropy)))
    logprobs = torch.cat(logprob_chunks)  # [N, T]
    entropy = torch.cat(entropy_chunks) if with_entropy else torch.zeros_like(logprobs)
    return TokenLogprobs(logprobs=logprobs, entropy=entropy)
