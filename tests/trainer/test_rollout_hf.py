"""HFEngine and the rollout types: sampling, stopping, determinism, logprobs, delivery."""

import copy
import dataclasses
import threading

import pytest
import torch

from referee.trainer import tiny
from referee.trainer.logprobs import sequence_logprobs
from referee.trainer.rollout import (
    Completion,
    HFEngine,
    RolloutBatch,
    RolloutEngine,
    SamplingParams,
    iter_groups,
)
from referee.trainer.rollout.hf import truncate_top_k_top_p


@pytest.fixture(scope="module")
def tok():
    return tiny.build_tokenizer()


@pytest.fixture(scope="module")
def model(tok):
    return tiny.build_model("tiny", tokenizer=tok, seed=0)


@pytest.fixture(scope="module")
def prompts(tok):
    questions = ["1+2", "305+47", "What is 6*7? Answer briefly."]  # different lengths
    return [tiny.encode_chat(tok, [{"role": "user", "content": q}]) for q in questions]


def always(model, tok, token):
    """A copy of `model` whose next-token distribution puts ~all mass on `token`."""
    forced = copy.deepcopy(model)
    head = torch.nn.Linear(model.config.hidden_size, model.config.vocab_size, bias=True)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
        head.bias[tok.convert_tokens_to_ids(token)] = 50.0
    forced.lm_head = head
    return forced


def test_engine_fits_the_protocol(model, tok):
    assert isinstance(HFEngine(model, tok), RolloutEngine)


def test_n_samples_per_prompt_with_consistent_fields(model, tok, prompts):
    engine = HFEngine(model, tok, micro_batch_prompts=2, weight_version=7)
    params = SamplingParams(n=3, temperature=1.0, max_new_tokens=6, seed=0)
    groups = engine.generate(prompts, params)
    assert [len(g) for g in groups] == [3, 3, 3]
    for i, group in enumerate(groups):
        assert [c.sample_index for c in group] == [0, 1, 2]
        for c in group:
            assert c.prompt_index == i and c.prompt_ids == prompts[i]
            assert 1 <= len(c.token_ids) <= 6 and len(c.logprobs) == len(c.token_ids)
            assert all(lp <= 0 for lp in c.logprobs)
            assert c.finish_reason in ("stop", "length") and c.weight_version == 7
            assert c.text == tok.decode(c.token_ids, skip_special_tokens=True) or c.matched_stop
    assert model.training  # generation put it in eval mode and back


def test_eos_ends_with_stop_and_is_kept_in_tokens(model, tok, prompts):
    engine = HFEngine(always(model, tok, "<|im_end|>"), tok)
    (group,) = engine.generate(prompts[:1], SamplingParams(n=2, max_new_tokens=5, seed=0))
    for c in group:
        assert c.token_ids == [tok.eos_token_id] and c.text == ""
        assert c.finish_reason == "stop" and c.matched_stop == tok.eos_token_id


def test_length_cap_and_stop_token_ids(model, tok, prompts):
    engine = HFEngine(always(model, tok, "7"), tok)
    (c,) = engine.generate(prompts[:1], SamplingParams(max_new_tokens=4, seed=0))[0]
    assert (c.text, c.finish_reason, c.matched_stop) == ("7777", "length", None)
    seven = tok.convert_tokens_to_ids("7")
    params = SamplingParams(max_new_tokens=4, stop_token_ids=[seven], seed=0)
    (c,) = engine.generate(prompts[:1], params)[0]
    assert (c.token_ids, c.finish_reason, c.matched_stop) == ([seven], "stop", seven)


def test_stop_string_truncates_text_and_tokens(model, tok, prompts):
    engine = HFEngine(model, tok)
    free = engine.generate(prompts[:1], SamplingParams(temperature=0, max_new_tokens=24))[0][0]
    assert free.finish_reason == "length", "pick another prompt: this one ends early"
    stop = free.text[5:7]
    cut = free.text.find(stop)
    params = SamplingParams(temperature=0, max_new_tokens=24, stop=[stop, "never"])
    (c,) = engine.generate(prompts[:1], params)[0]
    assert c.finish_reason == "stop" and c.matched_stop == stop
    assert c.text == free.text[:cut]
    # Tokens end with the one that completed the stop string, logprobs likewise.
    k = len(c.token_ids)
    assert c.token_ids == free.token_ids[:k] and c.logprobs == free.logprobs[:k]
    assert stop in tok.decode(c.token_ids) and stop not in tok.decode(c.token_ids[:-1])


