"""Small mail and relay clients bound to a chosen 127.0.0.x source address."""

from __future__ import annotations

import poplib
import socket
import subprocess
from pathlib import Path

from .processes import ServerError, binary


class BoundPOP3(poplib.POP3):
    """poplib.POP3 connecting from a chosen local address (127.0.0.x on loopback)."""

    def __init__(self, host: str, port: int, source: str, timeout: float = 30) -> None:
        self.source = source
        super().__init__(host, port, timeout)

    def _create_socket(self, timeout: float) -> socket.socket:
        return socket.create_connection((self.host, self.port), timeout, source_address=(self.source, 0))


def pop3_login(port: int, source: str, user: str, password: str, host: str = "127.0.0.1") -> bytes:
    """USER/PASS from `source`, then QUIT; returns the reply to PASS (poplib.error_proto on -ERR)."""
    pop = BoundPOP3(host, port, source)
    try:
        pop.user(user)
        reply = pop.pass_(password)
        pop.quit()
        return reply
    finally:
        pop.close()


def netstring(text: str) -> bytes:
    return b"%d:%s," % (len(text.encode()), text.encode())


def socketmap_answer(socket_path: Path | str, key: str, name: str = "access") -> bytes:
    """One socketmap query (`name` `key`) on a connection of its own; the netstring answered."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(str(socket_path))
        s.sendall(netstring(f"{name} {key}"))
        return s.recv(4096)


def unix_exchange(socket_path: Path | str, request: bytes, end: bytes, timeout: float = 30.0) -> bytes:
    """Send `request` on a unix-socket connection of its own and read until the answer ends
    with `end`; a server that closes first yields what it sent, for the caller to judge."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(socket_path))
        s.sendall(request)
        answer = b""
        while not answer.endswith(end):
            chunk = s.recv(4096)
            if not chunk:
                break
            answer += chunk
        return answer


def policy_action(socket_path: Path | str, address: str, timeout: float = 10.0, **attributes: str) -> str:
    """One Postfix policy request (RCPT) for `address`, with `attributes` (``sender=...``) as
    further lines; the `action=` line of the answer."""
    lines = ["request=smtpd_access_policy", "protocol_state=RCPT", f"client_address={address}"]
    lines += [f"{name}={value}" for name, value in attributes.items()]
    answer = unix_exchange(socket_path, ("\n".join(lines) + "\n\n").encode(), b"\n\n", timeout)
    if not answer.endswith(b"\n\n"):
        raise ServerError(f"policy socket closed after {answer!r}")
    return answer.decode().strip()


def pop3_retr_raw(port: int, source: str, user: str, password: str, which: int = 1, host: str = "127.0.0.1") -> bytes:
    """The exact bytes the server sends for RETR `which`: status line, stuffed body, `.` line."""
    pop = BoundPOP3(host, port, source)
    try:
        pop.user(user)
        pop.pass_(password)
        pop._putcmd(f"RETR {which}")
        lines = [pop.file.readline()]
        if not lines[0].startswith(b"+OK"):
            raise poplib.error_proto(lines[0])
        while lines[-1] != b".\r\n":
            line = pop.file.readline()
            if not line:
                raise poplib.error_proto("connection closed inside RETR")
            lines.append(line)
        pop.quit()
        return b"".join(lines)
    finally:
        pop.close()


def curl_pop3(
    port: int, source: str, user: str, password: str, *options: str, host: str = "127.0.0.1"
) -> subprocess.CompletedProcess[str]:
    """`curl pop3://user:password@host:port/` from `source`: lists the mailbox (exit 0), or
    exit 67 when the login is refused. `options` go to curl (`--login-options AUTH=PLAIN`)."""
    return subprocess.run(
        [
            binary("curl"),
            *("--silent", "--show-error", "--max-time", "30", "--interface", source),
            *options,
            f"pop3://{user}:{password}@{host}:{port}/",
        ],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )


def message_of_size(size: int, subject: str = "big") -> bytes:
    """An RFC 5322 message of about `size` bytes with CRLF lines, some starting with a dot so
    the POP3 dot-stuffing is exercised."""
    header = f"From: sender@example.org\r\nTo: dave@example.org\r\nSubject: {subject}\r\n\r\n".encode()
    lines = [header]
    total, n = len(header), 0
    while total < size:
        prefix = "." if n % 7 == 0 else ""
        line = f"{prefix}line {n:08d} " + "x" * 60 + "\r\n"
        lines.append(line.encode())
        total += len(line)
        n += 1
    lines.append(b".\r\n..\r\nend\r\n")
    return b"".join(lines)
