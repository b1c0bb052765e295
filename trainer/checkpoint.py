"""Checkpoints a killed run can resume from, and the final Hugging Face export.

Layout under the checkpoint root (`checkpoint.dir`):

    latest                 name of the newest complete checkpoint, e.g. "step_00000040"
    step_00000040/
      trainer_state.json   step, world size, metrics cursor, extra (rank 0 writes it last)
      rank_00000.pt        this rank's RNG states (python, numpy, torch, CUDA) and data position
      rank_00001.pt        ...
      deepspeed/ or torch/ the engine's weights, optimiser and schedule (`TrainEngine.save`)

A checkpoint is written into `.tmp-step_XXXXXXXX/` and renamed into place once every rank
has finished, and only then does `latest` move (written to a temporary file and
`os.replace`d), so a run killed mid-save leaves the previous checkpoint as `latest` and
a stray temporary directory that the next save removes. `keep_last` deletes the oldest
`step_*` directories after a save. With several nodes the root must be on a filesystem
every rank sees (each rank writes its own files into the same directory).

Resuming restores the engine, then this rank's data position and RNG states, and returns
the `TrainerState` (step, metrics cursor, extra) for the recipe to continue from: the
steps after it reproduce the uninterrupted run (tested to 1e-5 in fp32). It refuses a
checkpoint taken with another number of processes: ZeRO shards and per-rank RNG streams
would not line up.

Checkpoint files are pickles (`torch.load(weights_only=False)`): load only checkpoints
you wrote. The export is safetensors.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from referee.trainer import distributed
from referee.trainer.engine import TrainEngine

__all__ = [
    "LATEST",
    "Stateful",
    "TrainerState",
    "capture_rng",
    "export_hf",
    "find_checkpoint",
    "latest_checkpoint",
    "list_checkpoints",
    "restore_rng",
    "resume",
    "save_checkpoint",
]

LATEST = "latest"
_STEP_DIR = re.compile(r"^step_(\d{8,})$")
_STATE_FILE = "trainer_state.json"
_FORMAT = 1


class Stateful(Protocol):
    """Anything with a resumable position, e.g. `data.PromptBatches`."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@dataclass
class TrainerState:
    """What a recipe needs, besides the engine, to continue a run."""

    step: int
    """Training steps completed when the checkpoint was taken; the run continues at step + 1."""

    world_size: int
    """Processes the run had (a resume must have as many)."""

    metrics_cursor: int | None = None
    """Where the metrics log stood (e.g. bytes of metrics.jsonl); the logger truncates to it
    on resume, dropping rows a killed run wrote after this checkpoint."""

    extra: dict[str, Any] = field(default_factory=dict)
    """JSON-serialisable values the recipe wants back (e.g. the best eval so far)."""


def _step_name(step: int) -> str:
    return f"step_{step:08d}"


def capture_rng() -> dict[str, Any]:
    """This process's RNG states: python `random`, numpy's global RNG, torch CPU and CUDA."""
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def restore_rng(state: dict[str, Any]) -> None:
    """Restores what `capture_rng` returned (CUDA only when there is as many devices)."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def list_checkpoints(root: str | os.PathLike[str]) -> list[Path]:
    """Complete checkpoints under `root`, oldest first (temporary directories excluded)."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [
        (int(m.group(1)), p)
        for p in root.iterdir()
        if p.is_dir() and (m := _STEP_DIR.match(p.name)) and (p / _STATE_FILE).is_file()
    ]
    return [p for _, p in sorted(found)]


def latest_checkpoint(root: str | os.PathLike[str]) -> Path | None:
    """The checkpoint `latest` names, or the newest complete one if `latest` is missing or
    stale (a run killed between the rename and the pointer update); None when none."""
    root = Path(root)
    pointer = root / LATEST
    if pointer.is_file():
        candidate = root / pointer.read_text().strip()
        if (candidate / _STATE_FILE).is_file():
            return candidate
    found = list_checkpoints(root)
    return found[-1] if found else None


def find_checkpoint(path: str | os.PathLike[str]) -> Path:
    """`path` itself when it is one checkpoint, else the latest under it (a root)."""
    p = Path(path)
    if (p / _STATE_FILE).is_file():
        return p
    latest = latest_checkpoint(p)
    if latest is None:
        raise FileNotFoundError(
            f"no checkpoint in {p}: give checkpoint.dir of an earlier run (it holds step_* "
            "directories and a `latest` file), or start without resume"
        )
    return latest


