"""The production sandbox backend: a warm pool of hardened, single-use Docker containers.

Each pool container is started ahead of time running `sleep infinity` (under Docker's
`--init`) and serves exactly one job: the job's files are streamed into its tmpfs
`/work` as a tar archive, the compile and run steps are `docker exec`s as uid 65534,
and then the container is removed and a fresh one started in the background. Nothing a
job leaves behind (files, processes, /tmp, /dev/shm) can reach the next job.

What each container has (`_run_argv`):

- no network (`--network none`: a loopback device only, so 127.0.0.1 is its own);
- a read-only root file system; writable tmpfs only at /work, /tmp and a small /dev/shm;
- uid/gid 65534 for every process, all capabilities dropped, `no-new-privileges`, no
  setuid binaries in the image; Docker's default seccomp profile and masked /proc paths;
- cgroup limits: memory with swap equal to it (so no swap), processes (`--pids-limit`),
  a CPU share (`--cpus`); memory and processes are set per step with `docker update`
  when a step needs values other than the container's;
- rlimits per step through `prlimit`: CPU seconds, file size, open files, no core
  files; the container's `--ulimit`s are the ceilings prlimit may lower from;
- a wall-clock limit enforced from the host: the container is killed (the only kill
  that reaches every process it holds), so the whole tree dies at once;
- stdout and stderr drained concurrently and capped (`runner.pump`); the container is
  killed as soon as either passes its cap.

What it does not defend against: the containers share the host's kernel, so a kernel
bug reachable through the syscalls Docker's default seccomp profile allows is an
escape (no extra seccomp profile, no user namespace remapping, no gVisor/Kata). No
AppArmor or SELinux profile applies where the host has neither (as in CI). A job can
use its CPU share and memory for its whole wall limit; RLIMIT_CPU is per process, so a
job of several processes is bounded by `--cpus` times the wall limit, not by its CPU
limit. It can read what any unprivileged process on a Debian system can (the image's
files, the kernel version, /proc/cpuinfo). RLIMIT_NPROC counts per uid across the host
and every container runs as 65534, so it is only a loose container-wide backstop: the
per-job process limit is the pids cgroup. A job can stop its own container (uid 65534
may signal the init process), which only ends its own run. The Docker daemon is
trusted and root.

Verdicts are `runner.classify`'s, from: our kill on the wall limit or an output cap; the
exit status, where the docker CLI reports death by signal N as exit 128+N (so a program
that calls exit(137) reads as SIGKILL); the container cgroup's `oom_kill` counter risen
during the step (Docker's State.OOMKilled stays false while the container's init lives,
so it is useless here); SIGKILL after at least the CPU limit counts as a CPU-time kill.
SANDBOX_ERROR comes only from steps the program cannot reach (starting, updating,
filling a container), never from anything the program printed or its exit code.

Usage: wall time is measured on the host around the `docker exec` (so it includes the
engine's ~50 ms round trip, for which `exec_overhead_s` is added to the wall limit).
CPU time and peak memory come from the container's cgroup, read after the step by a
`docker exec` as uid 0 (without capabilities, but out of the job's reach): CPU is the
run's own (the reading after compiling is subtracted); peak memory is the cgroup's
high-water mark, so it includes the compiler's for compiled languages, and page cache
and tmpfs files charged to the container. A step killed on a limit reports wall time
only, and so does one whose leftover processes fill the pids cgroup (the reading cannot
start; an OOM kill then goes unseen).

The docker CLI is driven through subprocess rather than the `docker` SDK: a child
process gives separate stdout/stderr pipes and a real end-of-file on stdin (the SDK's
attach socket multiplexes both streams and needs a half-close to end stdin), the same
capped pump as the other backends drains them, its timeouts are ours, and no extra
dependency is needed. Each exec costs a CLI start; on a 2-core machine an exec round
trip is about 50-60 ms, a whole Python job about 0.25 s.
"""

from __future__ import annotations

import io
import logging
import os
import queue
import resource
import shlex
import signal
import subprocess
import tarfile
import threading
import time
import uuid
from dataclasses import dataclass, replace

