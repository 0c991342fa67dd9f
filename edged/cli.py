"""The ``edged`` command: thin – parse, call the daemon or the client, print, exit.

Exit status: 0 success; 2 usage; otherwise the class of the error
(:data:`edged.errors.EXIT_STATUS`): 3 bad request, 4 unknown model/version,
5 retry later (throttled, shutting down), 6 model refused, 7 bad config,
8 no/unreadable reply (daemon not running?), 1 anything else.
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from edged import __version__
from edged.errors import EXIT_STATUS, EdgedError, ErrorCode, RequestError


# -- logging -------------------------------------------------------------------------------

class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {"ts": round(record.created, 3), "level": record.levelname.lower(), "logger": record.name,
                 "msg": record.getMessage()}
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def setup_logging(level: str, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        # journald adds the time and unit; keep the line short.
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("edged")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False


# -- commands ------------------------------------------------------------------------------

def cmd_serve(args: argparse.Namespace) -> int:
    from edged import config as config_mod
    from edged.server.daemon import Daemon

    overrides = {
        "server.endpoint": args.endpoint, "server.control_endpoint": args.control_endpoint,
        "repository.path": args.models or os.environ.get("EDGED_MODELS") or None,
        "server.log_level": args.log_level, "server.log_format": args.log_format,
        "runtime.backend": args.runtime or os.environ.get("EDGED_RUNTIME") or None,
        "runtime.delegate": args.delegate, "server.workers": args.workers,
        "frigate.endpoint": args.frigate_endpoint,
    }
    setup_logging(args.log_level or "info", args.log_format or "text")
    try:
        overrides.update(config_mod.parse_assignment(a) for a in args.set)
    except EdgedError as exc:
        logging.getLogger("edged").error("%s", exc)
        return exc.exit_status
    # A segfault in a native kernel, or SIGABRT from systemd's watchdog, dumps every
    # thread's Python stack to stderr (the journal) before the process dies.
    faulthandler.enable()
    try:
        cfg = config_mod.load(args.config, overrides)
        setup_logging(cfg.server.log_level, cfg.server.log_format)
        daemon = Daemon(cfg, config_path=args.config, overrides=overrides)
        daemon.run()
    except EdgedError as exc:
        logging.getLogger("edged").error("%s", exc)
        return exc.exit_status
    return 0


def _client(args: argparse.Namespace, control: bool = False) -> Any:
    from edged.client import Client

    curve = _curve_keys(args)
    if control:
        return Client.control(args.control_endpoint, timeout=args.timeout, curve=curve)
    return Client(args.endpoint, timeout=args.timeout, curve=curve)


def _curve_keys(args: argparse.Namespace) -> Any:
    """ClientKeys from --server-key/--client-key (or $EDGED_SERVER_KEY/$EDGED_CLIENT_KEY); None if neither."""
    from edged.curve import ClientKeys

    server_key, client_key = getattr(args, "server_key", None), getattr(args, "client_key", None)
    if not server_key and not client_key:
        return None
    if not (server_key and client_key):
        raise RequestError("CURVE needs both --server-key (the daemon's .key file) and --client-key "
                           "(this client's .key_secret file)")
    return ClientKeys.from_files(server_key, client_key)


def cmd_keys(args: argparse.Namespace) -> int:
    from edged.curve import generate

    files = generate(Path(args.dir), args.name)
    data = {"public": str(files.public_path), "secret": str(files.secret_path), "public_key": files.public.decode()}
    _print(args, data, lambda d: f"public key {d['public_key']}\n  {d['public']} (share it)\n"
                                 f"  {d['secret']} (mode 0600, keep it private)")
    return 0


def _print(args: argparse.Namespace, data: Any, text: Callable[[Any], str] | None = None) -> None:
    if args.json or text is None:
        print(json.dumps(data, indent=2, default=str))
    else:
        print(text(data))


def _load_input(path: Path) -> tuple[str, Any]:
    if path.suffix == ".npy":
        import numpy as np

        return "tensor", np.load(path, allow_pickle=False)
    if path.suffix == ".npz":
        import numpy as np

        with np.load(path, allow_pickle=False) as z:
            return "tensor", {k: z[k] for k in z.files}
    return "image", path.read_bytes()


def cmd_predict(args: argparse.Namespace) -> int:
    kind, data = _load_input(Path(args.file))
    with _client(args) as c:
        if kind == "image":
            r = c.predict_image(data, model=args.model, top_k=args.top, priority=args.priority,
                                deadline_ms=args.deadline_ms, wait=args.wait)
        else:
            r = c.predict(data, model=args.model, top_k=args.top, priority=args.priority,
                          deadline_ms=args.deadline_ms, wait=args.wait)
    if args.json:
        out = {"request_id": r.request_id, "model": r.model, "version": r.version, "delegate": r.delegate,
               "runtime": r.runtime,
               "profile": r.profile, "timing": r.timing, "top_k": r.top_k,
               "outputs": [{"dtype": o.dtype.name, "shape": list(o.shape), "data": o.tolist()} for o in r.outputs]}
        print(json.dumps(out, indent=2))
        return 0
    print(f"{r.model}/{r.version} ({r.delegate}, {r.timing.get('total_us', 0) / 1000:.2f} ms)"
          + (f"  request_id {r.request_id}" if r.request_id else ""))
    if r.top_k:
        for entry in r.top_k:
            print(f"  {entry['label']:>12}  {entry['score']:.4f}")
    else:
        for i, o in enumerate(r.outputs):
            print(f"  output {i}: {o.dtype.name}{list(o.shape)} {o.reshape(-1)[:10].tolist()}")
    return 0


def cmd_feedback(args: argparse.Namespace) -> int:
    label: str | int | None = args.label
    if label is not None and args.index:
        label = int(label)
    correct = True if args.correct else (False if args.wrong else None)
    with _client(args) as c:
        data = c.feedback(args.request_id, label=label, correct=correct, model=args.model)
    _print(args, data, lambda d: (f"{d['model']}/{d['version']}: predicted {d['predicted']}, "
                                  f"{'correct' if d['correct'] else 'wrong'}; live accuracy "
                                  + ("-" if d["accuracy"] is None else f"{d['accuracy']:.1%}")
                                  + f" over {d['feedback']} report(s)"))
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    with _client(args) as c:
        data = c.info(args.model)

    def text(d: dict[str, Any]) -> str:
        lines = []
        for m in d["models"]:
            lines.append(f"{m['model']}/{m['version']}  {m['runtime']}  delegate={m['delegate']}  file={m['file']}")
            for kind in ("inputs", "outputs"):
                for t in m[kind]:
                    lines.append(f"  {kind[:-1]:6} {t['name']}: {t['dtype']}{t['shape']}")
        return "\n".join(lines)

    _print(args, data, text)
    return 0


def cmd_health(args: argparse.Namespace) -> int:
    with _client(args) as c:
        data = c.health()
    _print(args, data, lambda d: d["status"] + "".join(f"\n  {p}" for p in d["problems"]))
    return 0 if data["status"] == "ok" else 1


def _parallelism_text(p: dict[str, Any] | None) -> list[str]:
    if not p:
        return []  # an older daemon
    from edged.protocol import describe_parallelism  # lazily, as edged.client is: it brings numpy

    return [f"parallelism {describe_parallelism(p, runs=p.get('inline_runs', 0))}"]


def _status_text(d: dict[str, Any]) -> str:
    lines = [f"edged {d['edged']}  pid {d['pid']}  {d['state']}  health={d['health']}  up {d['uptime_s']:.0f}s",
             f"runtime {d['runtime']}  profile {d['profile']}  queue {d['queue_depth']}  "
             f"workers {d['workers']['busy']}/{d['workers']['total']} busy",
             *_parallelism_text(d.get("parallelism")),
             f"predict {d['endpoints']['predict']}  control {d['endpoints']['control']}",
             f"repository {d['repository']}"]
    for m in d["models"]:
        lines.append(f"  {m['model']}: {m.get('version') or '-'} ({m.get('delegate', '-')})"
                     + (f"  probation: {_probation_text(m['probation'])}" if m.get("probation") else ""))
        for v, why in m.get("errors", {}).items():
            lines.append(f"    {v}: {why}")
    return "\n".join(lines)


def _event_text(e: dict[str, Any]) -> str:
    import time

    when = time.strftime("%H:%M:%S", time.localtime(e.get("ts", 0)))
    rest = {k: v for k, v in e.items() if k not in ("event", "ts", "model", "version")}
    what = "/".join(str(e[k]) for k in ("model", "version") if e.get(k) is not None)
    return f"{when} {e.get('event', '?'):<9} {what} {_fields_text(rest) if rest else ''}".rstrip()


def cmd_events(args: argparse.Namespace) -> int:
    """Print the daemon's events (swap, commit, rollback, profile ...) as they happen."""
    from edged.client import default_events_endpoint, events

    endpoint = args.events_endpoint or default_events_endpoint(args.control_endpoint)
    count = args.count or (None if args.follow else 1)
    # --follow waits for ever (Ctrl-C ends it); otherwise one event within --timeout.
    stream = events(endpoint, timeout=None if args.follow else args.timeout)
    try:
        for n, event in enumerate(stream, 1):
            print(json.dumps(event) if args.json else _event_text(event), flush=True)
            if count is not None and n >= count:
                break
    finally:
        stream.close()
    return 0


