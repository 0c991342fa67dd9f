"""The shipped unit passes `systemd-analyze verify` and the exposure threshold."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                    reason="systemd-analyze not installed (apt-get install systemd); unit not checked")
def test_unit_verifies_and_exposure_below_threshold() -> None:
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "check_systemd.sh"), "--no-install"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "ok   security (edged.service): exposure" in proc.stdout


def test_unit_keeps_the_documented_contract() -> None:
    text = (ROOT / "systemd" / "edged.service").read_text()
    settings = {line.split("=", 1)[0]: line.split("=", 1)[1] for line in text.splitlines()
                if "=" in line and not line.lstrip().startswith("#")}
    assert settings["Type"] == "notify"
    assert settings["ExecStart"] == "/opt/edged/bin/edged serve --config /etc/edged/edged.toml"
    assert settings["WatchdogSec"] == "30s"
    # Drain grace (server.grace_period_s, 10 s) plus margin.
    assert int(settings["TimeoutStopSec"].rstrip("s")) >= 15
    for key in ("RuntimeDirectory", "StateDirectory", "ConfigurationDirectory", "User", "Group"):
        assert settings[key] == "edged", key