from referee.sandboxes.languages import LANGUAGES, Language, Toolchain, probe
from referee.sandboxes.runner import (
    KillReason,
    Outcome,
    compile_failure,
    compile_limits,
    prlimit_argv,
    pump,
    reap,
    result,
    rlimits,
    sigkill_group,
    spawn,
    split_exit_code,
    split_status,
    work_dir_files,
)
from referee.sandboxes.types import (
    ExecResult,
    Job,
    Limits,
    MiB,
    Usage,
    Verdict,
)

log = logging.getLogger(__name__)

DEFAULT_IMAGE = "referee-sandbox-runtime:latest"
LABEL = "referee.sandbox"
"""Every pool container carries `referee.sandbox=1`, so `remove_leftovers` finds them."""
SANDBOX_USER = "65534:65534"
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
BASE_ENV = (("PATH", PATH), ("HOME", "/tmp"), ("TMPDIR", "/tmp"), ("LANG", "C.UTF-8"))
CONTROL_TIMEOUT_S = 60.0
"""Limit for engine calls that run no job code (start, update, fill, kill, read stats)."""
INIT_PROCESSES = 2
"""Processes the pids cgroup holds besides the job's: docker-init and `sleep`."""
# Both cgroup layouts: v2 (private cgroup namespace) first, then the v1 mounts.
_STAT_FILES = (
    "/sys/fs/cgroup/memory.events", "/sys/fs/cgroup/memory.peak", "/sys/fs/cgroup/cpu.stat",
    "/sys/fs/cgroup/memory/memory.oom_control", "/sys/fs/cgroup/memory/memory.max_usage_in_bytes",
    "/sys/fs/cgroup/cpuacct/cpuacct.usage", "/sys/fs/cgroup/cpu,cpuacct/cpuacct.usage",
)


class DockerError(RuntimeError):
    """The engine refused or failed a control step: the sandbox's fault, never the job's."""


@dataclass
class _Box:
    """One warm container and the cgroup limits it has now."""

    id: str
    memory_bytes: int
    pids: int


@dataclass(frozen=True)
class _Stats:
    oom_kills: int = 0
    cpu_s: float = 0.0
    peak_bytes: int = 0


