"""The committed stubs in referee/v1/ must be what the .proto files generate."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_committed_stubs_match_the_proto_files(tmp_path: Path) -> None:
    subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_proto.py"), "--out", str(tmp_path)], check=True)
    fresh = {p.name: p.read_bytes() for p in (tmp_path / "referee" / "v1").glob("*_pb2*.py*")}
    committed = {p.name: p.read_bytes() for p in (ROOT / "referee" / "v1").glob("*_pb2*.py*")}
    assert fresh, "protoc generated nothing"
    assert sorted(fresh) == sorted(committed), "stub files differ; run `make proto` and commit"
    stale = [name for name in fresh if fresh[name] != committed[name]]
    assert not stale, f"stale stubs {stale}: run `make proto` and commit the result"


def test_contract_has_the_documented_shape() -> None:
    from referee.v1 import reward_pb2, sandbox_pb2

    rewards = reward_pb2.DESCRIPTOR.services_by_name["RewardService"]
    assert sorted(rewards.methods_by_name) == ["ListRewards", "Score", "ScoreStream"]
    stream = rewards.methods_by_name["ScoreStream"]
    assert stream.client_streaming and stream.server_streaming
    assert "Execute" in sandbox_pb2.DESCRIPTOR.services_by_name["SandboxService"].methods_by_name
    statuses = [v.name for v in reward_pb2.Status.DESCRIPTOR.values]
    assert statuses[0] == "STATUS_UNSPECIFIED", "the zero status must never mean OK"
    assert {"STATUS_OK", "STATUS_INVALID_INPUT", "STATUS_TIMEOUT", "STATUS_ERROR", "STATUS_UNAVAILABLE"} <= set(statuses)
