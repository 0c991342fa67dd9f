"""scripts/install.sh and uninstall.sh, staged into a temporary DESTDIR.

Most cases skip pip (EDGED_SKIP_PIP=1) so they take seconds; one case runs the
real `pip install` of this repository into the staged venv (about 20 s).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]
INSTALL = ROOT / "scripts" / "install.sh"
UNINSTALL = ROOT / "scripts" / "uninstall.sh"

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="bash not available")


def _run(script: Path, dest: Path, *args: str, env: dict[str, str] | None = None) -> str:
    full_env = {**os.environ, "DESTDIR": str(dest), "PYTHON": sys.executable, **(env or {})}
    proc = subprocess.run(["bash", str(script), *args], env=full_env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def _tree(dest: Path) -> dict[str, tuple[int, int, str]]:
    """path -> (mode, mtime_ns, content hash or link target), for every entry."""
    out = {}
    for p in sorted(dest.rglob("*")):
        st = p.lstat()
        if stat.S_ISLNK(st.st_mode):
            what = "-> " + os.readlink(p)
        elif stat.S_ISREG(st.st_mode):
            what = hashlib.sha256(p.read_bytes()).hexdigest()
        else:
            what = "dir"
        out[str(p.relative_to(dest))] = (st.st_mode, st.st_mtime_ns, what)
    return out


@pytest.fixture
def seed(tmp_path: Path) -> Path:
    s = tmp_path / "seed"
    (s / "digits" / "v1").mkdir(parents=True)
    (s / "digits" / "v1" / "model.tflite").write_bytes(b"TFL3 not really")
    (s / "digits" / "v1" / "manifest.json").write_text("{}")
    (s / "digits" / "current").symlink_to("v1")
    return s


def test_install_tree_idempotent_and_uninstall(tmp_path: Path, seed: Path) -> None:
    dest = tmp_path / "root"
    env = {"EDGED_SKIP_PIP": "1", "EDGED_SEED_MODELS": str(seed)}
    out = _run(INSTALL, dest, env=env)
    assert "not creating user/group edged" in out
    assert "skipping systemctl" in out or "systemd not running" in out

    assert (dest / "opt/edged/bin/python").exists()
    assert os.readlink(dest / "usr/local/bin/edged") == "/opt/edged/bin/edged"
    conf = dest / "etc/edged/edged.toml"
    assert conf.read_text() == (ROOT / "systemd/edged.toml.example").read_text()
    assert stat.S_IMODE(conf.stat().st_mode) == 0o640
    unit = dest / "etc/systemd/system/edged.service"
    assert unit.read_text() == (ROOT / "systemd/edged.service").read_text()
    assert not (dest / "etc/systemd/system/edged.service.d").exists()
    models = dest / "var/lib/edged/models"
    assert (models / "digits/v1/model.tflite").read_bytes() == b"TFL3 not really"
    assert not (models / "digits/current").exists()  # the daemon sets it; a seed's link is not the device's

    # Second run: nothing changes, not even mtimes.
    before = _tree(dest)
    out = _run(INSTALL, dest, env=env)
    assert "keeping existing" in out
    assert _tree(dest) == before

    # An edited config and a changed repository are kept.
    conf.write_text("[server]\nworkers = 4\n")
    (models / "digits/v2").mkdir()
    _run(INSTALL, dest, "--edgetpu", env=env)
    assert conf.read_text() == "[server]\nworkers = 4\n"
    assert (models / "digits/v2").is_dir()
    assert (dest / "etc/systemd/system/edged.service.d/edgetpu.conf").exists()

    # Uninstall keeps models and config ...
    _run(UNINSTALL, dest)
    assert not (dest / "opt/edged").exists()
    assert not unit.exists()
    assert not (dest / "etc/systemd/system/edged.service.d").exists()
    assert not (dest / "usr/local/bin/edged").exists()
    assert conf.read_text() == "[server]\nworkers = 4\n"
    assert (models / "digits/v1/model.tflite").exists()

    # ... and reinstalling over them keeps them too; --purge removes them.
    _run(INSTALL, dest, env=env)
    assert conf.read_text() == "[server]\nworkers = 4\n"
    _run(UNINSTALL, dest, "--purge")
    assert not (dest / "etc/edged").exists()
    assert not (dest / "var/lib/edged").exists()


def test_install_seeds_complete_versions_only_never_development_state(tmp_path: Path, seed: Path) -> None:
    # Not a checkout (git or no git), so every complete version is seeded; the ceiling
    # keeps a clone that happens to hold $TMPDIR from making it one.
    (seed / ".edged").mkdir()
    (seed / ".edged" / "state.json").write_text('{"format": 1, "models": {"digits": {"committed": "v9"}}}')
    (seed / "digits" / "v2").mkdir()  # being copied in: no manifest yet
    (seed / "digits" / "v2" / "model.tflite").write_bytes(b"half")
    (seed / "digits" / ".v3.staging").mkdir()
    (seed / "digits" / "v4").mkdir()
    (seed / "digits" / "v4" / "manifest.json").write_text("{}")
    dest = tmp_path / "root"
    _run(INSTALL, dest, env={"EDGED_SKIP_PIP": "1", "EDGED_SEED_MODELS": str(seed),
                             "GIT_CEILING_DIRECTORIES": str(tmp_path)})
    models = dest / "var/lib/edged/models"
    assert sorted(p.name for p in models.iterdir()) == ["digits"]
    assert sorted(p.name for p in (models / "digits").iterdir()) == ["v1", "v4"]
    assert (models / "digits/v1/model.tflite").read_bytes() == b"TFL3 not really"


@pytest.mark.skipif(shutil.which("git") is None,
                    reason="git not installed: the untracked-version rule of install.sh needs a git checkout")
def test_install_in_a_git_checkout_seeds_only_versions_git_tracks(tmp_path: Path, seed: Path) -> None:
    # A checkout: a version packed locally (untracked) stays on the developer's machine.
    (seed / "digits" / "v4").mkdir()
    (seed / "digits" / "v4" / "manifest.json").write_text("{}")
    genv = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
            "GIT_COMMITTER_EMAIL": "t@t"}
    subprocess.run(["git", "init", "-q", str(seed)], check=True, env=genv)
    subprocess.run(["git", "-C", str(seed), "add", "digits/v1"], check=True, env=genv)
    dest = tmp_path / "root"
    _run(INSTALL, dest, env={"EDGED_SKIP_PIP": "1", "EDGED_SEED_MODELS": str(seed)})
    models = dest / "var/lib/edged/models"
    assert sorted(p.name for p in (models / "digits").iterdir()) == ["v1"]


def test_install_refuses_unknown_flag(tmp_path: Path) -> None:
    proc = subprocess.run(["bash", str(INSTALL), "--bogus"], env={**os.environ, "DESTDIR": str(tmp_path)},
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "--bogus" in proc.stderr


def test_install_update_root_installs_the_trust_anchor_and_the_network_drop_in(tmp_path: Path, seed: Path) -> None:
    dest = tmp_path / "root"
    root = tmp_path / "1.root.json"
    root.write_text(json.dumps({"signed": {"_type": "root", "version": 1}, "signatures": []}))
    env = {"EDGED_SKIP_PIP": "1", "EDGED_SEED_MODELS": str(seed)}
    _run(INSTALL, dest, "--update-root", str(root), env=env)
    installed = dest / "etc/edged/update-root.json"
    assert installed.read_bytes() == root.read_bytes() and stat.S_IMODE(installed.stat().st_mode) == 0o644
    dropin = dest / "etc/systemd/system/edged.service.d/update.conf"
    assert dropin.read_text() == (ROOT / "systemd/update.conf").read_text()
    not_root = tmp_path / "timestamp.json"
    not_root.write_text(json.dumps({"signed": {"_type": "timestamp"}}))
    proc = subprocess.run(["bash", str(INSTALL), f"--update-root={not_root}"],
                          env={**os.environ, "DESTDIR": str(dest), "PYTHON": sys.executable, **env},
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "not a TUF root.json" in proc.stderr
    _run(UNINSTALL, dest)
    assert not dropin.exists()


def test_config_example_is_valid_toml_with_default_values() -> None:
    data = tomllib.loads((ROOT / "systemd/edged.toml.example").read_text())
    # Everything is commented out: the example loads to the defaults.
    assert data == {"server": {}, "runtime": {}, "repository": {}}
    from edged import config

    loaded = config.load(ROOT / "systemd/edged.toml.example")
    defaults = config.Config()
    config.derive_parallelism(defaults, *config.machine())
    assert loaded.server == defaults.server and loaded.runtime == defaults.runtime


def test_install_with_real_pip(tmp_path: Path) -> None:
    dest = tmp_path / "root"
    _run(INSTALL, dest, env={"EDGED_SKIP_PIP": "0", "EDGED_SEED_MODELS": str(tmp_path / "none")})
    edged = dest / "opt/edged/bin/edged"
    assert edged.exists()
    proc = subprocess.run([str(edged), "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "serve" in proc.stdout
