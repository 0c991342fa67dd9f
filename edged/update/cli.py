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
