"""Fixtures shared by the end-to-end tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from edged.testing import tflite_build as tb
from tests.e2e.repohelpers import publish


@pytest.fixture
def mrepo(tmp_path: Path) -> Path:
    """A repository with one model ``m`` at ``v1`` (a softmax classifier, golden samples)."""
    repo = tmp_path / "repo"
    publish(repo, "v1", tb.random_classifier(seed=1), tmp=tmp_path)
    return repo
