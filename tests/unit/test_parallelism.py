"""Parallelism by load: defaults from the machine, the solo interpreter, and when a request is alone."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edged import config
from edged.runtime.model import LoadedModel, LoadSpec
from edged.server.scheduler import Scheduler
from edged.testing import tflite_build as tb

GB = 2**30


def derived(cores: int, memory: int | None, **overrides) -> config.Config:
    cfg = config.Config()
    for dotted, value in overrides.items():
        section, key = dotted.split("__")
        setattr(getattr(cfg, section), key, value)
    config.derive_parallelism(cfg, cores, memory)
    return cfg


@pytest.mark.parametrize(("cores", "memory", "workers", "solo"), [
    (1, 1 * GB, 1, 1),      # one core: one worker, no solo interpreter (solo_threads 1 = none)
    (2, 1 * GB, 2, 2),
    (4, 8 * GB, 4, 4),
    (4, 256 * 2**20, 2, 4),  # a small board: one worker per 128 MB
    (64, None, config.MAX_AUTO_WORKERS, config.MAX_AUTO_SOLO_THREADS),
])
def test_auto_parallelism_follows_the_machine(cores, memory, workers, solo):
    cfg = derived(cores, memory)
    assert (cfg.server.workers, cfg.runtime.solo_threads) == (workers, solo)
    assert cfg.parallelism["chosen"] == {"server.workers": "auto", "runtime.solo_threads": "auto"}
    assert cfg.parallelism["cores"] == cores


def test_explicit_parallelism_wins_over_the_machine():
    cfg = derived(8, 16 * GB, server__workers=3, runtime__solo_threads=1)
    assert (cfg.server.workers, cfg.runtime.solo_threads) == (3, 1)
    assert cfg.parallelism["chosen"] == {"server.workers": "config", "runtime.solo_threads": "config"}


def test_load_derives_and_rejects_negative_values(tmp_path):
    p = tmp_path / "edged.toml"
    p.write_text("[server]\nworkers = 0\n[runtime]\nsolo_threads = 3\n")
    cfg = config.load(p)
    assert cfg.server.workers >= 1 and cfg.runtime.solo_threads == 3
    p.write_text("[runtime]\nsolo_threads = -1\n")
    with pytest.raises(config.ConfigError, match="runtime.solo_threads"):
        config.load(p)


def test_alone_means_one_job_taken_and_none_waiting():
    s = Scheduler(queue_size=10)
    assert s.alone()
    s.submit("a")
    assert not s.alone()  # queued, not yet taken
    assert s.get(0) == "a"
    assert s.alone()  # the one running job is alone
    s.submit("b")
    assert not s.alone()
    assert s.get(1) == "b"
    assert not s.alone()  # two running side by side
    s.done()
    assert s.alone()


def test_a_job_run_inline_counts_as_taken_until_done():
    s = Scheduler(queue_size=10, workers=2)
    assert s.take_if_idle()
    assert (s.active, s.idle(), s.alone()) == (1, False, True)
    s.submit("b")
    assert not s.alone()  # a request queued behind it goes to a worker, not solo
    assert s.get(1) == "b"
    s.done(0.001)
    s.done(0.001)
    assert s.idle() and s.service_s < 0.05


def test_idle_means_nothing_taken_and_nothing_queued_under_any_bound():
    # The main loop's inline check: a job it takes now would run alone.
    s = Scheduler(queue_size=10, workers=2)
    assert s.idle()
    s.submit("a")
    assert not s.idle()  # queued: it would run beside the caller's
    assert not s.take_if_idle() and s.active == 0  # so the caller does not take one
    assert s.get(0) == "a"
    assert s.alone() and not s.idle()  # the taken one is alone; a second one would not be
    s.done()
    assert s.idle()
    s.set_max_active(1)  # the tightest bound a power profile sets
    assert s.idle()
    assert s.take_if_idle()
    assert not s.idle() and not s.take_if_idle()  # taken: a second one is not alone
    s.done()
    assert s.idle()


def version(tmp_path: Path) -> Path:
    d = tmp_path / "m" / "v1"
    d.mkdir(parents=True)
    (d / "model.tflite").write_bytes(tb.random_classifier(seed=1))
    return d


@pytest.mark.runtime
def test_solo_interpreter_runs_a_request_alone_and_gives_the_same_answer(backend, tmp_path):
    m = LoadedModel.load(LoadSpec("m", "v1", version(tmp_path), backend, workers=2, num_threads=1, solo_threads=2))
    x = np.ones((1, 8, 8, 1), np.float32)
    pooled, solo = m.run([x]), m.run([x], alone=True)
    assert (pooled.threads, solo.threads, m.solo_threads, m.pool_size) == (1, 2, 2, 2)
    np.testing.assert_allclose(solo.outputs[0], pooled.outputs[0], rtol=1e-5, atol=1e-6)
    assert m.describe()["solo_threads"] == 2


@pytest.mark.runtime
def test_a_live_load_adds_the_solo_interpreter_after_and_a_kept_version_drops_it(backend, tmp_path):
    spec = LoadSpec("m", "v1", version(tmp_path), backend, workers=2, num_threads=1, solo_threads=2)
    m = LoadedModel.load(spec, with_solo=False)  # a swap: two pools at once, never two solo interpreters
    x = np.ones((1, 8, 8, 1), np.float32)
    assert (m.solo_threads, m.run([x], alone=True).threads) == (0, 1)
    pauses = []
    assert m.add_solo(lambda: pauses.append(1)) and pauses == [1]
    assert (m.solo_threads, m.run([x], alone=True).threads) == (2, 2)
    assert not m.add_solo()  # already there
    m.drop_solo()  # kept for rollback only
    assert (m.solo_threads, m.run([x], alone=True).threads, m.describe()["solo_threads"]) == (0, 1, 0)
    with pytest.raises(AttributeError):  # derived from the solo interpreter: nothing to keep in step by hand
        m.solo_threads = 2  # type: ignore[misc]
    one = LoadedModel.load(LoadSpec("m", "v1", spec.path, backend, num_threads=2, solo_threads=2), with_solo=False)
    assert not one.add_solo() and one.solo_threads == 0  # not wanted: no more threads than the pool's


@pytest.mark.runtime
def test_a_busy_solo_interpreter_sends_the_request_to_the_pool(backend, tmp_path):
    m = LoadedModel.load(LoadSpec("m", "v1", version(tmp_path), backend, workers=1, num_threads=1, solo_threads=2))
    with m._solo_lock:  # another request holds it
        assert m.run([np.ones((1, 8, 8, 1), np.float32)], alone=True).threads == 1


@pytest.mark.runtime
@pytest.mark.parametrize(("num_threads", "solo_threads"), [(1, 1), (2, 2), (0, 4)])
def test_no_solo_interpreter_unless_it_has_more_threads(backend, tmp_path, num_threads, solo_threads):
    m = LoadedModel.load(LoadSpec("m", "v1", version(tmp_path), backend, num_threads=num_threads,
                                  solo_threads=solo_threads))
    r = m.run([np.ones((1, 8, 8, 1), np.float32)], alone=True)
    assert m.solo_threads == 0 and r.threads == num_threads


def cgroup(tmp_path: Path, proc: str, files: dict[str, str]) -> tuple[Path, Path]:
    root = tmp_path / "cgroup"
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    (tmp_path / "proc_cgroup").write_text(proc)
    return root, tmp_path / "proc_cgroup"


def test_a_cgroup_v2_quota_and_memory_limit_narrow_the_machine(tmp_path):
    root, proc = cgroup(tmp_path, "0::/system.slice/edged.service\n",
                        {"system.slice/edged.service/cpu.max": "100000 100000\n",
                         "system.slice/edged.service/memory.max": "268435456\n"})
    assert config.machine(root, proc) == (1, 256 * 2**20)
    cfg = derived(*config.machine(root, proc))
    assert (cfg.server.workers, cfg.runtime.solo_threads) == (1, 1)  # one core: no solo interpreter


def test_a_cgroup_v1_quota_rounds_up_and_no_limit_means_the_board(tmp_path):
    root, proc = cgroup(tmp_path, "4:memory:/box\n1:cpu,cpuacct:/box\n",
                        {"cpu/box/cpu.cfs_quota_us": "50000\n", "cpu/box/cpu.cfs_period_us": "100000\n",
                         "memory/box/memory.limit_in_bytes": "9223372036854771712\n"})
    assert config._cgroup_limits(root, proc) == (0.5, None)
    assert config.machine(root, proc)[0] == 1
    root, proc = cgroup(tmp_path / "none", "0::/\n", {"cpu.max": "max 100000\n", "memory.max": "max\n"})
    assert config._cgroup_limits(root, proc) == (None, None)
    assert config._cgroup_limits(tmp_path / "missing", tmp_path / "missing") == (None, None)

