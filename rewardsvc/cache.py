"""An LRU cache of verifier results, keyed by (reward, version, params, sample content).

RL batches repeat themselves: n completions per prompt often coincide, and short answers
collide across prompts. The key covers everything a pure verifier may read except the
sample id, so two samples with the same prompt, completion, reference and metadata share
an entry. Only deterministic outcomes are cached (OK and INVALID_INPUT); a TIMEOUT or
ERROR may not happen next time.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from typing import Any

from referee.rewardsvc.worker import RawResult
from referee.v1 import reward_pb2 as pb

CACHEABLE = frozenset({"OK", "INVALID_INPUT"})


def params_digest(reward: str, version: str, params: dict[str, Any]) -> bytes:
    """The part of the key shared by a whole request."""
    canon = json.dumps([reward, version, params], sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.blake2b(canon.encode(), digest_size=16).digest()


def sample_key(prefix: bytes, s: pb.Sample) -> bytes:
    """Digest of the request prefix and every sample field but `id`."""
    h = hashlib.blake2b(prefix, digest_size=16)
    which = s.WhichOneof("prompt")
    if which == "prompt_text":
        h.update(b"T")
        h.update(s.prompt_text.encode())
    elif which == "prompt_messages":
        h.update(b"M")
        h.update(s.prompt_messages.SerializeToString(deterministic=True))
    for part in (s.completion.encode(), s.reference.encode(), s.metadata.SerializeToString(deterministic=True)):
        h.update(len(part).to_bytes(8, "little"))
        h.update(part)
    return h.digest()


class ResultCache:
    """A bounded LRU map from key to (status, value, reason, components)."""

    def __init__(self, max_entries: int) -> None:
        self._max = max_entries
        self._data: OrderedDict[bytes, tuple[str, float | None, str, dict[str, float]]] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self._max > 0

    def __len__(self) -> int:
        return len(self._data)

    def get(self, key: bytes) -> tuple[str, float | None, str, dict[str, float]] | None:
        hit = self._data.get(key)
        if hit is not None:
            self._data.move_to_end(key)
        return hit

    def put(self, key: bytes, r: RawResult) -> None:
        if self._max <= 0 or r[1] not in CACHEABLE:
            return
        self._data[key] = (r[1], r[2], r[3], r[4])
        self._data.move_to_end(key)
        while len(self._data) > self._max:
            self._data.popitem(last=False)
