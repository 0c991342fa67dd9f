"""edged: an on-device TFLite inference daemon served over ZeroMQ.

The package root exports only what a local application needs::

    from edged import Client
    r = Client().predict(x)
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["Client", "__version__"]


def __getattr__(name: str):  # lazy: `import edged` must not pull in pyzmq for the daemon's helpers
    if name == "Client":
        from edged.client import Client

        return Client
    raise AttributeError(name)
