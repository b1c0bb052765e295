"""Escape attempts: each isolation property of the bwrap sandbox attacked on its own."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from referee.sandboxes.types import File, Verdict

REPO = Path(__file__).resolve().parents[2]


def lines(r) -> list[str]:
    assert r.verdict is Verdict.OK, r
    return r.stdout.decode().splitlines()


# --- network ---------------------------------------------------------------------


@pytest.fixture
def listener():
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    srv.setblocking(False)
    yield srv
    srv.close()


def test_tcp_to_a_host_listener_never_arrives(run, listener):
    port = listener.getsockname()[1]
    code = f"""import socket
try:
    socket.create_connection(('127.0.0.1', {port}), timeout=2)
    print('connected')
except OSError as e:
    print(type(e).__name__, e.errno)"""
    assert lines(run("python", code)) == ["PermissionError 1"]
    with pytest.raises(BlockingIOError):
        listener.accept()  # nothing came in


def test_host_sockets_are_not_even_visible(run, listener):
    port = listener.getsockname()[1]
    code = "print(open('/proc/net/tcp').read()); print(open('/proc/net/dev').read())"
    out = run("python", code).stdout.decode()
    assert f":{port:04X} " not in out  # the listener is in another network namespace
    interfaces = [ln.split(":")[0].strip() for ln in out.splitlines() if ":" in ln and "|" not in ln]
    assert interfaces == ["lo"]


def test_outside_address_fails_fast(run):
    code = """import socket, time
t = time.monotonic()
try:
    socket.create_connection(('1.1.1.1', 80), timeout=5)
    print('connected')
except OSError as e:
    print(type(e).__name__, round(time.monotonic() - t))"""
    assert lines(run("python", code, wall_time_s=3)) == ["PermissionError 0"]


def test_node_and_bash_cannot_connect_either(run, listener):
    port = listener.getsockname()[1]
    js = f"require('net').connect({port}, '127.0.0.1').on('error', e => console.log(e.code)).on('connect', () => console.log('connected'))"
    assert lines(run("javascript", js)) == ["EPERM"]
    r = run("bash", f"echo hi > /dev/tcp/127.0.0.1/{port} && echo connected || echo refused")
    assert r.stdout == b"refused\n", r
    with pytest.raises(BlockingIOError):
        listener.accept()


# --- files -----------------------------------------------------------------------


def test_host_secrets_and_source_are_not_visible(run):
    targets = ["/etc/shadow", "/root", "/home", str(REPO / "pyproject.toml"), str(REPO), __file__, "/proc/1/root/etc/shadow"]
    code = f"""import os
for p in {targets!r}:
    try:
        os.stat(p)
        print(p, 'VISIBLE')
    except OSError as e:
        print(p, type(e).__name__)
print(sorted(os.listdir('/')))
print(sorted(os.listdir('/etc')))"""
    out = lines(run("python", code))
    for p, line in zip(targets, out, strict=False):
        assert line.startswith(p + " ") and "VISIBLE" not in line, line
    assert out[-2] == str(sorted(["bin", "dev", "etc", "lib", "lib64", "proc", "sbin", "tmp", "usr", "work"]))
    assert "shadow" not in out[-1] and "passwd" in out[-1]


def test_work_dir_holds_only_the_job(run):
    r = run("python", "import os; print(sorted(os.listdir('.')), os.getcwd())", files=(File("in.txt", b"x"),))
    assert lines(r) == ["['in.txt', 'main.py'] /work"]


def test_writes_outside_the_work_dir_fail(run):
    targets = ["/usr/evil", "/etc/evil", "/evil", "/bin/evil", "/proc/sys/kernel/hostname", "/dev/evil"]
    code = f"""for p in {targets!r}:
    try:
        open(p, 'w').write('x')
        print(p, 'WROTE')
    except OSError as e:
        print(p, type(e).__name__)"""
    out = lines(run("python", code))
    assert len(out) == len(targets) and not any("WROTE" in line for line in out), out
    assert not any(os.path.exists(p) for p in targets[:4])


def test_symlinks_made_by_the_program_lead_nowhere(run):
    shadow_before = os.stat("/etc/shadow")
    code = f"""import os
os.symlink('/etc/shadow', 'shadow')
os.symlink({str(REPO)!r}, 'repo')
for p in ('shadow', 'repo/pyproject.toml'):
    try:
        print(p, len(open(p, 'rb').read()))
    except OSError as e:
        print(p, type(e).__name__)"""
    out = lines(run("python", code))
    assert out == ["shadow FileNotFoundError", "repo/pyproject.toml FileNotFoundError"]
    after = os.stat("/etc/shadow")
    assert (after.st_mode, after.st_mtime_ns, after.st_size) == (shadow_before.st_mode, shadow_before.st_mtime_ns,
                                                                 shadow_before.st_size)


@pytest.mark.parametrize("bad", ["../escape", "/etc/passwd", "a/../../b", "a/../b", "-rf", "", "a\x00b", "./x"])
def test_file_paths_that_leave_the_work_dir_are_rejected(bad):
    with pytest.raises(ValueError):
        File(bad, b"x")


# --- environment and processes -------------------------------------------------


def test_server_environment_is_not_visible(run, monkeypatch):
    monkeypatch.setenv("REFEREE_TEST_SECRET", "hunter2-do-not-leak")
    code = """import os
