"""Resource attacks: each limit is hit on purpose and must give its own verdict, with
the host untouched afterwards (the `host_is_clean` check after every test)."""

from __future__ import annotations

import pytest

from referee.sandboxes.types import Verdict

MiB = 1024 * 1024

FORK_BOMB_C = "#include <unistd.h>\nint main(void) { for (;;) fork(); }"
MEMORY_BOMB_C = """#include <stdlib.h>
#include <string.h>
#include <stdio.h>
int main(void) {
    for (;;) {
        char *p = malloc(1 << 20);
        if (!p) { perror("malloc"); return 1; }
        memset(p, 1, 1 << 20);
    }
}"""
BUSY_THREADS_C = """#include <pthread.h>
static void *spin(void *arg) { for (volatile unsigned long i = 0;; i++) {} return arg; }
int main(void) {
    pthread_t t[3];
    for (int i = 0; i < 3; i++) pthread_create(&t[i], 0, spin, 0);
    spin(0);
}"""


def test_fork_bomb_is_contained(run):
    r = run("c", FORK_BOMB_C, wall_time_s=1.5, max_processes=16)
    assert r.verdict in (Verdict.TIME_LIMIT, Verdict.RUNTIME_ERROR), r
    assert r.usage.wall_time_s < 4


def test_process_limit_is_enforced(run):
    code = """import os, time
kids = 0
for _ in range(100):
    try:
        pid = os.fork()
    except OSError:
        break
    if pid == 0:
        time.sleep(5)
        os._exit(0)
    kids += 1
print(kids)"""
    r = run("python", code, max_processes=16)
    assert r.verdict is Verdict.OK, r
    assert 10 <= int(r.stdout) <= 16


@pytest.mark.parametrize("language,code", [
    ("python", "chunks = []\nwhile True: chunks.append(bytearray(8 * 1024 * 1024))"),
    ("c", MEMORY_BOMB_C),
    ("javascript", "const a = []; for (;;) a.push(new Array(1e6).fill(1))"),
])
def test_memory_bomb_is_a_memory_limit(run, language, code):
    r = run(language, code, memory_bytes=64 * MiB)
    assert r.verdict is Verdict.MEMORY_LIMIT, r
    assert r.usage.peak_memory_bytes <= 70 * MiB


def test_memory_limit_covers_the_whole_job(run, backend):
    if backend.describe()["limits"].startswith("rlimits"):
        pytest.skip("needs a cgroup: rlimits bound each process alone")
    code = """import os, time
for _ in range(3):
    if os.fork() == 0:
        block = bytearray(30 * 1024 * 1024)
        for i in range(0, len(block), 4096): block[i] = 1
        time.sleep(1)
        os._exit(0)
for _ in range(3): os.wait()"""
    r = run("python", code, memory_bytes=64 * MiB, wall_time_s=5)
    assert r.verdict is Verdict.MEMORY_LIMIT, r  # 3 x 30 MiB, each under 64 MiB alone
    assert "OOM" in r.message


def test_cpu_limit_covers_the_whole_job(run, backend):
    if backend.describe()["limits"].startswith("rlimits"):
        pytest.skip("needs a cgroup: RLIMIT_CPU counts each process alone")
    code = "import os\nfor _ in range(3): os.fork()\nwhile True: pass"  # 8 busy processes
    r = run("python", code, cpu_time_s=1, wall_time_s=10)
    assert r.verdict is Verdict.TIME_LIMIT and "CPU" in r.message, r
    assert r.usage.wall_time_s < 5  # 1 CPU-second over 8 processes: long before the 10 s wall limit
    assert r.usage.cpu_time_s >= 1.0


@pytest.mark.parametrize("language,code", [
    ("python", "x = bytearray(1 << 30)"),
    ("cpp", "#include <vector>\nint main() { std::vector<char> v(1ul << 30, 1); return v[5]; }"),
    ("c", MEMORY_BOMB_C),
])
def test_memory_bomb_without_cgroups_is_a_memory_limit(run_rlimit, language, code):
    r = run_rlimit(language, code, memory_bytes=64 * MiB)
    assert r.verdict is Verdict.MEMORY_LIMIT, r


