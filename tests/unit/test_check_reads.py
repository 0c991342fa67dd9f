"""Golden files that cannot be read are refusals that name the file, never a stray exception."""

from __future__ import annotations

import errno
from pathlib import Path

import numpy as np
import pytest

from edged import fsafe
from edged.errors import ErrorCode, ModelError
from edged.repository import check


READERS = [(check._load_npy, "golden sample"), (check.read_golden_image, "golden image")]


def _refusal(fn, *args) -> str:
    with pytest.raises(ModelError) as info:
        fn(*args)
    assert info.value.code is ErrorCode.VALIDATION_FAILED
    return info.value.message


@pytest.mark.parametrize(("read", "what"), READERS)
def test_missing_and_unreadable_golden_files_say_which_and_why(tmp_path: Path, monkeypatch, read, what) -> None:
    assert _refusal(read, tmp_path, "golden/0.x") == f"golden/0.x: {what} missing"

    def denied(*_a, **_kw):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(fsafe, "read_bytes", denied)
    assert _refusal(read, tmp_path, "golden/0.x") == f"golden/0.x: {what} not readable (Permission denied)"


@pytest.mark.parametrize("read", [r for r, _ in READERS])
def test_a_linked_golden_file_is_refused_by_fsafe_as_it_is(tmp_path: Path, read) -> None:
    (tmp_path / "real").write_bytes(b"x")
    (tmp_path / "link").symlink_to(tmp_path / "real")
    assert _refusal(read, tmp_path, "link").startswith("link: is a symlink")


@pytest.mark.parametrize("content", [b"", b"junk", b"\x93NUMPY"], ids=["empty", "junk", "truncated"])
def test_a_golden_sample_that_is_not_npy_is_a_refusal(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "0.input.npy").write_bytes(content)
    assert _refusal(check._load_npy, tmp_path, "0.input.npy").startswith("0.input.npy: not a readable .npy file (")


def test_a_good_golden_sample_loads(tmp_path: Path) -> None:
    np.save(tmp_path / "0.input.npy", np.arange(4, dtype=np.float32))
    assert check._load_npy(tmp_path, "0.input.npy").tolist() == [0.0, 1.0, 2.0, 3.0]


@pytest.mark.parametrize(("read", "what"), READERS)
def test_a_path_the_os_cannot_take_is_a_refusal(tmp_path: Path, read, what) -> None:
    # The manifest refuses such names first; the reader must not raise ValueError either.
    assert _refusal(read, tmp_path, "in\x00.npy").startswith(f"in\x00.npy: {what} not readable (")


def test_an_npz_archive_named_npy_is_a_refusal(tmp_path: Path) -> None:
    with open(tmp_path / "0.input.npy", "wb") as f:
        np.savez(f, x=np.arange(4))
    assert _refusal(check._load_npy, tmp_path, "0.input.npy") == "0.input.npy: an .npz archive, not a .npy array"
