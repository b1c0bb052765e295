"""Prompt data: loading JSONL and Parquet, bad rows, splits, rendering, resumable batches."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from referee.trainer.data import (
    DataError,
    DataPosition,
    PromptBatches,
    PromptRow,
    drop_long_prompts,
    load_prompts,
    load_splits,
    render_prompt,
    split_eval,
)
from referee.types import Sample

CHAT_TEMPLATE = (
    "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}</{{ m['role'] }}>\n{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)


def write_jsonl(path: Path, rows: list[object], blank_line_at: int | None = None) -> Path:
    lines = [json.dumps(r) for r in rows]
    if blank_line_at is not None:
        lines.insert(blank_line_at, "")
    path.write_text("\n".join(lines) + "\n")
    return path


def arithmetic(n: int) -> list[dict]:
    return [
        {"id": f"q{i}", "prompt": f"{i}+{i}=", "reference": str(2 * i), "metadata": {"i": i}}
        for i in range(n)
    ]


@pytest.fixture
def tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer over a handful of words, with a simple chat template."""
    vocab = {
        w: i for i, w in enumerate(["<unk>", "<pad>", "what", "is", "2+2", "?", "be", "brief"])
    }
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", pad_token="<pad>")
    tok.chat_template = CHAT_TEMPLATE
    return tok


# --- loading ------------------------------------------------------------------------


def test_jsonl_rows_become_prompt_rows(tmp_path: Path) -> None:
    rows = arithmetic(3) + [
        {"prompt": [{"role": "user", "content": "hi"}], "reference": 7},
    ]
    loaded = load_prompts(write_jsonl(tmp_path / "p.jsonl", rows, blank_line_at=1))
    assert loaded[0] == PromptRow("q0", "0+0=", "0", {"i": 0})
    # No id: the row number; a numeric reference becomes text.
    assert loaded[3] == PromptRow("3", [{"role": "user", "content": "hi"}], "7", {})
    assert loaded[3].prompt_text == "hi"
    sample = loaded[1].sample("2")
    assert sample == Sample(
        completion="2", id="q1", prompt="1+1=", reference="2", metadata={"i": 1}
    )


def test_custom_field_names_and_completions(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "p.jsonl", [{"key": 5, "question": "q", "answer": "a", "sol": "s"}]
    )
    (row,) = load_prompts(
        path,
        id_field="key",
        prompt_field="question",
        reference_field="answer",
        completion_field="sol",
    )
    assert row == PromptRow("5", "q", "a", {}, completion="s")


def test_parquet_file(tmp_path: Path) -> None:
    rows = arithmetic(4)
    rows[2]["prompt"] = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "2+2"},
    ]
    path = tmp_path / "p.parquet"
    # Mixed text/list prompts cannot share a Parquet column: write the chat row separately.
    pq.write_table(pa.Table.from_pylist([r for i, r in enumerate(rows) if i != 2]), path)
    loaded = load_prompts(path)
    assert [r.id for r in loaded] == ["q0", "q1", "q3"]
    assert loaded[1] == PromptRow("q1", "1+1=", "2", {"i": 1})
    chat = tmp_path / "chat.parquet"
    pq.write_table(pa.Table.from_pylist([rows[2]]), chat)
    assert load_prompts(chat)[0].prompt == rows[2]["prompt"]


def test_parquet_written_by_datasets(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    path = tmp_path / "d.parquet"
    datasets.Dataset.from_list(arithmetic(5)).to_parquet(str(path))
    assert [r.reference for r in load_prompts(path)] == ["0", "2", "4", "6", "8"]


def test_parquet_missing_column(tmp_path: Path) -> None:
    path = tmp_path / "p.parquet"
    pq.write_table(pa.Table.from_pylist([{"question": "q"}]), path)
    with pytest.raises(DataError, match=r"no column 'prompt' \(columns: question\)"):
        load_prompts(path)


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"id": "x"}, r"p.jsonl:3: no field 'prompt' \(the row has: id\); set data.prompt_field"),
        ({"prompt": ""}, r"p.jsonl:3: field 'prompt' is empty"),
        ({"prompt": 5}, r"p.jsonl:3: field 'prompt' must be text or a non-empty list"),
        ({"prompt": [{"role": "user"}]}, r"p.jsonl:3: field 'prompt' message 0 must be"),
        ({"prompt": "p", "metadata": [1]}, r"p.jsonl:3: field 'metadata' must be an object"),
        ({"prompt": "p", "reference": {"a": 1}}, r"p.jsonl:3: field 'reference' must be text"),
        ({"prompt": "p", "id": True}, r"p.jsonl:3: field 'id' must be non-empty text"),
        ({"prompt": "p", "id": "q0"}, r"p.jsonl:3: id 'q0' repeats .*p.jsonl:1"),
        ([1, 2], r"p.jsonl:3: expected a JSON object, got list"),
    ],
)
def test_bad_rows_name_the_line(tmp_path: Path, row: object, message: str) -> None:
    path = write_jsonl(tmp_path / "p.jsonl", [*arithmetic(2), row])
    with pytest.raises(DataError, match=message):
        load_prompts(path)


