"""The sandbox container's Docker seccomp profile (compose/seccomp-bwrap.json) is the
generated one, allows what bwrap needs and still refuses the rest of the job filter's list."""

from __future__ import annotations

import json
from pathlib import Path

from referee.sandboxes import seccomp_profile
from referee.sandboxes.seccomp import DENIED

ROOT = Path(__file__).resolve().parents[2]


def test_the_checked_in_profile_is_current():
    path = ROOT / "compose" / "seccomp-bwrap.json"
    assert path.read_text() == seccomp_profile.render(), (
        "regenerate: python -m referee.sandboxes.seccomp_profile > compose/seccomp-bwrap.json")


def test_the_root_symlink_points_at_it():
    # docker-compose 1.29 reads the path from the working directory, v2 from compose/.
    assert (ROOT / "seccomp-bwrap.json").resolve() == (ROOT / "compose" / "seccomp-bwrap.json").resolve()


def test_bwrap_calls_are_allowed_and_the_rest_refused():
    profile = seccomp_profile.container_profile()
    (rule,) = profile["syscalls"]
    refused = set(rule["names"])
    assert rule["action"] == "SCMP_ACT_ERRNO" and profile["defaultAction"] == "SCMP_ACT_ALLOW"
    assert not refused & set(seccomp_profile.BWRAP_NEEDS)
    every = {name for names in DENIED.values() for name in names}
    assert refused == every - set(seccomp_profile.BWRAP_NEEDS)
    assert {"ptrace", "bpf", "keyctl", "kexec_load", "init_module", "open_by_handle_at", "setns"} <= refused
    assert "SCMP_ARCH_X86" not in profile["architectures"]  # 32-bit calls match no entry
    json.dumps(profile)