def cmd_ctl(args: argparse.Namespace) -> int:
    if args.ctl == "events":
        return cmd_events(args)
    with _client(args, control=True) as c:
        if args.ctl == "status":
            _print(args, c.status(), _status_text)
        elif args.ctl == "stats":
            data = c.stats()["stats"]
            if args.prometheus:
                from edged.server.metrics import prometheus_text

                sys.stdout.write(prometheus_text(data))
            else:
                _print(args, data, _stats_text)
        elif args.ctl == "power":
            fields: dict[str, Any] = {}
            if args.auto:
                fields["auto"] = True
            elif args.profile:
                fields["profile"] = args.profile
                if args.for_:
                    fields["for_s"] = parse_duration(args.for_)
            _print(args, c.call("power", **fields)[0], _power_text)
        elif args.ctl == "versions":
            _print(args, c.call("versions", model=args.model)[0], _versions_text)
        elif args.ctl == "update":
            from edged.update.cli import ctl_update

            data, text = ctl_update(args, c)
            _print(args, data, text)
        else:
            fields = {k: getattr(args, k) for k in ("model", "version") if getattr(args, k, None) is not None}
            if getattr(args, "force", False):
                fields["force"] = True
            head, _ = c.call(args.ctl, **fields)
            head = {k: v for k, v in head.items() if k not in ("v", "id", "op", "ok")}
            _print(args, head, _fields_text)
    return 0


