"""The model preparation pipeline (scripts/prepare_model.py), end to end on ``--quick`` epochs.

Needs TensorFlow (``pip install -e '.[tools]'``); skipped without it.  One
module-scoped run trains, converts and publishes v1…v6 into a temporary
repository (~30 s on 2 cores); the tests check properties of what came out.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

# Before TensorFlow is imported (the script sets the same): tfmot needs Keras 2 (tf_keras).
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
pytest.importorskip("tensorflow", reason="tensorflow not installed (pip install -e '.[tools]')")
pytest.importorskip("tensorflow_model_optimization", reason="tensorflow not installed (pip install -e '.[tools]')")

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "prepare_model.py"
VERSIONS = ["v1", "v2", "v3", "v4", "v5", "v6"]


def _load_script() -> Any:
    spec = importlib.util.spec_from_file_location("prepare_model", SCRIPT)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


pm = _load_script()


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    repo = tmp_path_factory.mktemp("zoo")
    variants, facts = pm.build_variants(0, dict(pm.QUICK_EPOCHS), log=lambda *_: None)
    pm.publish(variants, facts, repo=repo, name="digits", seed=0, command="python scripts/prepare_model.py --quick",
               epochs=dict(pm.QUICK_EPOCHS), log=lambda *_: None)
    return {"repo": repo, "variants": {v.version: v for v in variants}, "facts": facts}


def manifest(run: dict[str, Any], version: str) -> dict[str, Any]:
    return json.loads((run["repo"] / "digits" / version / "manifest.json").read_text())


def test_publishes_six_versions_of_one_model(run):
    assert sorted(p.name for p in (run["repo"] / "digits").iterdir()) == VERSIONS
    techniques = [manifest(run, v)["technique"] for v in VERSIONS]
    assert techniques == ["float32", "dynamic-range", "int8-uint8io", "float16", "pruned-int8", "distilled-int8"]


def test_int8_is_at_least_3x_smaller_than_float32(run):
    size = {v: (run["repo"] / "digits" / v / "model.tflite").stat().st_size for v in VERSIONS}
    for v in ("v3", "v5", "v6"):
        assert size[v] * 3 <= size["v1"], (v, size)
    lite = (run["repo"] / "digits" / "v1" / "model_lite.tflite").stat().st_size
    assert lite * 3 <= size["v1"]
    assert size["v4"] < size["v1"] * 0.6  # float16 weights: about half


def test_pruned_weights_reach_target_sparsity(run):
    facts = run["facts"]
    assert facts["pruned_sparsity"] >= pm.TARGET_SPARSITY - 0.01
    for name, kernel in facts["pruned_kernels"].items():
        assert float((kernel == 0).mean()) >= pm.TARGET_SPARSITY - 0.01, name
    recorded = manifest(run, "v5")["sparsity"]
    assert recorded["target"] == pm.TARGET_SPARSITY and recorded["achieved"] >= pm.TARGET_SPARSITY - 0.01


def test_every_variant_is_within_the_accuracy_bound_of_the_baseline(run):
    _, _, x_test, y_test = run["facts"]["split"]
    baseline = pm.evaluate(run["variants"]["v1"].data, x_test, y_test)
    assert baseline >= 0.95
    for v in VERSIONS:
        acc = manifest(run, v)["accuracy"]
        assert acc["source_model"]["value"] == round(baseline, 4)
        # Recorded accuracy is what the .tflite scores with the daemon's runtime, not Keras.
        assert acc["value"] == round(pm.evaluate(run["variants"][v].data, x_test, y_test), 4)
        assert abs(acc["value"] - baseline) <= pm.ACCURACY_BOUND, (v, acc)


def test_same_seed_gives_the_same_split_and_accuracies(run):
    # The determinism: re-running with the same seed on the same machine reproduces
    # the data split and every variant's accuracy to the reported precision (4 decimals).
    again, facts = pm.build_variants(0, dict(pm.QUICK_EPOCHS), log=lambda *_: None)
    for first, second in zip(run["facts"]["split"], facts["split"]):
        assert np.array_equal(first, second)
    _, _, x_test, y_test = facts["split"]
    for v in again:
        assert round(pm.evaluate(v.data, x_test, y_test), 4) == manifest(run, v.version)["accuracy"]["value"], v.version


def test_manifests_validate_and_record_provenance(run):
    from edged.repository.check import check_min_runtime, run_checks

    for v in VERSIONS:
        path = run["repo"] / "digits" / v
        report = run_checks(path)
        assert report["ok"] and report["golden"] and report["samples"] == pm.GOLDEN
        m = manifest(run, v)
        assert m["created_by"]["command"] == "python scripts/prepare_model.py --quick"
        assert m["created_by"]["seed"] == 0
        assert m["size_bytes"] == (path / "model.tflite").stat().st_size
        assert m["technique"] and m["notes"]
        # min_runtime is set exactly when the converter needs a runtime newer than tflite-runtime 2.14.
        need = m["converter_min_runtime_version"]
        if pm._vkey(need) > pm._vkey(pm.TFLITE_RUNTIME_LATEST):
            assert m["min_runtime"] == {"tflite-runtime": ".".join(need.split(".")[:2])}
            with pytest.raises(Exception, match=r"needs tflite-runtime >= .*runs tflite-runtime 2\.14\.0"):
                check_min_runtime(m, "tflite-runtime", "2.14.0")
        else:
            assert m["min_runtime"] is None
            check_min_runtime(m, "tflite-runtime", "2.14.0")
    # The dynamic-range converter emits FULLY_CONNECTED v12, which tflite-runtime 2.14 lacks.
    assert "FULLY_CONNECTED/v12" in manifest(run, "v2")["ops"]
    assert manifest(run, "v2")["min_runtime"] is not None


def test_interfaces_and_lite_contracts(run):
    float_contract = manifest(run, "v1")["contract"]
    for v in VERSIONS:
        c = manifest(run, v)["contract"]
        dtypes = [t["dtype"] for t in c["inputs"] + c["outputs"]]
        assert dtypes == (["uint8", "uint8"] if v == "v3" else ["float32", "float32"]), v
        assert [t["shape"] for t in c["inputs"] + c["outputs"]] == [[1, 8, 8, 1], [1, 10]]
    for v in ("v1", "v4"):
        it = pm.interpreter((run["repo"] / "digits" / v / "model_lite.tflite").read_bytes())
        lite = [(np.dtype(d["dtype"]).name, list(d["shape"])) for d in
                it.get_input_details() + it.get_output_details()]
        assert lite == [(t["dtype"], t["shape"]) for t in float_contract["inputs"] + float_contract["outputs"]]


@pytest.mark.e2e
def test_each_version_served_by_a_real_daemon_matches_the_interpreter(run, daemon_factory, tmp_path):
    _, _, x_test, _ = run["facts"]["split"]
    served = tmp_path / "repo"  # a copy: the daemon writes its swap state into <repo>/.edged/
    shutil.copytree(run["repo"], served)
    d = daemon_factory(served)
    with d.client() as c, d.control(timeout=60) as ctl:
        for v in VERSIONS:
            ctl.call("swap", model="digits", version=v, force=True)
            data = (run["repo"] / "digits" / v / "model.tflite").read_bytes()
            it = pm.interpreter(data)
            xs = pm.to_input(it, x_test[:16])
            atol = manifest(run, v)["golden"][0]["atol"]
            for x in xs:
                it.set_tensor(it.get_input_details()[0]["index"], x[None])
                it.invoke()
                want = it.get_tensor(it.get_output_details()[0]["index"])
                r = c.predict(x[None], model="digits")
                assert r.version == v
                assert r.outputs[0].dtype == want.dtype and r.outputs[0].shape == want.shape
                np.testing.assert_allclose(r.outputs[0].astype(np.float64), want.astype(np.float64), atol=atol,
                                           rtol=0)


@pytest.mark.e2e
def test_report_writes_table_and_plot(run, tmp_path):
    md = pm.report(run["repo"], "digits", tmp_path)
    text = md.read_text()
    for v in VERSIONS:
        assert f"| {v} | " in text
    assert "python scripts/prepare_model.py --report" in text
    png = tmp_path / "models_accuracy_vs_size.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_refuses_to_overwrite_and_writes_the_bench_model(run, tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--repo", str(run["repo"]), "--quick"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "immutable" in proc.stderr
    bench = tmp_path / "bench.tflite"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--bench-model", str(bench)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    d = pm.interpreter(bench.read_bytes()).get_input_details()[0]
    assert list(d["shape"]) == [1, 224, 224, 3] and np.dtype(d["dtype"]) == np.uint8
