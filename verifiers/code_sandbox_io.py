"""stdin/stdout driver: the trusted program a sandbox job runs for `cases`.

Runs INSIDE the sandbox as the job's main program (stdlib only, python3 >= 3.10);
`code_harness.py` sends this file's text as the job's code and a ``job.json`` beside it.
It never sees an expected output: it returns each case's raw stdout, and the verifier
compares outside the sandbox.

1. read ``job.json`` (program, each case's stdin, limits, a nonce) and delete it; mark
   this process non-dumpable, so the program it starts cannot read its memory, fds or
   environment through /proc (the other cases' inputs stay unseen);
2. write the program under ``sol/``, check the toolchain exists (a missing compiler is
   the sandbox's fault, reported as ``setup``), check Python syntax or compile;
3. run the program once per case in its own session with only three pipes (no other fd
   is inherited), its stdin fed from memory, rlimits for CPU (the time limit), address
   space (the memory limit, where the runtime tolerates it) and core size, a wall limit
   of twice the time limit plus a second, and a cap on stdout;
4. report ``@@<nonce> case <i> <verdict> <hex reason> <key=value...>`` followed by the
   case's stdout and stderr bytes (their lengths are in the header).
"""

import json
import math
import os
import resource
import selectors
import shutil
import signal
import subprocess
import sys
import time

CONFIG = "job.json"
STDERR_KEEP = 4096
COMPILE_OUTPUT_KEEP = 16384
EXIT_GRACE_S = 0.5
MEMORY_HINTS = (
    b"MemoryError",
    b"std::bad_alloc",
    b"Cannot allocate memory",
    b"out of memory",
    b"heap out of memory",
)


def emit(nonce, kind, index=-1, verdict="-", reason="", out=b"", err=b"", **fields):
    fields.update(out=len(out), err=len(err))
    extra = " ".join(f"{k}={v}" for k, v in sorted(fields.items()))
    hexed = reason[:300].encode("utf-8", "replace").hex() or "-"
    head = f"\n@@{nonce} {kind} {index} {verdict} {hexed} {extra}\n"
    data = head.encode("ascii") + out + err
    while data:
        data = data[os.write(1, data) :]


def set_not_dumpable():
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl(4, 0, 0, 0, 0) == 0  # PR_SET_DUMPABLE
    except (ImportError, OSError, AttributeError):
        return False


def _limits(cpu_s, memory_bytes, limit_as):
    def lower(which, soft, hard=None):
        """Sets a limit, never above the hard limit the sandbox already imposes."""
        try:
            _, top = resource.getrlimit(which)
            if top != resource.RLIM_INFINITY:
                soft = min(soft, top)
                hard = top if hard is None else min(hard, top)
            resource.setrlimit(which, (soft, soft if hard is None else hard))
        except (ValueError, OSError):
            pass

    def apply():
        cpu = max(1, math.ceil(cpu_s))  # SIGXCPU at the limit, SIGKILL a second later
        lower(resource.RLIMIT_CPU, cpu, cpu + 1)
        lower(resource.RLIMIT_CORE, 0)
        if limit_as:
            lower(resource.RLIMIT_AS, memory_bytes)
            # The main thread's stack may then grow to the memory limit (deep recursion is
            # common in contest code); threads keep glibc's default size, which a finite
            # RLIMIT_STACK would raise to that limit and so starve RLIMIT_AS.
            if resource.getrlimit(resource.RLIMIT_STACK)[1] == resource.RLIM_INFINITY:
                lower(resource.RLIMIT_STACK, resource.RLIM_INFINITY)

    return apply


class Run:
    """One finished process: how it ended, what it printed, what it cost."""

    def __init__(self):
        self.out, self.err, self.err_len = [], [], 0
        self.out_len, self.killed, self.status, self.cpu_s, self.wall_s = 0, None, 0, 0.0, 0.0

    def verdict(self, limit):
        err = b"".join(self.err)
        hint = any(h in err for h in MEMORY_HINTS)
        if self.killed == "OUTPUT_LIMIT":
            return "OUTPUT_LIMIT"
        if self.killed == "TIME_LIMIT" or self.cpu_s > limit:
            return "TIME_LIMIT"
        if os.WIFSIGNALED(self.status):
            sig = os.WTERMSIG(self.status)
            if sig == signal.SIGXCPU or (sig == signal.SIGKILL and self.cpu_s >= limit):
                return "TIME_LIMIT"
            return "MEMORY_LIMIT" if hint or sig == signal.SIGKILL else "RUNTIME_ERROR"
        if os.WEXITSTATUS(self.status) != 0:
            return "MEMORY_LIMIT" if hint else "RUNTIME_ERROR"
        return "OK"

    def fields(self):
        exited = os.WIFEXITED(self.status)
        return {
            "exit": os.WEXITSTATUS(self.status) if exited else -1,
            "signal": 0 if exited else os.WTERMSIG(self.status),
            "cpu_ms": int(self.cpu_s * 1000),
            "wall_ms": int(self.wall_s * 1000),
        }