def test_node_runs_and_is_bounded_without_cgroups(run_rlimit):
    ok = run_rlimit("javascript", "console.log(6 * 7)", memory_bytes=128 * MiB)
    assert ok.verdict is Verdict.OK and ok.stdout == b"42\n", ok
    bomb = run_rlimit("javascript", "const a = []; for (;;) a.push(new Array(1e6).fill(1))", memory_bytes=128 * MiB)
    assert bomb.verdict is Verdict.MEMORY_LIMIT, bomb


def test_infinite_loop_is_a_time_limit(run):
    r = run("python", "while True: pass", wall_time_s=1, cpu_time_s=10)
    assert r.verdict is Verdict.TIME_LIMIT, r
    assert 1.0 <= r.usage.wall_time_s < 2.0
    assert r.signal == 9


def test_sleeping_program_is_killed_at_the_wall_limit(run):
    r = run("bash", "sleep 30", wall_time_s=1)
    assert r.verdict is Verdict.TIME_LIMIT, r
    assert r.usage.wall_time_s < 2.0


def test_busy_threads_hit_the_cpu_limit_before_the_wall_limit(run):
    r = run("c", BUSY_THREADS_C + "\n", wall_time_s=10, cpu_time_s=1)
    assert r.verdict is Verdict.TIME_LIMIT, r
    assert "CPU" in r.message
    assert r.usage.wall_time_s < 5  # 4 threads burnt the CPU second long before 10 s of wall


def test_cpu_rlimit_alone_stops_a_loop(run_rlimit):
    r = run_rlimit("c", "int main(void) { for (volatile int i = 0;; i++) {} }", wall_time_s=10, cpu_time_s=1)
    assert r.verdict is Verdict.TIME_LIMIT, r
    assert r.signal == 24  # SIGXCPU from RLIMIT_CPU
    assert r.usage.wall_time_s < 4


def test_stdout_flood_is_an_output_limit(run):
    r = run("python", "import sys\nwhile True: sys.stdout.write('y' * 4096)", output_bytes=10_000)
    assert r.verdict is Verdict.OUTPUT_LIMIT, r
    assert r.stdout_truncated and not r.stderr_truncated
    assert r.stdout == b"y" * 10_000


def test_stderr_flood_is_an_output_limit(run):
    r = run("bash", "yes error >&2", output_bytes=10_000)
    assert r.verdict is Verdict.OUTPUT_LIMIT, r
    assert r.stderr_truncated and len(r.stderr) == 10_000


def test_one_huge_file_hits_the_file_size_limit(run):
    code = "with open('big', 'wb') as f:\n    while True: f.write(b'z' * 65536)"
    r = run("python", code, file_size_bytes=2 * MiB)
    assert r.verdict is Verdict.OUTPUT_LIMIT, r
    assert b"File too large" in r.stderr  # EFBIG: Python ignores SIGXFSZ


@pytest.mark.parametrize("where", ["/work", "/tmp"])
def test_filling_a_tmpfs_is_an_output_limit(run, where):
    code = f"""import os
with open('/proc/self/mountinfo') as m:
    print([l.split(' - ')[1].split()[0] for l in m if l.split()[4] == '{where}'])
n = 0
try:
    while True:
        with open('{where}/f%d' % n, 'wb') as f:
            f.write(b'z' * 512 * 1024)
        n += 1
finally:
    print(n, flush=True)"""
    r = run("python", code, file_size_bytes=2 * MiB)
    assert r.verdict is Verdict.OUTPUT_LIMIT, r
    assert b"No space left on device" in r.stderr
    mount_type, count = r.stdout.splitlines()
    assert mount_type == b"['tmpfs']"  # memory, capped: the host disk never sees it
    assert int(count) <= 4  # 2 MiB in 512 KiB files