def _value_text(value: Any) -> str:
    """A reply value as an operator reads it: strings as they are, none for null, JSON otherwise."""
    if value is None:
        return "none"
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"))


def _fields_text(d: dict[str, Any]) -> str:
    return ", ".join(f"{k}={_value_text(v)}" for k, v in d.items()) or "ok"


def _stats_text(d: dict[str, Any]) -> str:
    """``ctl stats`` for people: one line per model version (the JSON has the histogram)."""
    lines = [f"queue depth {d['queue_depth']}"]
    if not d["models"]:
        lines.append("no requests yet")
    for m in d["models"]:
        lat = m["latency_us"]

        def ms(key: str) -> str:
            return "-" if lat.get(key) is None else f"{lat[key] / 1000:.2f}"

        errors = ", ".join(f"{code} {n}" for code, n in sorted(m["errors"].items())) or "none"
        lines.append(f"{m['model']}/{m['version']}: {m['requests']} requests, errors: {errors}; "
                     f"throttled {m['throttled']}, shed {m['shed']}, swaps {m['swaps']}, rollbacks {m['rollbacks']}, "
                     f"cpu {m['cpu_seconds']:.3f} s")
        lines.append(f"  latency ms: p50 {ms('p50')}  p95 {ms('p95')}  p99 {ms('p99')}  max {ms('max')}"
                     f"  ({lat['count']} timed)")
    return "\n".join(lines)


