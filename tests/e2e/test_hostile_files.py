"""Files in the repository are data, never a way out (issue 11, item 6).

Files a manifest does not list were trusted: a ``model.tflite`` symlinked to a file
outside the repository was served, a symlinked ``labels.txt`` leaked its lines as
labels, and a ``labels.txt`` FIFO hung the swap thread for ever.  Each bad version
must now be refused with a reason, the old version keep serving, and later swaps
still happen.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from edged.testing import tflite_build as tb
from tests.e2e.repohelpers import GOLDEN, publish, state_of, versions, wait_until
from tests.e2e.test_repository import config

pytestmark = [pytest.mark.e2e, pytest.mark.runtime]

SECRET = "TOP-SECRET-LINE"


@pytest.fixture
def mrepo(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    publish(repo, "v1", tb.random_classifier(seed=1), tmp=tmp_path)
    return repo


def bare_version(repo: Path, version: str, seed: int) -> Path:
    """A version without a manifest: only what its files are."""
    vdir = repo / "m" / version
    vdir.mkdir()
    (vdir / "model.tflite").write_bytes(tb.random_classifier(seed=seed))
    return vdir


def refused(d, version: str) -> str:
    row = wait_until(lambda: (r := state_of(d, version))["state"] in ("rejected", "bad") and r,
                     f"{version} to be refused", daemon=d)
    return row["reason"]


def test_a_model_symlinked_out_of_the_repository_is_not_served(daemon_factory, mrepo, tmp_path):
    outside = tmp_path / "outside.tflite"
    outside.write_bytes(tb.random_classifier(seed=2))
    d = daemon_factory(mrepo, "--config", str(config(tmp_path)))
    vdir = mrepo / "m" / "v2"
    vdir.mkdir()
    (vdir / "model.tflite").symlink_to(outside)
    assert "symlink" in refused(d, "v2")
    with d.client() as c:
        assert c.predict(GOLDEN).version == "v1"


def test_labels_symlinked_out_of_the_repository_never_become_labels(daemon_factory, mrepo, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("\n".join([SECRET] * 10) + "\n")
    d = daemon_factory(mrepo, "--config", str(config(tmp_path)))
    vdir = bare_version(mrepo, "v2", seed=2)
    (vdir / "labels.txt").symlink_to(secret)
    assert "labels.txt" in (why := refused(d, "v2")) and "symlink" in why
    with d.client() as c:
        r = c.predict(GOLDEN, top_k=3)
    assert r.version == "v1" and SECRET not in str(r.top_k)


def test_a_fifo_never_blocks_the_swap_thread(daemon_factory, mrepo, tmp_path):
    d = daemon_factory(mrepo, "--config", str(config(tmp_path)))
    vdir = bare_version(mrepo, "v2", seed=2)
    os.mkfifo(vdir / "labels.txt")  # nobody ever writes to it: a read would wait for ever
    assert "FIFO" in refused(d, "v2")
    publish(mrepo, "v3", tb.random_classifier(seed=3), tmp=tmp_path)  # a later swap still happens
    with d.client() as c:
        wait_until(lambda: c.predict(GOLDEN).version == "v3", "v3 to serve", daemon=d)
    assert versions(d)["serving"] == "v3"


def test_a_listed_file_replaced_by_a_fifo_is_refused(daemon_factory, mrepo, tmp_path):
    d = daemon_factory(mrepo, "--config", str(config(tmp_path)))
    staged = publish(tmp_path / "staging", "v2", tb.random_classifier(seed=2), tmp=tmp_path)
    (staged / "model.tflite").unlink()
    os.mkfifo(staged / "model.tflite")
    os.rename(staged, mrepo / "m" / "v2")
    assert "FIFO" in refused(d, "v2")
    with d.client() as c:
        assert c.predict(np.zeros((1, 8, 8, 1), np.float32)).version == "v1"


def encoded(fmt: str) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (16, 16), 200).save(buf, format=fmt)
    return buf.getvalue()


def test_images_decode_only_in_the_configured_formats(daemon_factory, repo):
    from edged.errors import RequestError

    d = daemon_factory(repo)
    with d.client() as c:
        for fmt in ("JPEG", "PNG"):
            assert c.predict_image(encoded(fmt)).model == "digits"
        for fmt in ("GIF", "BMP", "TIFF", "ICO"):
            with pytest.raises(RequestError, match="accepted format") as info:
                c.predict_image(encoded(fmt))
            assert info.value.code.value == "BAD_IMAGE"
        eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 16 16\nshowpage\n%%EOF\n"
        with pytest.raises(RequestError, match="accepted format"):  # never handed to Ghostscript
            c.predict_image(eps)
    assert d.stop() == 0
    gif = daemon_factory(repo, "--set", 'server.image_formats=["GIF"]')
    with gif.client() as c:
        assert c.predict_image(encoded("GIF")).model == "digits"
        with pytest.raises(RequestError, match=r"accepted format \(GIF"):
            c.predict_image(encoded("PNG"))
