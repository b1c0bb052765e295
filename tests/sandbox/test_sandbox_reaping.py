"""A sandbox's init outlives bwrap's monitor, which exits as soon as the program has
ended. The backend adopts it (child subreaper) and reaps it when its job ends; left to
the host's init, it would be a zombie for as long as that init takes, and counted in
its job cgroup's pids meanwhile, so that cgroup could not be reused (v1) and every job
would make and remove cgroups of its own."""

from __future__ import annotations

import os

import pytest

from referee.sandboxes import cgroups
from referee.sandboxes.bwrap import BwrapBackend

DAEMON = """import os, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        time.sleep(30)
    os._exit(0)
os.wait()
"""


def _zombie_children(comm: str) -> list[int]:
    """Zombie children of this process (of any of its threads) named `comm`."""
    out = []
    for task in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{task}/children") as f:
                pids = f.read().split()
        except OSError:
            continue
        for pid in pids:
            try:
                with open(f"/proc/{pid}/stat") as f:
                    head, _, rest = f.read().rpartition(")")
            except OSError:
                continue
            if rest.split()[0] == "Z" and head.partition("(")[2] == comm:
                out.append(int(pid))
    return out


def test_each_sandbox_init_is_reaped_when_its_job_ends(backend: BwrapBackend, run) -> None:
    if not backend.describe()["reaper"].startswith("this process"):
        pytest.skip("this process could not become a child subreaper")
    for code in ("print(1)", "import os\nos.fork()\nprint(2)", DAEMON, "raise SystemExit(3)"):
        run("python", code)
    run("python", "while True: pass", wall_time_s=0.5)
    assert _zombie_children("bwrap") == []


def test_job_cgroups_are_reused(backend: BwrapBackend, run, monkeypatch: pytest.MonkeyPatch) -> None:
    if backend._cg.mode != "v1":
        pytest.skip(f"only v1 job cgroups are kept for reuse (here: {backend._cg.mode})")
    made = []
    create = cgroups.Cgroups.create
    monkeypatch.setattr(cgroups.Cgroups, "create", lambda self, *a: made.append(1) or create(self, *a))
    for i in range(10):
        assert run("python", f"print({i})").stdout == f"{i}\n".encode()
    assert len(made) <= 3, f"{len(made)} job cgroups made for 10 jobs in a row"
