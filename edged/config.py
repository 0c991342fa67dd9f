"""Typed configuration with defaults, loaded and validated in one place.

Every setting has a default, so edged runs with no file at all.  A TOML file
(``--config``, ``$EDGED_CONFIG``, else ``/etc/edged/edged.toml`` when present)
overrides defaults, and command-line flags override the file.  Everything that
can fail happens in :func:`load`, which raises :class:`~edged.errors.ConfigError`
naming the bad key and value; only the CLI turns that into an exit.

The full reference with every key is docs/configuration.md.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args, get_origin, get_type_hints

from edged.curve import KeyFileError, ServerKeys, is_tcp, read_allowed_keys
from edged.errors import ConfigError

if TYPE_CHECKING:
    from edged.power.config import PowerConfig

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

DEFAULT_CONFIG_PATH = Path("/etc/edged/edged.toml")

Backend = Literal["auto", "litert", "tflite-runtime", "tensorflow"]
Delegate = Literal["auto", "edgetpu", "xnnpack", "cpu"]
Activation = Literal["auto", "manual"]
LogFormat = Literal["text", "json"]
LogLevel = Literal["debug", "info", "warning", "error"]


@dataclass(frozen=True)
class Bounds:
    """What a numeric setting may be, beyond its type: checked by :func:`_check_value` for every section."""

    gt: float | None = None
    ge: float | None = None
    lt: float | None = None
    le: float | None = None
    why: str = ""  # said after the bound, e.g. "a permission mode"

    def check(self, key: str, value: Any) -> None:
        if ((self.gt is None or value > self.gt) and (self.ge is None or value >= self.ge)
                and (self.lt is None or value < self.lt) and (self.le is None or value <= self.le)):
            return
        parts = [f"{op} {_num(b)}" for op, b in ((">", self.gt), (">=", self.ge), ("<", self.lt), ("<=", self.le))
                 if b is not None]
        raise ConfigError(key, value, "must be " + " and ".join(parts) + (f" ({self.why})" if self.why else ""))


def _num(bound: float) -> str:
    if isinstance(bound, int):
        return "0o777" if bound == 0o777 else str(bound)
    return f"{bound:g}"


def setting(default: Any = dataclasses.MISSING, *, gt: float | None = None, ge: float | None = None,
            lt: float | None = None, le: float | None = None, why: str = "") -> Any:
    """A config field with bounds: ``workers: int = setting(2, gt=0)``.

    The bounds live with the field, so a new section is a dataclass and nothing
    else: :func:`load` checks types, choices (``Literal``) and bounds of every
    section in one pass, and its errors name the key and the bad value.
    """
    return field(default=default, metadata={"bounds": Bounds(gt, ge, lt, le, why)})


#: Upper bounds are there because past them a value is a typo or an attack on the host
#: (100,000 worker threads, a billion queue slots, a 2**62-byte message cap that
#: overflows ZeroMQ's option), never a setting.
_GIB = 1 << 30
#: Unix permission bits, as ``*_socket_mode`` take them.
_MODE = {"ge": 0, "le": 0o777, "why": "a permission mode"}
#: Shares and probabilities.
_FRACTION = {"ge": 0.0, "le": 1.0}


def runtime_dir(environ: dict[str, str] | os._Environ[str] = os.environ) -> Path:
    """Where sockets live: ``$RUNTIME_DIRECTORY`` (systemd), ``$XDG_RUNTIME_DIR/edged``, ``/tmp/edged-<uid>``."""
    if environ.get("RUNTIME_DIRECTORY"):
        # systemd may pass several colon-separated directories; the first is ours.
        return Path(environ["RUNTIME_DIRECTORY"].split(":")[0])
    if environ.get("XDG_RUNTIME_DIR"):
        return Path(environ["XDG_RUNTIME_DIR"]) / "edged"
    return Path(f"/tmp/edged-{os.getuid()}")


def default_endpoint(environ: dict[str, str] | os._Environ[str] = os.environ) -> str:
    return environ.get("EDGED_ENDPOINT") or f"ipc://{runtime_dir(environ)}/edged.sock"


def default_control_endpoint(environ: dict[str, str] | os._Environ[str] = os.environ) -> str:
    return environ.get("EDGED_CONTROL_ENDPOINT") or f"ipc://{runtime_dir(environ)}/control.sock"


def default_models_path(environ: dict[str, str] | os._Environ[str] = os.environ) -> Path:
    if environ.get("EDGED_MODELS"):
        return Path(environ["EDGED_MODELS"])
    if environ.get("STATE_DIRECTORY"):
        return Path(environ["STATE_DIRECTORY"].split(":")[0]) / "models"
    return Path("models")


@dataclass
class ServerConfig:
    endpoint: str = ""  # "" = default_endpoint()
    control_endpoint: str = ""
    #: PUB socket for model and power events ("" = ipc://<runtime-dir>/events.sock; "none" = off).
    events_endpoint: str = ""
    #: Allow non-loopback addresses: TCP endpoints (which also need CURVE, [security]) and metrics_endpoint.
    allow_remote: bool = False
    #: Worker threads, each running one request at a time; 0 = auto (see :func:`derive_parallelism`).
    workers: int = setting(0, ge=0, le=64)
    queue_size: int = setting(64, gt=0, le=65536)
    #: Most requests one client (one ZeroMQ connection) may have queued at all (0 = no
    #: cap but ``queue_size``).  Fairness does not need it: clients take turns, and a
    #: newcomer to a full queue pushes out the newest job of the client holding the most.
    max_queued_per_client: int = setting(0, ge=0, le=65536)
    grace_period_s: float = setting(10.0, ge=0, le=3600)
    tick_s: float = setting(1.0, gt=0, le=60)
    max_message_bytes: int = setting(64 * 1024 * 1024, gt=0, le=_GIB)
    max_header_bytes: int = setting(64 * 1024, gt=0, le=16 << 20)
    max_image_bytes: int = setting(16 * 1024 * 1024, gt=0, le=_GIB)
    max_image_pixels: int = setting(4096 * 4096, gt=0, le=1 << 28)
    #: Pillow formats an image input may be in; no other decoder is ever tried ([] = no images).
    image_formats: list[str] = field(default_factory=lambda: ["JPEG", "PNG"])
    #: Longest a single invoke() may run before the daemon calls itself unhealthy.
    stuck_invoke_s: float = setting(30.0, gt=0, le=86400)
    #: A request that would run alone runs on the main loop itself, with no hand-off to
    #: a worker, while its model's last invoke() took at most this long (0 = never).
    inline_max_ms: float = setting(20.0, ge=0, le=1000)
    socket_group: str = ""
    predict_socket_mode: int = setting(0o660, **_MODE)
    control_socket_mode: int = setting(0o600, **_MODE)
    metrics_endpoint: str = ""
    log_level: LogLevel = "info"
    log_format: LogFormat = "text"


@dataclass
class RuntimeConfig:
    backend: Backend = "auto"
    delegate: Delegate = "auto"
    edgetpu_device: str = ""
    edgetpu_library: str = "libedgetpu.so.1"
    #: Threads per interpreter when requests run side by side; 0 = let the runtime decide.
    num_threads: int = setting(1, ge=0, le=64)
    #: Threads of one more interpreter per model, used by a request that runs alone
    #: (nothing queued, no other worker busy); 0 = auto (the usable cores), 1 = none.
    solo_threads: int = setting(0, ge=0, le=64)


@dataclass
class ProbationConfig:
    seconds: float = setting(60.0, ge=0, le=30 * 86400)
    requests: int = setting(100, ge=0, le=1 << 30)
    max_error_rate: float = setting(0.05, ge=0, le=1)
    max_nonfinite_rate: float = setting(0.0, ge=0, le=1)
    max_p95_ratio: float = setting(3.0, ge=0)
    #: The p95 ratio only counts when the new p95 is also this much slower in absolute
    #: terms: sub-millisecond models jitter by several x under load.
    min_p95_delta_ms: float = setting(1.0, ge=0)
    #: Daemon runs holding the version on probation that may end uncleanly (no clean-stop
    #: record: kill -9, OOM, power loss, a crash); the tries-th such end marks it bad.
    tries: int = setting(1, gt=0, le=100)
    #: Live accuracy from application feedback (``feedback`` op) judges a version only
    #: after this many reports on it...
    min_feedback: int = setting(20, ge=0)
    #: ...and rolls it back when it is worse than the previous version's by more than this
    #: (absolute, 0.05 = five points; the previous version's manifest accuracy is the
    #: baseline while it has too little feedback of its own).
    max_accuracy_drop: float = setting(0.05, **_FRACTION)
    #: Longest probation (counted from this run's swap or boot, at least ``seconds``): then
    #: the version is judged on whatever traffic it saw, none included, and committed if it
    #: crossed no threshold.  0 = wait for ``requests`` however long that takes.
    max_seconds: float = setting(3600.0, ge=0)


@dataclass
class HealthConfig:
    """Per-version health signals over a window of recent requests (docs/configuration.md)."""

    #: Requests (and feedback reports, and remembered request ids) per version's window.
    window: int = setting(1000, gt=0, le=100_000, why="memory is kept per version")
    #: A classifier answer whose top-1 probability is below this counts as low confidence.
    low_confidence: float = setting(0.5, **_FRACTION)
    #: Past any of these a version "looks unhealthy" (used by the adaptive update strategy).
    max_error_rate: float = setting(0.05, **_FRACTION)
    max_low_confidence_share: float = setting(0.5, **_FRACTION)
    #: Live accuracy under this is unhealthy (0 = no floor).
    min_accuracy: float = setting(0.0, **_FRACTION)
    #: Fewest requests (and feedback reports, for accuracy) before a signal counts.
    min_samples: int = setting(20, gt=0)


@dataclass
class ModelPolicy:
    activation: Activation = "auto"
    keep_previous: bool = False
    probation: ProbationConfig = field(default_factory=ProbationConfig)


@dataclass
class RepositoryConfig:
    path: str = ""  # "" = default_models_path()
    activation: Activation = "auto"
    keep_previous: bool = False
    settle_s: float = setting(2.0, ge=0, le=3600)
    validation_timeout_s: float = setting(30.0, gt=0, le=3600)
    watch: bool = True
    probation: ProbationConfig = field(default_factory=ProbationConfig)
    models: dict[str, dict[str, Any]] = field(default_factory=dict)

    def policy_for(self, model: str) -> ModelPolicy:
        """The effective activation/keep_previous/probation for ``model``."""
        over = self.models.get(model, {})
        probation = dataclasses.replace(self.probation, **over.get("probation", {}))
        return ModelPolicy(
            activation=over.get("activation", self.activation),
            keep_previous=over.get("keep_previous", self.keep_previous),
            probation=probation,
        )


UpdateStrategy = Literal["off", "periodic", "conditional", "adaptive"]


@dataclass
class UpdateConfig:
    """``[update]``: pull new versions from a signed registry (docs/updates.md).  Off unless ``url`` is set."""

    #: The registry's base URL: metadata under <url>/metadata/, targets under <targets_url or url>/targets/.
    url: str = ""
    targets_url: str = ""
    #: The trusted root.json installed with the device (install.sh --update-root).
    root: str = "/etc/edged/update-root.json"
    channel: str = "stable"
    strategy: UpdateStrategy = "off"
    interval_s: float = setting(3600.0, gt=0)
    #: Each wait is interval_s times a random factor in [1 - jitter, 1 + jitter].
    jitter: float = setting(0.1, ge=0, lt=1, why="a fraction")
    timeout_s: float = setting(30.0, gt=0)
    max_download_mb: float = setting(512.0, gt=0)
    #: Download rate cap in kilobits per second; 0 = no cap.
    max_rate_kbps: float = setting(0.0, ge=0)
    #: Tries per file after the first one fails mid-transfer (backoff 1, 2, 4 … s, at most 60 s).
    retries: int = setting(3, ge=0)
    #: "" = a hash of /etc/machine-id.
    device_id: str = ""
    # -- conditions: strategy "conditional", and "adaptive" when use_conditions -----------------
    use_conditions: bool = False  # adaptive: obey the conditions below too
    require_profile_allows: bool = True  # the power profile's allow_updates
    min_battery_percent: float = setting(0.0, ge=0)  # 0 = no battery condition; on AC always passes
    max_cpu_percent: float = setting(100.0, ge=0)  # 100 = no CPU condition
    windows: list[str] = field(default_factory=list)  # local "HH:MM-HH:MM"; [] = any time
    min_free_disk_factor: float = setting(2.0, ge=0)  # free space on the repository >= factor x the download
    metered_interfaces: list[str] = field(default_factory=list)  # default route via one = metered
    recheck_s: float = setting(60.0, gt=0)  # while an update is held back, look again at least this often
    # -- adaptive: the interval halves while a serving version looks unhealthy ([health] thresholds),
    # doubles while healthy
    min_interval_s: float = setting(300.0, gt=0)
    max_interval_s: float = setting(86400.0, gt=0)


@dataclass
class FrigateConfig:
    """``[frigate]``: answer Frigate's ``zmq`` detector plugin (docs/frigate.md)."""

    #: Where Frigate's REQ socket connects ("" = off).  ipc:// in a directory shared
    #: with Frigate's container; tcp:// only with ``allow_tcp`` and one bound address.
    endpoint: str = ""
    #: The edged model that answers ("" = the only model served; several = required).
    model: str = ""
    #: Rows below this score are not reported (Frigate's Edge TPU detector uses 0.4).
    min_score: float = setting(0.4, ge=0, le=1)
    #: A frame the power governor would refuse or delay past this many ms from receipt
    #: is answered "no detections" at once (Frigate times out and resets at 200 ms).
    budget_ms: float = setting(150.0, gt=0, le=10_000, why="Frigate waits 200 ms")
    #: Store a model Frigate pushes (``model_data``) as a new version of ``model``.
    #: Off: Frigate's process would gain the right to change what edged serves.
    accept_pushed_models: bool = False
    socket_group: str = ""
    socket_mode: int = setting(0o660, **_MODE)
    #: Frigate cannot do CURVE: TCP is plaintext and unauthenticated, so it is an opt-in
    #: bound to one address (never 0.0.0.0 / * / ::).
    allow_tcp: bool = False


