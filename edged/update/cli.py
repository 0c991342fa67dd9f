"""``edged registry …`` (the publisher) and the text of ``edged ctl update …``.

Thin like the rest of the CLI: parse, call :class:`~edged.update.registry.Registry`,
print (``--json`` for machines).  Errors are :class:`~edged.errors.EdgedError`s,
turned into exit statuses by ``edged.cli.main``.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any


def add_registry_parser(sub: Any) -> None:
    """Add ``registry`` and its subcommands to the top-level subparsers."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output")
    reg = sub.add_parser("registry", help="publish models to a signed update registry (TUF)", parents=[common])
    reg.set_defaults(func=cmd_registry, json=False)
    rs = reg.add_subparsers(dest="registry_cmd", required=True)

    def opts(sp: argparse.ArgumentParser, keys: bool = True) -> None:
        sp.add_argument("--registry", required=True, metavar="DIR", help="the registry directory (served as is)")
        if keys:
            sp.add_argument("--keys", required=True, metavar="KEYDIR", help="private keys, <role>.pem (mode 0600)")
        for role in ("targets", "snapshot", "timestamp"):
            sp.add_argument(f"--{role}-expiry-days", type=float, default=None,
                            help=f"lifetime of newly signed {role} metadata")

    sp = rs.add_parser("init", help="create the four top-level roles and their keys", parents=[common])
    sp.add_argument("dir", metavar="DIR")
    sp.add_argument("--keys", required=True, metavar="KEYDIR")
    sp = rs.add_parser("publish", help="publish a version directory made by `edged pack`", parents=[common])
    sp.add_argument("version_dir", metavar="VERSION_DIR")
    opts(sp)
    sp.add_argument("--channel", default="stable")
    sp.add_argument("--rollout", type=int, default=100, help="percent of devices (0-100)")
    sp.add_argument("--runtime", default=os.environ.get("EDGED_RUNTIME", "auto"), help="runtime for validation")
    sp = rs.add_parser("rollout", help="change the rollout percentage of a version", parents=[common])
    sp.add_argument("model")
    sp.add_argument("version")
    sp.add_argument("percent", type=int)
    opts(sp)
    sp = rs.add_parser("withdraw", help="pull a version: devices roll back from it", parents=[common])
    sp.add_argument("model")
    sp.add_argument("version")
    opts(sp)
    sp = rs.add_parser("refresh", help="re-sign snapshot/timestamp before they expire (cron)", parents=[common])
    opts(sp)
    sp.add_argument("--force", action="store_true", help="re-sign even if far from expiry")
    sp = rs.add_parser("rotate", help="replace a role's key (new root signed by the old root key)",
                       parents=[common])
    sp.add_argument("role", choices=["root", "targets", "snapshot", "timestamp"])
    opts(sp)
    sp = rs.add_parser("status", help="models, versions, channels, rollout, expiry", parents=[common])
    opts(sp, keys=False)


def cmd_registry(args: argparse.Namespace) -> int:
    from edged.update.registry import Expiry, Registry

    expiry = Expiry()
    for role in ("targets", "snapshot", "timestamp"):
        days = getattr(args, f"{role}_expiry_days", None)
        if days is not None:
            setattr(expiry, role, days)
    if args.registry_cmd == "init":
        reg = Registry(args.dir, args.keys, expiry)
        data = reg.init()
        text = (f"registry {data['registry']} created; keys in {data['keys']} (keep root.pem and targets.pem "
                f"offline); install {data['root']} on devices (install.sh --update-root)")
    else:
        reg = Registry(args.registry, getattr(args, "keys", None), expiry)
        if args.registry_cmd == "publish":
            data = reg.publish(args.version_dir, channel=args.channel, rollout=args.rollout, runtime=args.runtime)
            text = f"published {data['model']}/{data['version']} on {data['channel']} at {data['rollout']:g} %"
        elif args.registry_cmd == "rollout":
            data = reg.set_rollout(args.model, args.version, args.percent)
            text = f"{data['model']}/{data['version']} now at {data['rollout']:g} %"
        elif args.registry_cmd == "withdraw":
            data = reg.withdraw(args.model, args.version)
            text = f"{data['model']}/{data['version']} withdrawn"
        elif args.registry_cmd == "refresh":
            data = reg.refresh(force=args.force)
            text = (f"re-signed {', '.join(data['resigned']) or 'nothing (not due)'}; timestamp expires "
                    f"{data['expires']['timestamp']}")
        elif args.registry_cmd == "rotate":
            data = reg.rotate(args.role)
            text = f"{data['role']} key rotated: root version {data['root_version']}, new key {data['new_keyid'][:16]}"
        else:
            data = reg.status()
            text = _status_text(data)
    print(json.dumps(data, indent=2) if args.json else text)
    return 0


