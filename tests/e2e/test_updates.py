"""Remote updates end to end: a real daemon, the real registry CLI, a real nginx, no mocks of HTTP or TUF.

Each test builds a registry with ``edged registry``, serves it with nginx on a
loopback port, and starts a daemon whose ``[update]`` points at it (strategy
off: checks run on ``edged ctl update check``, so nothing depends on timing).
Target downloads are counted from nginx's access log.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import zmq

from tests.conftest import ROOT
from tests.e2e.nginx import Nginx
from tests.e2e.repohelpers import publish, versions, wait_until

pytestmark = pytest.mark.e2e


def edged(*args: str, timeout: float = 120) -> dict:
    r = subprocess.run([sys.executable, "-m", "edged", *args, "--json"], capture_output=True, text=True,
                       cwd=str(ROOT), timeout=timeout)
    assert r.returncode == 0, f"edged {' '.join(args)}: {r.stderr}"
    return json.loads(r.stdout)


class Fleet:
    """One registry (keys, nginx) and helpers to publish into it and to run one device against it."""

    def __init__(self, tmp: Path, daemon_factory, nginx: Nginx) -> None:
        self.tmp = tmp
        self.reg = tmp / "reg"
        self.keys = tmp / "keys"
        self.nginx = nginx
        self.daemon_factory = daemon_factory
        self.repo = tmp / "device"

    def publish(self, version: str, model: bytes, *, rollout: int = 100, channel: str = "stable") -> None:
        src = publish(self.tmp / "src", version, model, tmp=self.tmp)
        edged("registry", "publish", str(src), "--registry", str(self.reg), "--keys", str(self.keys),
              "--rollout", str(rollout), "--channel", channel)

    def registry(self, *args: str) -> dict:
        return edged("registry", *args, "--registry", str(self.reg), "--keys", str(self.keys))

    def device(self, *extra: str):
        return self.daemon_factory(self.repo, "--set", f'update.url="{self.nginx.url}"',
                                   "--set", f'update.root="{self.reg}/metadata/1.root.json"',
                                   "--set", 'update.device_id="device-1"', "--set", "repository.settle_s=0.2",
                                   *extra)

    def stored(self, model: str, version: str, name: str) -> Path:
        return next((self.reg / "targets" / model / version).glob(f"*.{name}"))


@pytest.fixture
def fleet(tmp_path: Path, daemon_factory):
    from edged.testing import tflite_build as tb

    edged("registry", "init", str(tmp_path / "reg"), "--keys", str(tmp_path / "keys"))
    (tmp_path / "nginx").mkdir()
    server = Nginx(tmp_path / "reg", tmp_path / "nginx")
    f = Fleet(tmp_path, daemon_factory, server)
    publish(f.repo, "v1", tb.random_classifier(seed=1), tmp=tmp_path)
    yield f
    server.stop()


def check(d, *args: str) -> dict:
    r = d.cli("ctl", "update", "check", "--json", *args)
    assert r.returncode == 0, r.stderr + d.log()
    return json.loads(r.stdout)


def status(d) -> dict:
    r = d.cli("ctl", "update", "status", "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def serving(d) -> str:
    return versions(d)["serving"]


def test_published_version_is_served_after_one_check_and_idle_checks_fetch_no_target(fleet, sockdir):
    from edged.testing import tflite_build as tb

    fleet.publish("v2", tb.random_classifier(seed=2), rollout=0)
    d = fleet.device()
    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"update")
    sub.connect(f"ipc://{sockdir}/events.sock")
    first = check(d)
    assert first["ok"] and first["decisions"][0]["action"] == "none"
    assert "rollout 0 %" in first["decisions"][0]["available"][0]["skipped"]
    assert not [r for r in fleet.nginx.target_requests() if "/v2/" in r["path"]]

    fleet.registry("rollout", "m", "v2", "100")
    result = check(d)
    assert result["ok"] and result["installed"] == ["m/v2"], result
    wait_until(lambda: serving(d) == "v2", "v2 serving", daemon=d)
    with d.client() as c:
        assert c.info("m")["models"][0]["version"] == "v2"
    fetched = fleet.nginx.target_requests()
    assert any(r["path"].endswith(".model.tflite") for r in fetched)

    idle = check(d)
    assert idle["ok"] and idle["decisions"][0]["action"] == "none" and idle["installed"] == []
    assert fleet.nginx.target_requests() == fetched, "an idle check downloaded a target"
    assert idle["requests"] <= 2  # the next root (404) and timestamp.json
    st = status(d)
    assert st["last_check"]["ok"] and st["download"] is None and st["checks"] == 3
    assert st["next_check"]["in_s"] is None and "off" in st["next_check"]["why"]

    events = []
    while sub.poll(5000):
        events.append(json.loads(sub.recv_multipart()[1])["event"])
        if events[-1] == "update-installed":
            break
    sub.close()
    assert "update-available" in events and "update-installed" in events, events


def test_a_cut_transfer_resumes_from_the_partial_file_after_restart(fleet):
    from edged.testing import tflite_build as tb

    big = tb.random_classifier(seed=2, hidden=(1024,))  # ~300 kB: seconds at 24 kB/s
    fleet.publish("v2", big)
    fleet.nginx.restart(limit_rate="24k")
    d = fleet.device()
    check(d, "--no-wait")
    wait_until(lambda: (status(d)["download"] or {}).get("bytes_done", 0) > 40_000, "a partial download",
               daemon=d)
    assert d.stop() == 0
    parts = list((fleet.repo / ".edged" / "staging" / "m" / "v2").glob("*.part"))
    assert parts and parts[0].stat().st_size > 0, "no partial file kept"
    have = parts[0].stat().st_size
    assert not (fleet.repo / "m" / "v2").exists(), "a partial version appeared in the repository"

    fleet.nginx.restart()
    d2 = fleet.device()
    result = check(d2)
    assert result["ok"] and result["installed"] == ["m/v2"], result
    wait_until(lambda: serving(d2) == "v2", "v2 serving", daemon=d2)
    model_requests = [r for r in fleet.nginx.target_requests() if r["path"].endswith(".model.tflite")]
    resumed = [r for r in model_requests if r["status"] == "206"]
    assert resumed and resumed[-1]["range"] == f"bytes={have}-", model_requests
    assert int(resumed[-1]["bytes"]) == len(big) - have
    assert not list((fleet.repo / ".edged" / "staging").rglob("*.part"))


def _refused(fleet, d, kind: str) -> dict:
    result = check(d)
    assert not result["ok"] and result["kind"] == kind, result
    st = status(d)
    assert st["last_check"]["kind"] == kind and st["last_check"]["refused"]
    assert serving(d) == "v1"
    assert not (fleet.repo / "m" / "v2").exists()
    assert "update refused" in d.log()
    return result


def test_an_unreachable_registry_is_refused_and_the_next_check_still_happens(fleet):
    from edged.testing import tflite_build as tb

    fleet.publish("v2", tb.random_classifier(seed=2))
    d = fleet.device("--set", "update.timeout_s=2")
    fleet.nginx.stop()
    _refused(fleet, d, "unreachable")
    fleet.nginx.start()
    result = check(d)
    assert result["ok"] and result["installed"] == ["m/v2"], result


def test_a_target_altered_after_signing_is_refused_and_nothing_placed(fleet):
    from edged.testing import tflite_build as tb

    fleet.publish("v2", tb.random_classifier(seed=2))
    stored = fleet.stored("m", "v2", "model.tflite")
    data = bytearray(stored.read_bytes())
    data[-1] ^= 0xFF  # same length, different bytes
    stored.write_bytes(bytes(data))
    d = fleet.device()
    result = _refused(fleet, d, "tampered")
    assert "hashes" in result["refused"]
    assert not list((fleet.repo / ".edged" / "staging").rglob("*model.tflite*"))


def test_an_expired_timestamp_is_refused(fleet):
    from edged.testing import tflite_build as tb

    fleet.publish("v2", tb.random_classifier(seed=2))
    fleet.registry("refresh", "--force", "--timestamp-expiry-days", "-1")
    d = fleet.device()
    assert "expired" in _refused(fleet, d, "expired")["refused"]


def test_replayed_old_metadata_is_refused(fleet):
    from edged.testing import tflite_build as tb

    old = (fleet.reg / "metadata" / "timestamp.json").read_bytes()
    fleet.publish("v2", tb.random_classifier(seed=2), rollout=0)
    d = fleet.device()
    assert check(d)["ok"]  # the device has seen the newer timestamp
    (fleet.reg / "metadata" / "timestamp.json").write_bytes(old)
    fleet.registry("rollout", "m", "v2", "100")  # a newer targets version the old timestamp hides
    (fleet.reg / "metadata" / "timestamp.json").write_bytes(old)
    _refused(fleet, d, "replayed")


def test_metadata_signed_by_an_untrusted_key_is_refused(fleet):
    from securesystemslib.signer import CryptoSigner
    from tuf.api.metadata import Metadata

    from edged.testing import tflite_build as tb

    fleet.publish("v2", tb.random_classifier(seed=2))
    path = fleet.reg / "metadata" / "timestamp.json"
    ts = Metadata.from_file(str(path))
    ts.signed.version += 1
    ts.signatures.clear()
    ts.sign(CryptoSigner.generate_ed25519())  # a key no root ever listed
    ts.to_file(str(path))
    d = fleet.device()
    _refused(fleet, d, "untrusted")


def test_withdraw_rolls_back_the_served_version_and_it_is_never_fetched_again(fleet):
    from edged.testing import tflite_build as tb

    fleet.publish("v2", tb.random_classifier(seed=2))
    d = fleet.device()
    assert check(d)["installed"] == ["m/v2"]
    wait_until(lambda: serving(d) == "v2", "v2 serving", daemon=d)
    fleet.registry("withdraw", "m", "v2")
    result = check(d)
    assert result["decisions"][0]["action"] == "withdraw" and result["decisions"][0]["target"] == "v1", result
    wait_until(lambda: serving(d) == "v1", "rolled back to v1", daemon=d)
    v2 = next(v for v in versions(d)["versions"] if v["version"] == "v2")
    assert v2["state"] == "bad" and "withdrawn" in v2["reason"]
    before = fleet.nginx.target_requests()
    shutil.rmtree(fleet.repo / "m" / "v2")
    again = check(d)
    assert again["ok"] and again["installed"] == [] and again["decisions"][0]["action"] == "none", again
    assert fleet.nginx.target_requests() == before, "a withdrawn version was fetched again"
    assert serving(d) == "v1"


def test_a_key_rotation_is_followed_without_touching_the_device(fleet):
    from edged.testing import tflite_build as tb

    d = fleet.device()
    assert check(d)["ok"]  # trusts root v1 from the file installed with it
    fleet.registry("rotate", "timestamp")
    fleet.registry("rotate", "root")
    fleet.publish("v2", tb.random_classifier(seed=2))
    result = check(d)
    assert result["ok"] and result["installed"] == ["m/v2"], result
    wait_until(lambda: serving(d) == "v2", "v2 serving", daemon=d)
    trusted = json.loads((fleet.repo / ".edged" / "update" / "tuf" / "root.json").read_text())
    assert trusted["signed"]["version"] == 3
    paths = [r["path"] for r in fleet.nginx.requests()]
    assert "/metadata/2.root.json" in paths and "/metadata/3.root.json" in paths


def test_a_version_that_fails_validation_is_not_downloaded_twice(fleet):
    from edged.testing import tflite_build as tb

    fleet.publish("v2", tb.random_classifier(seed=2, classes=5))  # valid, but another contract than v1's
    d = fleet.device()
    assert check(d)["installed"] == ["m/v2"]
    wait_until(lambda: next((v for v in versions(d)["versions"] if v["version"] == "v2"), {}).get("state")
               == "rejected", "v2 rejected", daemon=d)
    assert "m" in status(d)["failed"] and "v2" in status(d)["failed"]["m"]
    assert d.stop() == 0
    shutil.rmtree(fleet.repo / "m" / "v2")  # even with the directory gone and the daemon restarted
    d2 = fleet.device()
    result = check(d2)
    assert result["ok"] and result["installed"] == [], result
    assert "failed here" in result["decisions"][0]["available"][-1]["skipped"]
    model_gets = [r for r in fleet.nginx.target_requests() if "/v2/" in r["path"] and "model.tflite" in r["path"]]
    assert len(model_gets) == 1, model_gets
    assert serving(d2) == "v1"


def test_update_commands_say_when_updates_are_off(daemon):
    r = daemon.cli("ctl", "update", "status")
    assert r.returncode != 0 and "updates are off" in r.stderr


# -- strategies (#14): conditions hold an update back, a profile change pauses and resumes it ----------

def _pending(d) -> list[dict]:
    return status(d)["pending"]


def test_conditional_update_waits_while_the_battery_is_low_and_applies_on_ac(fleet, tmp_path):
    from edged.testing import tflite_build as tb

    power = tmp_path / "power.json"
    power.write_text(json.dumps({"battery_percent": 20, "on_ac": False}))
    fleet.publish("v2", tb.random_classifier(seed=2))
    d = fleet.device("--set", 'update.strategy="conditional"', "--set", "update.min_battery_percent=30",
                     "--set", "update.interval_s=86400", "--set", "update.recheck_s=1",
                     "--set", 'power.source="file"', "--set", f'power.file="{power}"',
                     "--set", "power.interval_s=0.2", "--set", "power.min_dwell_s=0")
    result = check(d)
    assert result["ok"] and result["installed"] == [] and result["decisions"][0]["action"] == "pending", result
    held = _pending(d)
    assert held and held[0]["version"] == "v2" and held[0]["held_by"] == "battery 20 % < 30 % and not on AC"
    assert "pending" in status(d)["next_check"]["why"]
    assert not (fleet.repo / "m" / "v2").exists()
    power.write_text(json.dumps({"battery_percent": 20, "on_ac": True}))
    wait_until(lambda: serving(d) == "v2", "v2 applied once on AC", daemon=d)


def test_a_download_paused_by_a_profile_change_resumes_when_it_allows_updates_again(fleet):
    from edged.testing import tflite_build as tb

    big = tb.random_classifier(seed=2, hidden=(1024,))
    fleet.publish("v2", big)
    fleet.nginx.restart(limit_rate="24k")
    d = fleet.device("--set", 'update.strategy="conditional"', "--set", "update.interval_s=86400",
                     "--set", "power.min_dwell_s=0")
    check(d, "--no-wait")
    wait_until(lambda: (status(d)["download"] or {}).get("bytes_done", 0) > 30_000, "a download under way",
               daemon=d)
    assert d.cli("ctl", "power", "--profile", "critical").returncode == 0  # allow_updates = false
    wait_until(lambda: _pending(d), "the download paused", daemon=d)
    assert _pending(d)[0]["held_by"] == "power profile critical does not allow updates"
    part = next((fleet.repo / ".edged" / "staging" / "m" / "v2").glob("*.part"))
    have = part.stat().st_size
    assert 0 < have < len(big) and not (fleet.repo / "m" / "v2").exists()
    fleet.nginx.restart()  # nothing in flight while paused
    assert d.cli("ctl", "power", "--profile", "performance").returncode == 0
    wait_until(lambda: serving(d) == "v2", "v2 serving after the resume", daemon=d)
    resumed = [r for r in fleet.nginx.target_requests() if r["path"].endswith(".model.tflite") and r["status"] == "206"]
    assert resumed and resumed[-1]["range"] == f"bytes={have}-", fleet.nginx.target_requests()


def test_adaptive_a_degraded_signal_shortens_the_next_check(fleet):
    import numpy as np

    d = fleet.device("--set", 'update.strategy="adaptive"', "--set", "update.interval_s=1000",
                     "--set", "update.min_interval_s=10", "--set", "update.max_interval_s=100000",
                     "--set", "update.jitter=0", "--set", "health.low_confidence=0.999",
                     "--set", "health.min_samples=20")
    assert status(d)["interval_s"] == 1000
    assert check(d)["ok"]  # no traffic yet: no signal, the interval backs off
    wait_until(lambda: status(d)["interval_s"] == 2000, "backed off to 2000 s", daemon=d)
    with d.client() as c:  # every answer is under the (strict) confidence threshold: a degraded signal
        for i in range(30):
            c.predict(np.random.default_rng(i).uniform(0, 16, (1, 8, 8, 1)).astype(np.float32))
    assert check(d)["ok"]
    wait_until(lambda: status(d)["interval_s"] == 1000, "the interval halved", daemon=d)
    why = status(d)["next_check"]["why"]
    assert "unhealthy" in why and "low-confidence share" in why, why
    assert 0 < status(d)["next_check"]["in_s"] <= 1000
