"""validate_in_child turns a crashing, hanging or silent child into a clear refusal."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from edged.errors import ErrorCode, ModelError, RetryableError
from edged.repository import check


def fake_interpreter(tmp_path: Path, body: str) -> str:
    """A stand-in for ``sys.executable`` that does ``body`` instead of validating."""
    script = tmp_path / "python"
    script.write_text("#!/bin/sh\n" + body + "\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return str(script)


@pytest.mark.parametrize(
    ("body", "timeout", "message"),
    [
        ("kill -SEGV $$", 60, "validation crashed the runtime (signal 11)"),
        ('echo "Fatal Python error: Aborted" >&2; kill -ABRT $$', 60, "Fatal Python error: Aborted"),
        ("exec sleep 600", 1, "validation hung: no result within 1s"),
        ("echo not-json; exit 3", 60, "validation exited 3 without a report"),
        ('echo \'{"ok": false, "error": "golden sample 0 output 0 differs"}\'; exit 1', 60,
         "golden sample 0 output 0 differs"),
    ],
    ids=["segfault", "abort", "hang", "garbage", "reported-failure"],
)
def test_child_failures_are_refusals_with_a_reason(tmp_path, monkeypatch, body, timeout, message):
    monkeypatch.setattr(check.sys, "executable", fake_interpreter(tmp_path, body))
    with pytest.raises(ModelError) as info:
        check.validate_in_child(tmp_path, runtime="auto", delegate="auto", timeout=timeout)
    assert message in info.value.message
    assert info.value.code is ErrorCode.VALIDATION_FAILED


def test_child_report_is_returned(tmp_path, monkeypatch):
    monkeypatch.setattr(check.sys, "executable",
                        fake_interpreter(tmp_path, 'echo "loading..."; echo \'{"ok": true, "samples": 2}\''))
    assert check.validate_in_child(tmp_path, runtime="auto", delegate="auto", timeout=60) == {"ok": True,
                                                                                           "samples": 2}


def test_child_runs_at_lowest_priority_with_one_blas_thread(tmp_path, monkeypatch):
    # Serving must win the CPU over validation on a 2-core board.  The parent renices the
    # child just after spawning it, so the child looks until it sees that (bounded).
    monkeypatch.setattr(check.sys, "executable", fake_interpreter(
        tmp_path, 'for i in $(seq 500); do n=$(cut -d" " -f19 /proc/self/stat); [ "$n" -ge 19 ] && break; '
                  'sleep 0.01; done; echo "{\\"ok\\": true, \\"nice\\": $n, \\"blas\\": \\"$OPENBLAS_NUM_THREADS\\"}"'))
    report = check.validate_in_child(tmp_path, runtime="auto", delegate="auto", timeout=60)
    assert report == {"ok": True, "nice": check.VALIDATION_NICE, "blas": "1"}


def test_run_delay_is_read_from_a_proc_tree(tmp_path):
    (tmp_path / "123").mkdir()
    (tmp_path / "123" / "schedstat").write_text("150000000 21500000000 42\n")
    assert check.run_delay_s(123, proc=tmp_path) == 21.5
    assert check.run_delay_s(124, proc=tmp_path) is None  # gone, or no schedstat (non-Linux)


@pytest.mark.parametrize(("waited", "starved"), [(0.9, True), (0.5, True), (0.1, False), (None, False)])
def test_a_child_that_timed_out_waiting_for_a_cpu_is_retried_not_rejected(tmp_path, monkeypatch, waited, starved):
    # A sleeping child has waited for no CPU: that is a hang, the version's fault.  One that
    # spent most of the limit runnable but not running was starved by serving load.
    monkeypatch.setattr(check.sys, "executable", fake_interpreter(tmp_path, "exec sleep 600"))
    monkeypatch.setattr(check, "run_delay_s", lambda pid: waited)
    with pytest.raises(ModelError if not starved else check.ValidationStarved) as info:
        check.validate_in_child(tmp_path, runtime="auto", delegate="auto", timeout=1)
    assert info.value.code is ErrorCode.VALIDATION_FAILED
    if starved:
        assert isinstance(info.value, RetryableError) and "too busy" in info.value.message
    else:
        assert "validation hung" in info.value.message
