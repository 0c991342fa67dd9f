"""edged.fsafe: regular files of a version only, no links, bounded time (issue 11, item 6)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from edged import fsafe
from edged.errors import ModelError


def test_reads_a_regular_file_and_a_nested_one(tmp_path: Path):
    (tmp_path / "a.txt").write_bytes(b"abc")
    (tmp_path / "golden").mkdir()
    (tmp_path / "golden" / "0.npy").write_bytes(b"xyz")
    assert fsafe.read_bytes(tmp_path, "a.txt") == b"abc"
    assert fsafe.read_bytes(tmp_path, "golden/0.npy") == b"xyz"
    assert fsafe.hash_file(tmp_path, "a.txt") == (3, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")


@pytest.mark.parametrize("make, why", [
    (lambda d: (d / "f").symlink_to(d / "real"), "symlink"),
    (lambda d: (d / "f").symlink_to("/etc/hostname"), "symlink"),
    (lambda d: os.mkfifo(d / "f"), "FIFO"),
    (lambda d: (d / "f").mkdir(), "directory"),
])
def test_refuses_links_fifos_and_directories(tmp_path: Path, make, why):
    (tmp_path / "real").write_bytes(b"data")
    make(tmp_path)
    with pytest.raises(ModelError, match=why):
        fsafe.read_bytes(tmp_path, "f")


def test_refuses_a_linked_directory_and_paths_that_climb(tmp_path: Path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "x.npy").write_bytes(b"secret")
    vdir = tmp_path / "v1"
    vdir.mkdir()
    (vdir / "golden").symlink_to(outside)
    with pytest.raises(ModelError, match="symlink"):
        fsafe.read_bytes(vdir, "golden/x.npy")
    for rel in ("../outside/x.npy", "/etc/hostname", "./a", "a//b"):
        with pytest.raises(ModelError, match="plain relative path"):
            fsafe.read_bytes(vdir, rel)


def test_size_cap_and_missing_file(tmp_path: Path):
    (tmp_path / "big").write_bytes(b"x" * 11)
    with pytest.raises(ModelError, match="over 10 bytes"):
        fsafe.read_bytes(tmp_path, "big", max_bytes=10)
    with pytest.raises(FileNotFoundError):
        fsafe.read_bytes(tmp_path, "none")


def test_a_read_that_never_returns_is_abandoned_at_the_time_limit():
    release = threading.Event()
    try:
        with pytest.raises(ModelError, match="no answer from the filesystem"):
            fsafe.run_limited(lambda: release.wait(60), 0.05, "stuck.txt")
    finally:
        release.set()  # let the abandoned helper thread end


def test_errors_inside_the_helper_reach_the_caller():
    def boom() -> None:
        raise OSError(5, "Input/output error")

    with pytest.raises(OSError, match="Input/output"):
        fsafe.run_limited(boom, 5, "x")