@dataclass
class SecurityConfig:
    """CURVE for tcp:// endpoints (docs/security.md).  Key files are read in :func:`load`."""

    #: The daemon's CURVE secret key file (``edged keys generate server``); "" = CURVE off.
    server_secret_key: str = ""
    #: Directory of allowed client public keys (``*.key``), re-read on reload.
    client_keys_dir: str = ""
    #: Keys allowed on a tcp:// control endpoint instead ("" = those of client_keys_dir), re-read on reload.
    control_keys_dir: str = ""
    #: Serve the control endpoint over TCP without CURVE; any local user can then stop or swap models.
    allow_insecure_tcp_control: bool = False


@dataclass
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    repository: RepositoryConfig = field(default_factory=RepositoryConfig)
    update: UpdateConfig = field(default_factory=UpdateConfig)
    health: HealthConfig = field(default_factory=HealthConfig)
    #: ``[power]``, parsed and validated once, by load() (its schema lives in edged.power.config).
    power: PowerConfig = field(default_factory=lambda: _power_config({}))
    frigate: FrigateConfig = field(default_factory=FrigateConfig)
    security: SecurityConfig = field(default_factory=SecurityConfig)
    source: str = "defaults"
    #: How the parallelism settings were chosen: the machine, and "auto"/"config" per key.
    parallelism: dict[str, Any] = field(default_factory=dict)
    #: Read from [security] files by load(): the server key pair (None = CURVE off) and the allowed client keys.
    curve: ServerKeys | None = field(default=None, repr=False)
    allowed_keys: frozenset[bytes] = field(default=frozenset(), repr=False)
    control_keys: frozenset[bytes] | None = field(default=None, repr=False)  # None: allowed_keys

    @property
    def max_queued_per_client(self) -> int:
        return self.server.max_queued_per_client or self.server.queue_size

    @property
    def models_path(self) -> Path:
        return Path(self.repository.path) if self.repository.path else default_models_path()

    @property
    def endpoint(self) -> str:
        return self.server.endpoint or default_endpoint()

    @property
    def control_endpoint(self) -> str:
        return self.server.control_endpoint or default_control_endpoint()

    @property
    def events_endpoint(self) -> str | None:
        ep = self.server.events_endpoint
        if ep == "none":
            return None
        if ep:
            return ep
        control = self.control_endpoint
        if control.startswith("ipc://"):
            return f"ipc://{Path(control[len('ipc://'):]).parent}/events.sock"
        return None  # TCP control without an explicit events endpoint: no PUB socket


