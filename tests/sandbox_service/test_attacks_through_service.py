"""Attacks sent through the real SandboxService (bwrap): each contained with the right
verdict, the server still SERVING and running jobs afterwards. The per-property suite
against the backend itself is tests/sandbox/test_sandbox_isolation.py."""

from __future__ import annotations

import asyncio
import shutil

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from referee.sandboxes.client import SandboxClient
from referee.sandboxes.types import Job, Limits, Verdict
from referee.testing import serve_process

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None, reason="no bubblewrap")
SMALL = Limits(wall_time_s=3, cpu_time_s=2, memory_bytes=128 * 1024 * 1024, output_bytes=64 * 1024, max_processes=32)

ATTACKS = [
    ("fork bomb", "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n",
     {Verdict.TIME_LIMIT, Verdict.RUNTIME_ERROR}),
    ("memory bomb", "x = []\nwhile True:\n    x.append(bytearray(16 * 1024 * 1024))\n", {Verdict.MEMORY_LIMIT}),
    ("stdout flood", "while True:\n    print('x' * 4096)\n", {Verdict.OUTPUT_LIMIT}),
    ("infinite loop", "while True:\n    pass\n", {Verdict.TIME_LIMIT}),
    ("kill the server", "import os, signal\nfor pid in (os.getppid(), 1, -1):\n"
     "    try:\n        os.kill(pid, signal.SIGKILL)\n    except OSError:\n        pass\nprint('alive')\n",
     {Verdict.OK, Verdict.RUNTIME_ERROR}),
]


def test_attacks_leave_the_service_healthy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REFEREE_ATTACK_SECRET", "hunter2")  # the server inherits it; jobs must not
    with serve_process(["sandbox", "--slots", "2"]) as server:

        async def go() -> None:
            async with SandboxClient(server.address, timeout_s=60) as client:
                for name, code, verdicts in ATTACKS:
                    r = await client.execute(Job("python", code, limits=SMALL))
                    assert r.verdict in verdicts, f"{name}: {r.verdict} {r.message} {r.stderr[-200:]!r}"
                env = await client.execute(Job("python", "import os\nprint(sorted(os.environ))\n"
                                               "print(open('/proc/1/environ','rb').read())\n"))
                assert b"hunter2" not in env.stdout + env.stderr
                ok = await client.execute(Job("python", "print('still fine')"))
                assert (ok.verdict, ok.stdout) == (Verdict.OK, b"still fine\n")
            async with grpc.aio.insecure_channel(server.address) as ch:
                resp = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=10)
                assert resp.status == health_pb2.HealthCheckResponse.SERVING

        asyncio.run(go())
        assert server.proc.poll() is None, "the server died"
