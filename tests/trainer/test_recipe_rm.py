"""The Bradley-Terry reward-model recipe on the synthetic preference set, with a 2-layer
model on DeepSpeed (CPU): it reaches >= 90% held-out pairwise accuracy; the exported
directory, loaded with AutoModelForSequenceClassification, reproduces the reported
held-out scores whatever the batch and padding; and served by a real
`referee serve reward-model` process, its scores rank every held-out pair the same way."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from recipe_helpers import make_preference_data
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from referee.rewardsvc.client import SyncRewardClient
from referee.testing import serve_process
from referee.trainer import tiny
from referee.trainer.config import ConfigError, load_config
from referee.trainer.data import DataError
from referee.trainer.preference_data import (
    PreferencePair,
    load_pair_splits,
    load_pairs,
    render_conversation,
    score_tensors,
)
from referee.trainer.recipes import train
from referee.trainer.recipes.rm import EVAL_SCORES

STEPS = 100


def rm_config(tmp_path, **sections):
    train_path, eval_path = make_preference_data(tmp_path / "data")
    cfg = {
        "recipe": "rm",
        "name": "test-rm",
        "model": {"path": "tiny:tiny"},
        "data": {"train_path": str(train_path), "eval_path": str(eval_path)},
        "optim": {
            "lr": 3e-3,
            "steps": STEPS,
            "batch_size": 32,
            "micro_batch_size": 16,
            "warmup_steps": 10,
            "scheduler": "cosine",
        },
        "deepspeed": {"enabled": True, "zero_stage": 0},
        "checkpoint": {"every_steps": 0, "keep_last": 1},
        "logging": {"run_dir": str(tmp_path / "run"), "tensorboard": False, "progress_bar": False},
        "eval": {"every_steps": 50},
    }
    for key, value in sections.items():
        cfg[key] = {**cfg.get(key, {}), **value}
    path = tmp_path / "rm.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def served_scores(model, tokenizer, pairs, side: str, batch: int) -> list[float]:
    """What a server does: render (prompt, completion), pad, one plain forward."""
    out = []
    for start in range(0, len(pairs), batch):
        part = pairs[start : start + batch]
        texts = [render_conversation(tokenizer, p.prompt, getattr(p, side)) for p in part]
        enc = tokenizer(texts, add_special_tokens=False, padding=True, return_tensors="pt")
        with torch.no_grad():
            out += model(**enc).logits[:, 0].tolist()
    return out


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(run directory's parent, summary) of one rm run shared by the slow tests."""
    tmp_path = tmp_path_factory.mktemp("rm")
    threads = torch.get_num_threads()
    try:
        summary = train(load_config(rm_config(tmp_path)))
    finally:
        torch.set_num_threads(threads)
    return tmp_path, summary


def held_out_and_reported(tmp_path):
    reported = {
        r["id"]: r
        for r in map(json.loads, (tmp_path / "run" / EVAL_SCORES).read_text().splitlines())
    }
    _, held_out = load_pair_splits(
        tmp_path / "data" / "train.jsonl", eval_path=tmp_path / "data" / "eval.jsonl"
    )
    assert [p.id for p in held_out] == list(reported)
    return held_out, reported


@pytest.mark.slow
def test_rm_reaches_90_percent_and_the_export_reproduces_its_scores(trained):
    tmp_path, summary = trained
    before, after = summary["eval_before"], summary["eval_after"]
    assert after["step"] == STEPS and after["pairs"] == 200
    assert after["accuracy"] >= 0.9, after
    assert after["accuracy"] > before["accuracy"] and after["loss"] < before["loss"]
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "eval/accuracy" in r] == [0, 50, 100]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in rows if "loss" in r)

    # The export loads as a sequence classifier plus its tokenizer, like a server would.
    final = tmp_path / "run" / "final"
    assert summary["final_model"] == str(final.resolve())
    model = AutoModelForSequenceClassification.from_pretrained(final).eval()
    tokenizer = AutoTokenizer.from_pretrained(final)
    assert model.config.num_labels == 1 and model.config.pad_token_id == tokenizer.pad_token_id

    held_out, reported = held_out_and_reported(tmp_path)
    # Batches of 7 (the recipe used 16) and one at a time: other padding, same scores.
    for batch in (7, 1):
        chosen = served_scores(model, tokenizer, held_out, "chosen", batch)
        rejected = served_scores(model, tokenizer, held_out, "rejected", batch)
        for p, c, r in zip(held_out, chosen, rejected, strict=True):
            assert c == pytest.approx(reported[p.id]["chosen"], abs=1e-4)
            assert r == pytest.approx(reported[p.id]["rejected"], abs=1e-4)
            assert (c > r) == (reported[p.id]["chosen"] > reported[p.id]["rejected"])
        accuracy = sum(c > r for c, r in zip(chosen, rejected, strict=True)) / len(held_out)
        assert accuracy == pytest.approx(after["accuracy"], abs=1e-6)