def parse_duration(text: str) -> float:
    """``90``, ``90s``, ``10m``, ``2h`` → seconds; raises ValueError naming the text."""
    units = {"s": 1, "m": 60, "h": 3600}
    t = text.strip().lower()
    try:
        if t and t[-1] in units:
            value = float(t[:-1]) * units[t[-1]]
        else:
            value = float(t)
    except ValueError:
        raise ValueError(f"bad duration {text!r} (use e.g. 90, 90s, 10m, 2h)") from None
    if value <= 0:
        raise ValueError(f"duration {text!r} must be positive")
    return value


def _power_text(d: dict[str, Any]) -> str:
    r = d.get("reading") or {}
    parts = [f"{k}={r[k]}" for k in ("battery_percent", "on_ac", "temperature_c", "cpu_percent", "throttled")
             if r.get(k) is not None]
    override = d["policy"].get("override")
    lines = [f"profile {d['profile']}" + (" (manual override)" if override else "") + f": {d.get('reason') or '-'}",
             f"reading ({d['source']}): {', '.join(parts) or 'no sensors'}",
             "limits: " + ", ".join(f"{k}={v}" for k, v in d["limits"].items() if k != "name")]
    return "\n".join(lines)


def _versions_text(d: dict[str, Any]) -> str:
    lines = [f"{d['model']}: serving {d['serving']}, committed {d['committed']}"
             + (f", pinned {d['pinned']}" if d["pinned"] else "")
             + (f", held (auto-activation waits for a version newer than {d['held']})" if d.get("held") else "")]
    for v in d["versions"]:
        lines.append(f"  {v['version']:>8}  {v['state']:<10} {v['reason']}".rstrip())
        if v.get("probation"):
            lines.append(f"            {_probation_text(v['probation'])}")
    return "\n".join(lines)


def _probation_text(p: dict[str, Any]) -> str:
    """``12/100 requests, 30/600 s; errors 0.0% (max 5.0%), ...`` – progress toward commit, figures vs limits."""
    def rate(value: float | None, limit: float) -> str:
        return f"{'-' if value is None else f'{value:.1%}'} (max {limit:.1%})"

    p95 = "-" if p["p95_invoke_us"] is None else f"{p['p95_invoke_us']} us"
    base = (f" (max {p['max_p95_ratio']}x the previous {p['baseline_p95_us']} us)"
            if p["baseline_p95_us"] else " (no baseline)")
    return (f"{p['requests']}/{p['requests_needed']} requests, {p['seconds']:.0f}/{p['seconds_needed']:.0f} s; "
            f"errors {rate(p['error_rate'], p['max_error_rate'])}, "
            f"non-finite {rate(p['nonfinite_rate'], p['max_nonfinite_rate'])}, p95 {p95}{base}")


