from __future__ import annotations

from pathlib import Path

import pytest

from edged import config
from edged.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "edged.toml"
    p.write_text(text)
    return p


def test_defaults_need_no_file(monkeypatch):
    monkeypatch.delenv("EDGED_CONFIG", raising=False)
    monkeypatch.setattr(config, "DEFAULT_CONFIG_PATH", Path("/nonexistent/edged.toml"))
    cfg = config.load()
    assert cfg.source == "defaults"
    assert cfg.server.workers >= 1 and cfg.runtime.backend == "auto" and cfg.runtime.delegate == "auto"
    assert cfg.repository.activation == "auto" and cfg.repository.probation.tries == 1


def test_file_then_overrides(tmp_path):
    p = write(tmp_path, '[server]\nworkers = 3\n[runtime]\ndelegate = "cpu"\n')
    cfg = config.load(p, {"server.workers": 4, "runtime.backend": None})
    assert cfg.server.workers == 4 and cfg.runtime.delegate == "cpu" and cfg.runtime.backend == "auto"
    assert cfg.source == str(p)


@pytest.mark.parametrize(
    ("text", "key", "value"),
    [
        ('[server]\nworkers = -1\n', "server.workers", "-1"),
        ('[server]\nworkers = "two"\n', "server.workers", "'two'"),
        ('[runtime]\ndelegate = "gpu"\n', "runtime.delegate", "'gpu'"),
        ('[runtime]\nbackend = "onnx"\n', "runtime.backend", "'onnx'"),
        ('[server]\nwokers = 2\n', "server.wokers", "2"),
        ('[nope]\nx = 1\n', "nope", "x"),
        ('[repository.probation]\nmax_error_rate = -1\n', "repository.probation.max_error_rate", "-1"),
        ('[repository]\nactivation = "sometimes"\n', "repository.activation", "'sometimes'"),
        ('[repository.models.digits]\nactivation = "later"\n', "repository.models.digits.activation", "'later'"),
        ('[server]\nendpoint = "tcp://0.0.0.0:5555"\n', "server.endpoint", "0.0.0.0"),
        ('[server]\nendpoint = "udp://x"\n', "server.endpoint", "udp://x"),
        ('[server]\nmetrics_endpoint = "abc"\n', "server.metrics_endpoint", "abc"),
        ('[server]\nmetrics_endpoint = "127.0.0.1:70000"\n', "server.metrics_endpoint", "70000"),
        ('[server]\nmetrics_endpoint = "0.0.0.0:9101"\n', "server.metrics_endpoint", "0.0.0.0:9101"),
        ('[server]\npredict_socket_mode = 99999\n', "server.predict_socket_mode", "99999"),
        ('[server]\ncontrol_socket_mode = -1\n', "server.control_socket_mode", "-1"),
        ('[frigate]\nmin_score = 1.5\n', "frigate.min_score", "1.5"),
        ('[frigate]\nbudget_ms = 0\n', "frigate.budget_ms", "0"),
        ('[frigate]\nsocket_mode = 4096\n', "frigate.socket_mode", "4096"),
        ('[frigate]\nendpoint = "tcp://172.17.0.1:5555"\n', "frigate.endpoint", "allow_tcp"),
        ('[frigate]\nendpoint = "tcp://*:5555"\nallow_tcp = true\n', "frigate.endpoint", "one address"),
        ('[frigate]\nendpoint = "tcp://0.0.0.0:5555"\nallow_tcp = true\n', "frigate.endpoint", "0.0.0.0"),
        ('[frigate]\nendpoint = "udp://x"\n', "frigate.endpoint", "udp://x"),
        ('[frigate]\nmodle = "x"\n', "frigate.modle", "x"),
        ('[server]\nworkers = 100000\n', "server.workers", "<= 64"),
        ('[runtime]\nsolo_threads = 100000\n', "runtime.solo_threads", "<= 64"),
        ('[server]\nqueue_size = 1e9\n', "server.queue_size", "integer"),
        ('[server]\nqueue_size = 1000000000\n', "server.queue_size", "<= 65536"),
        ('[server]\nmax_message_bytes = 4611686018427387904\n', "server.max_message_bytes", "<= 1073741824"),
        ('[server]\ntick_s = inf\n', "server.tick_s", "finite"),
        ('[server]\ngrace_period_s = nan\n', "server.grace_period_s", "finite"),
        ('[server]\nmax_message_bytes = 1000\n', "server.max_header_bytes", "max_message_bytes (1000)"),
        ('[server]\nqueue_size = 8\nmax_queued_per_client = 9\n', "server.max_queued_per_client", "queue_size (8)"),
        ('[repository.probation]\nmax_error_rate = 2\n', "repository.probation.max_error_rate", "<= 1"),
        ('[repository.models.m.probation]\ntries = 1000\n', "repository.models.m.probation.tries", "<= 100"),
    ],
)
def test_bad_values_name_key_and_value(tmp_path, text, key, value):
    with pytest.raises(ConfigError) as info:
        config.load(write(tmp_path, text))
    assert key in str(info.value) and value in str(info.value)


