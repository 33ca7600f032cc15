"""systemd integration: tell the service manager when the daemon is ready and when it stops.

The protocol is one datagram to the socket named by ``NOTIFY_SOCKET`` (sd_notify(3)); a
dependency for that would be heavier than the ten lines it replaces. Outside systemd the
variable is unset and nothing happens.
"""

from __future__ import annotations

__all__ = ["Notifier"]

import socket


class Notifier:
    """Sends sd_notify messages when ``socket_path`` is set.

    Args:
        socket_path: the value of ``NOTIFY_SOCKET`` (``@`` means an abstract socket), or None.
    """

    def __init__(self, socket_path: str | None) -> None:
        self._path = socket_path

    def notify(self, message: str) -> bool:
        """Send ``message`` (``READY=1``, ``STOPPING=1``); True when it was sent."""
        if not self._path:
            return False
        address = "\0" + self._path[1:] if self._path.startswith("@") else self._path
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            try:
                sock.sendto(message.encode(), address)
            except OSError:
                return False
        return True
