"""The Docker backend against real containers: each sandbox property attacked in its own
test, plus the ordinary runs. Needs a Docker engine and the runtime image
(`bash .ci/docker.sh` provides both); skipped with the reason when either is missing."""

from __future__ import annotations

import shutil
import socket
import subprocess
import textwrap
import threading
import time

import pytest

from referee.sandboxes.backends import make_backend
from referee.sandboxes.docker_backend import DEFAULT_IMAGE, LABEL, DockerBackend
from referee.sandboxes.languages import LANGUAGES, find_language
from referee.sandboxes.types import ExecResult, File, Job, Limits, MiB, Verdict

pytestmark = pytest.mark.docker

FAST = Limits(wall_time_s=5.0, cpu_time_s=5.0, memory_bytes=256 * MiB, output_bytes=64 * 1024,
              max_processes=32, file_size_bytes=4 * MiB, open_files=64)


def _engine_problem() -> str | None:
    if shutil.which("docker") is None:
        return "no docker CLI on PATH; run `bash .ci/docker.sh`"
    try:
        info = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=20)
        if info.returncode != 0:
            return f"no Docker engine answers (`docker info`: {info.stderr.strip()[:200]}); run `bash .ci/docker.sh`"
        image = subprocess.run(["docker", "image", "inspect", DEFAULT_IMAGE], capture_output=True, timeout=20)
    except subprocess.TimeoutExpired:
        return "`docker info` did not answer within 20 s"
    if image.returncode != 0:
        return f"runtime image {DEFAULT_IMAGE} is absent; run `bash .ci/docker.sh`"
    return None


@pytest.fixture(scope="module")
def backend():
    problem = _engine_problem()
    if problem:
        pytest.skip(problem)
    b = DockerBackend(pool_size=2, limits=FAST)
    yield b
    b.close()


def run(backend: DockerBackend, language: str, code: str, **job) -> ExecResult:
    job.setdefault("limits", FAST)
    return backend.run(Job(language=language, code=textwrap.dedent(code), **job), find_language(language))


def test_python_ok_with_stdin_args_and_files(backend):
    r = run(backend, "python", """
        import sys
        print(sys.stdin.read().upper(), sys.argv[1:], open("data/in.txt").read())
        print("to stderr", file=sys.stderr)
    """, stdin=b"hello", args=("a", "b"), files=(File("data/in.txt", b"payload"),))
    assert r.verdict == Verdict.OK, r
    assert r.stdout == b"HELLO ['a', 'b'] payload\n"
    assert r.stderr == b"to stderr\n"
    assert r.exit_code == 0 and r.signal is None
    assert r.usage.wall_time_s > 0 and r.usage.peak_memory_bytes > 0


def test_cpp_compiles_and_runs(backend):
    r = run(backend, "cpp", """
        #include <iostream>
        #include <vector>
        int main() { std::vector<int> v{1, 2, 3}; long s = 0; for (int x : v) s += x;
                     std::cout << "sum " << s << std::endl; return 3; }
    """)
    assert r.verdict == Verdict.RUNTIME_ERROR, r
    assert (r.stdout, r.exit_code) == (b"sum 6\n", 3)


def test_compile_error_is_reported(backend):
    r = run(backend, "c", "int main(void) { return undefined_name; }\n")
    assert r.verdict == Verdict.COMPILE_ERROR, r
    assert b"undefined_name" in r.stderr


def test_infinite_loop_is_time_limit(backend):
    limits = Limits(**{**FAST.__dict__, "wall_time_s": 1.0})
    t0 = time.monotonic()
    r = run(backend, "python", "while True: pass\n", limits=limits)
    assert r.verdict == Verdict.TIME_LIMIT, r
    assert time.monotonic() - t0 < 5


def test_cpu_limit_is_time_limit(backend):
    limits = Limits(**{**FAST.__dict__, "cpu_time_s": 1.0})
    r = run(backend, "c", "int main(void) { for (volatile long i = 0;; i++); }\n", limits=limits)
    assert r.verdict == Verdict.TIME_LIMIT and r.signal in (9, 24), r


def test_output_flood_is_output_limit(backend):
    t0 = time.monotonic()
    r = run(backend, "python", "import sys\nwhile True: sys.stdout.write('x' * 65536)\n")
    assert r.verdict == Verdict.OUTPUT_LIMIT, r
    assert r.stdout_truncated and len(r.stdout) == FAST.output_bytes
    assert time.monotonic() - t0 < 4


def test_memory_bomb_is_memory_limit(backend):
    limits = Limits(**{**FAST.__dict__, "memory_bytes": 64 * MiB})
    r = run(backend, "python", """
        blocks = []
        while True:
            blocks.append(bytearray(16 * 1024 * 1024))
    """, limits=limits)
    assert r.verdict == Verdict.MEMORY_LIMIT, r


