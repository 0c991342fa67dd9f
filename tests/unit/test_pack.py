"""``pack()`` in process: what a new version takes from the one it follows."""

from __future__ import annotations

from pathlib import Path

import pytest

from edged.repository.manifest import load_manifest
from edged.repository.pack import base_manifest, pack
from edged.testing import tflite_build as tb

PREP = {"color": "L", "mean": [0.0], "std": [15.9375], "invert": True}


@pytest.fixture
def repo_with_v1(tmp_path: Path, runtime: str) -> tuple[Path, Path]:
    model = tmp_path / "m.tflite"
    model.write_bytes(tb.random_classifier(seed=3))
    repo = tmp_path / "repo"
    pack(model, name="m", version="v1", repo=repo, preprocessing=PREP, runtime=runtime)
    return model, repo


@pytest.mark.runtime
def test_pack_takes_the_followed_versions_preprocessing_by_default(repo_with_v1, runtime: str) -> None:
    model, repo = repo_with_v1
    assert load_manifest(pack(model, name="m", version="v2", repo=repo, runtime=runtime)).preprocessing == PREP


@pytest.mark.runtime
def test_pack_takes_preprocessing_from_the_version_it_is_given(repo_with_v1, runtime: str) -> None:
    model, repo = repo_with_v1
    other = dict(PREP, invert=False)
    v2 = pack(model, name="m", version="v2", repo=repo, preprocessing=other, runtime=runtime)
    # v2 is now the highest, so "find" would pick it; an explicit v1 must win.
    v1 = ("v1", load_manifest(repo / "m" / "v1"))
    assert base_manifest(repo, "m") == ("v2", load_manifest(v2))
    v3 = pack(model, name="m", version="v3", repo=repo, inherit_from=v1, runtime=runtime)
    assert load_manifest(v3).preprocessing == PREP


@pytest.mark.runtime
def test_pack_inherit_from_none_takes_nothing(repo_with_v1, runtime: str) -> None:
    model, repo = repo_with_v1
    v2 = pack(model, name="m", version="v2", repo=repo, inherit_from=None, runtime=runtime)
    assert load_manifest(v2).preprocessing is None
