"""The publisher (``edged registry``) and the rollout bucket, without a daemon or a web server."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from tuf.api.metadata import Metadata

from edged.errors import ModelError, NotFoundError, RequestError
from edged.update.registry import Registry
from edged.update.rollout import bucket, covers

ROOT = Path(__file__).resolve().parents[2]
DIGITS = ROOT / "models" / "digits" / "v1"


def _pack(tmp: Path, version: str) -> Path:
    from edged.repository.pack import pack

    return pack(DIGITS / "model.tflite", name="digits", version=version, repo=tmp / "src",
                golden_inputs=[DIGITS / "golden" / "0.input.npy"], labels=DIGITS / "labels.txt")


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    reg = Registry(tmp_path / "reg", tmp_path / "keys")
    reg.init()
    return reg


def test_init_makes_four_roles_with_private_keys(registry: Registry, tmp_path: Path) -> None:
    for role in ("root", "targets", "snapshot", "timestamp"):
        mode = stat.S_IMODE((tmp_path / "keys" / f"{role}.pem").stat().st_mode)
        assert mode == 0o600, (role, oct(mode))
    root = Metadata.from_file(str(tmp_path / "reg" / "metadata" / "1.root.json"))
    assert root.signed.consistent_snapshot is True
    root.signed.verify_delegate("root", root.signed_bytes, root.signatures)  # self-signed by the root key
    with pytest.raises(RequestError, match="already holds a registry"):
        registry.init()


def test_publish_rollout_withdraw_are_signed_into_targets(registry: Registry, tmp_path: Path) -> None:
    src = _pack(tmp_path, "v2")
    out = registry.publish(src, channel="beta", rollout=10)
    assert out["files"] == sorted(["manifest.json", "model.tflite", "labels.txt", "golden/0.input.npy",
                                   "golden/0.output0.npy"])
    targets = Metadata.from_file(str(tmp_path / "reg" / "metadata" / "targets.json"))
    tf = targets.signed.targets["digits/v2/model.tflite"]
    assert tf.custom["edged"] == {"model": "digits", "version": "v2", "channel": "beta", "rollout": 10,
                                  "withdrawn": False, "min_runtime": None}
    stored = tmp_path / "reg" / "targets" / "digits" / "v2" / f"{tf.hashes['sha256']}.model.tflite"
    assert stored.read_bytes() == (src / "model.tflite").read_bytes()
    registry.set_rollout("digits", "v2", 50)
    registry.withdraw("digits", "v2")
    status = registry.status()
    assert status["models"] == {"digits": {"v2": {"channel": "beta", "rollout": 50, "withdrawn": True,
                                                  "min_runtime": None}}}
    assert status["versions"]["targets"] == 4  # init + publish + rollout + withdraw
    with pytest.raises(RequestError, match="immutable"):
        registry.publish(src, channel="beta", rollout=10)
    with pytest.raises(NotFoundError):
        registry.withdraw("digits", "v9")
    with pytest.raises(RequestError, match="percentage"):
        registry.set_rollout("digits", "v2", 101)


def test_publish_refuses_what_validate_refuses(registry: Registry, tmp_path: Path) -> None:
    src = _pack(tmp_path, "v3")
    (src / "model.tflite").write_bytes(b"not a model")
    with pytest.raises(ModelError):
        registry.publish(src, channel="stable", rollout=100)
    assert registry.status()["models"] == {}


def test_refresh_resigns_only_when_due(tmp_path: Path) -> None:
    from edged.update.registry import Expiry

    reg = Registry(tmp_path / "reg", tmp_path / "keys", Expiry(timestamp=1.0))
    reg.init()
    assert reg.refresh()["resigned"] == []
    assert Registry(tmp_path / "reg", tmp_path / "keys", Expiry(timestamp=30.0)).refresh()["resigned"] == ["timestamp"]
    assert reg.refresh(force=True)["resigned"] == ["snapshot", "timestamp"]


def test_rotation_writes_a_root_signed_by_the_old_key(registry: Registry, tmp_path: Path) -> None:
    meta = tmp_path / "reg" / "metadata"
    out = registry.rotate("timestamp")
    assert out["root_version"] == 2
    old = Metadata.from_file(str(meta / "1.root.json"))
    new = Metadata.from_file(str(meta / "2.root.json"))
    old.signed.verify_delegate("root", new.signed_bytes, new.signatures)  # continuity, as ngclient checks it
    ts = Metadata.from_file(str(meta / "timestamp.json"))
    new.signed.verify_delegate("timestamp", ts.signed_bytes, ts.signatures)
    assert list((tmp_path / "keys").glob("timestamp.pem.*.old"))


def test_a_key_readable_by_others_is_refused(registry: Registry, tmp_path: Path) -> None:
    (tmp_path / "keys" / "timestamp.pem").chmod(0o644)
    with pytest.raises(RequestError, match="chmod 600"):
        registry.refresh(force=True)


def test_rollout_share_within_one_and_a_half_points_and_monotonic() -> None:
    devices = [f"device-{i}" for i in range(10_000)]
    buckets = [bucket(d, "digits", "v7") for d in devices]
    previous: set[int] = set()
    for percent in (1, 5, 10, 25, 50, 75, 90, 100):
        covered = {i for i, b in enumerate(buckets) if b < percent}
        share = 100 * len(covered) / len(devices)
        assert abs(share - percent) <= 1.5, (percent, share)
        assert previous <= covered, f"raising to {percent} % removed devices"
        previous = covered
    assert covers(10, "device-1", "digits", "v7") == covers(10, "device-1", "digits", "v7")
    assert not covers(0, "device-1", "digits", "v7")


def test_registry_cli_json(tmp_path: Path) -> None:
    def run(*args: str) -> dict:
        r = subprocess.run([sys.executable, "-m", "edged", "registry", *args, "--json"], capture_output=True,
                           text=True, cwd=str(ROOT), timeout=120)
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)

    assert run("init", str(tmp_path / "reg"), "--keys", str(tmp_path / "k"))["keyids"]
    src = _pack(tmp_path, "v2")
    out = run("publish", str(src), "--registry", str(tmp_path / "reg"), "--keys", str(tmp_path / "k"),
              "--rollout", "20")
    assert (out["model"], out["version"], out["rollout"]) == ("digits", "v2", 20)
    assert run("status", "--registry", str(tmp_path / "reg"))["models"]["digits"]["v2"]["rollout"] == 20
