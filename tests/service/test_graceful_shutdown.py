"""SIGTERM on a real `referee serve verifiers` process: in-flight calls finish, new calls
are refused, and the process exits 0 within its grace period, taking its workers along."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from service_kit import CliServer, custom_args, request, sample, start_cli_server

from referee.v1 import reward_pb2 as pb
from referee.v1 import reward_pb2_grpc

GRACE_S = 10.0
SLEEP_S = 0.5  # 8 samples on 2 workers: about 2 s to drain


def descendants(pid: int) -> set[int]:
    """Every live process below `pid`, read from /proc."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if fields[0] != "Z":
            parents[int(entry.name)] = int(fields[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {p for p, pp in parents.items() if pp in frontier} - found
        found |= frontier
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return state[state.rindex(")") + 2] != "Z"


def wait_gone(pids: set[int], timeout: float = 15.0) -> set[int]:
    deadline = time.monotonic() + timeout
    while (left := {p for p in pids if alive(p)}) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


def wait_for_file(path: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} did not appear within {timeout}s"
        time.sleep(0.01)


@pytest.fixture
def server() -> CliServer:
    s = start_cli_server(custom_args(2, "--grace", str(GRACE_S)))
    yield s
    s.stop()


pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")


def test_sigterm_drains_in_flight_calls(server: CliServer, tmp_path: Path) -> None:
    started = tmp_path / "started"
    batch = [sample(f"s{i}", "x" * (i + 1), sleep_s=SLEEP_S, touch=str(started)) for i in range(8)]
    workers = descendants(server.proc.pid)
    assert len(workers) >= 3  # the forkserver and its two workers

    with grpc.insecure_channel(server.address) as ch:
        stub = reward_pb2_grpc.RewardServiceStub(ch)
        in_flight = stub.Score.future(request("sleepy", batch), timeout=60)
        wait_for_file(started)  # the batch is being scored
        t0 = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        server.wait_line(r"draining \(grace 10s\)", stream="stderr", timeout=30)

        # New calls are refused with UNAVAILABLE (which clients retry elsewhere) while
        # the old one drains: on the connection already open, and on a new one.
        late = request("sleepy", [sample("late", "x")])
        with pytest.raises(grpc.RpcError) as same:
            stub.Score(late, timeout=10)
        fresh_opts = [("grpc.use_local_subchannel_pool", 1)]
        with grpc.insecure_channel(server.address, fresh_opts) as ch2:
            with pytest.raises(grpc.RpcError) as fresh:
                reward_pb2_grpc.RewardServiceStub(ch2).Score(late, timeout=10)
        # Health stays open and says so.
        health = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert health.status == health_pb2.HealthCheckResponse.NOT_SERVING
        assert not in_flight.done()
        resp = in_flight.result(60)

    assert same.value.code() is grpc.StatusCode.UNAVAILABLE, same.value
    assert "shutting down" in same.value.details()
    assert fresh.value.code() is grpc.StatusCode.UNAVAILABLE, fresh.value
    assert [s.id for s in resp.scores] == [f"s{i}" for i in range(8)]
    assert [s.status for s in resp.scores] == [pb.STATUS_OK] * 8
    assert [s.value for s in resp.scores] == [float(i + 1) for i in range(8)]

    assert server.proc.wait(GRACE_S + 5) == 0, server.output()
    assert time.monotonic() - t0 < GRACE_S
    server.wait_line("stopped", stream="stderr", timeout=10)
    assert wait_gone(workers) == set(), "worker processes outlived the server"


def test_idle_server_exits_zero_and_takes_its_workers(server: CliServer) -> None:
    workers = descendants(server.proc.pid)
    assert workers
    t0 = time.monotonic()
    assert server.stop(GRACE_S + 5) == 0, server.output()
    assert time.monotonic() - t0 < GRACE_S
    assert wait_gone(workers) == set(), "worker processes outlived the server"
