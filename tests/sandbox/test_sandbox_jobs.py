"""Ordinary jobs in the bwrap sandbox: every language, stdin, args, files, errors, usage."""

from __future__ import annotations

import threading
import time

import pytest

from referee.sandboxes.languages import Language, find_language
from referee.sandboxes.types import File, Job, Limits, Verdict

HELLO = {
    "python": "import sys\nprint('hello', sys.argv[1:])",
    "c": '#include <stdio.h>\nint main(int c, char **v) { printf("hello [%s]\\n", c > 1 ? v[1] : ""); }',
    "cpp": '#include <iostream>\nint main(int c, char **v) { std::cout << "hello [" << (c > 1 ? v[1] : "") << "]\\n"; }',
    "javascript": "console.log('hello', process.argv.slice(2))",
    "bash": 'echo "hello [$1]"',
}
EXPECTED = {
    "python": b"hello ['x y']\n",
    "c": b"hello [x y]\n",
    "cpp": b"hello [x y]\n",
    "javascript": b"hello [ 'x y' ]\n",
    "bash": b"hello [x y]\n",
}


@pytest.mark.parametrize("language", sorted(HELLO))
def test_each_language_runs_with_args(run, language):
    r = run(language, HELLO[language], args=("x y",))
    assert r.verdict is Verdict.OK, r
    assert r.stdout == EXPECTED[language]
    assert r.exit_code == 0 and r.signal is None


def test_toolchains_are_probed_inside_the_sandbox(backend):
    tools = {t.language: t for t in backend.languages()}
    assert set(tools) == set(HELLO)
    assert all(t.available for t in tools.values()), tools
    assert tools["python"].detail.startswith("Python 3.11")  # /usr/bin/python3, not the host's pyenv
    assert tools["javascript"].detail.startswith("v")


def test_describe_names_the_active_isolation(backend):
    d = backend.describe()
    assert {"user", "pid", "net", "ipc", "uts", "mount"} <= set(d["namespaces"])
    assert d["seccomp"]["socket"] == "AF_UNIX only"
    assert d["limits"].startswith(("cgroup", "rlimits only"))


def test_stdin_reaches_the_program(run):
    r = run("python", "import sys; data = sys.stdin.buffer.read(); print(len(data), data[:5])",
            stdin=b"hello" + b"x" * 1_000_000)
    assert r.verdict is Verdict.OK
    assert r.stdout == b"1000005 b'hello'\n"


def test_unread_stdin_does_not_hang(run):
    r = run("python", "print('bye')", stdin=b"x" * 5_000_000, wall_time_s=3)
    assert r.verdict is Verdict.OK and r.stdout == b"bye\n"


def test_files_are_placed_in_the_work_dir(run):
    files = (File("data/in.txt", b"line1\n"), File("tool.sh", b"#!/bin/sh\necho tool ran\n", executable=True))
    r = run("bash", "pwd; cat data/in.txt; ./tool.sh; stat -c %a tool.sh data/in.txt", files=files)
    assert r.verdict is Verdict.OK, r
    assert r.stdout == b"/work\nline1\ntool ran\n755\n644\n"


def test_colliding_files_are_refused(backend):
    py = find_language("python")
    with pytest.raises(ValueError, match="main.py"):
        backend.run(Job("python", "print(1)", files=(File("main.py", b"x"),)), py)
    with pytest.raises(ValueError, match="directory"):
        backend.run(Job("python", "print(1)", files=(File("a", b"x"), File("a/b", b"y"))), py)


def test_nonzero_exit_is_a_runtime_error_with_its_code(run):
    r = run("python", "import sys; print('partial'); sys.exit(3)")
    assert r.verdict is Verdict.RUNTIME_ERROR
    assert r.exit_code == 3 and r.signal is None
    assert r.stdout == b"partial\n"


def test_exception_is_a_runtime_error_with_the_traceback(run):
    r = run("python", "1/0")
    assert r.verdict is Verdict.RUNTIME_ERROR and r.exit_code == 1
    assert b"ZeroDivisionError" in r.stderr


