"""sequence_logprobs: shifted, padding-independent, chunked, differentiable, fp32."""

import pytest
import torch
import torch.nn.functional as F

from referee.trainer import tiny
from referee.trainer.logprobs import (
    entropy_from_logits,
    gather_logprobs,
    sequence_logprobs,
    sequence_logprobs_with_entropy,
)

# Three sequences of different lengths; the last `RESPONSE[i]` tokens are the response.
SEQS = [[3, 10, 11, 12, 13, 14, 15], [3, 20, 21, 22], [3, 30, 31, 32, 33, 34]]
RESPONSE = [3, 2, 4]


@pytest.fixture(scope="module")
def model():
    return tiny.build_model("tiny", vocab_size=40, seed=0).eval()


def pad(side):
    t = max(map(len, SEQS))
    ids = torch.zeros(len(SEQS), t, dtype=torch.long)
    attn = torch.zeros_like(ids)
    resp = torch.zeros_like(ids, dtype=torch.bool)
    for i, (seq, r) in enumerate(zip(SEQS, RESPONSE, strict=True)):
        lo = 0 if side == "right" else t - len(seq)
        ids[i, lo : lo + len(seq)] = torch.tensor(seq)
        attn[i, lo : lo + len(seq)] = 1
        resp[i, lo + len(seq) - r : lo + len(seq)] = True
    return ids, attn, resp


def reference(model, seq, r, temperature):
    """Unpadded, one sequence at a time, written out: log_softmax(logits / T)[next]."""
    with torch.no_grad():
        logits = model(torch.tensor([seq])).logits[0].double() / temperature  # [L, V]
    logp = F.log_softmax(logits, -1)
    return torch.tensor([logp[t - 1, seq[t]] for t in range(len(seq) - r, len(seq))])


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_matches_per_sequence_reference(model, side, temperature):
    ids, attn, resp = pad(side)
    with torch.no_grad():
        out = sequence_logprobs(model, ids, attn, resp, temperature)
    assert out.shape == ids.shape and out.dtype == torch.float32
    for i, (seq, r) in enumerate(zip(SEQS, RESPONSE, strict=True)):
        expected = reference(model, seq, r, temperature)
        torch.testing.assert_close(out[i][resp[i]].double(), expected, atol=1e-5, rtol=0)
    assert torch.all(out[~resp] == 0)


def test_chunking_does_not_change_values(model):
    ids, attn, resp = pad("right")
    with torch.no_grad():
        full = sequence_logprobs(model, ids, attn, resp)
        chunked = sequence_logprobs(model, ids, attn, resp, micro_batch_size=1)
    torch.testing.assert_close(full, chunked, atol=1e-6, rtol=0)


def test_entropy_is_aligned_with_the_token_it_precedes(model):
    ids, attn, resp = pad("right")
    with torch.no_grad():
        out = sequence_logprobs_with_entropy(model, ids, attn, resp, 0.5)
        logits = model(ids[:1, :7]).logits[0]  # [7, V], sequence 0 is unpadded
    expected = entropy_from_logits(logits[3:6], 0.5)  # predicts tokens 4..6
    torch.testing.assert_close(out.entropy[0, 4:7], expected, atol=1e-5, rtol=0)
    assert torch.all(out.entropy[~resp] == 0) and torch.all(out.entropy[resp] > 0)
    torch.testing.assert_close(out.logprobs, sequence_logprobs(model, ids, attn, resp, 0.5))


def test_gradients_flow_for_the_new_logprob_pass(model):
    model = tiny.build_model("tiny", vocab_size=40, seed=0)
    ids, attn, resp = pad("right")
    out = sequence_logprobs(model, ids, attn, resp, micro_batch_size=2)
    out[resp].sum().backward()
    assert model.model.embed_tokens.weight.grad.abs().sum() > 0


def test_first_column_and_mask_are_respected(model):
    ids, attn, resp = pad("right")
    everything = attn.bool()
    before = everything.clone()
    with torch.no_grad():
        out = sequence_logprobs(model, ids, attn, everything)
    assert torch.equal(everything, before)  # the caller's mask is not modified
    assert torch.all(out[:, 0] == 0)
    assert torch.all(out[:, 1:][everything[:, 1:]] < 0)


def test_gather_logprobs_and_temperature_checks():
    logits = torch.tensor([[1.0, 2.0, 3.0]])
    expected = F.log_softmax(logits / 2, -1)[0, 1]
    torch.testing.assert_close(gather_logprobs(logits, torch.tensor([1]), 2.0)[0], expected)
    ids = torch.ones(1, 2, dtype=torch.long)
    with pytest.raises(ValueError, match="logprob_temperature"):
        sequence_logprobs(None, ids, ids, ids, temperature=0.0)
    with pytest.raises(ValueError, match="shape mismatch"):
        sequence_logprobs(None, ids, ids[:, :1], ids)
