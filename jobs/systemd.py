"""sd_notify(3) without libsystemd: READY, STATUS, WATCHDOG and STOPPING over ``NOTIFY_SOCKET``."""

import logging
import os
import socket

log = logging.getLogger("jobs.worker")
_sock: socket.socket | None = None


def notify(*lines: str) -> bool:
    """Send ``lines`` (e.g. "READY=1") to systemd; a no-op (False) when not run under Type=notify."""
    global _sock
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        if _sock is None:
            _sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        _sock.sendto("\n".join(lines).encode(), address)
        return True
    except OSError as exc:
        log.warning("sd_notify to %s failed: %s", address, exc)
        return False