print('env', 'REFEREE_TEST_SECRET' in os.environ)
for pid in [p for p in os.listdir('/proc') if p.isdigit()] + ['self', str(os.getppid())]:
    try:
        print(pid, open('/proc/%s/environ' % pid, 'rb').read())
    except OSError as e:
        print(pid, type(e).__name__)"""
    r = run("python", code)
    assert r.verdict is Verdict.OK and r.stdout.startswith(b"env False\n"), r
    assert b"hunter2" not in r.stdout and b"/proc/1/" not in r.stdout


def test_host_processes_are_invisible_and_unkillable(run):
    victim = subprocess.Popen(["sleep", "30"])
    try:
        code = f"""import os, signal
print(sorted(int(p) for p in os.listdir('/proc') if p.isdigit()))
for target in ({os.getpid()}, {victim.pid}, os.getppid(), -1):
    try:
        os.kill(target, signal.SIGKILL)
        print(target, 'sent')
    except OSError as e:
        print(target, type(e).__name__)
print('still here')"""
        out = lines(run("python", code))
        assert max(eval(out[0])) < 10  # only the sandbox's own handful of pids
        assert out[-1] == "still here"
        assert victim.poll() is None, "a host process was killed from the sandbox"
        assert os.getppid() > 0  # and this test process is evidently alive
    finally:
        victim.kill()
        victim.wait()


def test_the_compiler_sees_only_the_sandbox(run):
    r = run("c", '#include "/etc/shadow"\nint main(void) { return 0; }')
    assert r.verdict is Verdict.COMPILE_ERROR, r
    assert b"/etc/shadow" in r.stderr and b"No such file" in r.stderr


def test_program_inherits_no_descriptor_but_stdio(run, listener):
    # The server holds sockets, pipes of concurrent jobs, bwrap's status pipe: none may leak in.
    code = "import os; print(sorted(int(fd) for fd in os.listdir('/proc/self/fd')))"
    assert lines(run("python", code)) == ["[0, 1, 2, 3]"]  # 3: the listdir's own directory fd


def test_double_forked_daemon_dies_with_the_job(run):
    code = """import os, sys, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        time.sleep(30)
        os._exit(0)
    os._exit(0)
os.wait()
print('parent done')"""
    r = run("python", code, wall_time_s=10)
    assert r.verdict is Verdict.OK and r.stdout == b"parent done\n", r
    assert r.usage.wall_time_s < 2  # the job ended with its main program, not with the daemon
    # host_is_clean then checks that no process of the job's uid or cgroup survived


# --- privileges ------------------------------------------------------------------


def test_no_privileges_inside(run):
    code = """import os
status = dict(l.split(':\\t', 1) for l in open('/proc/self/status').read().splitlines() if ':\\t' in l)
print(os.getuid(), os.getgid(), os.getgroups())
for k in ('CapEff', 'CapPrm', 'CapBnd', 'CapAmb', 'NoNewPrivs', 'Seccomp'):
    print(k, status[k].strip())
for uid in (0, 1000):
    try:
        os.setuid(uid)
        print('setuid WORKED')
    except OSError as e:  # EINVAL: only 65534 exists in the sandbox's user namespace
        print('setuid', e.errno)"""
    assert lines(run("python", code)) == [
        "65534 65534 []", "CapEff 0000000000000000", "CapPrm 0000000000000000", "CapBnd 0000000000000000",
        "CapAmb 0000000000000000", "NoNewPrivs 1", "Seccomp 2", "setuid 22", "setuid 22",
    ]


def test_job_runs_under_an_unprivileged_host_uid(run):
    if os.geteuid() != 0:
        pytest.skip("without root the job keeps the server's uid (namespaced to 65534)")
    seen: list[int] = []

    def watch() -> None:  # from the host, find the program (not the bwrap/setpriv before it) by its argv
        for _ in range(200):
            for name in filter(str.isdigit, os.listdir("/proc")):
                try:
                    argv = Path(f"/proc/{name}/cmdline").read_bytes().split(b"\0")
                    if argv[0].endswith(b"python3") and b"uid-marker-7d1f" in argv:
                        seen.append(os.stat(f"/proc/{name}").st_uid)
                except OSError:
                    continue
            if seen:
                return
            time.sleep(0.01)

    watcher = threading.Thread(target=watch)
    watcher.start()
    r = run("python", "import time; time.sleep(1)", args=("uid-marker-7d1f",))
    watcher.join()
    assert r.verdict is Verdict.OK
    assert seen and all(uid >= 1000 for uid in seen), seen  # a pool uid, never root's 0


def test_setuid_binaries_and_mount_do_not_escalate(run):
    r = run("bash", "su -c id root </dev/null; echo su=$?; mount -t tmpfs none /tmp; echo mount=$?; "
                    "umount /proc; echo umount=$?; id -u", wall_time_s=3)
    out = r.stdout.decode().split()
    codes = dict(x.split("=") for x in out if "=" in x)
    assert set(codes) == {"su", "mount", "umount"} and "0" not in codes.values(), r
    assert out[-1] == "65534"


def test_ptrace_is_denied(run):
    code = """import ctypes, errno
