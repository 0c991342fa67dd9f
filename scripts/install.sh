#!/usr/bin/env bash
# Install edged as a systemd service.  Idempotent: a second run changes nothing
# that is already right, and never overwrites /etc/edged/edged.toml or a
# non-empty model repository.
#
# Usage: sudo scripts/install.sh [--no-systemctl] [--skip-pip] [--edgetpu] [--update-root FILE]
#
#   --no-systemctl  do not run systemctl (also automatic when systemd is not
#                   running, e.g. in a container, or when DESTDIR is set)
#   --skip-pip      create the venv without pip and install nothing into it
#                   (tests; same as EDGED_SKIP_PIP=1)
#   --edgetpu       also install systemd/edgetpu.conf as a drop-in
#   --update-root FILE  the update registry's trusted root.json (from `edged registry init`),
#                   installed as /etc/edged/update-root.json, with systemd/update.conf as a
#                   drop-in that lets the daemon reach the registry (docs/updates.md)
#
# Environment:
#   DESTDIR         stage everything under this prefix (e.g. /tmp/root) instead of /;
#                   no users are created and systemctl is not run.  A venv staged
#                   this way is not relocatable: it is for tests and inspection.
#   EDGED_SOURCE    what `pip install` installs (default: this repository)
#   EDGED_PIP_ARGS  extra pip arguments, e.g. "--no-index --find-links /srv/wheels"
#   EDGED_SKIP_PIP  1 = as --skip-pip
#   PYTHON          interpreter for the venv (default python3; needs >= 3.10)
#   EDGED_SEED_MODELS  directory to seed an empty repository from (default: models/ here)
#
# What it does (paths under $DESTDIR):
#   user/group edged, group edged-clients (edged is a member)   [root, no DESTDIR]
#   /opt/edged                     venv with edged installed; /usr/local/bin/edged links to it
#   /etc/edged/edged.toml          from systemd/edged.toml.example, if absent
#   /etc/systemd/system/edged.service (+ edged.service.d/edgetpu.conf with --edgetpu)
#   /etc/edged/update-root.json (+ edged.service.d/update.conf)   [--update-root]
#   /var/lib/edged/models          seeded from the repository's models/ if empty: complete
#                                  versions only (<model>/<vN>/ with a manifest.json; in a git
#                                  checkout only versions git tracks), never the development
#                                  state (.edged/state.json, current links, local publishes)
#   systemctl daemon-reload; systemctl enable --now edged     [systemd running, no DESTDIR]
set -euo pipefail
umask 022

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DESTDIR="${DESTDIR:-}"
DESTDIR="${DESTDIR%/}"
EDGED_SOURCE="${EDGED_SOURCE:-$here}"
EDGED_PIP_ARGS="${EDGED_PIP_ARGS:-}"
PYTHON="${PYTHON:-python3}"
skip_pip="${EDGED_SKIP_PIP:-0}"
seed="${EDGED_SEED_MODELS:-$here/models}"
use_systemctl=1
edgetpu=0
update_root=""

while [ $# -gt 0 ]; do
    case "$1" in
        --no-systemctl) use_systemctl=0 ;;
        --skip-pip) skip_pip=1 ;;
        --edgetpu) edgetpu=1 ;;
        --update-root) [ $# -ge 2 ] || { echo "install.sh: --update-root needs a FILE" >&2; exit 2; }
                       update_root="$2"; shift ;;
        --update-root=*) update_root="${1#--update-root=}" ;;
        -h|--help) sed -n '2,34p' "$0"; exit 0 ;;
        *) echo "install.sh: unknown argument: $1 (try --help)" >&2; exit 2 ;;
    esac
    shift
done

say() { echo "install.sh: $*"; }
die() { echo "install.sh: error: $*" >&2; exit 1; }

is_root=0
[ "$(id -u)" = 0 ] && is_root=1
if [ -z "$DESTDIR" ] && [ "$is_root" != 1 ]; then
    die "run as root (or set DESTDIR=/some/dir to stage the files)"
fi
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null \
    || die "$PYTHON is missing or older than 3.10 (set PYTHON=...)"

