"""CURVE authentication of tcp:// clients through pyzmq's ZAP authenticator.

pyzmq's :class:`~zmq.auth.thread.ThreadAuthenticator` answers libzmq's ZAP
requests in its own thread.  Each CURVE socket carries a ZAP domain: the control
socket ``control``, the others ``clients``; each domain has a credentials
provider holding its set of allowed client public keys.  A reload builds new
sets (read and checked by ``edged.config.load``) and swaps them in whole: an
attribute assignment is atomic, so the authenticator thread sees either the old
set or the new one, never a mix, and connections already authenticated stay open.
"""

from __future__ import annotations

import logging

import zmq
from zmq.auth.thread import ThreadAuthenticator

log = logging.getLogger("edged.auth")

CLIENTS_DOMAIN = "clients"
CONTROL_DOMAIN = "control"
#: How many distinct refused keys are logged per domain (a flood of new keys must not flood the journal).
_MAX_LOGGED_REFUSALS = 256


def zap_domain(socket_name: str) -> bytes:
    """The ZAP domain of a daemon socket ("control" or "clients")."""
    return (CONTROL_DOMAIN if socket_name == "control" else CLIENTS_DOMAIN).encode()


class AllowedKeys:
    """ZAP credentials provider: a client is let in when its Z85 public key is in ``keys``."""

    def __init__(self, keys: frozenset[bytes], where: str) -> None:
        self.keys = keys
        self.where = where
        self._logged: set[bytes] = set()

    def replace(self, keys: frozenset[bytes]) -> None:
        self.keys = keys
        self._logged.clear()

    def callback(self, domain: str, key: bytes) -> bool:
        # Runs in the authenticator thread, once per connection handshake.
        if key in self.keys:
            return True
        if key not in self._logged and len(self._logged) < _MAX_LOGGED_REFUSALS:
            self._logged.add(key)
            log.warning("refused a CURVE client on the %s endpoint(s): public key %s is not in %s", domain,
                        key.decode(errors="replace"), self.where)
        return False


class CurveAuth:
    """The ZAP handler of one daemon: start before any CURVE socket binds, :meth:`stop` before ``ctx.term()``.

    ``control`` None: the control endpoint lets in the same keys as the others.
    """

    def __init__(self, ctx: zmq.Context, clients: frozenset[bytes], control: frozenset[bytes] | None) -> None:
        self.clients = AllowedKeys(clients, "security.client_keys_dir")
        self.control = AllowedKeys(clients if control is None else control,
                                   "security.client_keys_dir" if control is None else "security.control_keys_dir")
        self._auth = ThreadAuthenticator(ctx, log=logging.getLogger("edged.auth.zap"))
        self._auth.start()
        self._auth.configure_curve_callback(CLIENTS_DOMAIN, credentials_provider=self.clients)
        self._auth.configure_curve_callback(CONTROL_DOMAIN, credentials_provider=self.control)
        log.info("CURVE on tcp:// endpoints: %s", self.describe())

    def replace(self, clients: frozenset[bytes], control: frozenset[bytes] | None) -> None:
        self.clients.replace(clients)
        self.control.where = "security.client_keys_dir" if control is None else "security.control_keys_dir"
        self.control.replace(clients if control is None else control)
        log.info("reload: CURVE %s", self.describe())

    def describe(self) -> str:
        return f"{len(self.clients.keys)} client key(s) allowed, {len(self.control.keys)} on control"

    def stop(self) -> None:
        self._auth.stop()
