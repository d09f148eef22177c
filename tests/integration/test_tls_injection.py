"""The STARTTLS plaintext injection, on real sockets, and `require_tls`, against real Dovecot.

Bytes a client sends behind STLS/STARTTLS in the clear must never be obeyed; a backend's bytes
behind its OK to popbridge's own STARTTLS must never be believed; with require_tls no password
leaves popbridge before TLS. Dovecot's log is the witness of what reached the backend: with
`forward_client_address` it names the real client (rip=), and for a connection on which nothing
was tried it writes "no auth attempts". Client addresses 127.0.4.20-29 belong to this module.
"""

from __future__ import annotations

import imaplib
import poplib
import socket

import pytest

from .imap_clients import BoundIMAP4
from .servers import BoundPOP3, Dovecot, Popbridge, StartPopbridge, free_port
from .tls_support import (
    ScriptedStartTlsBackend,
    TlsCertificates,
    plain_proxy,
    read_all,
    read_line,
    wait_for_listeners,
)

pytestmark = pytest.mark.realserver


def dovecot_saw_no_login(dovecot: Dovecot, client: str, since: int) -> str:
    """Wait for Dovecot's line about `client`'s connection ending and check nothing was tried
    on it; returns that line."""
    line = dovecot.log.wait_for(lambda line: f"rip={client}," in line and "Disconnected" in line, since=since)
    assert "no auth attempts" in line, line
    assert not [line for line in dovecot.log.text(since).splitlines() if f"rip={client}," in line and "Login:" in line]
    return line


@pytest.fixture
def starttls_daemon(popbridge_daemon: StartPopbridge, tls_certificates: TlsCertificates) -> Popbridge:
    """popbridge offering STLS/STARTTLS, forwarding the client address so Dovecot logs it."""
    return popbridge_daemon(imap4=True, forward_client_address=True, proxy_extra=tls_certificates.popbridge.toml())


# ---------------------------------------------------------------- the client leg


def test_pop3_commands_sent_behind_stls_are_discarded(
    starttls_daemon: Popbridge, dovecot: Dovecot, tls_certificates: TlsCertificates
) -> None:
    mark = dovecot.log.mark()
    plain = socket.create_connection(("127.0.0.1", starttls_daemon.port), 30, source_address=("127.0.4.21", 0))
    with plain:
        assert read_line(plain).startswith(b"+OK")
        plain.sendall(b"STLS\r\nUSER alice\r\nPASS alice-pw\r\n")  # one write: the injection
        assert read_line(plain).startswith(b"+OK")
        with tls_certificates.client_context().wrap_socket(plain, server_hostname="127.0.0.1") as tls:
            tls.sendall(b"QUIT\r\n")
            after_handshake = read_line(tls)
    # had USER and PASS been obeyed, their "+OK"s would come before the answer to QUIT
    assert after_handshake.startswith(b"+OK Logging out"), after_handshake
    dovecot_saw_no_login(dovecot, "127.0.4.21", mark)
    assert starttls_daemon.logins("127.0.4.21") == []


def test_imap_commands_sent_behind_starttls_are_discarded(
    starttls_daemon: Popbridge, dovecot: Dovecot, tls_certificates: TlsCertificates
) -> None:
    assert starttls_daemon.imap_port is not None
    mark = dovecot.log.mark()
    plain = socket.create_connection(("127.0.0.1", starttls_daemon.imap_port), 30, source_address=("127.0.4.22", 0))
    with plain:
        assert read_line(plain).startswith(b"* OK")
        plain.sendall(b"a STARTTLS\r\nb LOGIN alice alice-pw\r\n")  # one write: the injection
        assert read_line(plain).startswith(b"a OK")
        with tls_certificates.client_context().wrap_socket(plain, server_hostname="127.0.0.1") as tls:
            tls.sendall(b"c LOGOUT\r\n")
            after_handshake = read_all(tls)
    assert not any(line.startswith(b"b ") for line in after_handshake.splitlines()), after_handshake
    assert b"\r\nc OK" in after_handshake, after_handshake
    dovecot_saw_no_login(dovecot, "127.0.4.22", mark)
    assert starttls_daemon.logins("127.0.4.22") == []


# ---------------------------------------------------------------- the backend leg


def test_imap_backend_reply_sent_behind_its_starttls_ok_is_not_believed(
    popbridge_daemon: StartPopbridge, tls_certificates: TlsCertificates
) -> None:
    def answer(line: bytes) -> bytes:
        tag, _, verb = line.partition(b" ")
        if verb.upper() == b"CAPABILITY":
            return b"* CAPABILITY IMAP4rev1 AUTH=PLAIN\r\n" + tag + b" OK done\r\n"
        return tag + b" NO [AUTHENTICATIONFAILED] the scripted backend says no\r\n"

    backend = ScriptedStartTlsBackend(
        greeting=b"* OK [CAPABILITY IMAP4rev1 STARTTLS AUTH=PLAIN] scripted backend ready\r\n",
        starttls_command=b"popbridge1 STARTTLS",  # popbridge's own tag (wire/imap4.py STARTTLS_TAG)
        starttls_answer=b"popbridge1 OK begin TLS\r\nb OK LOGIN done\r\n",
        answer=answer,
        pair=tls_certificates.popbridge,  # for 127.0.0.1
    )
    port = free_port()
    try:
        daemon = popbridge_daemon(
            extra_config=plain_proxy(
                "imap4", port, backend.endpoint,
                f'backend_starttls = true\nbackend_tls_ca = "{tls_certificates.ca_file}"\n',
            )
        )
        wait_for_listeners(daemon, port)
        imap = BoundIMAP4("127.0.0.1", port, "127.0.4.23")
        try:
            imap.send_line(b"b LOGIN alice alice-pw")
            _, completion = imap.read_until_tagged(b"b")
        finally:
            imap.shutdown()
    finally:
        backend.close()
    assert completion.startswith(b"b NO"), completion
    assert backend.received[-1:] == [b"b LOGIN alice alice-pw\r\n"], (backend.received, backend.errors)
    assert daemon.logins("127.0.4.23") == []