manage_users=0
if [ "$is_root" = 1 ] && [ -z "$DESTDIR" ]; then
    manage_users=1
fi
if [ -n "$DESTDIR" ] || [ ! -d /run/systemd/system ]; then
    # /run/systemd/system exists only when systemd is PID 1 (sd_booted(3)).
    [ "$use_systemctl" = 1 ] && say "systemd not running here (or DESTDIR set): skipping systemctl"
    use_systemctl=0
fi

changed=0

# Copy $1 to $2 with mode $3, only if the content differs (keeps mtimes on re-runs).
put() {
    local src="$1" dst="$2" mode="$3"
    if [ -f "$dst" ] && cmp -s "$src" "$dst"; then
        [ "$(stat -c %a "$dst")" = "${mode#0}" ] || chmod "$mode" "$dst"
        return 1
    fi
    mkdir -p "$(dirname "$dst")"
    install -m "$mode" "$src" "$dst"
    say "installed $dst"
    return 0
}

# -- users and groups ------------------------------------------------------------------------
if [ "$manage_users" = 1 ]; then
    getent group edged >/dev/null || { groupadd --system edged; say "created group edged"; }
    getent group edged-clients >/dev/null || { groupadd --system edged-clients; say "created group edged-clients"; }
    if ! getent passwd edged >/dev/null; then
        useradd --system --gid edged --groups edged-clients --home-dir /var/lib/edged --no-create-home \
            --shell /usr/sbin/nologin --comment "edged inference daemon" edged
        say "created user edged"
    elif ! id -nG edged | tr ' ' '\n' | grep -qx edged-clients; then
        # The daemon can only chgrp its predict socket to a group it belongs to.
        usermod -aG edged-clients edged
        say "added user edged to group edged-clients"
    fi
    if [ "$edgetpu" = 1 ]; then
        # The drop-in's SupplementaryGroups= must name existing groups or the service
        # fails with 216/GROUP; a USB-only host has no apex group (no PCIe driver).
        for g in plugdev apex; do
            getent group "$g" >/dev/null || { groupadd --system "$g"; say "created group $g (Edge TPU drop-in)"; }
        done
    fi
else
    say "not creating user/group edged and group edged-clients (DESTDIR set or not root)"
fi

# -- venv --------------------------------------------------------------------------------------
venv="$DESTDIR/opt/edged"
if [ ! -x "$venv/bin/python" ]; then
    mkdir -p "$venv"
    if [ "$skip_pip" = 1 ]; then
        "$PYTHON" -m venv --without-pip "$venv"
    else
        "$PYTHON" -m venv "$venv"
    fi
    say "created venv $venv"
    changed=1
fi
if [ "$skip_pip" = 1 ]; then
    say "skipping pip install (EDGED_SKIP_PIP=1 / --skip-pip)"
else
    # shellcheck disable=SC2086 # EDGED_PIP_ARGS is a list of words on purpose
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check $EDGED_PIP_ARGS "$EDGED_SOURCE"
    [ -x "$venv/bin/edged" ] || die "pip install did not produce $venv/bin/edged"
    say "installed edged from $EDGED_SOURCE into $venv"
    changed=1
fi
mkdir -p "$DESTDIR/usr/local/bin"
if [ "$(readlink "$DESTDIR/usr/local/bin/edged" 2>/dev/null)" != /opt/edged/bin/edged ]; then
    ln -sfn /opt/edged/bin/edged "$DESTDIR/usr/local/bin/edged"
    say "linked /usr/local/bin/edged -> /opt/edged/bin/edged"
fi
if [ -f "$here/docs/operations.md" ]; then
    put "$here/docs/operations.md" "$venv/share/doc/edged/operations.md" 0644 || true
fi

# -- configuration -----------------------------------------------------------------------------
conf_dir="$DESTDIR/etc/edged"
mkdir -p "$conf_dir"
if [ -e "$conf_dir/edged.toml" ]; then
    say "keeping existing $conf_dir/edged.toml"
else
    install -m 0640 "$here/systemd/edged.toml.example" "$conf_dir/edged.toml"
    say "wrote $conf_dir/edged.toml"