def test_crash_reports_the_signal(run):
    r = run("c", "int main(void) { volatile int *p = 0; return *p; }")
    assert r.verdict is Verdict.RUNTIME_ERROR
    assert r.signal == 11 and r.exit_code is None
    assert "SIGSEGV" in r.message


def test_bad_cpp_is_a_compile_error_with_the_compiler_output(run):
    r = run("cpp", "int main() { return undefined_name; }")
    assert r.verdict is Verdict.COMPILE_ERROR
    assert b"undefined_name" in r.stderr and b"error" in r.stderr
    assert r.stdout == b""


def test_missing_toolchain_is_a_sandbox_error(backend, host_is_clean):
    ghost = Language("ghost", "main.gh", run=("no-such-interpreter", "main.gh"))
    r = backend.run(Job("ghost", "x"), ghost)
    assert r.verdict is Verdict.SANDBOX_ERROR
    assert "no-such-interpreter" in r.message


def test_usage_is_measured(run):
    code = ("import time\nbuf = bytearray(48 * 1024 * 1024)\nfor i in range(0, len(buf), 4096): buf[i] = 1\n"
            "t = time.process_time()\nwhile time.process_time() - t < 0.3: pass\n")
    r = run("python", code)
    assert r.verdict is Verdict.OK, r
    assert 0.3 <= r.usage.cpu_time_s < 2.0
    assert r.usage.wall_time_s >= 0.3
    assert 48 * 1024 * 1024 <= r.usage.peak_memory_bytes < 128 * 1024 * 1024


def test_usage_is_measured_without_cgroups(run_rlimit):
    code = ("import time\nbuf = bytearray(48 * 1024 * 1024)\nfor i in range(0, len(buf), 4096): buf[i] = 1\n"
            "t = time.process_time()\nwhile time.process_time() - t < 0.3: pass\n")
    r = run_rlimit("python", code)
    assert r.verdict is Verdict.OK, r
    assert 0.3 <= r.usage.cpu_time_s < 2.0
    assert 48 * 1024 * 1024 <= r.usage.peak_memory_bytes < 128 * 1024 * 1024


def test_concurrent_jobs_do_not_interfere(backend, host_is_clean):
    py = find_language("python")
    code = "import sys, time\nn = sys.stdin.read()\ntime.sleep(0.4)\nprint(n * 3)\nopen('mine', 'w').write(n)"
    results: dict[int, object] = {}

    def one(i: int) -> None:
        results[i] = backend.run(Job("python", code, stdin=str(i).encode()), py)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(4)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert time.monotonic() - started < 1.5  # ran side by side, not one after another
    for i in range(4):
        assert results[i].verdict is Verdict.OK, results[i]
        assert results[i].stdout == f"{i}{i}{i}\n".encode()


def test_concurrent_attacks_do_not_disturb_honest_jobs(backend, host_is_clean):
    py = find_language("python")
    attacks = [
        Job("python", "while True: pass", limits=Limits(wall_time_s=1)),
        Job("python", "import sys\nwhile True: sys.stdout.write('z' * 4096)", limits=Limits(output_bytes=5000)),
        Job("python", "import os\nwhile True:\n    try: os.fork()\n    except OSError: pass",
            limits=Limits(wall_time_s=1, max_processes=16)),
    ]
    honest: dict[int, object] = {}
    hostile: list[object] = []

    def attack(job: Job) -> None:
        hostile.append(backend.run(job, py))

    def work(i: int) -> None:
        for k in range(3):
            honest[i * 10 + k] = backend.run(Job("python", f"print({i * 10 + k} * 2)"), py)

    threads = [threading.Thread(target=attack, args=(j,)) for j in attacks]
    threads += [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(r.verdict.value for r in hostile) == ["OUTPUT_LIMIT", "TIME_LIMIT", "TIME_LIMIT"]
    for n, r in honest.items():
        assert r.verdict is Verdict.OK and r.stdout == f"{n * 2}\n".encode(), (n, r)
