"""Prompts for training and evaluation: loading, splitting, rendering, and batching.

Rows come from a local JSONL or Parquet file (never the hub) and become `PromptRow`s,
whose fields carry the names of `referee.types.Sample` so that `reference` and
`metadata` reach the reward services unchanged. A bad row fails the load with its line
number (JSONL) or row number (Parquet) and the field at fault.

Everything is deterministic: the held-out split depends only on the row ids (a hash, so
it is the same for every seed and row order), the shuffle only on the seed and the
epoch, and `PromptBatches` can save and restore its position for checkpoint resume.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

from referee.types import Sample

Message = dict[str, str]


class HasId(Protocol):
    """A row with an id: what splitting and batching need (prompt rows, preference pairs)."""

    @property
    def id(self) -> str: ...


RowT = TypeVar("RowT", bound=HasId)


@dataclass(frozen=True)
class PromptRow:
    """One prompt with what its reward needs. Field names follow `referee.types.Sample`."""

    id: str
    """Unique within the file; the row number when the data has no ids."""

    prompt: str | list[Message]
    """Plain text, or chat messages ({role, content})."""

    reference: str = ""
    """The reference answer handed to the reward services."""

    metadata: dict[str, Any] = field(default_factory=dict)
    """Per-row data handed to the reward services (test cases, schema, choices...)."""

    completion: str | None = None
    """The target completion (sft); None for RL prompts."""

    @property
    def prompt_text(self) -> str:
        """The prompt as one string (chat messages' contents joined by newlines)."""
        if isinstance(self.prompt, str):
            return self.prompt
        return "\n".join(m["content"] for m in self.prompt)

    def sample(self, completion: str | None, sample_id: str | None = None) -> Sample:
        """The `Sample` a reward service scores for `completion` of this prompt."""
        return Sample(
            completion=completion,
            id=self.id if sample_id is None else sample_id,
            prompt=self.prompt,
            reference=self.reference,
            metadata=self.metadata,
        )


class DataError(ValueError):
    """The data (not the code) is at fault; the message names the file and row."""


# --- loading ------------------------------------------------------------------------


def load_prompts(
    path: str | Path,
    *,
    id_field: str = "id",
    prompt_field: str = "prompt",
    reference_field: str = "reference",
    metadata_field: str = "metadata",
    completion_field: str | None = None,
    seed: int | None = None,
) -> list[PromptRow]:
    """Reads prompts from a .jsonl or .parquet file, in file order or shuffled by `seed`.

    A row without an id gets its 0-based row number. `completion_field`, when given,
    is required in every row (sft data). Ids must be unique.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: no such file")
    names = dict(
        id=id_field,
        prompt=prompt_field,
        reference=reference_field,
        metadata=metadata_field,
        completion=completion_field,
    )
    if p.suffix == ".jsonl":
        raws = _read_jsonl(p)
    elif p.suffix == ".parquet":
        raws = _read_parquet(p, prompt_field, completion_field)
    else:
        raise DataError(f"{p}: expected a .jsonl or .parquet file")
    rows: list[PromptRow] = []
    first_seen: dict[str, str] = {}
    for index, (where, raw) in enumerate(raws):
        row = _to_row(raw, index, where, names)
        if row.id in first_seen:
            raise DataError(
                f"{where}: id {row.id!r} repeats {first_seen[row.id]}; ids must be unique"
            )
        first_seen[row.id] = where
        rows.append(row)
    if not rows:
        raise DataError(f"{p}: no rows")
    if seed is not None:
        random.Random(f"load/{seed}").shuffle(rows)
    return rows


def _read_jsonl(p: Path) -> Iterator[tuple[str, Any]]:
    with p.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{p}:{lineno}"
            try:
                yield where, json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{where}: invalid JSON ({e.msg} at column {e.colno})") from None


def _read_parquet(
    p: Path, prompt_field: str, completion_field: str | None
) -> Iterator[tuple[str, Any]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(p)
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"{p}: not a readable Parquet file ({e})") from None
    for col in (prompt_field, completion_field):
        if col is not None and col not in table.column_names:
            raise DataError(
                f"{p}: no column {col!r} (columns: {', '.join(table.column_names)}); "
                "set the data.*_field names to match"
            )
    for i, raw in enumerate(table.to_pylist()):
        yield f"{p}: row {i}", raw


def _to_row(raw: Any, index: int, where: str, names: dict[str, str | None]) -> PromptRow:
    if not isinstance(raw, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(raw).__name__}")

    def get(kind: str) -> Any:
        name = names[kind]
        return None if name is None else raw.get(name)

    def bad(kind: str, what: str) -> DataError:
        return DataError(f"{where}: field {names[kind]!r} {what}")

    rid = get("id")
    if rid is None:
        rid = str(index)
    elif isinstance(rid, int) and not isinstance(rid, bool):
        rid = str(rid)
    elif not isinstance(rid, str) or not rid:
        raise bad("id", f"must be non-empty text or an integer, got {rid!r}")

    if names["prompt"] not in raw:
        raise DataError(
            f"{where}: no field {names['prompt']!r} (the row has: {', '.join(map(str, raw)) or 'nothing'}); "
            "set data.prompt_field to the one holding the prompt"
        )
    prompt = _prompt(get("prompt"), lambda what: bad("prompt", what))

    reference = get("reference")
    if reference is None:
        reference = ""
    elif isinstance(reference, (int, float)) and not isinstance(reference, bool):
        reference = str(reference)
    elif not isinstance(reference, str):
        raise bad("reference", f"must be text or a number, got {type(reference).__name__}")

    metadata = get("metadata")
    if metadata is None:
        metadata = {}
    elif not isinstance(metadata, dict):
        raise bad("metadata", f"must be an object, got {type(metadata).__name__}")

    completion = None
    if names["completion"] is not None:
        completion = get("completion")
        if not isinstance(completion, str):
            raise bad("completion", f"must be text (the sft target), got {completion!r}")
    return PromptRow(rid, prompt, reference, metadata, completion)


def _prompt(value: Any, bad: Any) -> str | list[Message]:
    if isinstance(value, str):
        if not value.strip():
            raise bad("is empty")
        return value
    if isinstance(value, list) and value:
        messages = []
        for i, m in enumerate(value):
            if not (
                isinstance(m, dict)
                and isinstance(m.get("role"), str)
                and isinstance(m.get("content"), str)
            ):
                raise bad(f"message {i} must be {{role: text, content: text}}, got {m!r}")
            messages.append({"role": m["role"], "content": m["content"]})
        return messages
    raise bad(f"must be text or a non-empty list of {{role, content}} messages, got {value!r}")


# --- splitting ----------------------------------------------------------------------


def split_eval(rows: Sequence[RowT], fraction: float) -> tuple[list[RowT], list[RowT]]:
    """(train, eval): round(fraction * len) rows held out, chosen by a hash of their id.

    The choice depends on the ids alone, so it is the same whatever the seed or the row
    order, and mostly survives appending rows. Both parts keep the input order.
    """
    if not 0 <= fraction < 1:
        raise ValueError(f"eval fraction must be in [0, 1), got {fraction}")
    n_eval = round(fraction * len(rows))
    if fraction > 0 and n_eval == 0:
        n_eval = 1
    if n_eval >= len(rows):
        raise DataError(
            f"holding out {fraction} of {len(rows)} rows leaves none to train on; "
            "lower data.eval_fraction or add rows"
        )
    ranked = sorted(rows, key=lambda r: hashlib.sha256(f"eval/{r.id}".encode()).digest())
    held = {r.id for r in ranked[:n_eval]}
    return [r for r in rows if r.id not in held], [r for r in rows if r.id in held]


def load_splits(
    train_path: str | Path,
    *,
    eval_path: str | Path | None = None,
    eval_fraction: float = 0.0,
    **fields: Any,
) -> tuple[list[PromptRow], list[PromptRow]]:
    """(train, eval) rows: eval from its own file, or `eval_fraction` held out of train.

    `fields` are `load_prompts`' field-name arguments. Rows come in file order; the
    training order is `PromptBatches`' business.
    """
    rows = load_prompts(train_path, **fields)
    if eval_path is not None:
        return rows, load_prompts(eval_path, **fields)
    return split_eval(rows, eval_fraction)


# --- rendering ----------------------------------------------------------------------


def render_prompt(
    tokenizer: Any, row: PromptRow, use_chat_template: bool, system_prompt: str | None = None
) -> str:
    """The text the model is given for `row`.

    With `use_chat_template` and a tokenizer that has a chat template: the prompt as chat
    messages (text becomes one user message; `system_prompt` goes first unless the row
    has a system message), rendered with the generation prompt. Otherwise the raw text,
    after `system_prompt` and a blank line when one is given.
    """
    if use_chat_template and getattr(tokenizer, "chat_template", None):
        messages = (
            list(row.prompt)
            if isinstance(row.prompt, list)
            else [{"role": "user", "content": row.prompt}]
        )
        if system_prompt and not any(m["role"] == "system" for m in messages):
            messages.insert(0, {"role": "system", "content": system_prompt})
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    text = row.prompt_text
    return f"{system_prompt}\n\n{text}" if system_prompt else text


def drop_long_prompts(
    rows: Sequence[PromptRow],
    tokenizer: Any,
    max_tokens: int,
    use_chat_template: bool,
    system_prompt: str | None = None,
) -> tuple[list[PromptRow], int]:
    """(kept rows, number dropped): rows whose rendered prompt exceeds `max_tokens`.

    `max_tokens` 0 keeps all. Tokens are counted as the engine will see them: a chat
    template writes its own special tokens, raw text gets the tokenizer's.
    """
    if max_tokens <= 0:
        return list(rows), 0
    templated = use_chat_template and bool(getattr(tokenizer, "chat_template", None))
    kept = [
        r
        for r in rows
        if len(
            tokenizer(
                render_prompt(tokenizer, r, use_chat_template, system_prompt),
                add_special_tokens=not templated,
            )["input_ids"]
        )
        <= max_tokens
    ]
    return kept, len(rows) - len(kept)


# --- batching -----------------------------------------------------------------------


@dataclass(frozen=True)
class DataPosition:
    """Where a `PromptBatches` stands: the epoch and the next row within its order."""

    epoch: int
    index: int


class PromptBatches(Generic[RowT]):
    """An endless iterator of batches of rows (prompts, or preference pairs), epoch after
    epoch, resumable.

    Each epoch visits every row once, in an order that depends only on `seed` and the
    epoch number; a batch may span two epochs. `state_dict()` after any batch, restored
    with `load_state_dict()` on an iterator over the same rows, continues with exactly
    the batches the first one would have produced.

    >>> rows = [PromptRow(str(i), f"q{i}") for i in range(5)]
    >>> it = PromptBatches(rows, batch_size=2, seed=0)
    >>> first = next(it); state = it.state_dict(); second = next(it)
    >>> it2 = PromptBatches(rows, batch_size=2, seed=0); it2.load_state_dict(state)
    >>> next(it2) == second
    True
    """

    def __init__(self, rows: Sequence[RowT], batch_size: int, seed: int) -> None:
        if not rows:
            raise ValueError("no prompt rows to iterate over")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self._rows = list(rows)
        self.batch_size = batch_size
        self.seed = seed
        self._fingerprint = hashlib.sha256(
            "\0".join(r.id for r in self._rows).encode()
        ).hexdigest()[:16]
        self._epoch = 0
        self._index = 0
        self._order = self._order_for(0)

    def _order_for(self, epoch: int) -> list[int]:
        order = list(range(len(self._rows)))
        random.Random(f"epoch/{self.seed}/{epoch}").shuffle(order)
        return order

    @property
    def position(self) -> DataPosition:
        return DataPosition(self._epoch, self._index)

    def take(self, k: int) -> list[RowT]:
        """The next `k` rows (dynamic sampling refills with this)."""
        out: list[RowT] = []
        while len(out) < k:
            if self._index == len(self._rows):
                self._epoch += 1
                self._index = 0
                self._order = self._order_for(self._epoch)
            out.append(self._rows[self._order[self._index]])
            self._index += 1
        return out

    def __iter__(self) -> PromptBatches[RowT]:
        return self

    def __next__(self) -> list[RowT]:
        return self.take(self.batch_size)

    def state_dict(self) -> dict[str, Any]:
        """Plain data for a checkpoint (JSON-serialisable)."""
        return {
            "epoch": self._epoch,
            "index": self._index,
            "seed": self.seed,
            "rows": len(self._rows),
            "fingerprint": self._fingerprint,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continues from `state`; refuses one taken over other rows or another seed."""
        if state["fingerprint"] != self._fingerprint or state["rows"] != len(self._rows):
            raise ValueError(
                f"the prompt rows differ from the checkpoint's ({len(self._rows)} rows now, "
                f"{state['rows']} then); resume with the same data or start a new run"
            )
        if state["seed"] != self.seed:
            raise ValueError(f"checkpoint data seed is {state['seed']}, this run's {self.seed}")
        if not 0 <= state["index"] <= len(self._rows) or state["epoch"] < 0:
            raise ValueError(f"bad data position {state['epoch']}/{state['index']}")
        self._epoch, self._index = state["epoch"], state["index"]
        self._order = self._order_for(self._epoch)
