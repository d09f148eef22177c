"""Real TLS clients log in through the real popbridge daemon to the real Dovecot.

popbridge ends TLS itself: STLS/STARTTLS on its plain listeners and implicit TLS on `ssl:`
listeners, with a certificate for localhost/127.0.0.1 from a trustme CA made for this run. Each
login must be recorded with `tls: true`. Client addresses 127.0.4.1-19 belong to this module.
"""

from __future__ import annotations

import ssl

import pytest

from .imap_clients import BoundIMAP4
from .servers import BoundPOP3, Dovecot, Popbridge, Postfix, StartPopbridge, free_port
from .tls_support import (
    HANG_UP_TIMEOUT,
    BoundIMAP4SSL,
    BoundPOP3SSL,
    TlsCertificates,
    TlsListeners,
    curl,
    implicit_tls_proxy,
    implicit_tls_socket,
    openssl_starttls,
    read_line,
    read_until_hang_up,
    wait_for_listeners,
)

pytestmark = pytest.mark.realserver

RELAY_DENIED, ACCEPTED = 554, 250


def recorded(daemon: Popbridge, address: str) -> list[tuple[object, object, object]]:
    """(user, protocol, tls) of every live login the daemon holds for `address`."""
    return [(login["user"], login["protocol"], login.get("tls", "missing")) for login in daemon.logins(address)]


@pytest.fixture
def tls_listeners(popbridge_daemon: StartPopbridge, dovecot: Dovecot, tls_certificates: TlsCertificates) -> TlsListeners:
    """popbridge in front of the plain Dovecot: STLS on the pop3 port, STARTTLS on the imap
    port, implicit TLS (`ssl:` listeners) on pop3s_port and imaps_port."""
    pair = tls_certificates.popbridge
    pop3s, imaps = free_port(), free_port()
    daemon = popbridge_daemon(
        imap4=True,
        proxy_extra=pair.toml(),
        extra_config=implicit_tls_proxy("pop3", pop3s, f"tcp:host=127.0.0.1:port={dovecot.port}", pair)
        + implicit_tls_proxy("imap4", imaps, f"tcp:host=127.0.0.1:port={dovecot.imap_port}", pair),
    )
    wait_for_listeners(daemon, pop3s, imaps)
    return TlsListeners(daemon, pop3s, imaps)


# ---------------------------------------------------------------- curl


def test_curl_pop3_with_stls_logs_in_over_tls(tls_listeners: TlsListeners, tls_certificates: TlsCertificates) -> None:
    url = f"pop3://alice:alice-pw@127.0.0.1:{tls_listeners.pop3_port}/"
    result = curl(url, "127.0.4.1", "--ssl-reqd", "--cacert", str(tls_certificates.ca_file))
    assert result.returncode == 0, result.stderr
    assert "> STLS" in result.stderr
    assert result.stdout.startswith("1 ")  # alice's mailbox listing, read through TLS
    assert recorded(tls_listeners.daemon, "127.0.4.1") == [("alice", "pop3", True)]


def test_curl_imap_with_starttls_logs_in_over_tls(tls_listeners: TlsListeners, tls_certificates: TlsCertificates) -> None:
    url = f"imap://alice:alice-pw@127.0.0.1:{tls_listeners.imap_port}/"
    result = curl(url, "127.0.4.2", "--ssl-reqd", "--cacert", str(tls_certificates.ca_file))
    assert result.returncode == 0, result.stderr
    assert " STARTTLS" in result.stderr
    assert "INBOX" in result.stdout
    assert recorded(tls_listeners.daemon, "127.0.4.2") == [("alice", "imap4", True)]


def test_curl_pop3s_logs_in_over_implicit_tls(tls_listeners: TlsListeners, tls_certificates: TlsCertificates) -> None:
    url = f"pop3s://alice:alice-pw@127.0.0.1:{tls_listeners.pop3s_port}/"
    result = curl(url, "127.0.4.3", "--cacert", str(tls_certificates.ca_file))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("1 ")
    assert recorded(tls_listeners.daemon, "127.0.4.3") == [("alice", "pop3", True)]


