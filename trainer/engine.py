"""The training engine: a model with its optimiser and schedule, on DeepSpeed or plain torch.

A recipe's inner loop is the same on both paths:

    engine = create_engine(model, lr=1e-5, grad_accum_steps=2, zero_stage=2)
    for micro in micro_batches:                  # grad_accum_steps of them per step
        loss = loss_fn(engine(**micro))          # forward through the engine
        engine.backward(loss)                    # scaled by 1 / grad_accum_steps
        grad_norm = engine.step()                # None until the accumulation boundary

`step()` is called after every micro-batch and acts at the boundary: gradients are
averaged over the data-parallel ranks, the global norm is clipped to `max_grad_norm`,
AdamW and the schedule take one step, and the pre-clip norm comes back. The gradient of
one optimiser step is therefore the mean, over ranks and micro-batches, of each
micro-batch loss's gradient. A loss normalised by a count over the whole global batch
(e.g. DAPO's token mean) must pass `count / engine.micro_batches_per_step` as its
denominator so the sum comes out right: see `micro_batches_per_step`.

The DeepSpeed path (the default) hands the model, a client optimiser and the schedule to
`deepspeed.initialize` with the config from `DeepSpeedConfig.to_dict`, so ZeRO stages 0-3,
optimizer offload and bf16 are DeepSpeed's. The optimiser is always torch's AdamW, passed
as a client optimiser: DeepSpeed's own Adam variants are compiled ops (FusedAdam needs
CUDA, DeepSpeedCPUAdam a C++ toolchain and a minute of compiling), and a laptop run must
not depend on either. With optimizer offload the config sets
`zero_force_ds_cpu_optimizer: false` so DeepSpeed accepts a client optimiser stepping on
the CPU copy (torch AdamW there is slower than DeepSpeedCPUAdam on a big model; setting
that key true makes DeepSpeed refuse the client optimiser rather than swap it).
Schedule: `LRSchedule` through torch's LambdaLR, which DeepSpeed steps at each boundary
and saves in its checkpoint.

On the CPU accelerator (`DS_ACCELERATOR=cpu`) DeepSpeed compiles its shared-memory
collective op the first time a process group is made (about 45 s, cached under
~/.cache/torch_extensions). That op only serves `inference_all_reduce` (tensor-parallel
inference); training collectives go through gloo. `create_engine` marks it incompatible
so nothing is compiled; set REFEREE_DS_SHM_OP=1 to let DeepSpeed build it.

The plain-torch path (`use_deepspeed=False`) is for debugging with the same semantics:
the same AdamW and schedule, the same loss scaling and clipping, gradients all-reduced
(mean) at the boundary when several processes run, and for bf16 the arrangement of
DeepSpeed's stage 0: bf16 weights and gradients, fp32 master weights in the optimiser.
It keeps full optimiser state on every rank (no ZeRO).

What this does not do: pipeline or tensor parallelism, fp16 loss scaling, resuming on a
different number of processes (checkpoint.py refuses it).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import torch
from torch import nn

from referee.trainer import distributed

__all__ = [
    "LRSchedule",
    "TrainEngine",
    "apply_lora",
    "create_engine",
    "merge_lora_state_dict",
    "param_groups",
]

Dtype = Literal["fp32", "bf16"]
Schedule = Literal["constant", "linear", "cosine"]

_DS_TAG = "deepspeed"  # subdirectory of an engine checkpoint written by DeepSpeed
_TORCH_TAG = "torch"  # ... and by the plain-torch engine


class TrainEngine(Protocol):
    """What a recipe trains through; `create_engine` returns one."""

    @property
    def module(self) -> nn.Module:
        """The model itself (a `PeftModel` when LoRA is on), not a DeepSpeed wrapper."""
        ...

    @property
    def device(self) -> torch.device:
        """Where the model lives: inputs go here."""
        ...

    @property
    def lr(self) -> float:
        """The learning rate the next optimiser step uses."""
        ...

    @property
    def global_step(self) -> int:
        """Optimiser steps taken."""
        ...

    @property
    def is_boundary(self) -> bool:
        """Whether the next `step()` call ends an accumulation window (steps the optimiser)."""
        ...

    @property
    def micro_batches_per_step(self) -> int:
        """grad_accum_steps * world_size: micro-batch losses averaged into one step."""
        ...

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """The model's forward."""
        ...

    def train(self, mode: bool = True) -> None: ...

    def eval(self) -> None: ...

    def backward(self, loss: torch.Tensor) -> None:
        """Accumulates the gradient of `loss / grad_accum_steps`."""
        ...

    def step(self) -> float | None:
        """At a boundary: average, clip, step; returns the pre-clip global grad norm.
        Otherwise does nothing and returns None."""
        ...

    def state_dict_for_export(self) -> dict[str, torch.Tensor] | None:
        """The full model weights, on CPU, with base-model names (LoRA merged).

        Collective (every rank must call it); rank 0 gets the dict, other ranks None."""
        ...

    def save(self, directory: str | os.PathLike[str]) -> None:
        """Writes weights, optimiser and schedule state under `directory` (collective)."""
        ...

    def load(self, directory: str | os.PathLike[str]) -> None:
        """Restores what `save` wrote (collective)."""
        ...