def test_seeded_sampling_is_deterministic_diverse_and_batching_independent(model, tok, prompts):
    params = SamplingParams(n=4, temperature=1.0, max_new_tokens=8, seed=11)
    runs = [
        HFEngine(model, tok, micro_batch_prompts=mb).generate(prompts, params) for mb in (3, 3, 1)
    ]
    ids = [[[c.token_ids for c in g] for g in run] for run in runs]
    assert ids[0] == ids[1] == ids[2]
    for a, b in zip(runs[0][2], runs[2][2], strict=True):
        assert a.logprobs == pytest.approx(b.logprobs, abs=1e-5)
    assert len({tuple(t) for t in ids[0][1]}) > 1  # samples of one prompt differ
    other = HFEngine(model, tok).generate(prompts, dataclasses.replace(params, seed=12))
    assert [[c.token_ids for c in g] for g in other] != ids[0]
    # Without a seed, torch.manual_seed makes it reproducible.
    unseeded = SamplingParams(n=2, max_new_tokens=5)
    torch.manual_seed(0)
    first = HFEngine(model, tok).generate(prompts, unseeded)
    torch.manual_seed(0)
    assert HFEngine(model, tok).generate(prompts, unseeded) == first


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(n=4, temperature=1.0, max_new_tokens=10, seed=1),
        SamplingParams(n=4, temperature=0.7, top_p=0.9, top_k=20, max_new_tokens=10, seed=2),
        SamplingParams(n=1, temperature=0, max_new_tokens=10),
    ],
    ids=["plain", "top-p-top-k-T0.7", "greedy"],
)
@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_generation_logprobs_equal_the_training_pass(tok, prompts, params, arch):
    """The PPO ratio is 1 at the first step: the engine's logprobs are the trainer's."""
    policy = tiny.build_model("tiny", tokenizer=tok, arch=arch, seed=5)
    groups = HFEngine(policy, tok, micro_batch_prompts=2).generate(prompts, params)
    batch = RolloutBatch(groups).to_tensors(tok.pad_token_id)
    with torch.no_grad():  # train mode, right padding, no cache: the trainer's forward
        new = sequence_logprobs(
            policy,
            batch.input_ids,
            batch.attention_mask,
            batch.response_mask,
            params.logprob_temperature,
        )
    diff = (new - batch.rollout_logprobs)[batch.response_mask]
    assert diff.abs().max() < 1e-4
    ratio = torch.exp(diff)
    torch.testing.assert_close(ratio, torch.ones_like(ratio), atol=1e-4, rtol=0)


def test_groups_are_delivered_before_generation_ends(model, tok, prompts):
    params = SamplingParams(n=2, max_new_tokens=1, seed=0)  # one forward per micro-batch
    engine = HFEngine(model, tok, micro_batch_prompts=1)
    forwards = []
    hook = model.register_forward_pre_hook(lambda *_: forwards.append(1))
    try:
        seen = []
        result = engine.generate(
            prompts, params, on_group=lambda i, g: seen.append((i, len(forwards)))
        )
        assert seen == [(0, 1), (1, 2), (2, 3)]
        assert result[0][0].prompt_index == 0

        # Through the iterator: prompt 1's forward waits until the consumer holds group 0.
        gate, waited = threading.Event(), []
        hook.remove()
        forwards.clear()

        def block_second_prompt(*_):
            forwards.append(1)
            if len(forwards) == 2:
                waited.append(gate.wait(timeout=10))

        hook = model.register_forward_pre_hook(block_second_prompt)
        order = []
        for i, group in iter_groups(engine, prompts, params):
            order.append(i)
            assert len(group) == 2
            gate.set()
        assert order == [0, 1, 2] and waited == [True]
    finally:
        hook.remove()