def test_pop3_backend_reply_sent_behind_its_stls_ok_is_not_believed(
    popbridge_daemon: StartPopbridge, tls_certificates: TlsCertificates
) -> None:
    def answer(line: bytes) -> bytes:
        verb = line.split(b" ", 1)[0].upper()
        return {b"USER": b"+OK send PASS\r\n", b"QUIT": b"+OK bye\r\n"}.get(verb, b"-ERR [AUTH] the scripted backend says no\r\n")

    # believed, the forged "+OK" would answer USER and the real answer to USER would answer PASS
    backend = ScriptedStartTlsBackend(
        greeting=b"+OK scripted backend ready\r\n",
        starttls_command=b"STLS",
        starttls_answer=b"+OK begin TLS\r\n+OK forged: logged in\r\n",
        answer=answer,
        pair=tls_certificates.popbridge,
    )
    port = free_port()
    try:
        daemon = popbridge_daemon(
            extra_config=plain_proxy(
                "pop3", port, backend.endpoint,
                f'backend_starttls = true\nbackend_tls_ca = "{tls_certificates.ca_file}"\n',
            )
        )
        wait_for_listeners(daemon, port)
        pop = BoundPOP3("127.0.0.1", port, "127.0.4.24")
        try:
            assert pop.user("alice") == b"+OK send PASS"
            with pytest.raises(poplib.error_proto, match="scripted backend says no"):
                pop.pass_("alice-pw")
        finally:
            pop.close()
    finally:
        backend.close()
    assert backend.received[:2] == [b"USER alice\r\n", b"PASS alice-pw\r\n"], (backend.received, backend.errors)
    assert daemon.logins("127.0.4.24") == []


# ---------------------------------------------------------------- require_tls


@pytest.fixture
def tls_required_daemon(popbridge_daemon: StartPopbridge, tls_certificates: TlsCertificates) -> Popbridge:
    return popbridge_daemon(
        imap4=True, forward_client_address=True, proxy_extra=tls_certificates.popbridge.toml() + "require_tls = true\n"
    )


def test_require_tls_refuses_plaintext_pop3_login_until_stls(
    tls_required_daemon: Popbridge, dovecot: Dovecot, tls_certificates: TlsCertificates
) -> None:
    mark = dovecot.log.mark()
    pop = BoundPOP3("127.0.0.1", tls_required_daemon.port, "127.0.4.25")
    try:
        assert "USER" not in pop.capa() and "STLS" in pop.capa()
        with pytest.raises(poplib.error_proto, match="TLS is required"):
            pop.user("alice")
        with pytest.raises(poplib.error_proto, match="TLS is required"):
            pop.pass_("alice-pw")
        pop.quit()
    finally:
        pop.close()
    dovecot_saw_no_login(dovecot, "127.0.4.25", mark)
    assert tls_required_daemon.logins("127.0.4.25") == []

    pop = BoundPOP3("127.0.0.1", tls_required_daemon.port, "127.0.4.25")
    try:
        with pytest.raises(poplib.error_proto, match="TLS is required"):
            pop.user("alice")
        pop.stls(tls_certificates.client_context())
        pop.user("alice")
        assert pop.pass_("alice-pw").startswith(b"+OK")
        pop.quit()
    finally:
        pop.close()
    assert [(login["user"], login["tls"]) for login in tls_required_daemon.logins("127.0.4.25")] == [("alice", True)]


def test_require_tls_refuses_plaintext_imap_login_until_starttls(
    tls_required_daemon: Popbridge, dovecot: Dovecot, tls_certificates: TlsCertificates
) -> None:
    assert tls_required_daemon.imap_port is not None
    mark = dovecot.log.mark()
    imap = BoundIMAP4("127.0.0.1", tls_required_daemon.imap_port, "127.0.4.26")
    try:
        assert "LOGINDISABLED" in imap.capabilities and "STARTTLS" in imap.capabilities
        imap.send_line(b"x LOGIN alice alice-pw")
        _, completion = imap.read_until_tagged(b"x")
        assert completion.startswith(b"x NO [PRIVACYREQUIRED]"), completion
        imap.send_line(b"y AUTHENTICATE PLAIN AGFsaWNlAGFsaWNlLXB3")  # \0alice\0alice-pw
        _, completion = imap.read_until_tagged(b"y")
        assert completion.startswith(b"y NO [PRIVACYREQUIRED]"), completion
        imap.logout()
    finally:
        if imap.state != "LOGOUT":
            imap.shutdown()
    dovecot_saw_no_login(dovecot, "127.0.4.26", mark)
    assert tls_required_daemon.logins("127.0.4.26") == []

    imap = BoundIMAP4("127.0.0.1", tls_required_daemon.imap_port, "127.0.4.26")
    try:
        with pytest.raises(imaplib.IMAP4.error, match="PRIVACYREQUIRED|TLS"):
            imap.login("alice", "alice-pw")
        imap.starttls(tls_certificates.client_context())
        assert "LOGINDISABLED" not in imap.capabilities
        assert imap.login("alice", "alice-pw")[0] == "OK"
        imap.logout()
    finally:
        if imap.state != "LOGOUT":
            imap.shutdown()
    assert [(login["user"], login["tls"]) for login in tls_required_daemon.logins("127.0.4.26")] == [("alice", True)]