@pytest.mark.slow
def test_served_scores_rank_the_held_out_pairs_as_reported(trained):
    tmp_path, summary = trained
    held_out, reported = held_out_and_reported(tmp_path)
    samples = [
        {"id": f"{p.id}/{side}", "prompt": p.prompt, "completion": getattr(p, side)}
        for p in held_out
        for side in ("chosen", "rejected")
    ]
    final = str(tmp_path / "run" / "final")
    with serve_process(["reward-model", "--model", final, "--threads", "1"]) as srv:
        client = SyncRewardClient(srv.address, timeout_s=120)
        try:
            scores = client.score("reward_model", samples)
        finally:
            client.close()
    assert all(s.status.name == "OK" for s in scores), scores[:3]
    served = {s.id: s.value for s in scores}
    agree = 0
    for p in held_out:
        c, r = served[f"{p.id}/chosen"], served[f"{p.id}/rejected"]
        assert c == pytest.approx(reported[p.id]["chosen"], abs=1e-4)
        assert r == pytest.approx(reported[p.id]["rejected"], abs=1e-4)
        assert (c > r) == (reported[p.id]["chosen"] > reported[p.id]["rejected"]), p.id
        agree += c > r
    assert agree / len(held_out) == pytest.approx(summary["eval_after"]["accuracy"], abs=1e-6)
    assert agree / len(held_out) >= 0.9


def test_score_tensors_right_pad_and_refuse_the_pad_token_in_text() -> None:
    tok = tiny.build_tokenizer()
    pairs = [
        PreferencePair("a", "1+2=?", "\\boxed{3}", "3"),
        PreferencePair("b", "10+20=?", "x", "yy"),
    ]
    t = score_tensors(tok, pairs)
    assert t.input_ids.shape[0] == 4 and t.n_pairs == 2
    for i, (pair, side) in enumerate([(p, s) for s in ("chosen", "rejected") for p in pairs]):
        text = render_conversation(tok, pair.prompt, getattr(pair, side))
        want = tok(text, add_special_tokens=False)["input_ids"]
        n = int(t.attention_mask[i].sum())
        assert t.input_ids[i, :n].tolist() == want  # real tokens first ...
        assert (t.input_ids[i, n:] == tok.pad_token_id).all()  # ... then padding
    assert text.endswith("yy<|im_end|>\n")
    with pytest.raises(ValueError, match="contains the pad token"):
        score_tensors(tok, [PreferencePair("c", "q", "fine", "bad <pad> text")])


def test_pairs_load_split_and_fail_with_their_row(tmp_path) -> None:
    train_path, _ = make_preference_data(tmp_path / "data", train=50, eval_rows=5)
    train_rows, held = load_pair_splits(train_path, eval_fraction=0.2)
    assert len(held) == 10 and len(train_rows) == 40
    assert not {p.id for p in held} & {p.id for p in train_rows}
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        '{"prompt": "q", "chosen": "a", "rejected": "b"}\n{"prompt": "q", "chosen": "a"}\n'
    )
    with pytest.raises(DataError, match=r"bad.jsonl:2: field 'rejected' must be text"):
        load_pairs(bad)
    bad.write_text('{"prompt": "q", "chosen": "a", "rejected": "a"}\n')
    with pytest.raises(DataError, match="the same text"):
        load_pairs(bad)


def test_rm_config_mistakes_name_their_key(tmp_path) -> None:
    path = rm_config(tmp_path)
    with pytest.raises(ConfigError) as e:
        load_config(path, ["optim.batch_size=null"])
    assert e.value.key == "optim.batch_size"
    with pytest.raises(ConfigError) as e:
        load_config(path, ["data.rejected_field=chosen"])
    assert e.value.key == "data.rejected_field"
    with pytest.raises(ConfigError) as e:
        load_config(path, ["preference.margin=-1"])
    assert e.value.key == "preference.margin"
    # Held-out accuracy needs no reward service, but it needs held-out data.
    with pytest.raises(ConfigError) as e:
        load_config(path, ["data.eval_path=null"])
    assert e.value.key == "eval.enabled"