def test_frigate_section_defaults_off_and_opt_in_tcp(tmp_path):
    cfg = config.load(write(tmp_path, ""))
    assert cfg.frigate.endpoint == "" and cfg.frigate.min_score == 0.4 and cfg.frigate.budget_ms == 150.0
    assert cfg.frigate.accept_pushed_models is False
    cfg = config.load(write(tmp_path, '[frigate]\nendpoint = "tcp://172.17.0.1:5555"\nallow_tcp = true\n'))
    assert cfg.frigate.endpoint == "tcp://172.17.0.1:5555"
    cfg = config.load(write(tmp_path, ""), {"frigate.endpoint": "ipc:///tmp/cache/zmq_detector",
                                            "server.endpoint": "ipc:///tmp/x"})
    assert cfg.frigate.endpoint == "ipc:///tmp/cache/zmq_detector"
    with pytest.raises(ConfigError, match="must differ"):
        config.load(write(tmp_path, ""), {"frigate.endpoint": "ipc:///tmp/x", "server.endpoint": "ipc:///tmp/x"})


def test_invalid_toml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="invalid TOML"):
        config.load(write(tmp_path, "[server\n"))
    with pytest.raises(ConfigError, match="cannot read"):
        config.load(tmp_path / "missing.toml")


def test_loopback_tcp_allowed_and_remote_needs_opt_in(tmp_path):
    cfg = config.load(write(tmp_path, '[server]\nendpoint = "tcp://127.0.0.1:5555"\n'))
    assert cfg.endpoint == "tcp://127.0.0.1:5555"
    with pytest.raises(ConfigError, match="needs CURVE"):
        config.load(write(tmp_path, '[server]\nendpoint = "tcp://0.0.0.0:5555"\nallow_remote = true\n'))
    cfg = config.load(write(tmp_path, '[server]\nmetrics_endpoint = "[::]:9101"\nallow_remote = true\n'))
    assert cfg.server.metrics_endpoint == "[::]:9101"
    assert config.load(write(tmp_path, '[server]\nmetrics_endpoint = "localhost:9101"\n')).server.metrics_endpoint


def test_per_model_policy_overrides(tmp_path):
    cfg = config.load(write(tmp_path, """
[repository]
activation = "auto"
[repository.probation]
requests = 50
[repository.models.digits]
activation = "manual"
probation = { requests = 5 }
"""))
    pol = cfg.repository.policy_for("digits")
    assert pol.activation == "manual" and pol.probation.requests == 5
    assert cfg.repository.policy_for("other").probation.requests == 50


def test_runtime_dir_precedence():
    assert str(config.runtime_dir({"RUNTIME_DIRECTORY": "/run/edged:/run/x"})) == "/run/edged"
    assert str(config.runtime_dir({"XDG_RUNTIME_DIR": "/run/user/5"})) == "/run/user/5/edged"
    assert str(config.runtime_dir({})).startswith("/tmp/edged-")
    assert config.default_models_path({"STATE_DIRECTORY": "/var/lib/edged"}) == Path("/var/lib/edged/models")


