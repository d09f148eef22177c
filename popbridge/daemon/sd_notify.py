"""systemd readiness (``Type=notify``): a datagram to ``$NOTIFY_SOCKET``, as sd_notify(3) sends.

Twisted has no sd_notify of its own and libsystemd is not worth a dependency for one datagram.
Readiness is announced only once every listener is bound and the ledger is open, so units
ordered ``After=popbridge.service`` (a Postfix that needs the policy socket) start when
popbridge can answer. Without ``$NOTIFY_SOCKET`` (not under systemd) nothing is sent.
"""

import os
import socket
import time
from collections.abc import Mapping

from twisted.logger import Logger

log = Logger()


def sd_notify(state: str, environ: Mapping[str, str] | None = None) -> bool:
    """Send `state` (``"READY=1\\nSTATUS=..."``); True if a notify socket took it.

    A failure is logged, never raised: a daemon that works but cannot tell systemd is better
    off running (systemd then reports the start as timed out, which says what went wrong).
    """
    address = (os.environ if environ is None else environ).get("NOTIFY_SOCKET", "")
    if not address:
        return False
    if address.startswith("@"):  # an abstract socket, as systemd names it
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as notify:
            notify.connect(address)
            notify.sendall(state.encode())
    except OSError as e:
        log.warn("cannot notify systemd at {address}: {error}", address=address, error=e)
        return False
    return True


def ready(status: str) -> bool:
    return sd_notify(f"READY=1\nSTATUS={status}")


def reloading() -> bool:
    """systemd wants MONOTONIC_USEC with RELOADING=1 to match it to the reload it asked for."""
    microseconds = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    return sd_notify(f"RELOADING=1\nMONOTONIC_USEC={microseconds}")


def stopping() -> bool:
    return sd_notify("STOPPING=1")