def test_iter_groups_reraises_engine_errors(model, tok):
    with pytest.raises(ValueError, match="prompt 0 is empty"):
        list(iter_groups(HFEngine(model, tok), [[]], SamplingParams()))


def test_close_aborts_the_rest(model, tok, prompts):
    engine = HFEngine(model, tok, micro_batch_prompts=1)
    groups = engine.generate(
        prompts, SamplingParams(n=2, max_new_tokens=3, seed=0), on_group=lambda i, g: engine.close()
    )
    assert all(c.finish_reason != "abort" for c in groups[0])
    for group in groups[1:]:
        assert [(c.finish_reason, c.token_ids, c.text) for c in group] == [("abort", [], "")] * 2
    with pytest.raises(RuntimeError, match="closed"):
        engine.generate(prompts, SamplingParams())


def test_per_prompt_seeds_sample_as_if_each_prompt_were_alone(model, tok, prompts):
    """What lets the rollout server merge unrelated requests into one call."""
    params = SamplingParams(n=3, temperature=0.8, top_k=30, max_new_tokens=8, seed=99)
    seeds = [5, 6, 5]
    merged = HFEngine(model, tok).generate(prompts, params, seeds=seeds)  # left padded
    for prompt, seed, group in zip(prompts, seeds, merged, strict=True):
        (alone,) = HFEngine(model, tok).generate([prompt], dataclasses.replace(params, seed=seed))
        assert [c.token_ids for c in group] == [c.token_ids for c in alone]
        for a, b in zip(group, alone, strict=True):
            assert a.logprobs == pytest.approx(b.logprobs, abs=1e-5)
    assert [c.prompt_index for c in merged[2]] == [2, 2, 2]
    assert merged != HFEngine(model, tok).generate(prompts, params)  # seeds did replace 99
    with pytest.raises(ValueError, match="seeds has 1 entries for 3 prompts"):
        HFEngine(model, tok).generate(prompts, params, seeds=[1])


def test_per_prompt_cancel_ends_only_that_prompts_rows(model, tok, prompts):
    params = SamplingParams(n=2, temperature=1.0, max_new_tokens=8, seed=3)
    free = HFEngine(model, tok).generate(prompts, params)
    assert all(c.finish_reason == "length" for g in free for c in g)  # no early EOS
    before, during = threading.Event(), threading.Event()
    forwards = []

    def cancel_on_third_forward(*_):
        forwards.append(1)
        if len(forwards) == 3:  # prefill, then two decode steps
            during.set()

    hook = model.register_forward_pre_hook(cancel_on_third_forward)
    try:
        before.set()
        groups = HFEngine(model, tok).generate(prompts, params, cancels=[before, during, None])
    finally:
        hook.remove()
    assert [(c.finish_reason, c.token_ids) for c in groups[0]] == [("abort", [])] * 2
    for c, f in zip(groups[1], free[1], strict=True):  # cut after its second token
        assert c.finish_reason == "abort" and c.token_ids == f.token_ids[:2]
    assert [c.token_ids for c in groups[2]] == [c.token_ids for c in free[2]]
    assert all(c.finish_reason == "length" for c in groups[2])


def test_update_weights_from_module_state_dict_and_path(model, tok, prompts, tmp_path):
    params = SamplingParams(temperature=0, max_new_tokens=8)
    policy = tiny.build_model("tiny", tokenizer=tok, seed=1)
    engine = HFEngine(policy, tok)
    engine.update_weights(policy)  # shared module: just a new version
    assert engine.weight_version == 1

    other = tiny.build_model("tiny", tokenizer=tok, seed=2)
    expected = HFEngine(other, tok).generate(prompts, params)
    engine.update_weights(other, version=5)
    assert engine.model is policy and engine.weight_version == 5
    got = engine.generate(prompts, params)
    assert [[c.token_ids for c in g] for g in got] == [[c.token_ids for c in g] for g in expected]
    assert got[0][0].weight_version == 5

    engine.update_weights(model.state_dict())
    assert torch.equal(policy.model.embed_tokens.weight, model.model.embed_tokens.weight)
    tiny.save(tmp_path, other, tok)
    engine.update_weights(tmp_path)
    assert engine.weight_version == 7
    assert torch.equal(policy.model.embed_tokens.weight, other.model.embed_tokens.weight)