# --- pieces shared by both engines ---------------------------------------------------


@dataclass(frozen=True)
class LRSchedule:
    """Multiplier of the peak learning rate at optimiser step `s` (0-based).

    Warm-up: (s + 1) / warmup_steps for s < warmup_steps, so the first step already moves
    and step warmup_steps - 1 reaches the peak. Then constant, or decaying to 0 at
    `total_steps` (linear, or half a cosine); decay needs `total_steps`.
    A callable object rather than a closure so `LambdaLR.state_dict()` carries it.

    >>> [round(LRSchedule(2, 6, "linear")(s), 2) for s in range(6)]
    [0.5, 1.0, 1.0, 0.75, 0.5, 0.25]
    """

    warmup_steps: int = 0
    total_steps: int | None = None
    schedule: Schedule = "constant"

    def __post_init__(self) -> None:
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.schedule not in ("constant", "linear", "cosine"):
            raise ValueError(f"unknown schedule {self.schedule!r}: constant, linear or cosine")
        if self.schedule != "constant":
            if self.total_steps is None:
                raise ValueError(
                    f"the {self.schedule} schedule decays to 0 at total_steps: give it"
                )
            if self.total_steps <= self.warmup_steps:
                raise ValueError(
                    f"total_steps {self.total_steps} must exceed warmup_steps {self.warmup_steps}"
                )

    def __call__(self, s: int) -> float:
        if s < self.warmup_steps:
            return (s + 1) / self.warmup_steps
        if self.schedule == "constant":
            return 1.0
        assert self.total_steps is not None
        done = min(1.0, (s - self.warmup_steps) / (self.total_steps - self.warmup_steps))
        if self.schedule == "linear":
            return 1.0 - done
        return 0.5 * (1.0 + math.cos(math.pi * done))