def save_checkpoint(
    root: str | os.PathLike[str],
    engine: TrainEngine,
    *,
    step: int,
    data: Stateful | None = None,
    metrics_cursor: int | None = None,
    extra: dict[str, Any] | None = None,
    keep_last: int = 0,
) -> Path:
    """Writes checkpoint `step` under `root` and returns its directory (collective).

    Every rank saves its engine shard, RNG states and `data` position; rank 0 writes the
    trainer state, renames the directory into place, moves `latest` and deletes all but
    the newest `keep_last` checkpoints (0 keeps all). Saving consumes no randomness.
    """
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if keep_last < 0:
        raise ValueError(f"keep_last must be >= 0 (0 keeps all), got {keep_last}")
    info = distributed.dist_info()
    root = Path(root)
    name = _step_name(step)
    tmp, final = root / f".tmp-{name}", root / name
    if info.is_main:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    distributed.barrier()

    engine.save(tmp)
    rank_state = {
        "format": _FORMAT,
        "rank": info.rank,
        "rng": capture_rng(),
        "data": data.state_dict() if data is not None else None,
    }
    torch.save(rank_state, tmp / f"rank_{info.rank:05d}.pt")
    distributed.barrier()

    if info.is_main:
        state = TrainerState(
            step=step,
            world_size=info.world_size,
            metrics_cursor=metrics_cursor,
            extra=dict(extra or {}),
        )
        _write_text(tmp / _STATE_FILE, json.dumps({"format": _FORMAT, **asdict(state)}, indent=1))
        if final.exists():  # the same step saved again (e.g. the final save after a resume)
            shutil.rmtree(final)
        os.replace(tmp, final)
        _write_text(root / LATEST, name)
        _rotate(root, keep_last, keep=final)
    distributed.barrier()
    return final


def _write_text(path: Path, text: str) -> None:
    part = path.with_name(path.name + ".part")
    with open(part, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(part, path)


def _rotate(root: Path, keep_last: int, keep: Path) -> None:
    for stale in root.glob(".tmp-step_*"):
        shutil.rmtree(stale, ignore_errors=True)
    if keep_last == 0:
        return
    found = list_checkpoints(root)
    for old in found[: max(0, len(found) - keep_last)]:
        if old != keep:
            shutil.rmtree(old)


def resume(
    path: str | os.PathLike[str],
    engine: TrainEngine,
    *,
    data: Stateful | None = None,
) -> TrainerState:
    """Restores the engine, this rank's data position and RNG states from a checkpoint.

    `path` is a checkpoint root (its `latest` is used) or one `step_*` directory. Call it
    after building the engine and the data iterator exactly as the first run did; the RNG
    states are restored last, so nothing done while loading shifts them. Collective.
    """
    ckpt = find_checkpoint(path)
    saved = json.loads((ckpt / _STATE_FILE).read_text())
    saved.pop("format", None)
    state = TrainerState(**saved)
    info = distributed.dist_info()
    if state.world_size != info.world_size:
        raise ValueError(
            f"{ckpt} was written by {state.world_size} processes and this run has "
            f"{info.world_size}; resume with --nproc_per_node/--num_gpus giving "
            f"{state.world_size} processes (ZeRO shards and RNG streams are per rank)"
        )
    engine.load(ckpt)
    rank_state = torch.load(
        ckpt / f"rank_{info.rank:05d}.pt", map_location="cpu", weights_only=False
    )
    if data is not None:
        if rank_state["data"] is None:
            raise ValueError(f"{ckpt} has no data position; it was saved without `data`")
        data.load_state_dict(rank_state["data"])
    restore_rng(rank_state["rng"])
    distributed.barrier()
    return state


def export_hf(
    engine: TrainEngine,
    out_dir: str | os.PathLike[str],
    tokenizer: Any | None = None,
) -> Path | None:
    """Writes the trained model as a plain Hugging Face directory (collective).

    The weights are gathered (ZeRO-3) and LoRA adapters merged by
    `engine.state_dict_for_export()`, loaded strictly into a fresh copy of the base model
    (so a missing or extra weight fails here, not when someone loads the export), and
    saved with `save_pretrained` as safetensors next to `tokenizer`. The result loads with
    `AutoModelForCausalLM.from_pretrained(out_dir)` (a reward model's with
    `AutoModelForSequenceClassification`). Written to a temporary directory and
    renamed; an existing `out_dir` is replaced. Returns the path on rank 0, None elsewhere.
    """
    state = engine.state_dict_for_export()
    out = Path(out_dir)
    if not distributed.is_main():
        distributed.barrier()
        return None
    assert state is not None
    module = engine.module
    base = module.get_base_model() if hasattr(module, "get_base_model") else module
    config = base.config
    with torch.device("meta"):
        fresh = type(base)(config)
    fresh.load_state_dict(state, strict=True, assign=True)
    fresh.tie_weights()
    if getattr(base, "generation_config", None) is not None:  # a reward model has none
        fresh.generation_config = base.generation_config
    dtype = next(iter(state.values())).dtype
    fresh.config.dtype = dtype
    tmp = out.with_name(f".tmp-{out.name}")
    if tmp.exists():
        shutil.rmtree(tmp)
    fresh.save_pretrained(tmp)
    if tokenizer is not None:
        tokenizer.save_pretrained(tmp)
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    distributed.barrier()
    return out
