"""CURVE authentication of tcp:// clients through pyzmq's ZAP authenticator.

pyzmq's :class:`~zmq.auth.thread.ThreadAuthenticator` answers libzmq's ZAP
requests in its own thread; we give it a credentials provider holding the set of
allowed client public keys.  A reload builds a new set (read and checked by
``edged.config.load``) and swaps it in whole: the attribute assignment is atomic,
so the authenticator thread sees either the old set or the new one, never a mix,
and connections already authenticated stay open.
"""

from __future__ import annotations

import logging

import zmq
from zmq.auth.thread import ThreadAuthenticator

log = logging.getLogger("edged.auth")

#: How many distinct refused keys are logged (a flood of new keys must not flood the journal).
_MAX_LOGGED_REFUSALS = 256


class AllowedKeys:
    """ZAP credentials provider: a client is let in when its Z85 public key is in ``keys``."""

    def __init__(self, keys: frozenset[bytes]) -> None:
        self.keys = keys
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
            log.warning("refused a CURVE client: public key %s is not in security.client_keys_dir",
                        key.decode(errors="replace"))
        return False


def start_authenticator(ctx: zmq.Context, keys: frozenset[bytes]) -> tuple[ThreadAuthenticator, AllowedKeys]:
    """Start the ZAP handler on ``ctx`` (before any CURVE socket binds); stop it before ``ctx.term()``."""
    allowed = AllowedKeys(keys)
    auth = ThreadAuthenticator(ctx, log=logging.getLogger("edged.auth.zap"))
    auth.start()
    auth.configure_curve_callback("*", credentials_provider=allowed)
    log.info("CURVE on tcp:// endpoints: %d client key(s) allowed", len(keys))
    return auth, allowed