def param_groups(module: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups over the trainable parameters: matrices decay, vectors do not.

    Biases and norm gains (1-D) are left out of weight decay, as in most LLM recipes;
    tied weights appear once. Frozen parameters (LoRA's base weights) are not included.
    """
    decay, no_decay = [], []
    for p in module.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    if not decay and not no_decay:
        raise ValueError("the model has no trainable parameters")
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def _optimizer(
    params: Iterable[Any], lr: float, betas: tuple[float, float], weight_decay: float
) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=lr, betas=betas, weight_decay=weight_decay)


def _total_norm(tensors: list[torch.Tensor]) -> torch.Tensor:
    """The 2-norm of all `tensors` together, in fp32 (0 for none)."""
    if not tensors:
        return torch.tensor(0.0)
    return torch.linalg.vector_norm(
        torch.stack([torch.linalg.vector_norm(t.float()) for t in tensors])
    )


def _cpu_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


# --- LoRA --------------------------------------------------------------------------------


def apply_lora(
    model: nn.Module,
    *,
    r: int = 16,
    alpha: float = 32.0,
    dropout: float = 0.0,
    target_modules: list[str] | None = None,
) -> nn.Module:
    """Wraps `model` with `peft` LoRA adapters (call before `create_engine`).

    Only the adapters train; the engine's export merges them into the base weights
    (`merge_lora_state_dict`), so the exported directory is a plain model.
    """
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=target_modules or ["q_proj", "k_proj", "v_proj", "o_proj"],
        bias="none",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def _is_peft(module: nn.Module) -> bool:
    try:
        from peft import PeftModel
    except ImportError:
        return False
    return isinstance(module, PeftModel)


def merge_lora_state_dict(
    module: nn.Module, state: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """The base model's state dict with LoRA folded in: W + scaling * B @ A per layer.

    `module` is the `PeftModel` (for the adapter layout and scaling), `state` its full
    state dict (gathered, for ZeRO-3). Works from the dict, not the module, so it needs
    no full copy of a partitioned model. Plain `lora.Linear` layers only: DoRA, adapter
    biases and embedding adapters raise NotImplementedError.
    """
    from peft.tuners.lora import LoraLayer

    merged = dict(state)
    for name, layer in module.named_modules():
        if not isinstance(layer, LoraLayer):
            continue
        for adapter in layer.active_adapters:
            if layer.use_dora.get(adapter, False) or getattr(layer, "lora_bias", {}).get(
                adapter, False
            ):
                raise NotImplementedError(
                    f"{name}: exporting DoRA or adapter biases is not supported; "
                    "use plain LoRA (model.lora)"
                )
            a_key, b_key = f"{name}.lora_A.{adapter}.weight", f"{name}.lora_B.{adapter}.weight"
            if a_key not in merged:
                raise NotImplementedError(f"{name}: adapter {adapter!r} is not a Linear LoRA")
            a, b = merged.pop(a_key), merged.pop(b_key)  # [r, in], [out, r]
            delta = (b.float() @ a.float()) * layer.scaling[adapter]  # [out, in]
            if layer.fan_in_fan_out:
                delta = delta.T
            w_key = f"{name}.base_layer.weight"
            merged[w_key] = (merged[w_key].float() + delta).to(merged[w_key].dtype)
    leftover = [k for k in merged if "lora_" in k]
    if leftover:
        raise NotImplementedError(f"cannot merge adapter weights {leftover[:3]} into the base")
    prefix = "base_model.model."
    return {k.removeprefix(prefix).replace(".base_layer.", "."): v for k, v in merged.items()}


def _export(
    module: nn.Module, state: dict[str, torch.Tensor] | None
) -> dict[str, torch.Tensor] | None:
    if state is None or not _is_peft(module):
        return state
    return merge_lora_state_dict(module, state)


# --- DeepSpeed --------------------------------------------------------------------------


def _skip_shm_op_on_cpu() -> None:
    """Marks DeepSpeed's CPU shared-memory collective op incompatible (see module doc)."""
    if os.environ.get("REFEREE_DS_SHM_OP") == "1":
        return
    from deepspeed.accelerator import get_accelerator

    if get_accelerator().device_name() != "cpu":
        return
    import deepspeed.ops

    # The probe result is cached in the module and consulted before building the op.
    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


class _DeepSpeedEngine:
    def __init__(
        self,
        module: nn.Module,
        optimizer: torch.optim.Optimizer,
        schedule: LRSchedule,
        ds_config: dict[str, Any],
    ) -> None:
        import deepspeed

        self._ds_config = ds_config
        self._zero_stage = int(ds_config["zero_optimization"]["stage"])
        self._bf16 = bool(ds_config.get("bf16", {}).get("enabled", False))
        self._gas = int(ds_config["gradient_accumulation_steps"])
        self._engine, _, _, _ = deepspeed.initialize(
            model=module,
            optimizer=optimizer,
            lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, schedule),
            config=ds_config,
        )

    @property
    def module(self) -> nn.Module:
        return self._engine.module

    @property
    def device(self) -> torch.device:
        return torch.device(self._engine.device)

    @property
    def lr(self) -> float:
        return float(self._engine.get_lr()[0])

    @property
    def global_step(self) -> int:
        return int(self._engine.global_steps)

    @property
    def is_boundary(self) -> bool:
        return bool(self._engine.is_gradient_accumulation_boundary())

    @property
    def micro_batches_per_step(self) -> int:
        return self._gas * self._engine.dp_world_size

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._engine(*args, **kwargs)

    def train(self, mode: bool = True) -> None:
        self._engine.train(mode)

    def eval(self) -> None:
        self._engine.eval()

    def backward(self, loss: torch.Tensor) -> None:
        self._engine.backward(loss)

    def step(self) -> float | None:
        boundary = self.is_boundary
        own_norm = None
        if boundary and self._zero_stage == 0 and not self._bf16:
            # Stage 0 in fp32 clips inside DeepSpeed without keeping the norm; the
            # gradients are already averaged over ranks here (in backward).
            grads = [p.grad for p in self.module.parameters() if p.grad is not None]
            own_norm = _total_norm(grads)
        self._engine.step()
        if not boundary:
            return None
        norm = own_norm if own_norm is not None else self._engine.get_global_grad_norm()
        return float(norm) if norm is not None else float("nan")

    def state_dict_for_export(self) -> dict[str, torch.Tensor] | None:
        if self._zero_stage == 3:
            state = self._engine._zero3_consolidated_16bit_state_dict()
            state = None if state is None else {k: v.cpu() for k, v in state.items()}
        else:
            state = _cpu_state_dict(self.module) if distributed.is_main() else None
        return _export(self.module, state)

    def save(self, directory: str | os.PathLike[str]) -> None:
        self._engine.save_checkpoint(str(directory), tag=_DS_TAG, save_latest=False)

    def load(self, directory: str | os.PathLike[str]) -> None:
        path = Path(directory) / _DS_TAG
        if not path.is_dir():
            raise FileNotFoundError(
                f"{path} is missing: this checkpoint was not written by the DeepSpeed "
                "engine (resume with the same deepspeed.enabled setting)"
            )
        loaded, _ = self._engine.load_checkpoint(
            str(directory),
            tag=_DS_TAG,
            load_optimizer_states=True,
            load_lr_scheduler_states=True,
        )
        if loaded is None:
            raise RuntimeError(f"DeepSpeed could not load the checkpoint in {path}")


# --- plain torch ------------------------------------------------------------------------


class _TorchEngine:
    def __init__(
        self,
        module: nn.Module,
        *,
        lr: float,
        betas: tuple[float, float],
        weight_decay: float,
        schedule: LRSchedule,
        max_grad_norm: float,
        grad_accum_steps: int,
        bf16: bool,
    ) -> None:
        self._device = distributed.default_device()
        module = module.to(self._device)
        self._module = module.to(torch.bfloat16) if bf16 else module.float()
        self._gas = grad_accum_steps
        self._max_grad_norm = max_grad_norm
        self._world = distributed.world_size()
        self._micro_steps = 0
        self._global_step = 0
        self._params = [p for p in self._module.parameters() if p.requires_grad]
        if self._world > 1:  # start every rank from rank 0's weights, as DeepSpeed does
            for t in list(self._module.parameters()) + list(self._module.buffers()):
                torch.distributed.broadcast(t.data, src=0)
        # bf16: the optimiser steps fp32 master copies; the model holds bf16 copies of them.
        self._master = (
            [p.detach().float().clone().requires_grad_(True) for p in self._params]
            if bf16
            else None
        )
        groups = param_groups(self._module, weight_decay)
        if self._master is not None:
            index = {id(p): i for i, p in enumerate(self._params)}
            for g in groups:
                g["params"] = [self._master[index[id(p)]] for p in g["params"]]
        self._optimizer = _optimizer(groups, lr, betas, weight_decay)
        self._scheduler = torch.optim.lr_scheduler.LambdaLR(self._optimizer, schedule)

    @property
    def module(self) -> nn.Module:
        return self._module

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def lr(self) -> float:
        return float(self._optimizer.param_groups[0]["lr"])

    @property
    def global_step(self) -> int:
        return self._global_step

    @property
    def is_boundary(self) -> bool:
        return (self._micro_steps + 1) % self._gas == 0

    @property
    def micro_batches_per_step(self) -> int:
        return self._gas * self._world

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._module(*args, **kwargs)

    def train(self, mode: bool = True) -> None:
        self._module.train(mode)

    def eval(self) -> None:
        self._module.eval()

    def backward(self, loss: torch.Tensor) -> None:
        (loss / self._gas).backward()

    def step(self) -> float | None:
        boundary = self.is_boundary
        self._micro_steps += 1
        if not boundary:
            return None
        for p in self._params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            if self._world > 1:
                p.grad = distributed.all_reduce_mean(p.grad)
        stepped = self._params
        if self._master is not None:
            for master, p in zip(self._master, self._params, strict=True):
                master.grad = p.grad.float()
            stepped = self._master
        max_norm = self._max_grad_norm if self._max_grad_norm > 0 else float("inf")
        norm = torch.nn.utils.clip_grad_norm_(stepped, max_norm)
        self._optimizer.step()
        self._scheduler.step()
        self._optimizer.zero_grad(set_to_none=True)
        self._module.zero_grad(set_to_none=True)
        if self._master is not None:
            with torch.no_grad():
                for master, p in zip(self._master, self._params, strict=True):
                    p.copy_(master)
        self._global_step += 1
        return float(norm)

    def state_dict_for_export(self) -> dict[str, torch.Tensor] | None:
        state = _cpu_state_dict(self._module) if distributed.is_main() else None
        return _export(self._module, state)

    def save(self, directory: str | os.PathLike[str]) -> None:
        # Every rank holds the same state; rank 0 writes it.
        if not distributed.is_main():
            return
        path = Path(directory) / _TORCH_TAG
        path.mkdir(parents=True, exist_ok=True)
        torch.save(
            {
                "model": self._module.state_dict(),
                "master": self._master,
                "optimizer": self._optimizer.state_dict(),
                "scheduler": self._scheduler.state_dict(),
                "global_step": self._global_step,
                "micro_steps": self._micro_steps,
            },
            path / "engine.pt",
        )

    def load(self, directory: str | os.PathLike[str]) -> None:
        file = Path(directory) / _TORCH_TAG / "engine.pt"
        if not file.is_file():
            raise FileNotFoundError(
                f"{file} is missing: this checkpoint was not written by the plain-torch "
                "engine (resume with the same deepspeed.enabled setting)"
            )
        state = torch.load(file, map_location="cpu", weights_only=False)
        self._module.load_state_dict(state["model"])
        if self._master is not None:
            with torch.no_grad():
                for master, saved in zip(self._master, state["master"], strict=True):
                    master.copy_(saved)
        self._optimizer.load_state_dict(state["optimizer"])
        self._scheduler.load_state_dict(state["scheduler"])
        self._global_step = int(state["global_step"])
        self._micro_steps = int(state["micro_steps"])


# --- construction -------------------------------------------------------------------------


def create_engine(
    module: nn.Module,
    *,
    lr: float,
    betas: tuple[float, float] = (0.9, 0.999),
    weight_decay: float = 0.0,
    warmup_steps: int = 0,
    scheduler: Schedule = "constant",
    total_steps: int | None = None,
    max_grad_norm: float = 1.0,
    grad_accum_steps: int = 1,
    micro_batch_size: int = 1,
    dtype: Dtype = "fp32",
    use_deepspeed: bool = True,
    zero_stage: int = 2,
    offload_optimizer: bool = False,
    ds_extra: dict[str, Any] | None = None,
) -> TrainEngine:
    """Builds the engine for `module` (wrap it with `apply_lora` first for LoRA).

    Initialises the process group if needed (`distributed.init_distributed`). `total_steps`
    counts optimiser steps (needed by the decaying schedules). `micro_batch_size` only
    fills DeepSpeed's batch-size bookkeeping; the engine trains on whatever it is given.
    `zero_stage`, `offload_optimizer` and `ds_extra` (merged last into the DeepSpeed
    config) apply to the DeepSpeed path only.
    """
    if dtype not in ("fp32", "bf16"):
        raise ValueError(f"dtype must be fp32 or bf16, got {dtype!r}")
    if grad_accum_steps < 1:
        raise ValueError(f"grad_accum_steps must be >= 1, got {grad_accum_steps}")
    if max_grad_norm < 0:
        raise ValueError(f"max_grad_norm must be >= 0 (0 disables), got {max_grad_norm}")
    schedule = LRSchedule(warmup_steps, total_steps, scheduler)
    bf16 = dtype == "bf16"
    if not use_deepspeed:
        if distributed.dist_info().world_size > 1:  # one process needs no process group
            distributed.init_distributed()
        return _TorchEngine(
            module,
            lr=lr,
            betas=betas,
            weight_decay=weight_decay,
            schedule=schedule,
            max_grad_norm=max_grad_norm,
            grad_accum_steps=grad_accum_steps,
            bf16=bf16,
        )
    from referee.trainer.config import DeepSpeedConfig

    info = distributed.init_distributed()  # DeepSpeed needs a process group, even for one
    ds_config = DeepSpeedConfig(
        enabled=True,
        zero_stage=zero_stage,
        offload_optimizer=offload_optimizer,
        extra=dict(ds_extra or {}),
    ).to_dict(
        micro_batch_size=micro_batch_size,
        grad_accum_steps=grad_accum_steps,
        world_size=info.world_size,
        max_grad_norm=max_grad_norm,
        bf16=bf16,
    )
    _skip_shm_op_on_cpu()
    module = module.float()  # DeepSpeed casts to bf16 itself and keeps fp32 masters
    optimizer = _optimizer(param_groups(module, weight_decay), lr, betas, weight_decay)
    return _DeepSpeedEngine(module, optimizer, schedule, ds_config)
