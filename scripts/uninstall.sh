#!/usr/bin/env bash
# Remove what scripts/install.sh installed.
#
# Usage: sudo scripts/uninstall.sh [--purge] [--no-systemctl]
#
# Removes: the service (stopped and disabled first), its unit and the
# edgetpu.conf and update.conf drop-ins, the venv /opt/edged, /usr/local/bin/edged, user edged
# and groups edged and edged-clients.
# Keeps:   /etc/edged (configuration) and /var/lib/edged (models) unless --purge.
#          Kept files stay owned by the old numeric uid; install.sh (and
#          systemd's StateDirectory=) re-own them on the next install.
#
# DESTDIR works as for install.sh: paths are under it, and neither systemctl
# nor user management runs.
set -euo pipefail

DESTDIR="${DESTDIR:-}"
DESTDIR="${DESTDIR%/}"
purge=0
use_systemctl=1
for arg in "$@"; do
    case "$arg" in
        --purge) purge=1 ;;
        --no-systemctl) use_systemctl=0 ;;
        -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
        *) echo "uninstall.sh: unknown argument: $arg (try --help)" >&2; exit 2 ;;
    esac
done

say() { echo "uninstall.sh: $*"; }

is_root=0
[ "$(id -u)" = 0 ] && is_root=1
if [ -z "$DESTDIR" ] && [ "$is_root" != 1 ]; then
    echo "uninstall.sh: error: run as root (or set DESTDIR)" >&2
    exit 1
fi
if [ -n "$DESTDIR" ] || [ ! -d /run/systemd/system ]; then
    use_systemctl=0
fi

unit_dir="$DESTDIR/etc/systemd/system"
if [ "$use_systemctl" = 1 ] && systemctl cat edged.service >/dev/null 2>&1; then
    # Bounded by the unit's TimeoutStopSec (drain, then SIGKILL).
    systemctl disable --now edged || say "warning: could not stop/disable edged; continuing"
fi
rm -f "$unit_dir/edged.service" "$unit_dir/edged.service.d/edgetpu.conf" "$unit_dir/edged.service.d/update.conf"
rmdir "$unit_dir/edged.service.d" 2>/dev/null || true
[ "$use_systemctl" = 1 ] && systemctl daemon-reload
say "removed the unit"

if [ "$(readlink "$DESTDIR/usr/local/bin/edged" 2>/dev/null)" = /opt/edged/bin/edged ]; then
    rm -f "$DESTDIR/usr/local/bin/edged"
fi
rm -rf "$DESTDIR/opt/edged"
say "removed $DESTDIR/opt/edged"

if [ "$purge" = 1 ]; then
    rm -rf "$DESTDIR/etc/edged" "$DESTDIR/var/lib/edged"
    say "purged $DESTDIR/etc/edged and $DESTDIR/var/lib/edged"
else
    say "kept $DESTDIR/etc/edged and $DESTDIR/var/lib/edged (use --purge to delete them)"
fi

if [ "$is_root" = 1 ] && [ -z "$DESTDIR" ]; then
    if getent passwd edged >/dev/null; then userdel edged && say "removed user edged"; fi
    for g in edged edged-clients; do
        if getent group "$g" >/dev/null; then groupdel "$g" && say "removed group $g"; fi
    done
else
    say "not removing user/groups (DESTDIR set or not root)"
fi