def run_process(argv, cwd, env, stdin, cap, limit, wall, memory_bytes, limit_as):  # noqa: C901
    """Runs argv to its end (or its limits); never raises for the program's behaviour."""
    r = Run()
    t0 = time.monotonic()
    p = subprocess.Popen(
        argv,
        cwd=cwd,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=_limits(limit, memory_bytes, limit_as),
        start_new_session=True,
    )
    sel = selectors.DefaultSelector()
    os.set_blocking(p.stdin.fileno(), False)
    pending = memoryview(stdin)
    if pending:
        sel.register(p.stdin, selectors.EVENT_WRITE)
    else:
        p.stdin.close()
    sel.register(p.stdout, selectors.EVENT_READ)
    sel.register(p.stderr, selectors.EVENT_READ)
    exited_at, ru = None, None
    while sel.get_map():
        now = time.monotonic()
        if exited_at is not None and now - exited_at > EXIT_GRACE_S:
            break  # the program ended; something it left behind holds the pipes open
        if now - t0 > wall:
            r.killed = "TIME_LIMIT"
            break
        for key, _ in sel.select(min(0.05, max(wall - (now - t0), 0.001))):
            f = key.fileobj
            if f is p.stdin:
                try:
                    n = os.write(f.fileno(), pending[:65536])
                except BlockingIOError:
                    continue
                except OSError:  # the program closed its stdin
                    n = len(pending)
                pending = pending[n:]
                if not pending:
                    sel.unregister(f)
                    f.close()
                continue
            data = os.read(f.fileno(), 65536)
            if not data:
                sel.unregister(f)
            elif f is p.stdout:
                r.out.append(data)
                r.out_len += len(data)
                if r.out_len > cap:
                    r.killed = "OUTPUT_LIMIT"
            elif r.err_len < STDERR_KEEP:
                r.err.append(data[: STDERR_KEEP - r.err_len])
                r.err_len += len(r.err[-1])
        if r.killed:
            break
        if exited_at is None:
            pid, status, usage = os.wait4(p.pid, os.WNOHANG)
            if pid:
                exited_at, r.status, ru = time.monotonic(), status, usage
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except OSError:
        pass
    if ru is None:
        _, r.status, ru = os.wait4(p.pid, 0)
    p.returncode = 0  # reaped here; keep Popen from waiting again
    for f in (p.stdin, p.stdout, p.stderr):
        if not f.closed:
            f.close()
    r.wall_s = time.monotonic() - t0
    r.cpu_s = ru.ru_utime + ru.ru_stime
    return r


def main(cfg):  # noqa: C901 - one linear procedure
    nonce = cfg["nonce"]
    hardened = set_not_dumpable()
    sol = os.path.abspath("sol")
    os.mkdir(sol)
    with open(os.path.join(sol, cfg["source"]), "w", encoding="utf-8") as f:
        f.write(cfg["program"])
    env = dict(cfg["env"], HOME=sol)
    for argv in (cfg["compile"], cfg["run"]):
        if (
            argv
            and not argv[0].startswith("./")
            and shutil.which(argv[0], path=env["PATH"]) is None
        ):
            return emit(nonce, "setup", reason=f"{argv[0]} is not installed in the sandbox")
    memory, limit, keep = cfg["memory_bytes"], float(cfg["time_limit_s"]), COMPILE_OUTPUT_KEEP
    if cfg["syntax_check"]:
        try:
            compile(cfg["program"], cfg["source"], "exec", dont_inherit=True)
        except (SyntaxError, ValueError, RecursionError, MemoryError, OverflowError) as e:
            line = f" (line {e.lineno})" if isinstance(e, SyntaxError) else ""
            return emit(
                nonce, "syntax", verdict="COMPILE_ERROR", reason=f"{type(e).__name__}: {e}{line}"
            )
    if cfg["compile"]:
        c = run_process(
            cfg["compile"], sol, env, b"", keep, cfg["compile_s"], cfg["compile_s"], memory, False
        )
        if c.verdict(cfg["compile_s"]) != "OK":
            why = "compiler timed out" if c.killed == "TIME_LIMIT" else "compiler failed"
            return emit(
                nonce,
                "syntax",
                verdict="COMPILE_ERROR",
                reason=why,
                err=b"".join(c.out + c.err)[-keep:],
            )
    # The program runs from here on: what goes wrong now is its doing.
    emit(nonce, "start", verdict="hardened" if hardened else "dumpable")
    deadline = time.monotonic() + float(cfg["budget_s"])
    for i, case in enumerate(cfg["cases"]):
        left = deadline - time.monotonic()
        if left <= 0.05:
            emit(nonce, "case", i, "TIME_LIMIT", "not run: the sample's time budget ran out")
            continue
        try:
            r = run_process(
                cfg["run"],
                sol,
                env,
                case["stdin"].encode("utf-8"),
                case["cap"],
                limit,
                min(2 * limit + 1, left),
                memory,
                cfg["limit_as"],
            )
        except (OSError, subprocess.SubprocessError) as e:  # its leftovers use every pid?
            emit(nonce, "case", i, "RUNTIME_ERROR", f"could not start the program: {e}")
            continue
        out = b"".join(r.out)[: case["cap"]]
        emit(nonce, "case", i, r.verdict(limit), "", out=out, err=b"".join(r.err), **r.fields())
    emit(nonce, "done")


if __name__ == "__main__":
    with open(CONFIG, "rb") as _f:
        _cfg = json.loads(_f.read())
    os.unlink(CONFIG)
    try:
        main(_cfg)
    except Exception as _e:  # before "start": the sandbox's fault; after: the cases left fail
        emit(_cfg["nonce"], "crash", reason=f"{type(_e).__name__}: {_e}")
        sys.exit(3)
