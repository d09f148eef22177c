"""A blocking client for the control socket, for the ``popbridge`` command line (no reactor)."""

import json
import socket
from typing import Any

MAX_REPLY = 64 * 1024 * 1024  # a `list` reply carries every live login on one line


class ControlError(Exception):
    """The control socket could not be used; the message says why, for the operator."""


def control_request(socket_path: str, request: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
    """Send one request to the control socket at `socket_path` and return its reply object.

    Raises ControlError when the socket is missing, refuses or times out, or the reply is not a
    JSON object. An ``{"ok": false}`` reply is returned as it is: the caller reports its error.
    """
    line = json.dumps(request, ensure_ascii=True).encode() + b"\n"
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
            connection.settimeout(timeout)
            connection.connect(socket_path)
            connection.sendall(line)
            reply = _read_line(connection, socket_path)
    except FileNotFoundError:
        raise ControlError(f"{socket_path}: no such control socket (is popbridge running?)") from None
    except ConnectionRefusedError:
        raise ControlError(f"{socket_path}: connection refused (is popbridge running?)") from None
    except PermissionError:
        raise ControlError(f"{socket_path}: permission denied (the control socket is mode 0600)") from None
    except TimeoutError:
        raise ControlError(f"{socket_path}: no reply within {timeout:g} seconds") from None
    except OSError as e:
        raise ControlError(f"{socket_path}: {e.strerror or e}") from None
    try:
        document = json.loads(reply)
    except ValueError:
        raise ControlError(f"{socket_path}: the reply is not JSON: {reply[:80]!r}") from None
    if not isinstance(document, dict):
        raise ControlError(f"{socket_path}: the reply is not a JSON object: {reply[:80]!r}")
    return document


def _read_line(connection: socket.socket, socket_path: str) -> bytes:
    received = bytearray()
    while True:
        chunk = connection.recv(65536)
        if not chunk:
            raise ControlError(f"{socket_path}: the connection closed before a complete reply")
        end = chunk.find(b"\n")
        received += chunk if end < 0 else chunk[:end]
        if end >= 0:
            return bytes(received)
        if len(received) > MAX_REPLY:
            raise ControlError(f"{socket_path}: the reply is over {MAX_REPLY} bytes")
