"""Cutting a model's parameters into buckets of about N MB for a weight sync.

A weight sync sends the policy to the rollout servers bucket by bucket, so neither the
trainer nor a server ever holds a second copy of the whole model in flight. Sizes are
counted on the *full* (unpartitioned) shapes: under ZeRO-3 a parameter's local tensor
is a shard (often empty) and its real shape is `ds_shape`; a bucket's parameters are
gathered together just before it is sent (`gather_context`), never all at once.

Dtype names are SGLang's wire form (`"bfloat16"`, `"float32"`: the attribute name on
`torch`), which servers turn back into dtypes with `getattr(torch, name)`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field

import torch

#: Gathers a bucket's (possibly partitioned) parameters for the duration of the block.
GatherFn = Callable[[Sequence[torch.nn.Parameter]], AbstractContextManager]


@dataclass
class Bucket:
    """Consecutive parameters whose full sizes add up to at most the bucket size
    (a single parameter larger than that gets a bucket of its own)."""

    names: list[str] = field(default_factory=list)
    params: list[torch.Tensor] = field(default_factory=list)
    nbytes: int = 0

    @property
    def dtypes(self) -> list[str]:
        return [dtype_name(p.dtype) for p in self.params]

    @property
    def shapes(self) -> list[list[int]]:
        return [list(full_shape(p)) for p in self.params]


def dtype_name(dtype: torch.dtype) -> str:
    """`torch.bfloat16` -> `"bfloat16"`, as SGLang's update requests spell dtypes.

    >>> dtype_name(torch.float32)
    'float32'
    """
    name = str(dtype)
    if not name.startswith("torch."):
        raise ValueError(f"not a torch dtype: {dtype!r}")
    return name.removeprefix("torch.")


def full_shape(param: torch.Tensor) -> torch.Size:
    """The parameter's unpartitioned shape (`ds_shape` under ZeRO-3)."""
    return getattr(param, "ds_shape", None) or param.shape


def full_nbytes(param: torch.Tensor) -> int:
    numel = 1
    for dim in full_shape(param):
        numel *= int(dim)
    return numel * param.element_size()


def make_buckets(
    named_params: Iterable[tuple[str, torch.Tensor]], bucket_mb: float
) -> list[Bucket]:
    """Group parameters, in order, into buckets of at most `bucket_mb` MiB each.

    >>> ps = [(f"w{i}", torch.zeros(256 * 1024)) for i in range(3)]  # 1 MiB each
    >>> [b.names for b in make_buckets(ps, bucket_mb=2)]
    [['w0', 'w1'], ['w2']]
    """
    if bucket_mb <= 0:
        raise ValueError(f"bucket_mb must be > 0, got {bucket_mb}")
    limit = int(bucket_mb * 1024 * 1024)
    buckets: list[Bucket] = []
    current = Bucket()
    for name, param in named_params:
        size = full_nbytes(param)
        if current.names and current.nbytes + size > limit:
            buckets.append(current)
            current = Bucket()
        current.names.append(name)
        current.params.append(param)
        current.nbytes += size
    if current.names:
        buckets.append(current)
    return buckets


def is_zero3_partitioned(params: Sequence[torch.Tensor]) -> bool:
    """Whether DeepSpeed ZeRO-3 has partitioned these parameters (they carry `ds_id`)."""
    return any(hasattr(p, "ds_id") for p in params)


def gather_context(params: Sequence[torch.nn.Parameter]) -> AbstractContextManager:
    """The default `GatherFn`: DeepSpeed's `GatheredParameters` over exactly these
    parameters when they are ZeRO-3 partitioned (read-only: `modifier_rank=None`),
    otherwise nothing to do."""
    if not is_zero3_partitioned(params):
        return contextlib.nullcontext()
    import deepspeed  # only needed under ZeRO-3

    return deepspeed.zero.GatheredParameters(list(params), modifier_rank=None)
