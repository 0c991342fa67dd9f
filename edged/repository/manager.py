"""Which version of each model is serving, and loading versions into interpreters.

The :class:`ModelManager` is the server's only view of the repository.  At
start it serves every model at its ``current`` version (or, without that link,
its highest version); a version that fails to load is reported and the next
older one is tried, so one bad file never takes the daemon down.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edged.config import Config
from edged.errors import EdgedError, ErrorCode, ModelError, NotFoundError
from edged.repository import layout
from edged.runtime.backends import Backend
from edged.runtime.delegates import DelegateUnavailable
from edged.runtime.model import LoadedModel, LoadSpec

log = logging.getLogger("edged.repository")


@dataclass
class ModelSlot:
    """One model name: what serves it now and what went wrong on the way."""

    name: str
    serving: LoadedModel | None = None
    errors: dict[str, str] = field(default_factory=dict)  # version -> reason it is not serving


class ModelManager:
    def __init__(self, config: Config, backend: Backend) -> None:
        self.config = config
        self.backend = backend
        self.root = config.models_path
        self.variant = "full"
        self._lock = threading.Lock()
        self.slots: dict[str, ModelSlot] = {}

    # -- loading ---------------------------------------------------------------------------

    def spec_for(self, name: str, version: str, *, workers: int | None = None) -> LoadSpec:
        path = layout.version_dir(self.root, name, version)
        manifest = None
        from edged.repository.manifest import ManifestError, load_manifest  # local: optional file

        try:
            manifest_obj = load_manifest(path)
        except FileNotFoundError:
            manifest_obj = None
        except ManifestError as exc:
            raise ModelError(f"{name}/{version}: bad manifest: {exc}", code=ErrorCode.VALIDATION_FAILED) from None
        if manifest_obj is not None:
            manifest = manifest_obj.to_dict()
        rt = self.config.runtime
        return LoadSpec(
            name=name, version=version, path=path, backend=self.backend, delegate=rt.delegate,
            workers=workers or self.config.server.workers, num_threads=rt.num_threads, variant=self.variant,
            edgetpu_device=rt.edgetpu_device, edgetpu_library=rt.edgetpu_library,
            preprocessing=(manifest or {}).get("preprocessing"), labels=layout.read_labels(path), manifest=manifest,
        )

    def load(self, name: str, version: str) -> LoadedModel:
        """Load one version; raises :class:`ModelError` (or ``NotFoundError``) on failure."""
        return LoadedModel.load(self.spec_for(name, version))

    def start(self) -> None:
        """Serve every model in the repository.

        Raises :class:`ModelError` only for failures that no older version can
        fix: an explicitly requested Edge TPU that is missing.
        """
        names = layout.model_names(self.root)
        if not names:
            log.warning("model repository %s has no models; serving nothing until one is published", self.root)
        for name in names:
            slot = self.slots.setdefault(name, ModelSlot(name))
            versions = layout.version_names(self.root / name)
            preferred = layout.current_link(self.root / name)
            order = sorted(versions, key=lambda v: (v != preferred, -(layout.version_number(v) or 0)))
            for version in order:
                try:
                    slot.serving = self.load(name, version)
                except DelegateUnavailable:
                    raise
                except EdgedError as exc:
                    slot.errors[version] = str(exc)
                    log.error("%s/%s not loaded: %s", name, version, exc)
                    continue
                m = slot.serving
                log.info("serving %s/%s (%s, delegate %s, %d interpreters)", name, version,
                         self.backend.describe(), m.delegate, m.pool_size)
                break
            else:
                log.error("model %s: no loadable version (%s)", name, ", ".join(versions) or "none")

    # -- lookups -----------------------------------------------------------------------------

    def get(self, name: str | None) -> LoadedModel:
        """The serving version of ``name``, or of the only model when ``name`` is None.

        Raises :class:`NotFoundError` (``UNKNOWN_MODEL``) for unknown names, for a
        missing name when several models exist, and for a model with no loadable version.
        """
        slots = self.slots
        if name is None:
            serving = [s for s in slots.values() if s.serving is not None]
            if len(serving) != 1:
                have = ", ".join(sorted(slots)) or "none"
                raise NotFoundError(f"request names no model and {len(serving)} are serving ({have}); set 'model'")
            return serving[0].serving  # type: ignore[return-value]
        slot = slots.get(name)
        if slot is None or slot.serving is None:
            why = "" if slot is None else f": no loadable version ({'; '.join(slot.errors.values())})"
            raise NotFoundError(f"unknown model {name!r}{why}")
        return slot.serving

    def describe(self) -> list[dict[str, Any]]:
        out = []
        for slot in self.slots.values():
            entry: dict[str, Any] = {"model": slot.name, "errors": dict(slot.errors)}
            if slot.serving is not None:
                entry.update(slot.serving.describe())
            else:
                entry["version"] = None
            out.append(entry)
        return out

    def close(self) -> None:
        for slot in self.slots.values():
            if slot.serving is not None:
                slot.serving.close()
