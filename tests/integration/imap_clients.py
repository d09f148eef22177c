"""IMAP clients for the integration tests: imaplib bound to a chosen 127.0.0.x, curl, fetchmail.

Kept apart from servers/ (the fixtures) so that the IMAP tests share one small module.
"""

from __future__ import annotations

import imaplib
import os
import re
import socket
import subprocess
from pathlib import Path

from .servers import binary

CURL_TIMEOUT = 30


class BoundIMAP4(imaplib.IMAP4):
    """imaplib.IMAP4 connecting from a chosen local address (127.0.0.x on loopback)."""

    def __init__(self, host: str, port: int, source: str, timeout: float = 30) -> None:
        self.source = source
        super().__init__(host, port, timeout)

    def _create_socket(self, timeout: float | None) -> socket.socket:
        return socket.create_connection((self.host, self.port), timeout, source_address=(self.source, 0))

    def send_line(self, line: bytes) -> None:
        """Write one raw line (CRLF added), outside imaplib's command machinery."""
        self.send(line + b"\r\n")

    def read_until_tagged(self, tag: bytes) -> tuple[bytes, bytes]:
        """The exact bytes of every response up to the tagged one (server literals included),
        and the tagged line itself."""
        received = []
        while True:
            line = self.readline()
            if not line:
                raise imaplib.IMAP4.abort(f"connection closed before {tag!r} completed")
            if line.startswith(tag + b" "):
                return b"".join(received), line
            received.append(line)
            literal = re.search(rb"\{(\d+)\}\r\n$", line)
            if literal:
                received.append(self.read(int(literal.group(1))))


def close(imap: imaplib.IMAP4) -> None:
    """Close the connection unless LOGOUT already did."""
    if imap.state != "LOGOUT":
        imap.shutdown()


def imap_login(port: int, source: str, user: str, password: str, host: str = "127.0.0.1") -> str:
    """LOGIN from `source`, then LOGOUT; the tagged status (imaplib.IMAP4.error on NO)."""
    imap = BoundIMAP4(host, port, source)
    try:
        status, _ = imap.login(user, password)
        imap.logout()
        return status
    finally:
        close(imap)


def imap_authenticate_plain(
    port: int, source: str, user: str, password: str, authzid: str = "", host: str = "127.0.0.1"
) -> str:
    """AUTHENTICATE PLAIN (server continuation, no initial response) from `source`, then LOGOUT."""
    imap = BoundIMAP4(host, port, source)
    try:
        status, _ = imap.authenticate("PLAIN", lambda _: f"{authzid}\0{user}\0{password}".encode())
        imap.logout()
        return status
    finally:
        close(imap)


def imap_fetch_raw(port: int, source: str, user: str, password: str, which: int = 1, host: str = "127.0.0.1") -> bytes:
    """The exact bytes the server sends for `FETCH which BODY[]` in the read-only INBOX, up to
    (not including) the tagged completion, whose text carries timings that differ per run."""
    imap = BoundIMAP4(host, port, source)
    try:
        imap.login(user, password)
        imap.select("INBOX", readonly=True)  # EXAMINE: BODY[] sets no \Seen flag
        tag = imap._new_tag()
        imap.send_line(tag + f" FETCH {which} BODY[]".encode())
        responses, completion = imap.read_until_tagged(tag)
        if not completion.startswith(tag + b" OK"):
            raise imaplib.IMAP4.error(completion)
        imap.logout()
        return responses
    finally:
        close(imap)


def fetch_literal(responses: bytes) -> bytes:
    """The message inside a raw `* n FETCH (BODY[] {size}\\r\\n...)` response."""
    match = re.search(rb"BODY\[\] \{(\d+)\}\r\n", responses)
    assert match is not None, responses[:200]
    start = match.end()
    return responses[start : start + int(match.group(1))]


def curl_imap(
    port: int, source: str, user: str, password: str, *options: str, host: str = "127.0.0.1"
) -> subprocess.CompletedProcess[str]:
    """`curl -v imap://user:password@host:port/` from `source`: lists the folders (exit 0), or
    exit 67 when the login is refused. The client's commands are in stderr (`> A001 ...`)."""
    return subprocess.run(
        [
            binary("curl"),
            *("--verbose", "--silent", "--show-error", "--max-time", str(CURL_TIMEOUT), "--interface", source),
            *options,
            f"imap://{user}:{password}@{host}:{port}/",
        ],
        check=False,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=CURL_TIMEOUT * 2,
    )


def fetchmail_check(
    directory: Path, port: int, user: str, password: str, auth: str = "any", host: str = "127.0.0.1"
) -> subprocess.CompletedProcess[str]:
    """`fetchmail --check` (log in, count messages, fetch nothing) over plain IMAP with
    fetchmail's `auth` option (`any`: its own choice; `password`: the LOGIN command). fetchmail
    cannot choose its source address, so it connects from 127.0.0.1. Exit 0: messages waiting,
    1: none, 3: login refused. The protocol trace (`IMAP> A0002 LOGIN ...`) is in the output."""
    rcfile = directory / "fetchmailrc"
    rcfile.write_text(
        f"poll {host} protocol IMAP service {port} auth {auth} timeout 30\n"
        f'  user "{user}" password "{password}" sslproto \'\'\n'
    )
    rcfile.chmod(0o600)
    return subprocess.run(
        [binary("fetchmail"), "--check", "--verbose", "--nosyslog", "--fetchmailrc", str(rcfile)],
        check=False,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "FETCHMAILHOME": str(directory), "HOME": str(directory)},
    )


def raw_imap_connection(port: int, source: str, host: str = "127.0.0.1", timeout: float = 30) -> socket.socket:
    """A plain socket to `host:port` from `source`, its greeting already read and checked."""
    connection = socket.create_connection((host, port), timeout, source_address=(source, 0))
    greeting = connection.recv(4096)
    if not greeting.startswith(b"* OK"):
        connection.close()
        raise imaplib.IMAP4.error(f"greeting {greeting!r}")
    return connection


def read_until_closed(connection: socket.socket) -> bytes:
    """Everything the peer sends until it closes (EOF, or a reset when our input was unread)."""
    received = []
    while True:
        try:
            data = connection.recv(65536)
        except ConnectionResetError:
            return b"".join(received)
        if not data:
            return b"".join(received)
        received.append(data)
