"""The staged-rollout bucket: a stable hash of (device id, model, version) into 0..99.

A device is covered by a version published at P % when its bucket is below P.
The bucket depends only on the three names, so a version at 10 % reaches the
same devices on every check, and raising P only adds devices (bucket < 10
implies bucket < 20).  It includes the version so that each release samples a
different 10 % of the fleet: the same devices are not always the canaries.
"""

from __future__ import annotations

import hashlib


def bucket(device_id: str, model: str, version: str) -> int:
    """The device's bucket for one version, 0..99 (uniform over device ids)."""
    digest = hashlib.sha256(f"{device_id}\0{model}\0{version}".encode()).digest()
    # 64 bits modulo 100: the bias is below 1e-17, far under the ±1.5 points we promise.
    return int.from_bytes(digest[:8], "big") % 100


def covers(rollout: float, device_id: str, model: str, version: str) -> bool:
    """True when a version rolled out to ``rollout`` percent includes this device."""
    return bucket(device_id, model, version) < rollout
