"""The sandbox's /dev: the harmless device nodes work, nothing else is there, and no job
can change it (with the shared read-only /dev of `devnodes`, a job that could would
change every later job's /dev)."""

from __future__ import annotations

import ctypes
import os
import shutil
import stat

import pytest

from referee.sandboxes import devnodes
from referee.sandboxes.bwrap import BwrapBackend
from referee.sandboxes.types import Verdict

PROBE = """import os
print(sorted(n for n in os.listdir('/dev') if n not in ('pts', 'ptmx', 'tty', 'core', 'console')))
with open('/dev/null', 'w') as f:
    f.write('x')
print(len(open('/dev/urandom', 'rb').read(8)), open('/dev/zero', 'rb').read(2))
with open('/dev/shm/s', 'w') as f:
    f.write('shared memory is the job\\'s own')
for attempt in (lambda: open('/dev/evil', 'w'), lambda: os.chmod('/dev/null', 0o600),
                lambda: os.unlink('/dev/zero'), lambda: os.symlink('/work', '/dev/fd2'),
                lambda: os.mkdir('/dev/x')):
    try:
        attempt()
        print('changed /dev')
    except OSError as e:
        print(type(e).__name__)
"""


def test_dev_has_the_harmless_nodes_and_cannot_be_changed(backend: BwrapBackend, run) -> None:
    for _ in range(2):  # the second job sees what the first left: nothing
        r = run("python", PROBE)
        assert r.verdict is Verdict.OK, r
        out = r.stdout.decode().splitlines()
        assert out[0] == str(sorted(["fd", "full", "null", "random", "shm", "stderr", "stdin", "stdout",
                                     "urandom", "zero"]))
        assert out[1] == "8 b'\\x00\\x00'"
        assert "changed /dev" not in out[2:] and len(out) == 7, out
    if backend._dev is not None:
        assert devnodes.is_shared_dev(backend._dev)
        assert backend.describe()["dev"].startswith("shared read-only")


def test_bash_redirections_to_dev_work(run) -> None:
    script = "echo hidden > /dev/null; echo shown > /dev/stdout; echo err > /dev/stderr; cat /dev/stdin; cat < /dev/null"
    r = run("bash", script, stdin=b"in\n")
    assert (r.verdict, r.stdout, r.stderr) == (Verdict.OK, b"shown\nin\n", b"err\n"), r


@pytest.fixture
def scratch_dev() -> str:
    if os.geteuid() != 0:
        pytest.skip("making a shared /dev needs root")
    parent = f"/run/referee-test-dev-{os.getpid()}"
    os.makedirs(parent, mode=0o755, exist_ok=True)
    path = os.path.join(parent, "dev")
    yield path
    libc = ctypes.CDLL(None, use_errno=True)
    while os.path.ismount(path):
        libc.umount2(path.encode(), devnodes.MNT_DETACH)
    shutil.rmtree(parent, ignore_errors=True)


def test_a_shared_dev_not_exactly_as_made_is_rebuilt(scratch_dev: str) -> None:
    path, why = devnodes.shared_dev(scratch_dev)
    if path is None:
        pytest.skip(f"no shared /dev here: {why}")
    assert devnodes.is_shared_dev(path)
    st = os.lstat(os.path.join(path, "null"))
    assert stat.S_ISCHR(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o666
    with pytest.raises(OSError):
        open(os.path.join(path, "extra"), "w")  # read-only even for root
    assert devnodes.shared_dev(scratch_dev) == (path, "")  # found as made: kept
    # one a crashed server left half-made (writable, a node missing) is replaced
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.mount(b"x", path.encode(), b"tmpfs", devnodes.MS_REMOUNT, None) == 0
    os.unlink(os.path.join(path, "zero"))
    assert not devnodes.is_shared_dev(path)
    assert devnodes.shared_dev(scratch_dev) == (path, "")
    assert devnodes.is_shared_dev(path)


def test_a_parent_others_cannot_search_is_refused(tmp_path) -> None:
    os.chmod(tmp_path, 0o700)
    path, why = devnodes.shared_dev(str(tmp_path / "dev"))
    assert path is None and "not searchable" in why


def test_a_dev_path_someone_else_could_have_planted_is_refused(tmp_path) -> None:
    if os.geteuid() != 0:
        pytest.skip("making a shared /dev needs root")
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o777)
    os.chmod(shared, 0o777)  # anyone could have put a symlink named dev here
    (shared / "dev").symlink_to("/etc")
    path, why = devnodes.shared_dev(str(shared / "dev"))
    assert path is None and "only it can write" in why
    os.chmod(shared, 0o755)
    path, why = devnodes.shared_dev(str(shared / "dev"))  # a symlink is refused even so
    assert path is None and "only it can write" in why
    assert not os.path.ismount("/etc")
