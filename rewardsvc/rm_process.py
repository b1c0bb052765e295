"""The reward model in a child process of its own, so that forwards never wait on the
server's GIL.

In one process, the forward thread and the event loop share one GIL. A transformers
forward is hundreds of small torch calls, each of which gives the GIL up and takes it
back; while the loop is busy with gRPC calls each take waits, and the event loop is
busiest exactly when batching pays (many concurrent calls). Measured with
`bench/reward_model.py` on 2 cores: a 30-sample forward used 25 ms of CPU over 40 ms of
wall time on the forward thread, and the server process used ~1 of the 2 cores.

Here the server process keeps the event loop, the tokenizer and the batcher; a child
process (a fresh interpreter, ``python -m referee.rewardsvc.rm_process``) loads the
weights and runs `rm_model.score_batch` on each batch it is sent over a socket pair:
token ids there, one float per sample back, a few kilobytes a forward. The weights live
only in the child. Measured with the same benchmark, interleaved against the threaded
server: +44% samples/s with batches of 32, +25% with one forward per request.

`ModelProcess.score` is a blocking call for the batcher's one worker thread (one forward
at a time). A RuntimeError or ValueError raised by the forward in the child (out of
memory, say) is raised again here, so it fails that batch, not the server. If the child
dies (killed, a crash in a kernel), the batch in flight fails and a new child is
started before the next forward.

What is not protected: a forward that hangs in the child hangs the batcher, as it would
on a thread; a child that keeps crashing is restarted for every batch (each failure is
logged). The child ignores SIGINT and SIGTERM, which a terminal or `kill` may send to
the whole process group: the server stops it itself once in-flight calls are drained,
and it exits when the server process is gone (its pipe closes).
"""

from __future__ import annotations

import gc
import signal
import socket
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path

import torch

from referee.rewardsvc.rm_model import (
    Encoded,
    Pooling,
    RewardModel,
    load_reward_model,
    load_tokenizer,
    pad_id_of,
    score_batch,
)


@dataclass(frozen=True)
class _Facts:
    """What the child learnt loading the model that the server process needs."""

    pooling: Pooling
    max_positions: int | None
    pass_type_ids: bool
    architecture: str


class ModelProcess:
    """A child process holding the model; `rm` describes it, with `rm.model` None.

    Raises ValueError (as `load_reward_model` does) when the model cannot be loaded.
    """

    def __init__(self, path: str | Path, device: str = "cpu", dtype: str = "fp32",
                 threads: int | None = None) -> None:
        self._args = [str(path), device, dtype, str(threads or torch.get_num_threads())]
        self._conn: Connection | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        facts = self._start()
        try:
            tokenizer = load_tokenizer(path)  # ours, for encode_pair; the child has its own
        except BaseException:
            self.close()
            raise
        self.rm = RewardModel(None, tokenizer, torch.device(device), facts.pooling, facts.max_positions,
                              facts.pass_type_ids, pad_id_of(tokenizer), facts.architecture)

    @property
    def pid(self) -> int | None:
        """The child's process id; None between a child's death and its replacement."""
        return self._proc.pid if self._conn is not None and self._proc is not None else None

    def score(self, items: Sequence[Encoded], padding_side: str) -> list[float]:
        """One forward in the child: `rm_model.score_batch(items, padding_side)`."""
        if self._conn is None:  # the last child died
            self._start()
        assert self._conn is not None and self._proc is not None
        try:
            self._conn.send((padding_side, [(e.ids, e.type_ids) for e in items]))
            reply = self._conn.recv()
        except (EOFError, OSError) as e:
            code = _wait(self._proc, 5)
            self._conn.close()
            self._conn = None
            raise RuntimeError(f"the model process died during a forward (exit code {code}); "
                               "a new one starts with the next forward") from e
        if reply[0] == "failed":
            kind, message = reply[1], reply[2]
            raise (ValueError if kind == "ValueError" else RuntimeError)(f"{kind} in the model process: {message}")
        return reply[1]

    def close(self, timeout: float = 10.0) -> None:
        """Asks the child to exit and waits for it (kills it after `timeout`)."""
        conn, proc, self._conn, self._proc = self._conn, self._proc, None, None
        if conn is not None:
            try:
                conn.send(None)
            except OSError:
                pass
            conn.close()
        if proc is not None and _wait(proc, timeout) is None:
            proc.kill()
            proc.wait(5)

    def _start(self) -> _Facts:
        # A fresh interpreter (not fork: that would copy the server's threads and CUDA
        # state; not multiprocessing's spawn: that re-imports the caller's main module).
        ours, theirs = socket.socketpair()
        with ours, theirs:
            proc = subprocess.Popen([sys.executable, "-m", __name__, str(theirs.fileno()), *self._args],
                                    pass_fds=[theirs.fileno()])
            conn = Connection(ours.detach())
        try:
            reply = conn.recv()
        except EOFError:
            conn.close()
            raise RuntimeError(f"the model process exited while loading the model (exit code "
                               f"{_wait(proc, 5)}); its output says why") from None
        if reply[0] == "refused":
            conn.close()
            _wait(proc, 5)
            raise ValueError(reply[1])
        self._conn, self._proc = conn, proc
        return _Facts(*reply[1])


def _wait(proc: subprocess.Popen[bytes], timeout: float) -> int | None:
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        return None


def main(fd: int, path: str, device: str, dtype: str, threads: int) -> None:
    """The child: loads the model, then answers batches until told to stop or orphaned."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    conn = Connection(fd)
    torch.set_num_threads(threads)
    try:
        rm = load_reward_model(path, device, dtype)
    except (ValueError, OSError) as e:
        conn.send(("refused", str(e)))
        return
    gc.freeze()  # the model and libraries: never garbage, no need to walk them in each collection
    conn.send(("ready", (rm.pooling, rm.max_positions, rm.pass_type_ids, rm.architecture)))
    while True:
        try:
            message = conn.recv()
        except EOFError:  # the server process is gone
            return
        if message is None:
            return
        padding_side, rows = message
        items = [Encoded(ids, type_ids, len(ids)) for ids, type_ids in rows]
        try:
            reply: tuple = ("ok", score_batch(rm, items, padding_side))
        except (RuntimeError, ValueError) as e:  # out of memory, say: the server fails this batch
            reply = ("failed", type(e).__name__, str(e))
        conn.send(reply)


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]))