def test_curl_imaps_logs_in_over_implicit_tls(tls_listeners: TlsListeners, tls_certificates: TlsCertificates) -> None:
    url = f"imaps://alice:alice-pw@127.0.0.1:{tls_listeners.imaps_port}/"
    result = curl(url, "127.0.4.4", "--cacert", str(tls_certificates.ca_file))
    assert result.returncode == 0, result.stderr
    assert "INBOX" in result.stdout
    assert recorded(tls_listeners.daemon, "127.0.4.4") == [("alice", "imap4", True)]


# ---------------------------------------------------------------- Python's poplib and imaplib


def test_poplib_stls_logs_in_over_tls(tls_listeners: TlsListeners, tls_certificates: TlsCertificates) -> None:
    pop = BoundPOP3("127.0.0.1", tls_listeners.pop3_port, "127.0.4.5")
    try:
        pop.stls(tls_certificates.client_context())  # poplib checks CAPA lists STLS first
        assert "STLS" not in pop.capa()  # not offered twice
        pop.user("alice")
        assert pop.pass_("alice-pw").startswith(b"+OK")
        assert pop.stat()[0] >= 1
        pop.quit()
    finally:
        pop.close()
    assert recorded(tls_listeners.daemon, "127.0.4.5") == [("alice", "pop3", True)]


def test_poplib_pop3_ssl_logs_in_over_implicit_tls(tls_listeners: TlsListeners, tls_certificates: TlsCertificates) -> None:
    pop = BoundPOP3SSL("127.0.0.1", tls_listeners.pop3s_port, "127.0.4.6", tls_certificates.client_context())
    try:
        assert "STLS" not in pop.capa()  # TLS is already on
        pop.user("alice")
        assert pop.pass_("alice-pw").startswith(b"+OK")
        assert pop.stat()[0] >= 1
        pop.quit()
    finally:
        pop.close()
    assert recorded(tls_listeners.daemon, "127.0.4.6") == [("alice", "pop3", True)]


def test_imaplib_starttls_logs_in_over_tls(tls_listeners: TlsListeners, tls_certificates: TlsCertificates) -> None:
    imap = BoundIMAP4("127.0.0.1", tls_listeners.imap_port, "127.0.4.7")
    try:
        assert "STARTTLS" in imap.capabilities
        imap.starttls(tls_certificates.client_context())
        assert "STARTTLS" not in imap.capabilities  # asked again after the handshake
        assert imap.login("alice", "alice-pw")[0] == "OK"
        assert imap.select("INBOX", readonly=True)[0] == "OK"
        imap.logout()
    finally:
        if imap.state != "LOGOUT":
            imap.shutdown()
    assert recorded(tls_listeners.daemon, "127.0.4.7") == [("alice", "imap4", True)]


def test_imaplib_imap4_ssl_logs_in_over_implicit_tls(tls_listeners: TlsListeners, tls_certificates: TlsCertificates) -> None:
    imap = BoundIMAP4SSL("127.0.0.1", tls_listeners.imaps_port, "127.0.4.8", tls_certificates.client_context())
    try:
        assert "STARTTLS" not in imap.capabilities
        assert imap.login("alice", "alice-pw")[0] == "OK"
        assert imap.select("INBOX", readonly=True)[0] == "OK"
        imap.logout()
    finally:
        if imap.state != "LOGOUT":
            imap.shutdown()
    assert recorded(tls_listeners.daemon, "127.0.4.8") == [("alice", "imap4", True)]


# ---------------------------------------------------------------- openssl s_client


def test_openssl_starttls_pop3_logs_in_over_tls(tls_listeners: TlsListeners, tls_certificates: TlsCertificates) -> None:
    script = "USER alice\nPASS alice-pw\nSTAT\nQUIT\n"  # pipelined: popbridge releases them one at a time
    result = openssl_starttls("pop3", tls_listeners.pop3_port, "127.0.4.9", tls_certificates.ca_file, script)
    assert recorded(tls_listeners.daemon, "127.0.4.9") == [("alice", "pop3", True)]
    replies = result.stdout.splitlines()
    assert [reply.split(" ", 1)[0] for reply in replies] == ["+OK", "+OK", "+OK", "+OK"], result.stdout
    assert result.returncode == 0, result.stdout + result.stderr  # it ends when the server hangs up


