"""The Docker seccomp profile of the sandbox service's container (compose/seccomp-bwrap.json).

Why a profile of our own: Docker's default profile refuses unshare, namespace-creating
clone flags, mount, umount2, pivot_root and chroot to a process without CAP_SYS_ADMIN,
and bubblewrap needs exactly those to build a job's sandbox from an unprivileged user
namespace. The two ways around it that need no file, `seccomp=unconfined` and
CAP_SYS_ADMIN, give the server far more than bwrap needs. This profile is the job
filter's deny list (sandboxes/seccomp.py `DENIED`) minus the calls bwrap makes while it
sets a sandbox up (`BWRAP_NEEDS`), so the server and bwrap get the same refusals as a job
for everything else; every job still runs under the full job filter, which bwrap installs
on top (filters stack: the stricter answer wins).

Calls of a non-native ABI (i386, x32) are refused because only the native architectures
are listed. Regenerate after editing `DENIED` with
``python -m referee.sandboxes.seccomp_profile > compose/seccomp-bwrap.json``; a test
checks that the file is current.
"""

from __future__ import annotations

import errno
import json

from referee.sandboxes.seccomp import DENIED

BWRAP_NEEDS = ("mount", "umount2", "pivot_root", "chroot", "unshare")
"""What bubblewrap 0.8 calls to set a sandbox up: its user namespace (clone or unshare),
the tmpfs root and binds, the new /proc, the switch to the new root."""

NATIVE_ARCHITECTURES = ("SCMP_ARCH_X86_64", "SCMP_ARCH_AARCH64")
"""Docker picks the host's entry; 32-bit and x32 calls match none and are refused."""


def container_profile() -> dict[str, object]:
    """The profile as Docker's `--security-opt seccomp=FILE` reads it."""
    denied = sorted({name for names in DENIED.values() for name in names} - set(BWRAP_NEEDS))
    return {
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": list(NATIVE_ARCHITECTURES),
        "syscalls": [{"names": denied, "action": "SCMP_ACT_ERRNO", "errnoRet": errno.EPERM}],
    }


def render() -> str:
    return json.dumps(container_profile(), indent=2) + "\n"


if __name__ == "__main__":
    print(render(), end="")