def test_bad_json_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "a"}\n\n{"prompt": \n')
    with pytest.raises(DataError, match=r"p.jsonl:3: invalid JSON"):
        load_prompts(path)


def test_sft_rows_need_a_completion(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "a", "completion": "b"}, {"prompt": "c"}])
    with pytest.raises(DataError, match=r"p.jsonl:2: field 'completion' must be text"):
        load_prompts(path, completion_field="completion")


def test_missing_empty_or_unknown_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file"):
        load_prompts(tmp_path / "nope.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(DataError, match="no rows"):
        load_prompts(tmp_path / "empty.jsonl")
    (tmp_path / "p.csv").write_text("prompt\na\n")
    with pytest.raises(DataError, match="expected a .jsonl or .parquet"):
        load_prompts(tmp_path / "p.csv")
    (tmp_path / "bad.parquet").write_text("not parquet")
    with pytest.raises(DataError, match="not a readable Parquet file"):
        load_prompts(tmp_path / "bad.parquet")


def test_shuffle_is_deterministic_by_seed(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "p.jsonl", arithmetic(50))
    ids = lambda rows: [r.id for r in rows]  # noqa: E731
    assert ids(load_prompts(path, seed=1)) == ids(load_prompts(path, seed=1))
    assert ids(load_prompts(path, seed=1)) != ids(load_prompts(path, seed=2))
    assert sorted(ids(load_prompts(path, seed=1))) == sorted(ids(load_prompts(path)))
    assert ids(load_prompts(path)) == [f"q{i}" for i in range(50)]


# --- eval split ---------------------------------------------------------------------


def test_eval_split_is_disjoint_exact_and_stable(tmp_path: Path) -> None:
    rows = load_prompts(write_jsonl(tmp_path / "p.jsonl", arithmetic(200)))
    train, held = split_eval(rows, 0.1)
    assert len(held) == 20 and len(train) == 180
    assert not {r.id for r in train} & {r.id for r in held}
    assert {r.id for r in train} | {r.id for r in held} == {r.id for r in rows}
    # The same rows whatever the order they come in, and across calls.
    shuffled = load_prompts(tmp_path / "p.jsonl", seed=7)
    assert {r.id for r in split_eval(shuffled, 0.1)[1]} == {r.id for r in held}
    # Both parts keep the input order.
    assert [r.id for r in held] == [r.id for r in rows if r in held]
    # Appending rows moves few of the held-out ones.
    more = load_prompts(write_jsonl(tmp_path / "more.jsonl", arithmetic(220)))
    kept = {r.id for r in split_eval(more, 0.1)[1]} & {r.id for r in held}
    assert len(kept) >= 15


def test_eval_split_edges(tmp_path: Path) -> None:
    rows = [PromptRow(str(i), "p") for i in range(3)]
    assert split_eval(rows, 0.0) == (rows, [])
    assert len(split_eval(rows, 0.01)[1]) == 1  # a positive fraction holds out at least one
    with pytest.raises(DataError, match="leaves none to train on"):
        split_eval(rows[:1], 0.5)


def test_load_splits_from_a_fraction_or_a_file(tmp_path: Path) -> None:
    train_path = write_jsonl(tmp_path / "t.jsonl", arithmetic(10))
    eval_path = write_jsonl(tmp_path / "e.jsonl", [{"id": "e0", "prompt": "x"}])
    train, held = load_splits(train_path, eval_fraction=0.2)
    assert (len(train), len(held)) == (8, 2)
    train, held = load_splits(train_path, eval_path=eval_path)
    assert len(train) == 10 and [r.id for r in held] == ["e0"]


# --- rendering ----------------------------------------------------------------------


def test_chat_template_is_applied_with_the_generation_prompt(
    tokenizer: PreTrainedTokenizerFast,
) -> None:
    row = PromptRow("a", "what is 2+2 ?")
    assert render_prompt(tokenizer, row, True) == "<user>what is 2+2 ?</user>\n<assistant>"
    assert render_prompt(tokenizer, row, True, system_prompt="be brief") == (
        "<system>be brief</system>\n<user>what is 2+2 ?</user>\n<assistant>"
    )
    chat = PromptRow("b", [{"role": "system", "content": "x"}, {"role": "user", "content": "y"}])
    # A row's own system message wins over the configured one.
    assert render_prompt(tokenizer, chat, True, system_prompt="be brief") == (
        "<system>x</system>\n<user>y</user>\n<assistant>"
    )


def test_raw_text_without_a_template(tokenizer: PreTrainedTokenizerFast) -> None:
    row = PromptRow("a", "what is 2+2 ?")
    assert render_prompt(tokenizer, row, False) == "what is 2+2 ?"
    assert (
        render_prompt(tokenizer, row, False, system_prompt="be brief")
        == "be brief\n\nwhat is 2+2 ?"
    )
    tokenizer.chat_template = None
    assert render_prompt(tokenizer, row, True) == "what is 2+2 ?"


def test_drop_long_prompts(tokenizer: PreTrainedTokenizerFast) -> None:
    tokenizer.chat_template = None
    rows = [PromptRow("short", "what is 2+2"), PromptRow("long", "what is 2+2 ? be brief")]
    kept, dropped = drop_long_prompts(rows, tokenizer, 3, use_chat_template=False)
    assert [r.id for r in kept] == ["short"] and dropped == 1
    assert drop_long_prompts(rows, tokenizer, 0, use_chat_template=False) == (rows, 0)


# --- batching -----------------------------------------------------------------------


def ids(batch: list[PromptRow]) -> list[str]:
    return [r.id for r in batch]


def test_batches_cover_each_epoch_once_in_a_seeded_order() -> None:
    rows = [PromptRow(str(i), "p") for i in range(10)]
    it = PromptBatches(rows, batch_size=5, seed=3)
    epoch0 = ids(next(it)) + ids(next(it))
    assert sorted(epoch0, key=int) == [str(i) for i in range(10)]
    assert it.position == DataPosition(epoch=0, index=10)
    epoch1 = ids(next(it)) + ids(next(it))
    assert sorted(epoch1) == sorted(epoch0) and epoch1 != epoch0
    assert ids(PromptBatches(rows, 5, seed=3).take(10)) == epoch0
    assert ids(PromptBatches(rows, 5, seed=4).take(10)) != epoch0


def test_resume_reproduces_the_same_batches() -> None:
    rows = [PromptRow(str(i), "p") for i in range(7)]
    reference = PromptBatches(rows, batch_size=3, seed=0)
    expected = [ids(next(reference)) for _ in range(9)]  # batches span epochs (7 rows)

    first = PromptBatches(rows, batch_size=3, seed=0)
    got = [ids(next(first)) for _ in range(4)]
    state = json.loads(json.dumps(first.state_dict()))  # survives a checkpoint file
    second = PromptBatches(rows, batch_size=3, seed=0)
    second.load_state_dict(state)
    assert second.position == first.position == DataPosition(epoch=1, index=5)
    got += [ids(next(second)) for _ in range(5)]
    assert got == expected


def test_resume_refuses_other_data_or_seed() -> None:
    rows = [PromptRow(str(i), "p") for i in range(5)]
    state = PromptBatches(rows, 2, seed=0).state_dict()
    with pytest.raises(ValueError, match="rows differ from the checkpoint"):
        PromptBatches(rows[:4], 2, seed=0).load_state_dict(state)
    with pytest.raises(ValueError, match="seed"):
        PromptBatches(rows, 2, seed=1).load_state_dict(state)
