"""The backend-neutral pieces on their own: verdict rules, the I/O pump, cgroup file
parsing, the uid pool, and the backend factory."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import time

import pytest

from referee.sandboxes import cgroups
from referee.sandboxes.backends import make_backend
from referee.sandboxes.runner import (
    KillReason,
    Outcome,
    classify,
    pump,
    rlimits,
    spawn,
    split_exit_code,
)
from referee.sandboxes.types import Limits, Verdict
from referee.sandboxes.uids import UidPool

LIM = Limits(memory_bytes=64 * 1024 * 1024)


@pytest.mark.parametrize("outcome,verdict", [
    (Outcome(LIM, started=False, exit_code=1, stderr=b"bwrap: execvp x"), Verdict.SANDBOX_ERROR),
    (Outcome(LIM, started=True, exit_code=0), Verdict.OK),
    (Outcome(LIM, started=True, exit_code=2), Verdict.RUNTIME_ERROR),
    (Outcome(LIM, started=True, signal=signal.SIGSEGV), Verdict.RUNTIME_ERROR),
    (Outcome(LIM, started=True, signal=signal.SIGKILL, kill_reason=KillReason.WALL_TIME), Verdict.TIME_LIMIT),
    (Outcome(LIM, started=True, signal=signal.SIGKILL, kill_reason=KillReason.CPU_TIME), Verdict.TIME_LIMIT),
    (Outcome(LIM, started=True, signal=signal.SIGXCPU), Verdict.TIME_LIMIT),
    (Outcome(LIM, started=True, signal=signal.SIGKILL, kill_reason=KillReason.OUTPUT), Verdict.OUTPUT_LIMIT),
    (Outcome(LIM, started=True, signal=signal.SIGXFSZ), Verdict.OUTPUT_LIMIT),
    (Outcome(LIM, started=True, signal=signal.SIGKILL, oom_killed=True), Verdict.MEMORY_LIMIT),
    (Outcome(LIM, started=True, exit_code=0, oom_killed=True), Verdict.MEMORY_LIMIT),  # a child was OOM-killed
    (Outcome(LIM, started=True, exit_code=1, stderr=b"...\nMemoryError\n"), Verdict.MEMORY_LIMIT),
    (Outcome(LIM, started=True, signal=signal.SIGABRT, stderr=b"std::bad_alloc"), Verdict.MEMORY_LIMIT),
    (Outcome(LIM, started=True, exit_code=1, stderr=b"OSError: [Errno 28] No space left on device"),
     Verdict.OUTPUT_LIMIT),
    (Outcome(LIM, started=False, kill_reason=KillReason.WALL_TIME), Verdict.TIME_LIMIT),
])
def test_classify_rules(outcome, verdict):
    assert classify(outcome)[0] is verdict


def test_stderr_cannot_turn_a_failure_into_ok():
    o = Outcome(LIM, started=True, exit_code=0, stderr=b"MemoryError No space left on device")
    assert classify(o)[0] is Verdict.OK
    o = Outcome(LIM, started=True, exit_code=1, stderr=b"bwrap: execvp prlimit: No such file")
    assert classify(o)[0] is Verdict.RUNTIME_ERROR  # started: never a SANDBOX_ERROR from stderr


def test_exit_codes_over_128_mean_signals():
    assert split_exit_code(137) == (None, 9)
    assert split_exit_code(3) == (3, None)
    assert split_exit_code(128) == (128, None)
    assert split_exit_code(255) == (255, None)


def test_rlimits_never_exceed_our_own_hard_limits():
    table = rlimits(Limits(max_processes=10**9), address_space=None)
    hard = resource.getrlimit(resource.RLIMIT_NPROC)[1]
    assert hard == resource.RLIM_INFINITY or table[resource.RLIMIT_NPROC][1] <= hard
    assert resource.RLIMIT_AS not in table


def _py(code: str):
    return spawn([sys.executable, "-c", code], env={"PATH": "/usr/bin:/bin"})


def test_pump_caps_output_and_kills():
    sp = _py("import sys\nwhile True: sys.stdout.write('a' * 1000)")
    p = pump(stdin=b"", stdin_fd=sp.stdin, stdout_fd=sp.stdout, stderr_fd=sp.stderr, cap=5000,
             deadline=time.monotonic() + 10, kill=lambda _: sp.proc.kill())
    sp.proc.wait()
    assert p.kill_reason is KillReason.OUTPUT and p.stdout_truncated and p.stdout == b"a" * 5000


def test_pump_enforces_the_deadline_and_feeds_stdin():
    sp = _py("import sys, time\nprint(sys.stdin.read().upper(), flush=True)\ntime.sleep(30)")
    started = time.monotonic()
    p = pump(stdin=b"abc", stdin_fd=sp.stdin, stdout_fd=sp.stdout, stderr_fd=sp.stderr, cap=100,
             deadline=started + 1, kill=lambda _: sp.proc.kill())
    sp.proc.wait()
    assert p.kill_reason is KillReason.WALL_TIME and p.stdout == b"ABC\n"
    assert time.monotonic() - started < 3


def test_cgroup_v2_counters_are_read(tmp_path):
    (tmp_path / "memory.peak").write_text("12345\n")
    (tmp_path / "memory.events").write_text("low 0\nhigh 0\nmax 4\noom 1\noom_kill 1\n")
    (tmp_path / "cpu.stat").write_text("usage_usec 2500000\nuser_usec 2000000\n")
    job = cgroups.JobCgroup("v2", {"unified": str(tmp_path)})
    assert job.stats() == cgroups.CgroupStats(12345, True)
    assert job.cpu_time_s() == 2.5


def test_cgroup_v1_counters_are_read(tmp_path):
    (tmp_path / "memory.max_usage_in_bytes").write_text("777\n")
    (tmp_path / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 0\n")
    job = cgroups.JobCgroup("v1", {"memory": str(tmp_path)})
    assert job.stats() == cgroups.CgroupStats(777, False)


def test_uid_pool_never_hands_out_a_uid_twice(tmp_path):
    a = UidPool(2_000_000, 2, str(tmp_path / "locks"))
    b = UidPool(2_000_000, 2, str(tmp_path / "locks"))  # a second server on the same host
    got = [a.acquire(), b.acquire()]
    assert sorted(uid for uid, _ in got) == [2_000_000, 2_000_001]
    with pytest.raises(RuntimeError, match="in use"):
        a.acquire()
    os.close(got[0][1])
    assert b.acquire()[0] == got[0][0]  # released with its lock fd


def test_uid_pool_is_held_across_processes(tmp_path):
    locks = tmp_path / "locks"
    UidPool(2_000_000, 1, str(locks))
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, os, sys, time\n"
        f"fd = os.open({str(locks / 'uid-2000000')!r}, os.O_RDWR | os.O_CREAT)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); time.sleep(30)")], stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline() == b"held\n"
        with pytest.raises(RuntimeError):
            UidPool(2_000_000, 1, str(locks)).acquire()
    finally:
        holder.kill()
        holder.wait()
    assert UidPool(2_000_000, 1, str(locks)).acquire()[0] == 2_000_000  # a dead holder frees it


def test_make_backend_refuses_unsafe_and_unknown():
    with pytest.raises(ValueError, match="i-know-local-is-unsafe"):
        make_backend("local")
    with pytest.raises(ValueError, match="unknown sandbox backend"):
        make_backend("chroot")
    with pytest.raises(ValueError, match="no option"):
        make_backend("local", allow_unsafe=True, image="x")
    assert make_backend("local", allow_unsafe=True).name == "local"