def _check_value(key: str, hint: Any, value: Any, bounds: Bounds | None = None) -> Any:
    """``value`` as the field's type, within its bounds; raises ConfigError naming ``key`` and ``value``."""
    origin = get_origin(hint)
    if origin is Literal:
        if value not in get_args(hint):
            raise ConfigError(key, value, f"must be one of {', '.join(map(repr, get_args(hint)))}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(key, value, "must be true or false")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(key, value, "must be an integer")
    elif hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(key, value, "must be a number")
        value = float(value)
        if not math.isfinite(value):  # TOML has inf and nan
            raise ConfigError(key, value, "must be a finite number")
    elif hint is str:
        if not isinstance(value, str):
            raise ConfigError(key, value, "must be a string")
        return value
    elif origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(key, value, "must be a table")
        return value
    elif origin is list:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(key, value, "must be a list of strings")
        return value
    if bounds is not None:
        bounds.check(key, value)
    return value


def _build(cls: type, data: Any, prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(prefix, data, "must be a table")
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    names = set(fields)
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        full = f"{prefix}.{key}"
        if key not in names or key == "source":
            raise ConfigError(full, value, f"unknown key (known: {', '.join(sorted(names - {'source'}))})")
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            kwargs[key] = _build(hint, value, full)
        else:
            kwargs[key] = _check_value(full, hint, value, fields[key].metadata.get("bounds"))
    return cls(**kwargs)


def _power_config(table: Any) -> PowerConfig:
    """The ``[power]`` section, typed; its errors become ConfigError naming the key and value.

    Imported here, not at the top: importing edged.config must not load the power
    layer (docs/architecture.md).
    """
    from edged.power.config import PowerConfig, PowerConfigError

    try:
        return PowerConfig.from_dict(table)
    except PowerConfigError as exc:
        raise ConfigError(exc.key, exc.value, exc.reason) from None


def _validate(config: Config) -> None:
    from edged.runtime.preprocess import ALLOWED_IMAGE_FORMATS  # deferred: numpy

    formats = [f.upper() for f in config.server.image_formats]
    if any(f not in ALLOWED_IMAGE_FORMATS for f in formats):
        raise ConfigError("server.image_formats", config.server.image_formats,
                          f"each must be one of {', '.join(ALLOWED_IMAGE_FORMATS)}")
    config.server.image_formats = formats
    _load_security(config)
    curve = config.curve is not None
    for key, endpoint in (("server.endpoint", config.endpoint), ("server.control_endpoint", config.control_endpoint)):
        check_endpoint(key, endpoint, config.server.allow_remote, curve=curve)
    if config.events_endpoint:
        check_endpoint("server.events_endpoint", config.events_endpoint, config.server.allow_remote, curve=curve)
    if is_tcp(config.control_endpoint) and not curve and not config.security.allow_insecure_tcp_control:
        raise ConfigError("server.control_endpoint", config.control_endpoint,
                          "control over TCP without CURVE lets any local user stop the daemon or swap its models; "
                          "set up CURVE (docs/security.md), use ipc://, or set "
                          "security.allow_insecure_tcp_control = true")
    if config.endpoint == config.control_endpoint:
        raise ConfigError("server.control_endpoint", config.control_endpoint, "must differ from server.endpoint")
    if config.server.metrics_endpoint:
        check_http_endpoint("server.metrics_endpoint", config.server.metrics_endpoint, config.server.allow_remote)
    server = config.server
    if server.max_header_bytes > server.max_message_bytes:
        raise ConfigError("server.max_header_bytes", server.max_header_bytes,
                          f"must be <= server.max_message_bytes ({server.max_message_bytes})")
    if server.max_queued_per_client > server.queue_size:
        raise ConfigError("server.max_queued_per_client", server.max_queued_per_client,
                          f"must be <= server.queue_size ({server.queue_size})")
    for name, over in config.repository.models.items():
        prefix = f"repository.models.{name}"
        if not isinstance(over, dict):
            raise ConfigError(prefix, over, "must be a table")
        for key, value in over.items():
            if key == "probation":
                _build(ProbationConfig, value, f"{prefix}.probation")
            elif key in ("activation", "keep_previous"):
                _check_value(f"{prefix}.{key}", get_type_hints(ModelPolicy)[key], value)
            else:
                raise ConfigError(f"{prefix}.{key}", value, "unknown key (known: activation, keep_previous, probation)")
    _validate_frigate(config)
    _validate_update(config.update)


_CHANNEL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")  # named like a model
_WINDOW_RE = re.compile(r"^([01]\d|2[0-3]):[0-5]\d-([01]\d|2[0-3]):[0-5]\d$")


def _validate_update(u: UpdateConfig) -> None:
    for key in ("url", "targets_url"):
        value = getattr(u, key)
        if value and not value.startswith(("http://", "https://")):
            raise ConfigError(f"update.{key}", value, "must be an http:// or https:// URL")
    if u.strategy != "off" and not u.url:
        raise ConfigError("update.strategy", u.strategy, "needs update.url (the registry)")
    if u.url and not os.path.isfile(u.root):
        raise ConfigError("update.root", u.root, "no such file: install the registry's root.json "
                                                 "(install.sh --update-root FILE)")
    if not _CHANNEL_RE.match(u.channel):
        raise ConfigError("update.channel", u.channel, "letters, digits, '.', '_', '-'")
    for key in ("windows", "metered_interfaces"):
        value = getattr(u, key)
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise ConfigError(f"update.{key}", value, "must be a list of strings")
    for window in u.windows:
        if not _WINDOW_RE.match(window):
            raise ConfigError("update.windows", window, 'expected "HH:MM-HH:MM" local time, e.g. "02:00-05:00"')
    for key in ("max_cpu_percent", "min_battery_percent"):
        if getattr(u, key) > 100:
            raise ConfigError(f"update.{key}", getattr(u, key), "must be a percentage <= 100")
    if u.min_interval_s > u.max_interval_s:
        raise ConfigError("update.min_interval_s", u.min_interval_s, f"must be <= max_interval_s ({u.max_interval_s})")


def _load_security(config: Config) -> None:
    """Read the [security] key files into ``config.curve`` and ``config.allowed_keys``."""
    sec = config.security
    if not sec.server_secret_key:
        for key in ("client_keys_dir", "control_keys_dir"):
            if getattr(sec, key):
                raise ConfigError(f"security.{key}", getattr(sec, key), "has no effect without security.server_secret_key")
        return
    if not sec.client_keys_dir:
        raise ConfigError("security.client_keys_dir", "",
                          "must name the directory of allowed client public keys when CURVE is on")
    try:
        config.curve = ServerKeys.from_file(sec.server_secret_key)
    except KeyFileError as exc:
        raise ConfigError("security.server_secret_key", sec.server_secret_key, exc.message) from None
    for key in ("client_keys_dir", "control_keys_dir"):
        path = getattr(sec, key)
        try:
            keys = read_allowed_keys(path) if path else None
        except KeyFileError as exc:
            raise ConfigError(f"security.{key}", path, exc.message) from None
        if key == "client_keys_dir":
            config.allowed_keys = keys or frozenset()
        else:
            config.control_keys = keys


_LOOPBACK = ("127.0.0.1", "localhost", "::1")
_ANY_ADDRESS = ("", "*", "0.0.0.0", "::", "0")


def _validate_frigate(config: Config) -> None:
    f = config.frigate
    ep = f.endpoint
    if not ep:
        return
    if ep in (config.endpoint, config.control_endpoint, config.events_endpoint):
        raise ConfigError("frigate.endpoint", ep, "must differ from the predict, control and events endpoints")
    if ep.startswith("tcp://"):
        host = ep[len("tcp://"):].rsplit(":", 1)[0].strip("[]")
        if not f.allow_tcp:
            raise ConfigError("frigate.endpoint", ep, "TCP for Frigate is plaintext and unauthenticated; "
                              "set frigate.allow_tcp = true to opt in, or use an ipc:// socket")
        if host in _ANY_ADDRESS:
            raise ConfigError("frigate.endpoint", ep, "must bind one address (e.g. the docker bridge 172.17.0.1), "
                              "not every interface")
        return
    check_endpoint("frigate.endpoint", ep)


def check_http_endpoint(key: str, endpoint: str, allow_remote: bool = False) -> None:
    """Raise :class:`ConfigError` unless ``endpoint`` is ``host:port`` (loopback unless allowed)."""
    host, sep, port = endpoint.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ConfigError(key, endpoint, "expected host:port with a port 1-65535, e.g. 127.0.0.1:9101")
    if not allow_remote and host not in _LOOPBACK and not host.startswith("127."):
        raise ConfigError(key, endpoint, "must be a loopback address unless server.allow_remote = true")


def check_endpoint(key: str, endpoint: str, allow_remote: bool = False, *, curve: bool = False) -> None:
    """Raise :class:`ConfigError` unless ``endpoint`` is ipc://, loopback tcp://, or remote tcp:// with CURVE."""
    if endpoint.startswith("ipc://"):
        if len(endpoint) <= len("ipc://"):
            raise ConfigError(key, endpoint, "ipc endpoint needs a path")
        return
    if endpoint.startswith("tcp://"):
        host = endpoint[len("tcp://"):].rsplit(":", 1)[0].strip("[]")
        if host in _LOOPBACK or host.startswith("127."):
            return
        if not curve:
            raise ConfigError(key, endpoint, "a non-loopback TCP endpoint needs CURVE authentication "
                                             "(security.server_secret_key, docs/security.md)")
        if not allow_remote:
            raise ConfigError(key, endpoint, "TCP must bind a loopback address unless server.allow_remote = true")
        return
    raise ConfigError(key, endpoint, "must start with ipc:// or tcp://")


def parse_assignment(text: str) -> tuple[str, Any]:
    """``section.key=value`` (``--set``) → (dotted key, value); the value is read as TOML.

    ``server.workers=4`` gives 4, ``runtime.delegate=cpu`` the string "cpu" (a bare word
    that is not valid TOML is taken as a string).  Raises ConfigError without ``=``.
    """
    key, sep, raw = text.partition("=")
    if not sep or "." not in key:
        raise ConfigError("--set", text, "expected section.key=value, e.g. server.workers=4")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key.strip(), value


def load(path: str | os.PathLike[str] | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Read the config file (if any), apply ``overrides`` ({"section.key": value}) and validate.

    ``path`` None means ``$EDGED_CONFIG``, else ``/etc/edged/edged.toml`` if it
    exists, else defaults only.  Raises :class:`ConfigError` for a missing or
    unreadable file, bad TOML, unknown keys and bad values.
    """
    data: dict[str, Any] = {}
    source = "defaults"
    if path is None:
        env = os.environ.get("EDGED_CONFIG")
        path = env if env else (DEFAULT_CONFIG_PATH if DEFAULT_CONFIG_PATH.exists() else None)
    if path is not None:
        try:
            with open(path, "rb") as fh:
                data = tomllib.load(fh)
        except OSError as exc:
            raise ConfigError("--config", str(path), f"cannot read: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError("--config", str(path), f"invalid TOML: {exc}") from None
        source = str(path)
    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        *parents, key = dotted.split(".")
        table = data
        for part in parents:
            nxt = table.setdefault(part, {})
            if not isinstance(nxt, dict):
                raise ConfigError(dotted, value, f"{part} is not a table")
            table = nxt
        table[key] = value
    sections = ("server", "runtime", "repository", "health", "power", "frigate", "update", "security")
    unknown = set(data) - set(sections)
    if unknown:
        name = sorted(unknown)[0]
        raise ConfigError(name, data[name], f"unknown section (known: {', '.join(sections)})")
    config = Config(
        server=_build(ServerConfig, data.get("server", {}), "server"),
        runtime=_build(RuntimeConfig, data.get("runtime", {}), "runtime"),
        repository=_build(RepositoryConfig, data.get("repository", {}), "repository"),
        update=_build(UpdateConfig, data.get("update", {}), "update"),
        health=_build(HealthConfig, data.get("health", {}), "health"),
        power=_power_config(data.get("power", {})),
        frigate=_build(FrigateConfig, data.get("frigate", {}), "frigate"),
        security=_build(SecurityConfig, data.get("security", {}), "security"),
        source=source,
    )
    _validate(config)
    derive_parallelism(config, *machine())
    return config


#: Upper bounds of the automatic choices: past them more threads mostly add memory and contention.
MAX_AUTO_WORKERS = 8
MAX_AUTO_SOLO_THREADS = 8
#: Memory per automatic worker: a worker holds one interpreter per model (4-8 MB for a
#: MobileNet-class model), and a small board must keep room for a swap's second version.
MEMORY_PER_AUTO_WORKER = 128 * 2**20


def machine(cgroup_root: Path = Path("/sys/fs/cgroup"),
            proc_cgroup: Path = Path("/proc/self/cgroup")) -> tuple[int, int | None]:
    """(usable cores, memory in bytes or None): the facts the automatic defaults use.

    Cores are those this process may run on (``sched_getaffinity``: a cpuset or
    ``taskset`` narrows them), rounded up to a CPU quota of its cgroup
    (``CPUQuota=`` of a systemd unit, a container's ``--cpus``); memory is the
    board's, or its cgroup's limit when lower (``MemoryMax=``).  An unreadable
    cgroup file counts as no limit.
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cores = os.cpu_count() or 1
    try:
        memory: int | None = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, OSError, ValueError):
        memory = None
    quota, mem_limit = _cgroup_limits(cgroup_root, proc_cgroup)
    if quota is not None:
        cores = min(cores, max(1, math.ceil(quota)))
    if mem_limit is not None and (memory is None or mem_limit < memory):
        memory = mem_limit
    return max(1, cores), memory


def _cgroup_limits(root: Path, proc_cgroup: Path) -> tuple[float | None, int | None]:
    """(CPU quota in cores, memory limit in bytes) of this process's cgroup (v2, else v1); None = none."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return None, None
    paths: dict[str, str] = {}
    for line in lines:
        _, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        for c in controllers.split(",") if controllers else [""]:
            paths[c] = path.lstrip("/")

    def read(*parts: str) -> str | None:
        try:
            return root.joinpath(*parts).read_text().strip()
        except (OSError, ValueError):
            return None

    quota: float | None = None
    memory: int | None = None
    if "" in paths:  # cgroup v2: "cpu.max" = "<quota> <period>" or "max <period>"
        fields = (read(paths[""], "cpu.max") or "max").split()
        if len(fields) == 2 and fields[0].isdigit() and fields[1].isdigit() and int(fields[1]) > 0:
            quota = int(fields[0]) / int(fields[1])
        limit = read(paths[""], "memory.max")
        memory = int(limit) if limit and limit.isdigit() else None
    if quota is None and "cpu" in paths:  # v1: cfs_quota_us is -1 without a quota
        q, period = read("cpu", paths["cpu"], "cpu.cfs_quota_us"), read("cpu", paths["cpu"], "cpu.cfs_period_us")
        if q and period and q.isdigit() and period.isdigit() and int(period) > 0:
            quota = int(q) / int(period)
    if memory is None and "memory" in paths:
        limit = read("memory", paths["memory"], "memory.limit_in_bytes")
        # v1 says "no limit" with a huge number (page-rounded LONG_MAX).
        memory = int(limit) if limit and limit.isdigit() and int(limit) < 2**62 else None
    return quota, memory


def derive_parallelism(config: Config, cores: int, memory: int | None) -> None:
    """Fill in ``server.workers`` and ``runtime.solo_threads`` left at 0 (auto) from the machine.

    * workers: one per core (at most :data:`MAX_AUTO_WORKERS`, and one per
      :data:`MEMORY_PER_AUTO_WORKER` of memory), so queued requests run side by
      side with ``runtime.num_threads`` threads each;
    * solo_threads: the cores (at most :data:`MAX_AUTO_SOLO_THREADS`), so a request
      that runs alone uses all of them; 1 (no extra interpreter) on one core.

    An explicit value always wins.  ``config.parallelism`` records the machine and,
    per key, whether the value is ``auto`` or from the ``config``.
    """
    server, runtime = config.server, config.runtime
    how = {"server.workers": "config", "runtime.solo_threads": "config"}
    if server.workers == 0:
        by_memory = MAX_AUTO_WORKERS if memory is None else max(1, memory // MEMORY_PER_AUTO_WORKER)
        server.workers = max(1, min(cores, MAX_AUTO_WORKERS, by_memory))
        how["server.workers"] = "auto"
    if runtime.solo_threads == 0:
        runtime.solo_threads = min(cores, MAX_AUTO_SOLO_THREADS)
        how["runtime.solo_threads"] = "auto"
    config.parallelism = {"cores": cores, "memory_mb": None if memory is None else memory // 2**20, "chosen": how}
