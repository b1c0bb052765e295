"""Rollout engines: sampling completions from the current policy (DESIGN.md §5).

`RolloutEngine` is the protocol; `HFEngine` is the in-process transformers engine (the
CPU default); `SGLangEngine` talks to SGLang servers over HTTP, kept in sync by
`weight_sync`. See `base.py` for the logprob, stop and delivery conventions.
"""

from .base import (
    Completion,
    FinishReason,
    GroupCallback,
    RolloutBatch,
    RolloutEngine,
    RolloutTensors,
    SamplingParams,
    WeightSource,
    iter_groups,
)
from .hf import HFEngine
from .sglang import SGLangEngine

__all__ = [
    "Completion",
    "FinishReason",
    "GroupCallback",
    "HFEngine",
    "RolloutBatch",
    "RolloutEngine",
    "RolloutTensors",
    "SGLangEngine",
    "SamplingParams",
    "WeightSource",
    "iter_groups",
]