libc = ctypes.CDLL(None, use_errno=True)
for req, pid in ((0, 0), (16, 1)):  # PTRACE_TRACEME, PTRACE_ATTACH to init
    rc = libc.ptrace(req, pid, None, None)
    print(rc, errno.errorcode[ctypes.get_errno()])"""
    assert lines(run("python", code)) == ["-1 EPERM", "-1 EPERM"]
    if shutil.which("strace"):
        r = run("bash", "strace -f true; echo strace=$?")
        assert r.stdout.strip().endswith(b"strace=1") and b"Operation not permitted" in r.stderr, r


SYSCALLS = {  # x86_64 numbers
    "unshare(CLONE_NEWUSER)": (272, 0x10000000),
    "setns": (308, 0, 0),
    "mount": (165, 0, 0, 0, 0, 0),
    "bpf": (321, 0, 0, 0),
    "keyctl": (250, 0, 0),
    "io_uring_setup": (425, 1, 0),
    "perf_event_open": (298, 0, 0, 0, 0, 0),
    "userfaultfd": (323, 0),
    "personality(ADDR_NO_RANDOMIZE)": (135, 0x0040000),
    "clone(CLONE_NEWNS)": (56, 0x00020000 | 17, 0, 0, 0, 0),
    "clone3": (435, 0, 0),
}


def test_seccomp_denies_kernel_attack_surface(run):
    code = f"""import ctypes, errno
libc = ctypes.CDLL(None, use_errno=True)
for name, (nr, *args) in {SYSCALLS!r}.items():
    rc = libc.syscall(nr, *args)
    print(name, rc, errno.errorcode.get(ctypes.get_errno()) if rc == -1 else 'ALLOWED')"""
    out = {name: result for name, _, result in (line.rsplit(" ", 2) for line in lines(run("python", code)))}
    expected = {name: "EPERM" for name in SYSCALLS} | {"clone3": "ENOSYS"}
    assert out == expected


def test_only_unix_sockets_can_be_made(run):
    code = """import socket
for fam, kind in ((socket.AF_UNIX, socket.SOCK_STREAM), (socket.AF_INET, socket.SOCK_STREAM),
                  (socket.AF_INET6, socket.SOCK_DGRAM), (socket.AF_NETLINK, socket.SOCK_RAW),
                  (socket.AF_PACKET, socket.SOCK_RAW)):
    try:
        socket.socket(fam, kind).close()
        print(fam.name, 'ok')
    except OSError as e:
        print(fam.name, e.errno)
a, b = socket.socketpair()
a.send(b'ping'); print(b.recv(4))"""
    assert lines(run("python", code)) == ["AF_UNIX ok", "AF_INET 1", "AF_INET6 1", "AF_NETLINK 1", "AF_PACKET 1",
                                          "b'ping'"]


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="i386/x32 entry points are x86_64 specific")
@pytest.mark.parametrize("how", ["int $0x80", "x32"])
def test_non_native_syscalls_kill_the_program(run, how):
    body = ('long r; __asm__ volatile("int $0x80" : "=a"(r) : "a"(20));' if how == "int $0x80"
            else "long r = syscall(0x40000000 | 39);")
    code = f"#include <stdio.h>\n#include <unistd.h>\nint main(void) {{ {body} printf(\"%ld\\n\", r); }}"
    r = run("c", code)
    assert r.verdict is Verdict.RUNTIME_ERROR, r
    assert r.signal == 31 and r.stdout == b""  # SIGSYS: the seccomp filter's bad-arch action


def test_threads_and_fork_still_work_under_the_filter(run):
    code = """import os, threading, subprocess
t = threading.Thread(target=print, args=('thread',))
t.start()
t.join()
print(subprocess.run(['echo', 'child'], capture_output=True, text=True).stdout.strip())
pid = os.fork()
if pid == 0:
    os._exit(7)
print(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))"""
    assert lines(run("python", code)) == ["thread", "child", "7"]