class DockerBackend:
    """Runs each job in its own fresh container from a warm pool of `pool_size`.

    Containers start with the memory and process limits of `limits` (a step that needs
    others costs one `docker update`). `run` blocks while every container is busy or
    still starting, so give the pool at least as many containers as the service has
    slots. Raises DockerError (a RuntimeError) when the image or the engine is missing.

    image: built from compose/sandbox-runtime.Dockerfile (`bash .ci/docker.sh` builds it).
    cpus: CPU share of each container (`--cpus`).
    work_size_bytes, tmp_size_bytes: tmpfs sizes of /work and /tmp, fixed when a
    container starts; their pages count against the job's memory limit, and each file
    is held to the job's `file_size_bytes` by RLIMIT_FSIZE.
    max_open_files: hard RLIMIT_NOFILE of the containers; a job may ask for up to this.
    compile_wall_time_s, compile_memory_bytes: floors for the compile step
    (`runner.compile_limits`), as in the bwrap backend.
    exec_overhead_s: added to the wall limit for the engine's exec round trip.
    acquire_timeout_s: how long `run` waits for a warm container before SANDBOX_ERROR.
    init: run Docker's init (tini) as PID 1 so orphans are reaped; turn off only for an
    engine without docker-init (orphans then stay zombies until the container goes).
    docker: the docker CLI to run (DOCKER_HOST and friends are honoured).
    """

    name = "docker"

    def __init__(
        self,
        image: str = DEFAULT_IMAGE,
        pool_size: int = 2,
        limits: Limits | None = None,
        *,
        cpus: float = 1.0,
        work_size_bytes: int = 256 * MiB,
        tmp_size_bytes: int = 64 * MiB,
        max_open_files: int = 4096,
        compile_wall_time_s: float = 30.0,
        compile_memory_bytes: int = 1024 * MiB,
        exec_overhead_s: float = 0.25,
        acquire_timeout_s: float = 120.0,
        init: bool = True,
        docker: str = "docker",
    ) -> None:
        if pool_size < 1:
            raise ValueError(f"pool_size must be >= 1, got {pool_size}")
        self._image = image
        self._limits = limits or Limits()
        self._cpus = cpus
        self._work_size = max(work_size_bytes, self._limits.file_size_bytes, 64 * MiB)
        self._tmp_size = tmp_size_bytes
        self._max_open_files = max(max_open_files, self._limits.open_files, 256)
        self._compile_wall, self._compile_memory = compile_wall_time_s, compile_memory_bytes
        self._exec_overhead_s = exec_overhead_s
        self._acquire_timeout_s = acquire_timeout_s
        self._init = init
        self._docker = docker
        self._owner = uuid.uuid4().hex[:12]
        self._ready: queue.Queue[_Box | DockerError] = queue.Queue()
        self._lock = threading.Lock()
        self._live: set[str] = set()
        self._threads: set[threading.Thread] = set()
        self._closed = threading.Event()
        self._toolchains: list[Toolchain] | None = None
        self._check_image()
        for _ in range(pool_size):
            self._spawn_refill(None)

    # -- the SandboxBackend protocol -------------------------------------------------

    def run(self, job: Job, language: Language) -> ExecResult:
        """Compiles (if the language does) and runs `job` in a fresh container. Raises
        ValueError for files that collide (the service checks this before a job takes a
        slot)."""
        files = work_dir_files(job, language)
        try:
            box = self._acquire()
        except DockerError as e:
            return ExecResult(Verdict.SANDBOX_ERROR, message=str(e))
        try:
            return self._run_in(box, job, language, files)
        except DockerError as e:
            return ExecResult(Verdict.SANDBOX_ERROR, message=str(e))
        finally:
            self._spawn_refill(box.id)

    def close(self) -> None:
        """Removes every container of this backend; `run` afterwards is a SANDBOX_ERROR."""
        with self._lock:
            self._closed.set()
            threads = list(self._threads)
        for t in threads:  # each removes what it started once it sees the flag
            t.join(timeout=CONTROL_TIMEOUT_S)
        with self._lock:
            ids = set(self._live)
            self._live.clear()
        ids |= set(self._docker_out("ps", "-aq", "--filter", f"label={LABEL}.owner={self._owner}",
                                    check=False).split())
        if ids:
            self._docker_out("rm", "-f", *sorted(ids), check=False)
        self._ready.put(DockerError("the docker backend is closed"))  # wakes a waiting job

    def describe(self) -> dict[str, object]:
        return {
            "backend": self.name,
            "image": self._image,
            "engine": self._docker_out("version", "-f", "{{.Server.Version}}", check=False).strip(),
            "isolation": "container per job: pid, net (none), ipc, uts, mount namespaces; init; recycled after each job",
            "sandbox_uid": 65534,
            "capabilities": "none (cap-drop ALL, no-new-privileges)",
            "seccomp": "Docker's default profile",
            "limits": "cgroup memory (no swap), pids, --cpus; rlimits CPU, fsize, nofile, core via prlimit",
            "filesystem": "read-only root; tmpfs /work, /tmp, /dev/shm",
        }

    def languages(self) -> list[Toolchain]:
        """Each language's version as seen inside the image (probed once, all of them
        in one throwaway container)."""
        with self._lock:
            if self._toolchains is not None:
                return list(self._toolchains)
        answers = self._versions([lang.version for lang in LANGUAGES])
        toolchains = [probe(lang, run=lambda argv: answers[tuple(argv)]) for lang in LANGUAGES]
        with self._lock:
            self._toolchains = toolchains
        return list(toolchains)

    def _versions(self, commands: list[tuple[str, ...]]) -> dict[tuple[str, ...], tuple[bool, str]]:
        script = "".join(f'out=$({shlex.join(c)} 2>&1 </dev/null); echo "$?:$out" | head -n1; ' for c in commands)
        try:
            out = self._docker_out("run", "--rm", "--network", "none", "--user", SANDBOX_USER,
                                   "--label", f"{LABEL}=1", self._image, "sh", "-c", script)
        except DockerError as e:
            return {c: (False, str(e)) for c in commands}
        lines = out.splitlines()
        answers = {}
        for i, c in enumerate(commands):
            line = lines[i] if i < len(lines) else ""
            rc, _, text = line.partition(":")
            answers[c] = (True, text.strip()) if rc == "0" else (False, f"{shlex.join(c)} failed in the image: {text}")
        return answers

    # -- the pool -------------------------------------------------------------------------

    def _acquire(self) -> _Box:
        """A warm container. A start failure queued by `_refill` is raised only when no
        container is ready behind it, so stale failures do not outlive a recovery."""
        if self._closed.is_set():
            raise DockerError("the docker backend is closed")
        try:
            item = self._ready.get(timeout=self._acquire_timeout_s)
        except queue.Empty:
            raise DockerError(f"no warm container within {self._acquire_timeout_s:g} s") from None
        while isinstance(item, DockerError) and not self._closed.is_set():
            try:
                item = self._ready.get_nowait()
            except queue.Empty:
                raise item from None
        if isinstance(item, DockerError) or self._closed.is_set():
            raise DockerError("the docker backend is closed")
        return item

    def _spawn_refill(self, used: str | None) -> None:
        t = threading.Thread(target=self._refill, args=(used,), daemon=True, name="docker-pool")
        with self._lock:
            self._threads = {x for x in self._threads if x.is_alive()} | {t}
        t.start()

    def _refill(self, used: str | None) -> None:
        """Removes `used` and puts a fresh container in the pool. When the engine fails,
        one error is queued in its place (a waiting job gets it as SANDBOX_ERROR rather
        than waiting out `acquire_timeout_s`) and the start is retried with backoff."""
        if used is not None:
            self._docker_out("rm", "-f", used, check=False)
            with self._lock:
                self._live.discard(used)
        delay = 1.0
        while not self._closed.is_set():
            try:
                box_id = self._docker_out(*self._run_argv()).strip()
            except DockerError as e:
                log.warning("docker backend: %s (retrying in %.0f s)", e, delay)
                if delay == 1.0:
                    self._ready.put(DockerError(f"could not start a sandbox container: {e}"))
                self._closed.wait(delay)
                delay = min(delay * 2, 30.0)
                continue
            with self._lock:
                closed = self._closed.is_set()
                if not closed:
                    self._live.add(box_id)
            if closed:
                self._docker_out("rm", "-f", box_id, check=False)
            else:
                self._ready.put(_Box(box_id, self._limits.memory_bytes, self._limits.max_processes + INIT_PROCESSES))
            return

    def _run_argv(self) -> list[str]:
        lim = self._limits
        mem = str(lim.memory_bytes)
        return [
            "run", "--detach", *(["--init"] if self._init else []),
            "--label", f"{LABEL}=1", "--label", f"{LABEL}.owner={self._owner}",
            "--network", "none", "--ipc", "private", "--shm-size", str(8 * MiB),
            "--hostname", "sandbox", "--log-driver", "none",
            "--read-only",
            "--tmpfs", f"/work:rw,exec,nosuid,nodev,size={self._work_size},uid=65534,gid=65534,mode=0700",
            "--tmpfs", f"/tmp:rw,exec,nosuid,nodev,size={self._tmp_size},mode=1777",
            "--user", SANDBOX_USER, "--workdir", "/work",
            "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
            "--memory", mem, "--memory-swap", mem, "--cpus", f"{self._cpus:g}",
            "--pids-limit", str(lim.max_processes + INIT_PROCESSES),
            "--ulimit", f"nofile={self._max_open_files}:{self._max_open_files}",
            "--ulimit", f"fsize={self._work_size}:{self._work_size}",
            "--ulimit", "core=0:0",
            "--ulimit", "nproc=32768:32768",
            self._image, "sleep", "infinity",
        ]

    # -- one job --------------------------------------------------------------------------

    def _run_in(self, box: _Box, job: Job, lang: Language, files: list[tuple[str, bytes, int]]) -> ExecResult:
        lim = job.limits
        if lim.open_files > self._max_open_files or lim.file_size_bytes > self._work_size:
            raise DockerError(f"job limits (open_files={lim.open_files}, file_size_bytes="
                              f"{lim.file_size_bytes}) are over this pool's ceilings "
                              f"({self._max_open_files}, {self._work_size})")
        self._fill(box, files)
        env = BASE_ENV + lang.env
        before = _Stats()  # a fresh container: only `tar` has run in it
        if lang.compile:
            cl = compile_limits(lim, wall_time_s=self._compile_wall, memory_bytes=self._compile_memory)
            cl = replace(cl, file_size_bytes=min(cl.file_size_bytes, self._work_size),
                         open_files=min(cl.open_files, self._max_open_files))
            compiled, after = self._step(box, cl, env, list(lang.compile), b"", before)
            if compiled.verdict is not Verdict.OK:
                return compile_failure(compiled)
            before = after or before
        argv = lang.run_argv(lim.memory_bytes, job.args)
        return self._step(box, lim, env, argv, job.stdin, before)[0]

    def _fill(self, box: _Box, files: list[tuple[str, bytes, int]]) -> None:
        """Writes the job's files into /work (docker cp cannot write into a tmpfs mount,
        so the archive goes through `tar -x` in the container, as uid 65534)."""
        buf = io.BytesIO()
        mtime = int(time.time()) - 1
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for path, content, mode in files:
                info = tarfile.TarInfo(path)
                info.size, info.mtime, info.mode = len(content), mtime, mode
                tar.addfile(info, io.BytesIO(content))
        argv = [self._docker, "exec", "-i", "--user", SANDBOX_USER, box.id,
                "tar", "-x", "--no-same-owner", "-C", "/work", "-f", "-"]
        try:
            p = subprocess.run(argv, input=buf.getvalue(), capture_output=True,
                               timeout=CONTROL_TIMEOUT_S, check=False)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise DockerError(f"writing the job's files failed: {e}") from None
        if p.returncode != 0:
            raise DockerError(f"writing the job's files failed: {p.stderr.decode(errors='replace').strip()}")

    def _step(self, box: _Box, lim: Limits, env: tuple[tuple[str, str], ...], argv: list[str],
              stdin: bytes, before: _Stats) -> tuple[ExecResult, _Stats | None]:
        """One `docker exec` of job code under `lim`; the result, and the cgroup counters
        after it (None when it was killed on a limit)."""
        self._set_limits(box, lim.memory_bytes, lim.max_processes + INIT_PROCESSES)
        table = rlimits(lim, address_space=None)
        table.pop(resource.RLIMIT_NPROC, None)  # per uid host-wide: the pids cgroup bounds the job
        cmd = [self._docker, "exec", "-i", "--user", SANDBOX_USER, "--workdir", "/work", box.id,
               "env", "-i", *(f"{k}={v}" for k, v in env), *prlimit_argv("prlimit", table), *argv]
        try:
            sp = spawn(cmd, env=os.environ)
        except OSError as e:
            raise DockerError(f"cannot run {self._docker}: {e}") from None

        def kill(_: KillReason) -> None:
            # `docker kill` in a thread of its own, and the CLI killed at once: a kill
            # that waits while the exec's output pipe is full stalls (seen: 10 s).
            threading.Thread(target=self._docker_cmd, args=(["kill", box.id],), daemon=True).start()
            sigkill_group(sp.proc.pid)

        started = time.monotonic()
        pumped = pump(stdin=stdin, stdin_fd=sp.stdin, stdout_fd=sp.stdout, stderr_fd=sp.stderr,
                      cap=lim.output_bytes, deadline=started + lim.wall_time_s + self._exec_overhead_s, kill=kill)
        wall = time.monotonic() - started
        if pumped.kill_reason is not None:
            sigkill_group(sp.proc.pid)
        status, _ = reap(sp.proc)
        code, sig = split_status(status)
        if pumped.kill_reason is None and code is not None:
            code, sig = split_exit_code(code)
        after = None if pumped.kill_reason else self._stats(box.id)
        cpu = max(0.0, after.cpu_s - before.cpu_s) if after else 0.0
        reason = pumped.kill_reason
        if reason is None and sig == signal.SIGKILL and cpu >= lim.cpu_time_s:
            reason = KillReason.CPU_TIME  # RLIMIT_CPU's hard limit, past a handled SIGXCPU
        outcome = Outcome(lim, started=True, exit_code=code, signal=sig, kill_reason=reason,
                          oom_killed=bool(after and after.oom_kills > before.oom_kills), stderr=pumped.stderr)
        return result(outcome, pumped, Usage(wall, cpu, after.peak_bytes if after else 0)), after

    def _set_limits(self, box: _Box, memory_bytes: int, pids: int) -> None:
        if (box.memory_bytes, box.pids) != (memory_bytes, pids):
            self._docker_out("update", "--memory", str(memory_bytes), "--memory-swap", str(memory_bytes),
                             "--pids-limit", str(pids), box.id)
            box.memory_bytes, box.pids = memory_bytes, pids

    def _stats(self, box_id: str) -> _Stats:
        """The container's cgroup counters, read as root so that the job's leftover
        processes (uid 65534) cannot signal the reader. Missing files read as 0."""
        p = self._docker_cmd(["exec", "--user", "0", box_id, "grep", "-Hs", "", *_STAT_FILES])
        if p is None or not p.stdout:
            return _Stats()
        values: dict[str, int] = {}
        for line in p.stdout.decode(errors="replace").splitlines():
            path, _, rest = line.partition(":")
            key, _, num = rest.rpartition(" ")
            if num.isdigit():
                values[path.rsplit("/", 1)[-1] + (f".{key}" if key else "")] = int(num)
        oom = values.get("memory.events.oom_kill", values.get("memory.oom_control.oom_kill", 0))
        peak = values.get("memory.peak", values.get("memory.max_usage_in_bytes", 0))
        cpu = (values["cpu.stat.usage_usec"] / 1e6 if "cpu.stat.usage_usec" in values
               else values.get("cpuacct.usage", 0) / 1e9)
        return _Stats(oom, cpu, peak)

    # -- engine calls -------------------------------------------------------------------------

    def _check_image(self) -> None:
        p = self._docker_cmd(["image", "inspect", "--format", "{{.Id}}", self._image])
        if p is None or p.returncode != 0:
            detail = p.stderr.decode(errors="replace").strip() if p is not None else "the docker CLI did not answer"
            raise DockerError(
                f"docker image {self._image} is not available ({detail}); build it with "
                "`bash .ci/docker.sh` or `docker build -f compose/sandbox-runtime.Dockerfile "
                f"-t {self._image} compose`")

    def _docker_cmd(self, args: list[str]) -> subprocess.CompletedProcess[bytes] | None:
        """A control call whose failure the caller tolerates; None when it did not run."""
        try:
            return subprocess.run([self._docker, *args], capture_output=True,
                                  timeout=CONTROL_TIMEOUT_S, check=False)
        except (OSError, subprocess.TimeoutExpired) as e:
            log.warning("docker %s: %s", args[0], e)
            return None

    def _docker_out(self, *args: str, check: bool = True) -> str:
        """stdout of a control call; DockerError on failure when `check`."""
        p = self._docker_cmd(list(args))
        if p is None or p.returncode != 0:
            if not check:
                return ""
            detail = p.stderr.decode(errors="replace").strip() if p is not None else "no answer"
            raise DockerError(f"docker {args[0]} failed: {detail}")
        return p.stdout.decode(errors="replace")


def remove_leftovers(docker: str = "docker") -> int:
    """Removes every container labelled `referee.sandbox=1` on the engine (pools of
    processes that died without `close()`); returns how many. Do not call it while
    another backend shares the engine."""
    try:
        ids = subprocess.run([docker, "ps", "-aq", "--filter", f"label={LABEL}=1"], capture_output=True,
                             text=True, timeout=CONTROL_TIMEOUT_S, check=True).stdout.split()
        if ids:
            subprocess.run([docker, "rm", "-f", *ids], capture_output=True,
                           timeout=CONTROL_TIMEOUT_S, check=True)
    except (OSError, subprocess.SubprocessError) as e:
        raise DockerError(f"removing leftover sandbox containers failed: {e}") from None
    return len(ids)