def test_rollout_batch_to_tensors_hand_checked():
    def comp(g, prompt, tokens, logprobs, finish="stop"):
        return Completion(g, 0, prompt, tokens, "", logprobs, finish, weight_version=3)

    batch = RolloutBatch(
        [
            [
                comp(0, [1, 2], [3, 4, 5], [-0.1, -0.2, -0.3]),
                comp(0, [1, 2], [6], [-0.5], "length"),
            ],
            [comp(1, [7], [8, 9], [-1.0, -2.0])],
        ]
    )
    assert len(batch) == 3 and [c.token_ids for c in batch.completions] == [[3, 4, 5], [6], [8, 9]]
    t = batch.to_tensors(pad_token_id=0)
    assert t.input_ids.tolist() == [[1, 2, 3, 4, 5], [1, 2, 6, 0, 0], [7, 8, 9, 0, 0]]
    assert t.attention_mask.tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 1, 0, 0]]
    assert t.response_mask.tolist() == [
        [False, False, True, True, True],
        [False, False, True, False, False],
        [False, True, True, False, False],
    ]
    assert t.rollout_logprobs.dtype == torch.float32
    torch.testing.assert_close(
        t.rollout_logprobs,
        torch.tensor([[0, 0, -0.1, -0.2, -0.3], [0, 0, -0.5, 0, 0], [0, -1.0, -2.0, 0, 0]]),
    )
    assert t.prompt_lengths.tolist() == [2, 2, 1]
    assert t.completion_lengths.tolist() == [3, 1, 2]
    assert t.group_index.tolist() == [0, 0, 1]
    assert t.truncated.tolist() == [False, True, False]
    assert t.weight_version.tolist() == [3, 3, 3]
    with pytest.raises(ValueError, match="empty"):
        RolloutBatch([]).to_tensors(0)


def test_sampling_params_validation_and_conventions():
    assert SamplingParams(stop="###").stop == ("###",)
    assert SamplingParams(temperature=0).logprob_temperature == 1.0
    assert SamplingParams(temperature=0.6).logprob_temperature == 0.6
    for bad, match in [
        (dict(n=0), "n must"),
        (dict(temperature=-1), "temperature"),
        (dict(top_p=0), "top_p"),
        (dict(top_k=0), "top_k"),
        (dict(max_new_tokens=0), "max_new_tokens"),
        (dict(stop=[""]), "non-empty"),
    ]:
        with pytest.raises(ValueError, match=match):
            SamplingParams(**bad)
    with pytest.raises(ValueError, match="2 logprobs for 1"):
        Completion(0, 0, [1], [2], "", [-1.0, -2.0], "stop", 0)


def test_top_k_top_p_truncation():
    probs = torch.tensor([[0.1, 0.4, 0.3, 0.2]])
    assert truncate_top_k_top_p(probs, -1, 1.0) is probs
    torch.testing.assert_close(
        truncate_top_k_top_p(probs, 2, 1.0), torch.tensor([[0, 0.4, 0.3, 0]])
    )
    # 0.4 + 0.3 reaches 0.65: the 0.2 and 0.1 tokens go.
    torch.testing.assert_close(
        truncate_top_k_top_p(probs, -1, 0.65), torch.tensor([[0, 0.4, 0.3, 0]])
    )
    torch.testing.assert_close(
        truncate_top_k_top_p(probs, -1, 0.75), torch.tensor([[0, 0.4, 0.3, 0.2]])
    )
    # The most likely token survives any top_p.
    torch.testing.assert_close(
        truncate_top_k_top_p(probs, -1, 0.01), torch.tensor([[0, 0.4, 0, 0]])
    )
    # top_p applies to the top-k set's own mass: 0.4 / 0.7 < 0.6, so 0.3 stays.
    torch.testing.assert_close(
        truncate_top_k_top_p(probs, 2, 0.6), torch.tensor([[0, 0.4, 0.3, 0]])
    )
