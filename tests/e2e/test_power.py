"""Power profiles with a real daemon and a `file` sensor source in a temp dir."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edged.errors import Throttled
from edged.power.sensors import PI_THROTTLED_PATH as PI_THROTTLED
from edged.testing import tflite_build as tb
from tests.conftest import runtime_choice
from tests.e2e.repohelpers import GOLDEN, publish, versions, wait_until
from tests.e2e.test_repository import DARK, local

pytestmark = [pytest.mark.e2e]

SAMPLE_S = 0.2


def power_config(tmp_path: Path, sensor: Path | None, extra: str = "", source: str = "") -> Path:
    """A config sampling ``sensor`` (a JSON file) every SAMPLE_S; or ``source``'s lines instead."""
    p = tmp_path / "edged.toml"
    source = source or f'source = "file"\nfile = "{sensor}"'
    p.write_text(f"""
[repository]
settle_s = 0.2
[repository.probation]
seconds = 3600
requests = 1000000
[power]
{source}
interval_s = {SAMPLE_S}
min_dwell_s = 0
{extra}
""")
    return p


def write_sensor(path: Path, **reading) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(reading))
    tmp.replace(path)  # atomic, as a UPS driver should write it


def power(d) -> dict:
    r = d.cli("ctl", "power", "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


@pytest.fixture
def lite_repo(tmp_path: Path) -> Path:
    """m/v1 with a lite variant of the same contract (a different model, so answers differ)."""
    repo = tmp_path / "repo"
    full = tmp_path / "full.tflite"
    full.write_bytes(tb.random_classifier(seed=1, hidden=(32,)))
    lite = tmp_path / "lite.tflite"
    lite.write_bytes(tb.random_classifier(seed=11))
    from edged.repository.pack import pack

    pack(full, name="m", version="v1", repo=repo, lite=lite, runtime=runtime_choice())
    return repo


def test_battery_file_moves_the_profile_and_lite_variant_follows(daemon_factory, lite_repo, tmp_path):
    sensor = tmp_path / "ups.json"
    write_sensor(sensor, battery_percent=90, on_ac=True)
    d = daemon_factory(lite_repo, "--config", str(power_config(tmp_path, sensor)))
    assert power(d)["profile"] == "performance"
    full_out = local(lite_repo, "v1").run([DARK]).outputs[0].tobytes()
    with d.client() as c:
        r = c.predict(DARK)
        assert (r.profile, r.header["variant"]) == ("performance", "full")
        assert r.outputs[0].tobytes() == full_out

        write_sensor(sensor, battery_percent=20, on_ac=False)
        # Two sampling periods, generously bounded for a loaded CI box.
        wait_until(lambda: power(d)["profile"] == "powersave", "powersave", timeout=30, daemon=d)
        status = power(d)
        assert "battery_percent" in status["reason"] and status["reading"]["battery_percent"] == 20
        wait_until(lambda: c.predict(DARK, retry_throttled=20).header["variant"] == "lite", "lite variant", daemon=d)
        r = c.predict(DARK, retry_throttled=20)
        assert r.profile == "powersave"
        assert r.outputs[0].tobytes() != full_out  # the lite model computed it

        write_sensor(sensor, battery_percent=95, on_ac=True)
        wait_until(lambda: power(d)["profile"] == "performance", "performance again", timeout=30, daemon=d)
        wait_until(lambda: c.predict(DARK).header["variant"] == "full", "full variant", daemon=d)
        assert c.predict(DARK).outputs[0].tobytes() == full_out


def test_overload_in_powersave_throttles_normal_but_serves_high(daemon_factory, lite_repo, tmp_path):
    sensor = tmp_path / "ups.json"
    write_sensor(sensor, battery_percent=20, on_ac=False)
    d = daemon_factory(lite_repo, "--config", str(power_config(tmp_path, sensor)))
    assert power(d)["profile"] == "powersave"
    throttled, ok = [], 0
    with d.client() as c:
        for _ in range(60):
            try:
                c.predict(DARK)
                ok += 1
            except Throttled as exc:
                throttled.append(exc.retry_after_ms)
        for _ in range(10):  # high priority is served even now
            assert c.predict(DARK, priority="high").profile == "powersave"
        with pytest.raises(Throttled) as info:
            c.predict(DARK, priority="low")  # below powersave's min_priority: shed
        assert info.value.retry_after_ms > 0
    assert throttled and ok >= 1
    # max_rps is 10/s in powersave: a refused request should retry within ~100 ms, never 0 or minutes.
    assert all(1 <= ms <= 1000 for ms in throttled), throttled
    stats = json.loads(d.cli("ctl", "stats", "--json").stdout)
    m = stats["models"][0]
    assert m["throttled"] >= len(throttled) and m["shed"] >= 1


def test_queued_request_waits_instead_of_failing_when_allowed(daemon_factory, lite_repo, tmp_path):
    sensor = tmp_path / "ups.json"
    write_sensor(sensor, battery_percent=20, on_ac=False)
    d = daemon_factory(lite_repo, "--config", str(power_config(tmp_path, sensor)))
    with d.client() as c:
        for _ in range(15):  # over the 10/s budget, but every one is answered
            head, frames = c.call("predict", [DARK], inputs=[{"dtype": "float32", "shape": [1, 8, 8, 1]}], wait=True)
            assert head["ok"] and len(frames) == 1
        for _ in range(15):  # the same through the client's keyword
            assert c.predict(DARK, wait=True).profile == "powersave"
        with pytest.raises(Throttled):  # and without it, the budget is spent: refused at once
            for _ in range(30):
                c.predict(DARK)
    npy = tmp_path / "dark.npy"
    np.save(npy, DARK)
    for _ in range(3):
        r = d.cli("predict", "--wait", "--json", str(npy))
        assert r.returncode == 0, r.stderr


def test_expired_deadlines_are_not_computed(daemon_factory, tmp_path):
    import zmq

    repo = tmp_path / "repo"
    publish(repo, "v1", tb.slow_model(), tmp=tmp_path)
    d = daemon_factory(repo, "--workers", "1")
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(d.endpoint)
    header = {"v": 1, "op": "predict", "inputs": [{"dtype": "float32", "shape": [1, 8, 8, 1]}]}
    # 20 slow jobs (~30 ms each) ahead of one with a 1 ms budget on the single worker:
    # by the time the worker reaches it, its deadline is long gone.
    for i in range(20):
        sock.send_multipart([json.dumps({**header, "id": i}).encode(), DARK.tobytes()])
    sock.send_multipart([json.dumps({**header, "id": "late", "deadline_ms": 1}).encode(), DARK.tobytes()])
    replies = {}
    while len(replies) < 21 and sock.poll(60_000):
        head = json.loads(sock.recv_multipart()[0])
        replies[head["id"]] = head
    sock.close()
    assert replies["late"]["ok"] is False and replies["late"]["error"]["code"] == "DEADLINE_EXCEEDED"
    assert all(replies[i]["ok"] for i in range(20))
    with d.control() as ctl:
        m = ctl.stats()["stats"]["models"][0]
    assert m["shed"] == 1
    assert m["requests"] == 20, "the late request was not computed"


def test_ctl_power_override_for_a_while_and_auto(daemon_factory, lite_repo, tmp_path):
    sensor = tmp_path / "ups.json"
    write_sensor(sensor, battery_percent=90, on_ac=True)
    d = daemon_factory(lite_repo, "--config", str(power_config(tmp_path, sensor)))
    r = d.cli("ctl", "power", "--profile", "critical", "--for", "10m", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["profile"] == "critical" and out["policy"]["override"]["profile"] == "critical"
    with d.client() as c:
        assert c.predict(DARK, priority="high").profile == "critical"
    r = d.cli("ctl", "power", "--auto", "--json")
    assert json.loads(r.stdout)["profile"] == "performance"
    r = d.cli("ctl", "power")
    assert r.returncode == 0 and r.stdout.startswith("profile performance")
    assert d.cli("ctl", "power", "--profile", "turbo").returncode == 2  # argparse: not a profile


def test_updates_are_deferred_while_the_profile_forbids_them(daemon_factory, lite_repo, tmp_path):
    sensor = tmp_path / "ups.json"
    write_sensor(sensor, battery_percent=5, on_ac=False)
    d = daemon_factory(lite_repo, "--config", str(power_config(tmp_path, sensor)))
    assert power(d)["profile"] == "critical"
    publish(lite_repo, "v2", tb.random_classifier(seed=2, hidden=(32,)), tmp=tmp_path)
    wait_until(lambda: any(v["version"] == "v2" and "deferred" in v["reason"] for v in versions(d)["versions"]),
               "v2 deferred", daemon=d)
    with d.client() as c:
        assert c.predict(DARK, priority="high").version == "v1"
        write_sensor(sensor, battery_percent=95, on_ac=True)
        wait_until(lambda: c.predict(DARK, priority="high").version == "v2", "v2 after the profile allows it",
                   daemon=d)


def test_throttled_is_typed_and_retry_is_opt_in(daemon_factory, lite_repo, tmp_path):
    sensor = tmp_path / "ups.json"
    write_sensor(sensor, battery_percent=5, on_ac=False)  # critical: 2 rps, a bucket of 2
    d = daemon_factory(lite_repo, "--config", str(power_config(tmp_path, sensor)))

    def throttled() -> int:
        with d.control() as ctl:
            return ctl.stats()["stats"]["models"][0]["throttled"]

    with d.client() as c:
        # Without opt-in the client does not retry: over the budget, the typed error comes back.
        with pytest.raises(Throttled) as info:
            for _ in range(50):  # the bucket empties within a few calls however slow the machine
                c.predict(DARK)
        assert info.value.code.value == "THROTTLED" and 1 <= info.value.retry_after_ms <= 1000
        assert info.value.details.get("profile") == "critical"
        # Opted in, the same overload is served: a refusal is waited out and retried.  Each
        # refusal is counted, and every call here succeeds, so a counted one was a retried one.
        before = throttled()
        for _ in range(50):
            r = c.predict(DARK, retry_throttled=50)
            assert r.version == "v1" and np.isfinite(r.outputs[0]).all()
            if throttled() > before:
                break
        else:
            pytest.fail("no opted-in request was refused and then served")


def test_broken_lite_file_is_refused_in_a_child_and_the_full_model_keeps_serving(daemon_factory, lite_repo,
                                                                                   tmp_path):
    # v1 starts without child validation (it is what serves); its lite file is garbage
    # whose hash the manifest records, as a bad publish by other means would be.
    from edged.repository.manifest import file_entry, load_manifest, write_manifest

    vdir = lite_repo / "m" / "v1"
    (vdir / "model_lite.tflite").write_bytes(b"\0" * 64)
    manifest = load_manifest(vdir)
    manifest.files["model_lite.tflite"] = file_entry(vdir / "model_lite.tflite")
    write_manifest(vdir, manifest)
    sensor = tmp_path / "ups.json"
    write_sensor(sensor, battery_percent=90, on_ac=True)
    d = daemon_factory(lite_repo, "--config", str(power_config(tmp_path, sensor)))
    full_out = local(lite_repo, "v1").run([DARK]).outputs[0].tobytes()
    assert d.cli("ctl", "power", "--profile", "powersave", "--for", "10m").returncode == 0
    wait_until(lambda: "lite_rejected" in versions(d)["versions"][0], "lite variant rejected", daemon=d)
    row = versions(d)["versions"][0]
    assert row["state"] in ("serving", "probation") and row["lite_rejected"].startswith("model_lite.tflite: ")
    with d.client() as c:
        r = c.predict(DARK, priority="high")
        assert (r.version, r.header["variant"], r.profile) == ("v1", "full", "powersave")
        assert r.outputs[0].tobytes() == full_out
    assert "not switching to model_lite.tflite" in d.log()


def write_node(path: Path, value: str) -> None:
    """Write one sysfs-like attribute file atomically (a reader never sees it half written)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(value + "\n")
    tmp.replace(path)


def fake_sysfs(root: Path, *, capacity: int, discharging: bool, cpu_temp_c: float | None = None,
               throttled: str | None = None) -> None:
    """A battery, a mains supply, a CPU thermal zone and the Pi firmware's throttle mask under ``root``."""
    supplies = root / "class" / "power_supply"
    write_node(supplies / "BAT0" / "type", "Battery")
    write_node(supplies / "BAT0" / "capacity", str(capacity))
    write_node(supplies / "BAT0" / "status", "Discharging" if discharging else "Charging")
    write_node(supplies / "AC" / "type", "Mains")
    write_node(supplies / "AC" / "online", "0" if discharging else "1")
    if cpu_temp_c is not None:
        zone = root / "class" / "thermal" / "thermal_zone0"
        write_node(zone / "type", "cpu-thermal")
        write_node(zone / "temp", str(int(cpu_temp_c * 1000)))  # millidegrees, as the kernel writes it
    if throttled is not None:
        write_node(root / PI_THROTTLED, throttled)


def test_sysfs_source_reads_a_battery_mains_and_thermal_zone_and_drives_the_profile(daemon_factory, repo,
                                                                                     tmp_path):
    root = tmp_path / "sys"
    fake_sysfs(root, capacity=90, discharging=False, cpu_temp_c=45.0)
    d = daemon_factory(repo, "--config", str(power_config(tmp_path, None, source=f'source = "sysfs"\n'
                                                                                     f'sysfs_root = "{root}"')))
    status = power(d)
    reading = status["reading"]
    assert (status["profile"], status["source"], reading["source"]) == ("performance", "sysfs", "sysfs")
    assert (reading["battery_percent"], reading["on_ac"], reading["temperature_c"]) == (90.0, True, 45.0)

    fake_sysfs(root, capacity=20, discharging=True, cpu_temp_c=45.0)  # unplugged, and low
    wait_until(lambda: power(d)["profile"] == "powersave", "powersave on a low battery", timeout=30, daemon=d)
    reading = power(d)["reading"]
    assert (reading["battery_percent"], reading["on_ac"]) == (20.0, False)

    fake_sysfs(root, capacity=20, discharging=True, cpu_temp_c=85.0)  # and now hot
    wait_until(lambda: power(d)["profile"] == "critical", "critical when hot", timeout=30, daemon=d)
    assert "temperature_c" in power(d)["reason"]
    with d.client() as c:
        assert c.predict(GOLDEN, priority="high").profile == "critical"


def test_psutil_source_reads_this_machine_and_the_throttle_mask_and_drives_the_profile(daemon_factory, repo,
                                                                                        tmp_path):
    # The rules use what psutil reads on any Linux box (CPU load is always >= 0) and the
    # firmware throttle mask it reads from sysfs_root; battery and temperature sensors
    # are machine-dependent (this container has neither), so they are not relied on.
    root = tmp_path / "sys"
    fake_sysfs(root, capacity=90, discharging=False, throttled="0x0")
    rules = """
[[power.rules]]
when = "cpu_percent >= 0"
profile = "balanced"
[[power.rules]]
when = "throttled"
profile = "critical"
"""
    d = daemon_factory(repo, "--config", str(power_config(tmp_path, None, rules, source=f'source = "psutil"\n'
                                                                                         f'sysfs_root = "{root}"')))
    # The first CPU sample has nothing to compare with (unknown); from the second on it is a figure.
    wait_until(lambda: power(d)["profile"] == "balanced", "balanced once the CPU load is known", timeout=30,
               daemon=d)
    reading = power(d)["reading"]
    assert reading["source"] == "psutil" and 0.0 <= reading["cpu_percent"] <= 100.0
    assert len(reading["load_avg"]) == 3 and all(x >= 0 for x in reading["load_avg"])
    assert reading["throttled"]["under_voltage"] is False

    write_node(root / PI_THROTTLED, "0x50005")  # under-voltage and throttled now (and since boot)
    wait_until(lambda: power(d)["profile"] == "critical", "critical when throttled", timeout=30, daemon=d)
    reading = power(d)["reading"]
    assert reading["throttled"]["under_voltage"] is True and reading["throttled"]["under_voltage_occurred"] is True
    write_node(root / PI_THROTTLED, "0x50000")  # only "occurred" bits left: not throttled now
    wait_until(lambda: power(d)["profile"] == "balanced", "balanced again", timeout=30, daemon=d)


def test_a_profiles_num_threads_applies_to_interpreters_built_under_it(daemon_factory, repo, tmp_path):
    sensor = tmp_path / "ups.json"
    write_sensor(sensor, battery_percent=90, on_ac=True)
    # Two threads per interpreter, and no solo interpreter (solo_threads = num_threads), so the
    # threads a reply names are the pool's; balanced runs on one thread.
    extra = "[power.profiles.balanced]\nnum_threads = 1\n"
    cfg = power_config(tmp_path, sensor, extra)
    cfg.write_text(cfg.read_text() + "[runtime]\nnum_threads = 2\nsolo_threads = 2\n")
    d = daemon_factory(repo, "--config", str(cfg))
    src = repo / "digits" / "v1" / "model.tflite"

    def publish_digits(version: str) -> None:
        from edged.repository.pack import pack

        pack(src, name="digits", version=version, repo=repo, runtime=runtime_choice())

    with d.client() as c:
        r = c.predict(GOLDEN)
        assert (r.version, r.header["threads"], r.profile) == ("v1", 2, "performance")
        assert d.cli("ctl", "power", "--profile", "balanced", "--for", "10m").returncode == 0
        # Interpreters already built keep their threads until the next build ...
        assert c.predict(GOLDEN).header["threads"] == 2
        publish_digits("v2")  # ... such as the swap to a new version
        wait_until(lambda: c.predict(GOLDEN).version == "v2", "v2 to serve", daemon=d)
        r = c.predict(GOLDEN)
        assert (r.header["threads"], r.profile) == (1, "balanced")
        assert power(d)["limits"]["num_threads"] == 1
        status = json.loads(d.cli("ctl", "status", "--json").stdout)
        assert status["models"][0]["num_threads"] == 1
        # Back to a profile without a cap: the runtime's setting for what is built next.
        assert d.cli("ctl", "power", "--auto").returncode == 0
        publish_digits("v3")
        wait_until(lambda: c.predict(GOLDEN).version == "v3", "v3 to serve", daemon=d)
        assert c.predict(GOLDEN).header["threads"] == 2