def _status_text(d: dict[str, Any]) -> str:
    lines = [f"registry {d['registry']}  (root v{d['versions']['root']}, targets v{d['versions']['targets']})"]
    for role, when in d["expires"].items():
        lines.append(f"  {role:<9} expires {when}")
    for model, versions in d["models"].items():
        lines.append(f"{model}:")
        for version, info in versions.items():
            lines.append(f"  {version:>8}  {info['channel']:<8} {info['rollout']:>5g} %"
                         + ("  WITHDRAWN" if info["withdrawn"] else ""))
    return "\n".join(lines)


# -- edged ctl update -----------------------------------------------------------------------------

def ctl_update(args: argparse.Namespace, client: Any) -> tuple[Any, Any]:
    """Call ``update-status`` / ``update-check``; returns (data, text formatter) for the CLI to print."""
    if args.update == "check":
        head, _ = client.call("update-check", wait=not args.no_wait)
        if args.no_wait:
            return {"queued": True}, lambda d: "check queued"
        return head["check"], _check_text
    head, _ = client.call("update-status")
    return {k: v for k, v in head.items() if k not in ("v", "id", "op", "ok")}, _update_status_text


def _check_text(c: dict[str, Any]) -> str:
    if c is None:
        return "no check yet"
    head = "ok" if c.get("ok") else f"refused ({c.get('kind')}): {c.get('refused')}"
    lines = [f"check ({c.get('reason')}): {head}; {c.get('requests')} requests, {c.get('bytes')} bytes, "
             f"{c.get('duration_s')} s"]
    for d in c.get("decisions", []):
        lines.append(f"  {d['model']}: {d['action']}" + (f" {d['version']}" if d.get("version") else "")
                     + f" – {d['reason']}")
    for item in c.get("installed", []):
        lines.append(f"  installed {item}")
    return "\n".join(lines)


def _update_status_text(d: dict[str, Any]) -> str:
    lines = [f"registry {d['url']}  channel {d['channel']}  strategy {d['strategy']}"
             + (f" (interval {d['interval_s']:g} s)" if d.get("interval_s") else "") + f"  device {d['device_id']}"]
    lines.append("last " + _check_text(d["last_check"]) if d.get("last_check") else "no check yet")
    dl = d.get("download")
    if dl:
        lines.append(f"downloading {dl['model']}/{dl['version']}: {dl['bytes_done']}/{dl['bytes_total']} bytes")
    for item in d.get("pending") or []:
        lines.append(f"pending {item['model']}/{item['version']} ({(item.get('bytes') or 0) / 1e6:.1f} MB): "
                     f"held back by {item.get('held_by')}")
    nxt = d.get("next_check") or {}
    when = "on demand" if nxt.get("in_s") is None else f"in {nxt['in_s']:.0f} s"
    lines.append(f"next check {when}: {nxt.get('why', '')}")
    for model, versions in (d.get("failed") or {}).items():
        for version, why in versions.items():
            lines.append(f"  never again {model}/{version}: {why}")
    return "\n".join(lines)