fi
if [ "$manage_users" = 1 ]; then
    chgrp edged "$conf_dir/edged.toml"  # root-owned, readable by the daemon only
fi
if [ -n "$update_root" ]; then
    [ -f "$update_root" ] || die "--update-root $update_root: no such file"
    # The device's trust anchor: refuse anything that is not TUF root metadata.
    "$PYTHON" -c 'import json, sys; d = json.load(open(sys.argv[1])); sys.exit(d["signed"]["_type"] != "root")' \
        "$update_root" 2>/dev/null || die "--update-root $update_root is not a TUF root.json (edged registry init)"
    if put "$update_root" "$conf_dir/update-root.json" 0644; then changed=1; fi
fi

# -- systemd unit ------------------------------------------------------------------------------
unit_dir="$DESTDIR/etc/systemd/system"
if put "$here/systemd/edged.service" "$unit_dir/edged.service" 0644; then changed=1; fi
if [ "$edgetpu" = 1 ]; then
    if put "$here/systemd/edgetpu.conf" "$unit_dir/edged.service.d/edgetpu.conf" 0644; then changed=1; fi
fi
if [ -n "$update_root" ]; then
    if put "$here/systemd/update.conf" "$unit_dir/edged.service.d/update.conf" 0644; then changed=1; fi
fi

# -- model repository --------------------------------------------------------------------------
state="$DESTDIR/var/lib/edged"
models="$state/models"
mkdir -p "$models"

# The versions to seed, as <model>/<version>, one a line.  A developer's checkout also
# holds .edged/state.json (which version is committed, bad marks, probation), `current`
# links and versions packed locally; none of that describes the device, so only complete
# version directories are copied and, in a git checkout, only those git tracks.
seed_versions() {
    local tracked=0 vdir rel model version
    if command -v git >/dev/null 2>&1 && git -C "$seed" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
        tracked=1
    fi
    for vdir in "$seed"/*/*/; do
        [ -d "$vdir" ] || continue
        rel=${vdir#"$seed"/}
        rel=${rel%/}
        model=${rel%%/*}
        version=${rel#*/}
        [[ $model =~ ^[A-Za-z0-9][A-Za-z0-9_.-]*$ ]] || continue
        [[ $version =~ ^v?[0-9]{1,9}$ ]] || continue
        [ -L "$seed/$rel" ] && continue
        [ -f "$seed/$rel/manifest.json" ] || continue
        if [ "$tracked" = 1 ] && ! git -C "$seed" ls-files --error-unmatch "$rel/manifest.json" >/dev/null 2>&1; then
            say "not seeding $rel: not tracked by git (published locally)" >&2
            continue
        fi
        echo "$rel"
    done
}

if [ -n "$(ls -A "$models")" ]; then
    say "keeping existing models in $models"
elif [ -d "$seed" ] && seeding=$(seed_versions) && [ -n "$seeding" ]; then
    while IFS= read -r rel; do
        mkdir -p "$models/${rel%%/*}"
        cp -a "$seed/$rel" "$models/$rel"
    done <<< "$seeding"
    say "seeded $models from $seed: $(echo $seeding)"
else
    say "no models to seed ($seed has no complete version); publish one into $models"
fi
# After seeding: `cp -a seed/. models/` also copies the seed directory's own mode.
chmod 0770 "$state"
chmod 2770 "$models"  # setgid: versions published by group members stay group edged
if [ "$manage_users" = 1 ]; then
    chown -R edged:edged "$state"
fi

# -- start -------------------------------------------------------------------------------------
if [ "$use_systemctl" = 1 ]; then
    was_active=0
    systemctl is-active --quiet edged && was_active=1
    systemctl daemon-reload
    systemctl enable --now edged
    if [ "$was_active" = 1 ] && [ "$changed" = 1 ]; then
        systemctl restart edged
        say "restarted edged (code or unit changed)"
    fi
    say "edged enabled and started; check: systemctl status edged; edged ctl status"
else
    say "done; to start: systemctl daemon-reload && systemctl enable --now edged"
fi
