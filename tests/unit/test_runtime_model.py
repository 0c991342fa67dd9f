"""LoadedModel on the real runtime ($EDGED_RUNTIME): loading errors, input checks, top-k."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edged.errors import ErrorCode, ModelError, RequestError
from edged.runtime.model import LoadedModel, LoadSpec
from edged.testing import tflite_build as tb

pytestmark = pytest.mark.runtime


def version(tmp_path: Path, model: bytes, labels: list[str] | None = None) -> Path:
    d = tmp_path / "m" / "v1"
    d.mkdir(parents=True)
    (d / "model.tflite").write_bytes(model)
    return d


def load(backend, path: Path, **kw) -> LoadedModel:
    return LoadedModel.load(LoadSpec("m", "v1", path, backend, **kw))


def test_pool_runs_and_outputs_are_copies(backend, tmp_path):
    m = load(backend, version(tmp_path, tb.random_classifier(seed=1)), workers=2)
    x = np.ones((1, 8, 8, 1), np.float32)
    a = m.run([x]).outputs[0]
    b = m.run([x * 2]).outputs[0]
    assert a.shape == (1, 10) and not np.array_equal(a, b)
    np.testing.assert_array_equal(a, m.run([x]).outputs[0])  # a was not overwritten by later runs
    assert m.pool_size == 2 and m.delegate in ("xnnpack", "cpu")


def test_live_load_pauses_between_each_build_and_warm_up(backend, tmp_path):
    # A swap under load spaces out the GIL-holding allocate_tensors() calls.
    calls: list[int] = []
    m = LoadedModel.load(LoadSpec("m", "v1", version(tmp_path, tb.random_classifier(seed=1)), backend, workers=3),
                         pause=lambda: calls.append(1))
    assert len(calls) == 2 + 3  # between the 3 builds, then before each of the 3 warm-ups
    assert m.pool_size == 3 and m.run([np.ones((1, 8, 8, 1), np.float32)]).outputs[0].shape == (1, 10)


def test_input_checks_name_the_problem(backend, tmp_path):
    m = load(backend, version(tmp_path, tb.random_classifier(seed=1)))
    with pytest.raises(RequestError) as e:
        m.arrange([None], [np.zeros((1, 8, 8, 1), np.float64)])
    assert e.value.code is ErrorCode.BAD_DTYPE and "float32" in e.value.message
    with pytest.raises(RequestError) as e:
        m.arrange([None], [np.zeros((1, 64), np.float32)])
    assert e.value.code is ErrorCode.BAD_SHAPE and "[1, 8, 8, 1]" in e.value.message
    with pytest.raises(RequestError, match="no input named 'x'"):
        m.arrange(["x"], [np.zeros((1, 8, 8, 1), np.float32)])
    with pytest.raises(RequestError, match="takes 1 input"):
        m.arrange([None, None], [np.zeros((1, 8, 8, 1), np.float32)] * 2)


def test_top_k_uses_labels(backend, tmp_path):
    path = version(tmp_path, tb.random_classifier(seed=1))
    m = LoadedModel.load(LoadSpec("m", "v1", path, backend, labels=[f"c{i}" for i in range(10)]))
    out = m.run([np.ones((1, 8, 8, 1), np.float32)]).outputs
    top = m.top_k(out, 3)
    assert [t["index"] for t in top] == list(np.argsort(-out[0][0])[:3])
    assert top[0]["label"] == f"c{top[0]['index']}"


def test_missing_custom_op_is_a_clear_model_error(backend, tmp_path):
    with pytest.raises(ModelError, match=tb.MISSING_CUSTOM_OP):
        load(backend, version(tmp_path, tb.custom_op_model()))


def test_operator_version_newer_than_the_runtime_is_a_clear_error(backend, tmp_path):
    """FULLY_CONNECTED v12 (what a 2.2x converter emits): LiteRT has it, tflite-runtime 2.14 does not."""
    path = version(tmp_path, tb.random_classifier(seed=1, fc_version=tb.FC_VERSION_TOO_NEW))
    if backend.name == "tflite-runtime":
        with pytest.raises(ModelError) as e:
            load(backend, path)
        assert "operator version" in e.value.message and "tflite-runtime" in e.value.message
    else:
        m = load(backend, path)
        assert m.run([np.zeros((1, 8, 8, 1), np.float32)]).outputs[0].shape == (1, 10)


def test_min_runtime_in_manifest_refuses_an_older_runtime(backend):
    from edged.repository.check import check_min_runtime

    check_min_runtime({"min_runtime": {backend.name: "0.1"}}, backend.name, backend.version)
    with pytest.raises(ModelError, match=f"needs {backend.name} >= 99.0"):
        check_min_runtime({"min_runtime": {backend.name: "99.0"}}, backend.name, backend.version)


def test_unreadable_model_file(backend, tmp_path):
    with pytest.raises(ModelError, match="cannot read model"):
        load(backend, tmp_path)
    path = version(tmp_path, b"not a flatbuffer at all")
    with pytest.raises(ModelError, match="cannot load"):
        load(backend, path)


@pytest.mark.parametrize("need, running, ok", [
    ("2.16", "2.17rc1", True),  # a pre-release of 2.17 is newer than 2.16 (read as "2" before)
    ("2.17", "2.17rc1", False),  # ...and older than 2.17
    ("2.17", "2.17.0", True),
    ("2.14", "2.9.1", False),
    ("2.17.0rc2", "2.17.0rc10", True),
])
def test_min_runtime_compares_versions_like_pep_440(need, running, ok):
    from edged.repository.check import check_min_runtime

    if ok:
        check_min_runtime({"min_runtime": {"litert": need}}, "litert", running)
    else:
        with pytest.raises(ModelError, match=f"needs litert >= {need}"):
            check_min_runtime({"min_runtime": {"litert": need}}, "litert", running)


def test_manifest_refuses_a_min_runtime_that_is_not_a_version():
    from edged.repository.manifest import Manifest, ManifestError

    with pytest.raises(ManifestError, match="min_runtime.litert"):
        Manifest.from_dict({"format": 1, "name": "m", "version": "v1",
                            "files": {"model.tflite": {"sha256": "0" * 64, "size": 1}},
                            "min_runtime": {"litert": "latest"}})