def cmd_pack(args: argparse.Namespace) -> int:
    from edged.repository.manifest import load_manifest
    from edged.repository.pack import base_manifest, differences, pack

    prep = _json_option("--preprocessing", args.preprocessing)
    accuracy = _json_option("--accuracy", args.accuracy)
    min_runtime = {}
    for item in args.min_runtime:
        runtime, sep, version = item.partition("=")
        if not sep or runtime not in ("litert", "tflite-runtime", "tensorflow") or not version:
            raise RequestError(f"--min-runtime {item!r}: expected litert|tflite-runtime|tensorflow=VERSION, "
                               f"e.g. tflite-runtime=2.17")
        min_runtime[runtime] = version
    images = []
    for item in args.golden_image:
        file, sep, expected = item.partition("=")
        images.append((Path(file), expected if sep else None))
    base = base_manifest(Path(args.repo), args.name)
    target = pack(Path(args.model), name=args.name, version=args.version, repo=Path(args.repo),
                  golden_images=images, inherit_from=None if args.no_inherit else base,
                  labels=Path(args.labels) if args.labels else None,
                  golden_inputs=[Path(p) for p in args.golden_input],
                  lite=Path(args.lite) if args.lite else None, edgetpu=Path(args.edgetpu) if args.edgetpu else None,
                  preprocessing=prep, accuracy=accuracy, min_runtime=min_runtime or None, notes=args.notes,
                  runtime=args.runtime, atol=args.atol,
                  created_by={"command": "edged pack " + " ".join(sys.argv[2:])})
    report: dict[str, Any] = {"path": str(target), "compared_with": None, "differences": []}
    if base is not None:
        report["compared_with"] = base[0]
        report["differences"] = differences(base[1], load_manifest(target))

    def text(d: dict[str, Any]) -> str:
        lines = [f"published {d['path']}"]
        if d["compared_with"]:
            lines.append(f"changes from {args.name}/{d['compared_with']} (the version it follows):")
            lines += [f"  {line}" for line in d["differences"]] or ["  none"]
        return "\n".join(lines)

    _print(args, report, text)
    return 0


def _json_option(flag: str, text: str | None) -> Any:
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise RequestError(f"{flag}: not JSON ({exc})") from None


def cmd_validate(args: argparse.Namespace) -> int:
    from edged.repository.check import run_checks

    report = run_checks(Path(args.path), args.runtime)
    _print(args, report, lambda d: f"ok: {args.path} ({d['samples']} {'golden' if d['golden'] else 'generated'} "
                                   f"sample(s), {d['runtime']}, delegate {d['delegate']})")
    return 0


# -- parser --------------------------------------------------------------------------------


def _positive_int(text: str) -> int:
    """argparse type: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not 1 or more")
    return value


#: Longest --timeout: a week (a wait for an event may be long; an infinite one is --follow).
MAX_TIMEOUT_S = 7 * 86400.0


def _number_of(unit: str, high: float, *, zero: bool) -> Callable[[str], float]:
    """An argparse type: a finite number of ``unit`` from 0 (``zero``: included) to ``high``."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number of {unit}") from None
        if not (0 <= value if zero else 0 < value) or not value <= high:  # also false for NaN
            raise argparse.ArgumentTypeError(f"{unit} must be {'at least 0' if zero else 'over 0'} and at most {high:.0f}, "
                                             f"not {text}")
        return value

    return parse