def test_set_overrides_any_key_including_nested_tables(tmp_path):
    over = dict(config.parse_assignment(a) for a in (
        "server.queue_size=128", "runtime.delegate=cpu", "repository.probation.seconds=5",
        'power.source="file"', "power.file=/tmp/ups.json"))
    cfg = config.load(write(tmp_path, "[repository.probation]\nrequests = 7\n"), over)
    assert cfg.server.queue_size == 128 and cfg.runtime.delegate == "cpu"
    assert cfg.repository.probation.seconds == 5.0 and cfg.repository.probation.requests == 7
    assert cfg.power.source == "file" and cfg.power.file == "/tmp/ups.json"  # [power] parsed once, typed
    with pytest.raises(ConfigError, match="section.key=value"):
        config.parse_assignment("workers")
    with pytest.raises(ConfigError, match="server.queue_size"):
        config.load(None, {"server.queue_size": "many"})


def test_security_section_reads_keys_and_gates_tcp(tmp_path):
    from edged import curve

    server = curve.generate(tmp_path / "k", "server")
    app = curve.generate(tmp_path / "k", "app")
    allowed = tmp_path / "allowed"
    allowed.mkdir(mode=0o755)
    (allowed / "app.key").write_bytes(app.public_path.read_bytes())
    sec = f'[security]\nserver_secret_key = "{server.secret_path}"\nclient_keys_dir = "{allowed}"\n'
    cfg = config.load(write(tmp_path, '[server]\nendpoint = "tcp://0.0.0.0:5555"\nallow_remote = true\n'
                                      'control_endpoint = "tcp://[::1]:5556"\n' + sec))
    assert cfg.curve is not None and cfg.curve.public == server.public and cfg.allowed_keys == {app.public}
    assert cfg.curve.secret.decode() not in repr(cfg)
    with pytest.raises(ConfigError, match="allow_remote"):  # CURVE alone does not open remote binds
        config.load(write(tmp_path, '[server]\nendpoint = "tcp://0.0.0.0:5555"\n' + sec))
    with pytest.raises(ConfigError, match="security.client_keys_dir"):
        config.load(write(tmp_path, f'[security]\nserver_secret_key = "{server.secret_path}"\n'))
    with pytest.raises(ConfigError, match="security.client_keys_dir.*without security.server_secret_key"):
        config.load(write(tmp_path, f'[security]\nclient_keys_dir = "{allowed}"\n'))
    with pytest.raises(ConfigError, match="security.control_keys_dir.*without security.server_secret_key"):
        config.load(write(tmp_path, f'[security]\ncontrol_keys_dir = "{allowed}"\n'))
    cfg = config.load(write(tmp_path, sec + f'control_keys_dir = "{allowed}"\n'))
    assert cfg.control_keys == {app.public}
    assert config.load(write(tmp_path, sec)).control_keys is None  # the control endpoint takes client_keys_dir's
    with pytest.raises(ConfigError, match="security.server_secret_key.*chmod 600"):
        server.secret_path.chmod(0o644)
        config.load(write(tmp_path, sec))


def test_tcp_control_without_curve_needs_an_opt_in_that_names_the_risk(tmp_path):
    with pytest.raises(ConfigError, match="server.control_endpoint.*allow_insecure_tcp_control"):
        config.load(write(tmp_path, '[server]\ncontrol_endpoint = "tcp://127.0.0.1:5556"\n'))
    cfg = config.load(write(tmp_path, '[server]\ncontrol_endpoint = "tcp://127.0.0.1:5556"\n'
                                      '[security]\nallow_insecure_tcp_control = true\n'))
    assert cfg.control_endpoint == "tcp://127.0.0.1:5556" and cfg.curve is None
    with pytest.raises(ConfigError, match="needs CURVE"):  # the opt-in never opens a remote bind
        config.load(write(tmp_path, '[server]\ncontrol_endpoint = "tcp://0.0.0.0:5556"\nallow_remote = true\n'
                                    '[security]\nallow_insecure_tcp_control = true\n'))