def test_openssl_starttls_imap_logs_in_over_tls(tls_listeners: TlsListeners, tls_certificates: TlsCertificates) -> None:
    script = "a LOGIN alice alice-pw\nb LOGOUT\n"
    result = openssl_starttls("imap", tls_listeners.imap_port, "127.0.4.10", tls_certificates.ca_file, script)
    assert recorded(tls_listeners.daemon, "127.0.4.10") == [("alice", "imap4", True)]
    assert any(line.startswith("a OK") for line in result.stdout.splitlines()), result.stdout
    assert any(line.startswith("b OK") for line in result.stdout.splitlines()), result.stdout
    assert result.returncode == 0, result.stdout + result.stderr  # it ends when the server hangs up


# ---------------------------------------------------------------- the end of a TLS session


def test_pop3s_client_is_disconnected_when_the_server_closes_after_quit(
    tls_listeners: TlsListeners, tls_certificates: TlsCertificates
) -> None:
    with implicit_tls_socket(tls_listeners.pop3s_port, "127.0.4.14", tls_certificates.client_context()) as connection:
        assert read_line(connection).startswith(b"+OK")
        connection.sendall(b"USER alice\r\nPASS alice-pw\r\nQUIT\r\n")
        received, closed = read_until_hang_up(connection)
    assert received.endswith(b"+OK Logging out.\r\n"), received
    assert closed, f"Dovecot closed after QUIT, popbridge kept the TLS client connected for {HANG_UP_TIMEOUT} s"


def test_starttls_imap_client_is_disconnected_when_the_server_closes_after_logout(
    tls_listeners: TlsListeners, tls_certificates: TlsCertificates
) -> None:
    imap = BoundIMAP4("127.0.0.1", tls_listeners.imap_port, "127.0.4.15")
    try:
        imap.starttls(tls_certificates.client_context())
        imap.login("alice", "alice-pw")
        imap.send_line(b"z LOGOUT")
        received, closed = read_until_hang_up(imap.sock)
    finally:
        imap.shutdown()
    assert b"z OK" in received, received
    assert closed, f"Dovecot closed after LOGOUT, popbridge kept the TLS client connected for {HANG_UP_TIMEOUT} s"


# ---------------------------------------------------------------- the relay, and the TLS floor


def test_tls_login_lets_its_address_relay(tls_listeners: TlsListeners, tls_certificates: TlsCertificates, postfix: Postfix) -> None:
    assert postfix.rcpt_code("127.0.4.11") == RELAY_DENIED
    pop = BoundPOP3SSL("127.0.0.1", tls_listeners.pop3s_port, "127.0.4.11", tls_certificates.client_context())
    try:
        pop.user("bob")
        pop.pass_("bob-pw")
        pop.quit()
    finally:
        pop.close()
    assert postfix.rcpt_code("127.0.4.11") == ACCEPTED


def tls12_only(context: ssl.SSLContext) -> ssl.SSLContext:
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    return context


def test_tls12_client_is_served_by_default(tls_listeners: TlsListeners, tls_certificates: TlsCertificates) -> None:
    context = tls12_only(tls_certificates.client_context())
    with implicit_tls_socket(tls_listeners.pop3s_port, "127.0.4.12", context) as connection:
        assert connection.version() == "TLSv1.2"
        assert connection.recv(512).startswith(b"+OK")


def test_tls_minimum_version_13_refuses_a_tls12_client(
    popbridge_daemon: StartPopbridge, dovecot: Dovecot, tls_certificates: TlsCertificates
) -> None:
    pair, pop3s = tls_certificates.popbridge, free_port()
    daemon = popbridge_daemon(
        extra_config=implicit_tls_proxy(
            "pop3", pop3s, f"tcp:host=127.0.0.1:port={dovecot.port}", pair, extra='tls_minimum_version = "TLSv1.3"\n'
        )
    )
    wait_for_listeners(daemon, pop3s)
    with pytest.raises(ssl.SSLError):
        implicit_tls_socket(pop3s, "127.0.4.13", tls12_only(tls_certificates.client_context())).close()
    with implicit_tls_socket(pop3s, "127.0.4.13", tls_certificates.client_context()) as connection:
        assert connection.version() == "TLSv1.3"
        assert connection.recv(512).startswith(b"+OK")