#: --timeout (and $EDGED_TIMEOUT): more than 0 s, at most a week.
_seconds = _number_of("seconds", MAX_TIMEOUT_S, zero=False)
#: --deadline-ms: 0 (already due) to a week.
_milliseconds = _number_of("milliseconds", MAX_TIMEOUT_S * 1000, zero=True)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edged", description="On-device TFLite inference daemon.")
    p.add_argument("--version", action="version", version=f"edged {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    def client_opts(sp: argparse.ArgumentParser, control: bool = False) -> None:
        if control:
            sp.add_argument("--control-endpoint", default=None, help="default $EDGED_CONTROL_ENDPOINT or the runtime dir")
        else:
            sp.add_argument("--endpoint", default=None, help="default $EDGED_ENDPOINT or the runtime dir")
        sp.add_argument("--timeout", type=_seconds, default=os.environ.get("EDGED_TIMEOUT", "10"))
        sp.add_argument("--json", action="store_true", help="machine-readable output")
        curve_opts(sp, None)

    def curve_opts(sp: argparse.ArgumentParser, default: Any) -> None:
        # default None: read the environment now; SUPPRESS: ctl's options before or after the subcommand.
        env = default is None
        sp.add_argument("--server-key", metavar="FILE", default=os.environ.get("EDGED_SERVER_KEY") if env else default,
                        help="tcp:// with CURVE: the daemon's public .key file (default $EDGED_SERVER_KEY)")
        sp.add_argument("--client-key", metavar="FILE", default=os.environ.get("EDGED_CLIENT_KEY") if env else default,
                        help="tcp:// with CURVE: this client's .key_secret file (default $EDGED_CLIENT_KEY)")

    s = sub.add_parser("serve", help="run the daemon in the foreground")
    s.add_argument("--config", default=None, help="TOML file (default $EDGED_CONFIG, /etc/edged/edged.toml)")
    s.add_argument("--models", default=None, help="model repository (default $EDGED_MODELS, ./models)")
    s.add_argument("--endpoint", default=None)
    s.add_argument("--control-endpoint", default=None)
    s.add_argument("--frigate-endpoint", default=None, metavar="EP",
                   help="also answer Frigate's zmq detector here (frigate.endpoint; see docs/frigate.md)")
    s.add_argument("--runtime", default=None, choices=["auto", "litert", "tflite-runtime", "tensorflow"])
    s.add_argument("--delegate", default=None, choices=["auto", "edgetpu", "xnnpack", "cpu"])
    s.add_argument("--workers", type=int, default=None)
    s.add_argument("--log-level", default=None, choices=["debug", "info", "warning", "error"])
    s.add_argument("--log-format", default=None, choices=["text", "json"])
    s.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override any config key, e.g. --set server.queue_size=128 --set power.source=sysfs")
    s.set_defaults(func=cmd_serve)

    s = sub.add_parser("predict", help="run one prediction on a .npy/.npz tensor or an image")
    client_opts(s)
    s.add_argument("--model", default=None)
    s.add_argument("--top", type=int, default=5, help="top-k labels for classifiers (0: raw outputs)")
    s.add_argument("--priority", choices=["low", "normal", "high"], default=None)
    s.add_argument("--deadline-ms", type=_milliseconds, default=None)
    s.add_argument("--wait", action="store_true",
                   help="over the power profile's rate limit, wait in the daemon's queue instead of THROTTLED")
    s.add_argument("file")
    s.set_defaults(func=cmd_predict)

    s = sub.add_parser("feedback", help="report the truth about an earlier prediction (live accuracy)")
    client_opts(s)
    s.add_argument("request_id", help="the request_id printed by 'edged predict' / Prediction.request_id")
    verdict = s.add_mutually_exclusive_group(required=True)
    verdict.add_argument("--label", help="the true class (its label text; with --index, its index)")
    verdict.add_argument("--correct", action="store_true", help="the prediction was right")
    verdict.add_argument("--wrong", action="store_true", help="the prediction was wrong")
    s.add_argument("--index", action="store_true", help="--label is a class index, not a label text")
    s.add_argument("--model", default=None)
    s.set_defaults(func=cmd_feedback)

    s = sub.add_parser("info", help="describe the serving model(s)")
    client_opts(s)
    s.add_argument("--model", default=None)
    s.set_defaults(func=cmd_info)

    s = sub.add_parser("pack", help="build a complete version directory (hashes, contract, golden outputs)")
    s.add_argument("model", help="the .tflite file")
    s.add_argument("--name", required=True)
    s.add_argument("--version", required=True, help="v<N> or <N>")
    s.add_argument("--repo", default=os.environ.get("EDGED_MODELS", "models"))
    s.add_argument("--labels", default=None)
    s.add_argument("--golden-input", action="append", default=[], help=".npy input; repeat for more samples")
    s.add_argument("--lite", default=None, help="power-saving variant, packed as model_lite.tflite")
    s.add_argument("--edgetpu", default=None, help="Edge TPU compiled variant, packed as model_edgetpu.tflite")
    s.add_argument("--golden-image", action="append", default=[], metavar="FILE[=LABEL]",
                   help="encoded image whose top-1 (LABEL: expected label or index) validation checks; repeatable")
    s.add_argument("--no-inherit", action="store_true",
                   help="do not take the preprocessing and golden images of the version this one follows")
    s.add_argument("--preprocessing", default=None,
                   help='JSON, e.g. \'{"color": "RGB", "mean": [127.5], "std": [127.5]}\' '
                        '(default: that of the version this one follows, see --no-inherit)')
    s.add_argument("--accuracy", default=None,
                   help='declared accuracy, JSON with "metric" and "value", e.g. '
                        '\'{"metric": "top1", "value": 0.96, "dataset": "digits test split"}\'')
    s.add_argument("--min-runtime", action="append", default=[], metavar="RUNTIME=VERSION",
                   help="oldest runtime that can run the model, e.g. tflite-runtime=2.17; repeatable")
    s.add_argument("--atol", type=float, default=1e-5, help="golden output tolerance (default 1e-5)")
    s.add_argument("--notes", default="")
    s.add_argument("--runtime", default=os.environ.get("EDGED_RUNTIME", "auto"))
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_pack)

    s = sub.add_parser("validate", help="check a version directory offline (files, manifest, golden samples)")
    s.add_argument("path")
    s.add_argument("--runtime", default=os.environ.get("EDGED_RUNTIME", "auto"))
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_validate)

    s = sub.add_parser("keys", help="CURVE key pairs for tcp:// endpoints (docs/security.md)")
    keys = s.add_subparsers(dest="keys", required=True)
    kg = keys.add_parser("generate", help="write NAME.key (public, 0644) and NAME.key_secret (0600); never overwrites")
    kg.add_argument("name", nargs="?", default="server", help="'server' for the daemon, a client's name otherwise")
    kg.add_argument("--dir", default=".", help="where to write the two files (default: here)")
    kg.add_argument("--json", action="store_true")
    kg.set_defaults(func=cmd_keys)

    s = sub.add_parser("health", help="exit 0 if the daemon is healthy")
    client_opts(s)
    s.set_defaults(func=cmd_health)

    # --json/--timeout/--control-endpoint work before or after the ctl subcommand, with the
    # same meaning.  Each parser gets its own actions: argparse shares the action objects of
    # a `parents=` parser, so set_defaults() on "ctl" would also give the subcommand's copies
    # a default, and the subcommand's namespace would then overwrite what was given before it.
    def ctl_opts(sp: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sp.add_argument("--control-endpoint", default=argparse.SUPPRESS,
                        help="default $EDGED_CONTROL_ENDPOINT or the runtime dir")
        sp.add_argument("--timeout", type=_seconds, default=argparse.SUPPRESS, help="seconds (default 60)")
        sp.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output")
        curve_opts(sp, argparse.SUPPRESS)
        return sp

    s = ctl_opts(sub.add_parser("ctl", help="control the running daemon"))
    # A string default goes through the option's type (_seconds) like a given value.
    s.set_defaults(json=False, timeout=os.environ.get("EDGED_TIMEOUT", "60"), control_endpoint=None,
                   server_key=os.environ.get("EDGED_SERVER_KEY"), client_key=os.environ.get("EDGED_CLIENT_KEY"))
    ctl = s.add_subparsers(dest="ctl", required=True)
    ctl_opts(ctl.add_parser("status", help="state, models, versions, profile"))
    st = ctl_opts(ctl.add_parser("stats", help="counters and latency"))
    st.add_argument("--prometheus", action="store_true", help="Prometheus text exposition format")
    ctl_opts(ctl.add_parser("reload", help="re-read config and rescan the repository (SIGHUP)"))
    ctl_opts(ctl.add_parser("quit", help="drain and stop (SIGTERM)"))
    v = ctl_opts(ctl.add_parser("versions", help="versions of a model and their states"))
    v.add_argument("--model", default=None)
    for name, helptext in (("swap", "validate VERSION and make it serve"), ("pin", "hold the model on VERSION"),
                           ("unmark", "clear VERSION's bad mark")):
        sp = ctl_opts(ctl.add_parser(name, help=helptext))
        sp.add_argument("version")
        sp.add_argument("--model", default=None)
        if name == "swap":
            sp.add_argument("--force", action="store_true", help="accept a changed input/output contract")
    pw = ctl_opts(ctl.add_parser("power", help="power reading and profile; override with --profile/--auto"))
    pw.add_argument("--profile", choices=["performance", "balanced", "powersave", "critical"], default=None)
    pw.add_argument("--for", dest="for_", default=None, metavar="DURATION", help="override length: 90s, 10m, 2h")
    pw.add_argument("--auto", action="store_true", help="return to the policy")
    ev = ctl_opts(ctl.add_parser("events", help="print events (swap, commit, rollback, profile ...) as they happen"))
    ev.add_argument("--follow", "-f", action="store_true", help="keep printing until interrupted (default: one event)")
    ev.add_argument("--count", type=_positive_int, default=None, help="stop after this many events (at least 1)")
    ev.add_argument("--events-endpoint", default=None,
                    help="default $EDGED_EVENTS_ENDPOINT or events.sock beside the control socket")
    for name, helptext in (("rollback", "go back to the previous good version"),
                           ("unpin", "let auto-activation manage the model again")):
        ctl_opts(ctl.add_parser(name, help=helptext)).add_argument("--model", default=None)
    up = ctl_opts(ctl.add_parser("update", help="remote updates: status, check now"))
    ups = up.add_subparsers(dest="update", required=True)
    ctl_opts(ups.add_parser("status", help="last check, versions available, download, next check"))
    ctl_opts(ups.add_parser("check", help="check the registry now and wait for the result")).add_argument(
        "--no-wait", action="store_true", help="reply at once; the check runs in the background")
    s.set_defaults(func=cmd_ctl)
    from edged.update.cli import add_registry_parser

    add_registry_parser(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # Client subcommands share --json/--timeout after the subcommand; ctl's live on "ctl".
    for name in ("json", "endpoint", "control_endpoint", "timeout", "server_key", "client_key"):
        if not hasattr(args, name):
            setattr(args, name, None if name != "json" else False)
    try:
        return int(args.func(args) or 0)
    except EdgedError as exc:
        return _fail(args, exc.code.value, exc.message, exc.details, exc.exit_status)
    except (FileNotFoundError, ValueError) as exc:
        return _fail(args, ErrorCode.BAD_REQUEST.value, str(exc), {}, EXIT_STATUS[ErrorCode.BAD_REQUEST],
                     show_code=False)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `edged ctl versions | head -1`: the reader left; that is not an error of ours.
        # Point stdout at /dev/null so the interpreter's final flush does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _fail(args: argparse.Namespace, code: str, message: str, details: dict[str, Any], status: int, *,
          show_code: bool = True) -> int:
    """Report a failed command: one line on stderr and, with ``--json``, the error as JSON on stdout.

    Scripts read ``{"ok": false, "error": {"code", "message", "details"}, "exit_status"}``
    from stdout whatever failed, with the same exit status as without ``--json``.
    """
    print(f"edged: {code}: {message}" if show_code else f"edged: {message}", file=sys.stderr)
    if getattr(args, "json", False):
        print(json.dumps({"ok": False, "error": {"code": code, "message": message, "details": details},
                          "exit_status": status}, indent=2, default=str))
    return status


if __name__ == "__main__":
    sys.exit(main())
