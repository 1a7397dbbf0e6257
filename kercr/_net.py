"""Is something listening at ``host:port``? The one probe that multi-worker training and the
distributed tuning search both use to wait for their peers.

Standard library only (layer 0). Addresses are written as ``TF_CONFIG`` and gRPC write them:
``host:port``, with an IPv6 host in brackets (``[::1]:2222``); a bare IPv6 host (``::1``) is
accepted where the host comes alone.
"""

from __future__ import annotations

import socket

__all__ = ["bare_host", "connect_error", "listens"]


def bare_host(host: str) -> str:
    """``host`` without the brackets an IPv6 address carries in ``[::1]:2222`` (sockets want ``::1``)."""
    host = str(host).strip()
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


def connect_error(host: str, port, *, timeout: float = 2.0) -> str | None:
    """None when a TCP connection to ``host:port`` opens within ``timeout`` seconds, else why not
    (the socket's error as text: refused, timed out, the host does not resolve, not a port number).
    ``host`` may be an IPv6 address in brackets."""
    try:
        with socket.create_connection((bare_host(host), int(port)), timeout=timeout):
            return None
    except (OSError, ValueError) as err:
        return str(err) or type(err).__name__


def listens(host: str, port, *, timeout: float = 2.0) -> bool:
    """True when a TCP connection to ``host:port`` opens within ``timeout`` seconds (see
    :func:`connect_error` for why it did not)."""
    return connect_error(host, port, timeout=timeout) is None
