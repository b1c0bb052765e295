"""KL estimators, KL-penalised rewards and entropy, by hand.

Direction: KL(pi || pi_ref) from samples of pi, r = pi_ref / pi per token.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

from referee.trainer.algorithms import (
    KL_ESTIMATORS,
    entropy_from_logits,
    kl_k1,
    kl_k2,
    kl_k3,
    kl_penalized_rewards,
    kl_penalized_token_rewards,
    masked_mean,
)

TOL = {"atol": 1e-6, "rtol": 1e-6}
LN2 = math.log(2.0)


def t(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


# Token 0: pi = 0.5, ref = 0.25 -> log r = log 0.5 = -ln2.
# Token 1: pi = 0.25, ref = 0.5 -> log r = ln2.
# Token 2: pi = ref               -> log r = 0.
LOGP = [math.log(0.5), math.log(0.25), math.log(0.3)]
REF = [math.log(0.25), math.log(0.5), math.log(0.3)]


def test_k1_by_hand():
    # k1 = -log r = [ln2, -ln2, 0] = [0.693147, -0.693147, 0]: negative on token 1.
    assert_close(kl_k1(t([LOGP]), t([REF])), t([[LN2, -LN2, 0]]), **TOL)


def test_k2_by_hand():
    # k2 = (log r)^2 / 2 = [ln2^2 / 2, ln2^2 / 2, 0] = [0.240227, 0.240227, 0].
    h = LN2**2 / 2
    assert_close(kl_k2(t([LOGP]), t([REF])), t([[h, h, 0]]), **TOL)


def test_k3_by_hand():
    # k3 = (r - 1) - log r:
    #   token 0: r = 0.5: -0.5 + ln2 = 0.193147
    #   token 1: r = 2:    1 - ln2   = 0.306853
    #   token 2: r = 1:    0
    assert_close(kl_k3(t([LOGP]), t([REF])), t([[LN2 - 0.5, 1 - LN2, 0]]), **TOL)


@pytest.mark.parametrize("name", ["k2", "k3"])
def test_k2_k3_nonnegative(name):
    gen = torch.Generator().manual_seed(1)
    logp = torch.randn(64, 32, generator=gen) * 3
    ref = torch.randn(64, 32, generator=gen) * 3
    assert (KL_ESTIMATORS[name](logp, ref) >= 0).all()
    assert (kl_k1(logp, ref) < 0).any()  # k1 is not


def expectation(estimator, pi, ref) -> torch.Tensor:
    p = t(pi)
    return (p * estimator(p.log()[None], t(ref).log()[None])[0]).sum()


@pytest.mark.parametrize("name", ["k1", "k3"])
def test_k1_k3_unbiased_for_reverse_kl(name):
    # An exact expectation over a 3-token vocabulary, pi = [.7, .2, .1], ref = [.2, .3, .5]:
    # E_pi[k] = sum_y pi(y) k(y) must be KL(pi || ref) exactly for k1 and k3:
    # KL(pi || ref) = .7 ln 3.5 + .2 ln(2/3) + .1 ln .2 = 0.876934 - 0.081093 - 0.160944
    #               = 0.634897,
    # while the other direction, KL(ref || pi) = .2 ln(2/7) + .3 ln 1.5 + .5 ln 5 = 0.675806,
    # is what a reversed r = pi / pi_ref would estimate.
    pi, ref = [0.7, 0.2, 0.1], [0.2, 0.3, 0.5]
    reverse = 0.7 * math.log(3.5) + 0.2 * math.log(2 / 3) + 0.1 * math.log(0.2)
    assert_close(expectation(KL_ESTIMATORS[name], pi, ref), torch.tensor(reverse), **TOL)


def test_k2_is_biased():
    # E_pi[k2] = .7 (ln 3.5)^2/2 + .2 (ln 2/3)^2/2 + .1 (ln .2)^2/2
    #          = 0.549295 + 0.016440 + 0.129515 = 0.695250, not KL = 0.634897.
    pi, ref = [0.7, 0.2, 0.1], [0.2, 0.3, 0.5]
    e = sum(p * math.log(p / q) ** 2 / 2 for p, q in zip(pi, ref, strict=True))
    assert_close(expectation(kl_k2, pi, ref), torch.tensor(e), **TOL)
    assert abs(e - 0.634897) > 0.05


def _grad_of_expected_loss(estimator, ref) -> torch.Tensor:
    """d/dz of E_{y ~ pi}[k(y)] with the sampling distribution held fixed (a loss)."""
    z = torch.tensor([0.3, -0.2, 0.5], requires_grad=True)
    logp = torch.log_softmax(z, -1)
    weights = logp.exp().detach()  # the samples' distribution is not differentiated
    (weights * estimator(logp[None], t(ref).log()[None])[0]).sum().backward()
    return z.grad


def _grad_of(kl_fn) -> torch.Tensor:
    z = torch.tensor([0.3, -0.2, 0.5], requires_grad=True)
    kl_fn(torch.softmax(z, -1)).backward()
    return z.grad


def test_k2_loss_gradient_is_reverse_kl_gradient_k3_is_forward():
    # The module docstring's claim, on an exact expectation: as a loss, k2's gradient is
    # grad KL(pi || ref), k3's is grad KL(ref || pi), k1's is 0.
    ref = [0.2, 0.3, 0.5]
    q = t(ref)
    reverse = _grad_of(lambda p: (p * (p.log() - q.log())).sum())
    forward = _grad_of(lambda p: (q * (q.log() - p.log())).sum())
    assert_close(_grad_of_expected_loss(kl_k2, ref), reverse, **TOL)
    assert_close(_grad_of_expected_loss(kl_k3, ref), forward, **TOL)
    assert_close(_grad_of_expected_loss(kl_k1, ref), torch.zeros(3), **TOL)


@pytest.mark.parametrize("name", ["k1", "k2", "k3"])
def test_kl_gradient_only_through_logp_and_masked_tokens_zero(name):
    # Masked token 1 holds -inf under the reference: it must give 0, not NaN, and no grad.
    logp = t([[math.log(0.5), math.log(0.3)]]).requires_grad_(True)
    ref = t([[math.log(0.25), -math.inf]]).requires_grad_(True)
    mask = torch.tensor([[True, False]])
    kl = KL_ESTIMATORS[name](logp, ref, mask)
    assert kl[0, 1] == 0
    masked_mean(kl, mask).backward()
    assert ref.grad is None
    assert logp.grad[0, 1] == 0 and torch.isfinite(logp.grad).all()
    assert logp.grad[0, 0] != 0


def test_k3_bf16_computes_in_fp32():
    got = kl_k3(t([LOGP]).bfloat16(), t([REF]).bfloat16())
    assert got.dtype == torch.float32
    assert_close(got, t([[LN2 - 0.5, 1 - LN2, 0]]), atol=2e-2, rtol=0)


def test_kl_penalized_rewards_sequence_sum_by_hand():
    # r = [1, 0], beta = 0.1, kl row 0 [.1, .2, .3] (sum .6), row 1 [.5, .5, pad 9] (sum 1):
    # [1 - 0.06, 0 - 0.1] = [0.94, -0.1].
    kl = t([[0.1, 0.2, 0.3], [0.5, 0.5, 9.0]]).requires_grad_(True)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    got = kl_penalized_rewards(t([1.0, 0.0]), kl, mask, beta=0.1)
    assert_close(got, t([0.94, -0.1]), **TOL)
    assert not got.requires_grad


def test_kl_penalized_token_rewards_by_hand():
    # Each valid token: -0.1 * kl; the last valid token also gets the reward.
    #   row 0: [-.01, -.02, 1 - .03] = [-0.01, -0.02, 0.97]
    #   row 1: [-.05, -.05, 0 (pad)]
    #   row 2: masked-out sample: zeros, its reward (5) dropped.
    kl = t([[0.1, 0.2, 0.3], [0.5, 0.5, 9.0], [1.0, 1.0, 1.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0], [0, 0, 0]])
    got = kl_penalized_token_rewards(t([1.0, 0.0, 5.0]), kl, mask, beta=0.1)
    assert_close(got, t([[-0.01, -0.02, 0.97], [-0.05, -0.05, 0], [0, 0, 0]]), **TOL)


def test_entropy_by_hand():
    # [0, 0]      -> uniform over 2: ln 2 = 0.693147
    # [0, ln 3]   -> p = [1/4, 3/4]: -(.25 ln .25 + .75 ln .75) = 0.346574 + 0.215762 = 0.562335
    logits = t([[[0.0, 0.0], [0.0, math.log(3.0)]]])
    h = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    assert_close(entropy_from_logits(logits), t([[LN2, h]]), **TOL)


@pytest.mark.parametrize("chunk_size", [1, 2, 7, 1000])
def test_entropy_chunked_matches_reference_and_bf16(chunk_size):
    gen = torch.Generator().manual_seed(2)
    logits = torch.randn(3, 5, 11, generator=gen) * 4
    expected = torch.distributions.Categorical(logits=logits).entropy()
    # fp32 rounding of logsumexp - E[z] on peaked rows: 1e-5, not 1e-6
    assert_close(entropy_from_logits(logits, chunk_size=chunk_size), expected, atol=1e-5, rtol=1e-5)
    got = entropy_from_logits(logits.bfloat16(), chunk_size=chunk_size)
    assert got.dtype == torch.float32
    ref_bf16 = torch.distributions.Categorical(logits=logits.bfloat16().float()).entropy()
    assert_close(got, ref_bf16, atol=1e-5, rtol=1e-5)


def test_entropy_with_filtered_tokens():
    # [0, 0, -inf]: the third token has p = 0 -> uniform over 2: ln 2, finite gradient.
    logits = t([[[0.0, 0.0, -math.inf]]]).requires_grad_(True)
    h = entropy_from_logits(logits)
    assert_close(h, t([[LN2]]), **TOL)
    h.sum().backward()
    assert torch.isfinite(logits.grad).all()


def test_entropy_has_gradient():
    logits = torch.zeros(1, 1, 3, requires_grad=True)
    entropy_from_logits(logits).sum().backward()
    # Uniform is the maximum of entropy: gradient 0 there.
    assert_close(logits.grad, torch.zeros(1, 1, 3), atol=1e-7, rtol=0)


def test_masked_mean_ignores_nan_under_mask():
    values = t([[1.0, 2.0, math.nan], [3.0, math.inf, 5.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 1]])
    # (1 + 2 + 3 + 5) / 4 = 2.75; per row: 1.5 and 4
    assert_close(masked_mean(values, mask), torch.tensor(2.75), **TOL)
    assert_close(masked_mean(values, mask, dim=-1), t([1.5, 4.0]), **TOL)
