"""Hot swap, validation, probation and rollback against a real daemon."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import threading
from pathlib import Path

import numpy as np
import psutil
import pytest

from edged.errors import EdgedError, ErrorCode
from edged.runtime.backends import select_backend
from edged.runtime.model import LoadedModel, LoadSpec
from edged.testing import tflite_build as tb
from tests.conftest import runtime_choice
from tests.e2e.repohelpers import (
    GLARING, GOLDEN, fails_on_glaring_inputs, nan_on_dark_inputs, publish, publish_unloadable, state_of, versions,
    wait_until,
)

pytestmark = [pytest.mark.e2e, pytest.mark.runtime]

DARK = np.zeros((1, 8, 8, 1), np.float32)


def config(tmp_path: Path, **probation) -> Path:
    p = tmp_path / "edged.toml"
    prob = {"seconds": 3600, "requests": 1_000_000, **probation}
    p.write_text("[repository]\nsettle_s = 0.2\nvalidation_timeout_s = 60\n[repository.probation]\n"
                 + "".join(f"{k} = {json.dumps(v)}\n" for k, v in prob.items()))
    return p


def local(repo: Path, version: str, name: str = "m") -> LoadedModel:
    backend = select_backend(runtime_choice())
    return LoadedModel.load(LoadSpec(name, version, repo / name / version, backend, workers=1))


def test_auto_swap_on_publish(daemon_factory, mrepo, tmp_path):
    d = daemon_factory(mrepo, "--config", str(config(tmp_path)))
    with d.client() as c:
        assert c.predict(DARK).version == "v1"
        publish(mrepo, "v2", tb.random_classifier(seed=2), tmp=tmp_path)
        wait_until(lambda: c.predict(DARK).version == "v2", "v2 to serve", daemon=d)
        r = c.predict(DARK)
    assert r.outputs[0].tobytes() == local(mrepo, "v2").run([DARK]).outputs[0].tobytes()
    assert state_of(d, "v2")["state"] == "probation"
    assert os.readlink(mrepo / "m" / "current") == "v2"


def test_manual_activation_and_ctl_swap_pin_unpin(daemon_factory, mrepo, tmp_path):
    cfg = config(tmp_path)
    cfg.write_text(cfg.read_text() + '[repository.models.m]\nactivation = "manual"\n')
    d = daemon_factory(mrepo, "--config", str(cfg))
    publish(mrepo, "v2", tb.random_classifier(seed=2), tmp=tmp_path)
    wait_until(lambda: state_of(d, "v2")["state"] == "available", "v2 to be seen", daemon=d)
    with d.client() as c:
        assert c.predict(DARK).version == "v1"  # manual: nothing happens on its own
        r = d.cli("ctl", "swap", "v2", "--json")
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["version"] == "v2"
        assert c.predict(DARK).version == "v2"
        r = d.cli("ctl", "pin", "v1")
        assert r.returncode == 0, r.stderr
        assert c.predict(DARK).version == "v1" and versions(d)["pinned"] == "v1"
        assert d.cli("ctl", "unpin").returncode == 0
        assert versions(d)["pinned"] is None
    r = d.cli("ctl", "swap", "../../etc")
    assert r.returncode == 3 and "invalid version name" in r.stderr
    r = d.cli("ctl", "swap", "v9")
    assert r.returncode == 4


def test_swap_under_load_drops_nothing_and_never_goes_backwards(daemon_factory, mrepo, tmp_path):
    d = daemon_factory(mrepo, "--config", str(config(tmp_path)))
    stop = threading.Event()
    seen: dict[int, list[str]] = {i: [] for i in range(3)}
    failures: list[BaseException] = []

    def client_loop(i: int) -> None:
        with d.client() as c:
            for _ in range(100_000):
                if stop.is_set():
                    return
                try:
                    seen[i].append(c.predict(DARK).version)
                except BaseException as exc:  # noqa: BLE001 - any failure fails the test
                    failures.append(exc)
                    return

    threads = [threading.Thread(target=client_loop, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    try:
        wait_until(lambda: all(seen.values()), "clients to start", daemon=d)
        for version, seed in (("v2", 2), ("v3", 3)):
            publish(mrepo, version, tb.random_classifier(seed=seed), tmp=tmp_path)
            wait_until(lambda v=version: all(s and s[-1] == v for s in seen.values()) or failures,
                       f"{version} seen by every client", daemon=d)
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert not failures, failures
    for s in seen.values():
        numbers = [int(v[1:]) for v in s]
        assert numbers == sorted(numbers), f"a client saw a version go backwards\n{d.log()}"
        assert numbers[-1] == 3


def test_bad_candidates_are_refused_with_reasons_while_the_old_version_serves(daemon_factory, mrepo, tmp_path):
    d = daemon_factory(mrepo, "--config", str(config(tmp_path)))
    truncated = publish(mrepo, "v2", tb.random_classifier(seed=2), tmp=tmp_path)
    data = (truncated / "model.tflite").read_bytes()
    # Truncate: simulate a copy cut short after the manifest was written.
    (truncated / "model.tflite").write_bytes(data[: len(data) // 2])
    mismatch = publish(mrepo, "v3", tb.random_classifier(seed=3), tmp=tmp_path)
    raw = bytearray((mismatch / "model.tflite").read_bytes())
    raw[-1] ^= 0xFF
    (mismatch / "model.tflite").write_bytes(bytes(raw))
    publish_unloadable(mrepo, "v4", tb.custom_op_model())
    publish(mrepo, "v5", tb.nan_model(), tmp=tmp_path, golden=False)
    with d.client() as c:
        expected = {
            "v2": "truncated", "v3": "sha256 mismatch", "v4": tb.MISSING_CUSTOM_OP, "v5": "non-finite",
        }
        for version, reason in sorted(expected.items()):
            r = d.cli("ctl", "swap", version)
            assert r.returncode == 6, (version, r.stdout, r.stderr)
            assert reason in r.stderr, (version, r.stderr)
            assert state_of(d, version)["state"] == "rejected"
            assert reason in state_of(d, version)["reason"]
            assert c.predict(DARK).version == "v1"
        # A changed contract needs --force.
        publish(mrepo, "v6", tb.random_classifier(seed=6, classes=5), tmp=tmp_path)
        r = d.cli("ctl", "swap", "v6")
        assert r.returncode == 6 and "CONTRACT_CHANGED" in r.stderr
        assert c.predict(DARK).version == "v1"
        r = d.cli("ctl", "swap", "v6", "--force")
        assert r.returncode == 0, r.stderr
        assert c.predict(DARK).outputs[0].shape == (1, 5)


def test_nan_version_is_rolled_back_by_probation_and_marked_bad(daemon_factory, mrepo, tmp_path):
    d = daemon_factory(mrepo, "--config", str(config(tmp_path, requests=20, max_nonfinite_rate=0.0)))
    publish(mrepo, "v2", nan_on_dark_inputs(), tmp=tmp_path)
    with d.client() as c:
        wait_until(lambda: c.predict(GOLDEN).version == "v2", "v2 to serve", daemon=d)
        for _ in range(25):
            c.predict(DARK)  # NaN answers: the caller still gets them, probation counts them
        wait_until(lambda: c.predict(GOLDEN).version == "v1", "rollback to v1", daemon=d)
    v2 = state_of(d, "v2")
    assert v2["state"] == "bad" and "non-finite" in v2["reason"]
    # Bad stays bad across a restart, and auto-activation does not take it again.
    assert d.stop() == 0
    d2 = daemon_factory(mrepo, "--config", str(config(tmp_path)))
    with d2.client() as c:
        assert c.predict(GOLDEN).version == "v1"
    assert state_of(d2, "v2")["state"] == "bad"
    assert d2.cli("ctl", "unmark", "v2").returncode == 0
    with d2.client() as c:
        wait_until(lambda: c.predict(GOLDEN).version == "v2", "v2 again after unmark", daemon=d2)


def test_failing_version_is_rolled_back_by_its_error_rate(daemon_factory, mrepo, tmp_path):
    d = daemon_factory(mrepo, "--config", str(config(tmp_path, requests=20, max_error_rate=0.2)))
    publish(mrepo, "v2", fails_on_glaring_inputs(), tmp=tmp_path)
    with d.client() as c:
        wait_until(lambda: c.predict(GOLDEN).version == "v2", "v2 to serve", daemon=d)
        failed = 0
        for _ in range(25):
            try:
                c.predict(GLARING)
            except EdgedError as exc:  # the model's failure, answered with a code, not a made-up value
                assert exc.code is ErrorCode.INTERNAL, exc
                failed += 1
        wait_until(lambda: c.predict(GOLDEN).version == "v1", "rollback to v1", daemon=d)
    assert failed >= 5
    v2 = state_of(d, "v2")
    assert v2["state"] == "bad" and "error rate" in v2["reason"], v2
    with d.client() as c:
        assert c.predict(GLARING).version == "v1"  # the daemon serves on, with the version that can


def test_slow_version_is_rolled_back_by_probation(daemon_factory, mrepo, tmp_path):
    d = daemon_factory(mrepo, "--config", str(config(tmp_path, requests=20, max_p95_ratio=3.0)))
    with d.client() as c:
        for _ in range(50):
            c.predict(DARK)  # the baseline p95 of v1
        publish(mrepo, "v2", tb.slow_model(), tmp=tmp_path)
        wait_until(lambda: c.predict(DARK).version == "v2", "v2 to serve", daemon=d)
        wait_until(lambda: c.predict(DARK).version == "v1", "rollback to v1", daemon=d, timeout=120)
    assert "p95" in state_of(d, "v2")["reason"]


def test_probation_commits_a_good_version(daemon_factory, mrepo, tmp_path):
    d = daemon_factory(mrepo, "--config", str(config(tmp_path, seconds=0, requests=10)))
    publish(mrepo, "v2", tb.random_classifier(seed=2), tmp=tmp_path)
    with d.client() as c:
        wait_until(lambda: c.predict(DARK).version == "v2", "v2 to serve", daemon=d)
        for _ in range(10):
            c.predict(DARK)
    wait_until(lambda: versions(d)["committed"] == "v2", "v2 committed", daemon=d)
    assert state_of(d, "v2")["state"] == "serving"


def test_rollback_command(daemon_factory, mrepo, tmp_path):
    d = daemon_factory(mrepo, "--config", str(config(tmp_path)))
    publish(mrepo, "v2", tb.random_classifier(seed=2), tmp=tmp_path)
    with d.client() as c:
        wait_until(lambda: c.predict(DARK).version == "v2", "v2 to serve", daemon=d)
        r = d.cli("ctl", "rollback", "--json")
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["version"] == "v1"
        assert c.predict(DARK).version == "v1"
    assert state_of(d, "v2")["state"] == "bad"


def test_deleting_or_overwriting_active_files_does_not_break_serving(daemon_factory, mrepo, tmp_path):
    d = daemon_factory(mrepo, "--config", str(config(tmp_path)))
    with d.client() as c:
        before = c.predict(DARK).outputs[0].tobytes()
        (mrepo / "m" / "v1" / "model.tflite").write_bytes(tb.random_classifier(seed=99))  # overwrite in place
        assert c.predict(DARK).outputs[0].tobytes() == before
        (mrepo / "m" / "v1" / "model.tflite").unlink()
        for _ in range(20):
            assert c.predict(DARK).outputs[0].tobytes() == before


def test_hand_made_version_waits_for_settle_then_serves(daemon_factory, mrepo, tmp_path):
    d = daemon_factory(mrepo, "--config", str(config(tmp_path)))
    vdir = mrepo / "m" / "v2"
    vdir.mkdir()
    (vdir / "model.tflite").write_bytes(tb.random_classifier(seed=2))
    hidden = mrepo / "m" / ".v3"
    hidden.mkdir()
    (hidden / "model.tflite").write_bytes(tb.random_classifier(seed=3))
    with d.client() as c:
        wait_until(lambda: c.predict(DARK).version == "v2", "hand-made v2 to serve", daemon=d)
    assert ".v3" not in [v["version"] for v in versions(d)["versions"]]


def iterations(default: int) -> int:
    return int(os.environ.get("EDGED_KILL_ITERATIONS", default))


def test_kill_9_during_probation_falls_back_to_committed(daemon_factory, mrepo, tmp_path):
    cfg = config(tmp_path)
    d = daemon_factory(mrepo, "--config", str(cfg))
    publish(mrepo, "v2", tb.random_classifier(seed=2), tmp=tmp_path)
    with d.client() as c:
        wait_until(lambda: c.predict(DARK).version == "v2", "v2 on probation", daemon=d)
    d.proc.send_signal(signal.SIGKILL)
    d.proc.wait(30)
    d2 = daemon_factory(mrepo, "--config", str(cfg))
    with d2.client() as c:
        assert c.predict(DARK).version == "v1"
    v2 = state_of(d2, "v2")
    assert v2["state"] == "bad" and "probation" in v2["reason"]
    assert os.readlink(mrepo / "m" / "current") == "v1"


def test_kill_9_at_many_points_of_a_swap_always_restarts_on_a_valid_version(daemon_factory, mrepo, tmp_path):
    cfg = config(tmp_path)
    # The restarted daemon must not move on its own (auto-activation of a version that
    # was published but never tried), so what it serves is exactly what recovery chose.
    frozen = tmp_path / "frozen.toml"
    frozen.write_text(cfg.read_text() + '[repository.models.m]\nactivation = "manual"\n')
    rng = random.Random(1234)
    expected = {"v1": local(mrepo, "v1").run([DARK]).outputs[0].tobytes()}
    for i in range(iterations(50)):
        version = f"v{i + 2}"
        d = daemon_factory(mrepo, "--config", str(cfg))
        publish(mrepo, version, tb.random_classifier(seed=100 + i), tmp=tmp_path)
        expected[version] = local(mrepo, version).run([DARK]).outputs[0].tobytes()
        # Kill somewhere between "just published" and "swapped and on probation".
        delay = rng.uniform(0.0, 2.0)
        try:
            rc = d.proc.wait(delay)
        except subprocess.TimeoutExpired:
            pass  # still running, as intended
        else:
            pytest.fail(f"iteration {i}: the daemon exited ({rc}) before it was killed:\n{d.log()}")
        d.proc.send_signal(signal.SIGKILL)
        d.proc.wait(30)
        d.kill()
        d2 = daemon_factory(mrepo, "--config", str(frozen))
        with d2.client() as c:
            r = c.predict(DARK)
        assert r.outputs[0].tobytes() == expected[r.version], f"iteration {i}: wrong answer for {r.version}"
        state = versions(d2)
        assert state["serving"] == r.version and (mrepo / "m" / r.version / "manifest.json").exists()
        assert os.readlink(mrepo / "m" / "current") == r.version
        assert d2.stop() == 0


def test_many_swaps_do_not_grow_memory(daemon_factory, mrepo, tmp_path):
    cfg = config(tmp_path)
    cfg.write_text(cfg.read_text() + '[repository.models.m]\nactivation = "manual"\n')
    publish(mrepo, "v2", tb.random_classifier(seed=2), tmp=tmp_path)
    d = daemon_factory(mrepo, "--config", str(cfg), "--workers", "1")
    proc = psutil.Process(d.proc.pid)
    n = int(os.environ.get("EDGED_SWAP_ITERATIONS", 100))
    rss = []
    with d.control(timeout=120) as ctl, d.client() as c:
        for i in range(n):
            target = "v1" if i % 2 == 0 else "v2"
            head, _ = ctl.call("swap", version=target)
            assert head["version"] == target
            assert c.predict(DARK).version == target
            if i == 9:
                rss.append(proc.memory_info().rss)
        rss.append(proc.memory_info().rss)
    growth = rss[-1] - rss[0]
    assert growth < 16 * 1024 * 1024, f"RSS grew {growth / 1e6:.1f} MB over {n - 10} swaps"


def test_pin_holds_a_version_and_unpin_lets_auto_activation_resume(daemon_factory, mrepo, tmp_path):
    d = daemon_factory(mrepo, "--config", str(config(tmp_path)))
    assert d.cli("ctl", "pin", "v1").returncode == 0
    publish(mrepo, "v2", tb.random_classifier(seed=2), tmp=tmp_path)
    wait_until(lambda: state_of(d, "v2")["state"] == "available", "v2 to be seen", daemon=d)
    with d.client() as c:
        assert c.predict(DARK).version == "v1"  # auto, but pinned
        assert d.cli("ctl", "unpin").returncode == 0
        wait_until(lambda: c.predict(DARK).version == "v2", "auto-activation of v2 after unpin", daemon=d)


def test_unsettled_hand_made_version_is_reported_incomplete_and_never_loaded(daemon_factory, mrepo, tmp_path):
    cfg = config(tmp_path)
    cfg.write_text(cfg.read_text().replace("settle_s = 0.2", "settle_s = 3600"))
    d = daemon_factory(mrepo, "--config", str(cfg))
    vdir = mrepo / "m" / "v2"
    vdir.mkdir()
    (vdir / "model.tflite").write_bytes(tb.random_classifier(seed=2)[:100])  # still being copied
    wait_until(lambda: "v2" in [v["version"] for v in versions(d)["versions"]], "v2 to be listed", daemon=d)
    row = state_of(d, "v2")
    assert row["state"] == "incomplete" and "no manifest" in row["reason"]
    with d.client() as c:
        assert c.predict(DARK).version == "v1"


def test_keep_previous_keeps_the_old_version_loaded_for_rollback(daemon_factory, mrepo, tmp_path):
    cfg = config(tmp_path)
    cfg.write_text(cfg.read_text().replace("[repository]\n", "[repository]\nkeep_previous = true\n"))
    d = daemon_factory(mrepo, "--config", str(cfg), "--workers", "2", "--set", "runtime.solo_threads=2")
    publish(mrepo, "v2", tb.random_classifier(seed=2), tmp=tmp_path)
    with d.client() as c:
        # The new version gets its solo interpreter right after the switch (the kept one gives its up).
        wait_until(lambda: (lambda r: (r.version, r.header["threads"]))(c.predict(DARK)) == ("v2", 2),
                   "v2 to serve, solo", daemon=d)
        assert state_of(d, "v1")["state"] == "previous"
        r = d.cli("ctl", "rollback", "--json")
        assert r.returncode == 0, r.stderr
        # The rollback's reply comes once v1 serves with a solo interpreter again.
        back = c.predict(DARK)
        assert (back.version, back.header["threads"]) == ("v1", 2)


@pytest.mark.parametrize("how", ["SIGTERM", "ctl quit"])
def test_a_clean_stop_during_probation_is_not_a_crash(daemon_factory, mrepo, tmp_path, how):
    # tries = 1 (the default): one unclean end marks the version bad; a clean one must not.
    cfg = config(tmp_path)
    d = daemon_factory(mrepo, "--config", str(cfg))
    publish(mrepo, "v2", tb.random_classifier(seed=2), tmp=tmp_path)
    with d.client() as c:
        wait_until(lambda: c.predict(DARK).version == "v2", "v2 on probation", daemon=d)
    if how == "SIGTERM":  # systemctl stop/restart, a reboot
        assert d.stop() == 0
    else:
        assert d.cli("ctl", "quit").returncode == 0
        assert d.stop(sig=None) == 0
    d2 = daemon_factory(mrepo, "--config", str(cfg))
    with d2.client() as c:
        assert c.predict(DARK).version == "v2"
    assert state_of(d2, "v2")["state"] == "probation"
    assert "resuming probation after a clean stop" in d2.log()
    # The clean-stop record is used up by the restart: a crash now still counts.
    d2.proc.kill()
    d2.proc.wait(30)
    d3 = daemon_factory(mrepo, "--config", str(cfg))
    with d3.client() as c:
        assert c.predict(DARK).version == "v1"
    assert state_of(d3, "v2")["state"] == "bad"


def test_a_probation_that_sees_no_traffic_ends_by_time(daemon_factory, mrepo, tmp_path):
    d = daemon_factory(mrepo, "--config", str(config(tmp_path, seconds=0, max_seconds=1)))
    publish(mrepo, "v2", tb.random_classifier(seed=2), tmp=tmp_path)
    wait_until(lambda: state_of(d, "v2")["state"] == "serving" and versions(d)["committed"] == "v2",
               "v2 committed without traffic", daemon=d)
    assert "committed" in d.log() and "max_seconds" in d.log()
