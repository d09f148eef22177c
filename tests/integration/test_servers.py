"""The fixtures on their own, without popbridge: if these fail, the end-to-end tests say nothing."""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from .servers import Dovecot, Postfix, pop3_login

pytestmark = pytest.mark.realserver


@contextmanager
def policy_server(path: Path, action: str) -> Iterator[list[str]]:
    """A throwaway Postfix policy service answering `action` to every request; yields the
    client addresses it was asked about. Its connections close on exit: smtpd keeps policy
    connections open across SMTP sessions and would otherwise ask this server again."""
    asked: list[str] = []
    connections: list[socket.socket] = []
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(os.fspath(path))
    path.chmod(0o666)
    listener.listen()

    def serve(connection: socket.socket) -> None:
        buffer = b""
        with connection:
            while data := connection.recv(4096):
                buffer += data
                while b"\n\n" in buffer:
                    request, buffer = buffer.split(b"\n\n", 1)
                    fields = dict(line.partition(b"=")[::2] for line in request.split(b"\n"))
                    asked.append(fields.get(b"client_address", b"").decode())
                    connection.sendall(f"action={action}\n\n".encode())

    def accept() -> None:
        while True:
            try:
                connection, _ = listener.accept()
            except OSError:
                return
            connections.append(connection)
            threading.Thread(target=serve, args=(connection,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield asked
    finally:
        listener.shutdown(socket.SHUT_RDWR)
        listener.close()
        for connection in connections:
            connection.shutdown(socket.SHUT_RDWR)
        path.unlink()


def test_dovecot_accepts_a_direct_pop3_login(dovecot: Dovecot) -> None:
    assert pop3_login(dovecot.port, "127.0.0.2", "alice", "alice-pw").startswith(b"+OK")


def test_postfix_refuses_relay_when_the_policy_answers_dunno(postfix: Postfix, policy_socket: Path) -> None:
    with policy_server(policy_socket, "DUNNO") as asked:
        assert postfix.rcpt_code("127.0.0.5") == 554
    assert asked == ["127.0.0.5"]


def test_postfix_relays_when_the_policy_answers_ok(postfix: Postfix, policy_socket: Path) -> None:
    with policy_server(policy_socket, "OK"):
        assert postfix.rcpt_code("127.0.0.5") == 250