def test_fork_bomb_is_contained(backend):
    r = run(backend, "python", """
        import os, time
        n = 0
        try:
            while True:
                if os.fork() == 0:
                    os.close(1); os.close(2); time.sleep(60); os._exit(0)
                n += 1
        except OSError as e:
            print(n, e.errno)
    """, limits=Limits(**{**FAST.__dict__, "max_processes": 16}))
    assert r.verdict == Verdict.OK, r
    forked, errno = map(int, r.stdout.split())
    assert forked < 16 and errno == 11  # EAGAIN from the pids cgroup
    # A real shell fork bomb ends on the wall limit and the engine still serves jobs.
    bomb = run(backend, "bash", ":(){ :|:& };:\nwait\n",
               limits=Limits(**{**FAST.__dict__, "wall_time_s": 2.0}))
    assert bomb.verdict in (Verdict.TIME_LIMIT, Verdict.RUNTIME_ERROR, Verdict.OK), bomb
    assert run(backend, "bash", "echo alive\n").stdout == b"alive\n"


def _host_address() -> str:
    """This machine's address on its default route (no packet is sent), or loopback."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))
            return s.getsockname()[0]
        except OSError:
            return "127.0.0.1"


def test_no_network(backend):
    # A listener on every host address: the job must reach it neither through its own
    # loopback nor through the host's address, and no outside address either.
    listener = socket.socket()
    listener.bind(("0.0.0.0", 0))
    listener.listen(1)
    listener.settimeout(0.1)
    port = listener.getsockname()[1]
    accepted: list[object] = []
    done = threading.Event()

    def accept() -> None:
        while not done.is_set():
            try:
                accepted.append(listener.accept())
            except TimeoutError:
                pass

    t = threading.Thread(target=accept)
    t.start()
    try:
        r = run(backend, "python", """
            import socket, sys
            port = int(sys.argv[2])
            for host, p in (("127.0.0.1", port), (sys.argv[1], port), ("1.1.1.1", 53)):
                try:
                    socket.create_connection((host, p), timeout=1).close()
                    print(host, "CONNECTED")
                except OSError as e:
                    print(host, type(e).__name__)
            print(sorted(line.split(":")[0].strip() for line in open("/proc/net/dev").readlines()[2:]))
        """, args=(_host_address(), str(port)))
    finally:
        done.set()
        t.join()
        listener.close()
    assert r.verdict == Verdict.OK, r
    assert b"CONNECTED" not in r.stdout, r.stdout
    assert r.stdout.splitlines()[-1] == b"['lo']"
    assert not accepted


def test_host_files_are_out_of_reach(backend):
    r = run(backend, "python", """
        import os
        for path in ("/etc/shadow", "/work/main/pyproject.toml", "/root/.bashrc", "/var/run/docker.sock"):
            try:
                open(path, "rb").read(1)
                print(path, "READ")
            except OSError as e:
                print(path, type(e).__name__)
        for path in ("/etc/evil", "/usr/bin/evil", "/dev/evil"):
            try:
                open(path, "w").write("x")
                print(path, "WROTE")
            except OSError as e:
                print(path, type(e).__name__)
        status = dict(line.split(":", 1) for line in open("/proc/self/status").read().splitlines())
        print(os.getuid(), os.getgid(), *(status[k].strip() for k in ("CapEff", "NoNewPrivs", "Seccomp")))
    """)
    assert r.verdict == Verdict.OK, r
    out = r.stdout.decode()
    assert "READ" not in out and "WROTE" not in out, out
    assert "/etc/shadow PermissionError" in out
    assert "/work/main/pyproject.toml FileNotFoundError" in out
    assert out.splitlines()[-1] == "65534 65534 0000000000000000 1 2"  # no caps, no_new_privs, seccomp filter


def test_each_job_gets_a_fresh_container():
    problem = _engine_problem()
    if problem:
        pytest.skip(problem)
    b = make_backend("docker", pool_size=1, limits=FAST)  # the way the CLI builds it
    try:
        first = run(b, "bash", "echo secret > /work/left; echo secret > /tmp/left; "
                               "(sleep 60 >/dev/null 2>&1 &); echo done\n")
        assert first.verdict == Verdict.OK, first
        second = run(b, "bash", "ls -A /work /tmp; for p in /proc/[0-9]*; do "
                                "tr '\\0' ' ' < $p/cmdline; echo; done\n")
        assert second.verdict == Verdict.OK, second
        assert b"left" not in second.stdout and b"sleep 60" not in second.stdout, second.stdout
        # Jobs from several threads at once share the one container slot in turn.
        results: list[ExecResult] = []
        threads = [threading.Thread(target=lambda: results.append(run(b, "bash", "echo hi\n"))) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert [r.verdict for r in results] == [Verdict.OK] * 3
    finally:
        b.close()
    left = subprocess.run(["docker", "ps", "-aq", "--filter", f"label={LABEL}.owner={b._owner}"],
                          capture_output=True, text=True, timeout=20).stdout.split()
    assert left == []


def test_toolchains_are_in_the_image(backend):
    found = {t.language: t for t in backend.languages()}
    assert set(found) == {lang.name for lang in LANGUAGES}
    assert all(t.available for t in found.values()), found
    assert found["python"].detail.startswith("Python 3")
    assert backend.describe()["backend"] == "docker"
