"""popbridge's own TLS towards the backend: STARTTLS done by popbridge (`backend_starttls`) and
implicit TLS (`tls:` backend endpoints), against a real Dovecot with `ssl = yes` whose
certificate (mail.popbridge.test, 127.0.0.1) comes from the test CA.

Verification is on: the right CA and name log in (and Dovecot logs the login as TLS); a wrong CA
or name gives the client an error and records nothing. Client addresses 127.0.4.30-39 belong to
this module.
"""

from __future__ import annotations

import json
import poplib
import shutil
import subprocess
from pathlib import Path

import pytest

from .imap_clients import BoundIMAP4
from .servers import BoundPOP3, Popbridge, StartPopbridge, free_port, popbridge_command
from .tls_support import TlsCertificates, TlsDovecot, plain_proxy, wait_for_listeners

pytestmark = pytest.mark.realserver


def starttls_backend_keys(ca: Path, hostname: str = "mail.popbridge.test") -> str:
    return f"backend_starttls = true\nbackend_tls_ca = {json.dumps(str(ca))}\nbackend_tls_hostname = {json.dumps(hostname)}\n"


def tls_endpoint(port: int, trust_roots: Path) -> str:
    """A `tls:` client endpoint to Dovecot's implicit-TLS port, trusting only `trust_roots`
    (a directory of PEM CA certificates) and checking the certificate names 127.0.0.1."""
    return f"tls:host=127.0.0.1:port={port}:trustRoots={trust_roots}"


def trust_directory(directory: Path, ca: Path) -> Path:
    """A directory holding only `ca`, as the `trustRoots=` of a `tls:` endpoint wants it."""
    roots = directory / f"trust-{ca.stem}"
    roots.mkdir()
    shutil.copy(ca, roots / "ca.pem")
    return roots


def start_proxy(popbridge_daemon: StartPopbridge, protocol: str, backend: str, extra: str = "") -> tuple[Popbridge, int]:
    """popbridge with one more [[proxy]] (plain client side) in front of `backend`."""
    port = free_port()
    daemon = popbridge_daemon(extra_config=plain_proxy(protocol, port, backend, extra))
    wait_for_listeners(daemon, port)
    return daemon, port


def dovecot_tls_login_line(dovecot: TlsDovecot, user: str, since: int) -> str:
    """Dovecot's login line for `user`; `TLS` in it says the popbridge leg was encrypted."""
    return dovecot.log.wait_for(lambda line: f"Login: user=<{user}>" in line, since=since)


def pop3_session_refused(port: int, source: str, user: str, password: str) -> str:
    """Try USER/PASS; return the error the client saw (the test fails if the login worked)."""
    try:
        pop = BoundPOP3("127.0.0.1", port, source)
    except (poplib.error_proto, OSError, EOFError) as e:
        return f"{type(e).__name__}: {e}"
    try:
        pop.user(user)
        reply = pop.pass_(password)
    except (poplib.error_proto, OSError, EOFError) as e:
        return f"{type(e).__name__}: {e}"
    finally:
        pop.close()
    pytest.fail(f"the login went through: {reply!r}")


# ---------------------------------------------------------------- verified: logs in


def test_backend_starttls_pop3_logs_in_with_the_backend_verified(
    popbridge_daemon: StartPopbridge, tls_dovecot: TlsDovecot, tls_certificates: TlsCertificates
) -> None:
    daemon, port = start_proxy(
        popbridge_daemon, "pop3", f"tcp:host=127.0.0.1:port={tls_dovecot.port}", starttls_backend_keys(tls_certificates.ca_file)
    )
    mark = tls_dovecot.log.mark()
    pop = BoundPOP3("127.0.0.1", port, "127.0.4.31")
    try:
        assert "STLS" not in pop.capa()  # the backend's STLS is popbridge's business, not the client's
        pop.user("alice")
        assert pop.pass_("alice-pw").startswith(b"+OK")
        pop.quit()
    finally:
        pop.close()
    assert "TLS" in dovecot_tls_login_line(tls_dovecot, "alice", mark)
    assert [(login["user"], login["tls"]) for login in daemon.logins("127.0.4.31")] == [("alice", False)]


def test_backend_starttls_imap_logs_in_with_the_backend_verified(
    popbridge_daemon: StartPopbridge, tls_dovecot: TlsDovecot, tls_certificates: TlsCertificates
) -> None:
    daemon, port = start_proxy(
        popbridge_daemon, "imap4", f"tcp:host=127.0.0.1:port={tls_dovecot.imap_port}", starttls_backend_keys(tls_certificates.ca_file)
    )
    mark = tls_dovecot.log.mark()
    imap = BoundIMAP4("127.0.0.1", port, "127.0.4.32")
    try:
        assert "STARTTLS" not in imap.capabilities  # popbridge has no certificate on this proxy
        assert imap.login("bob", "bob-pw")[0] == "OK"
        imap.logout()
    finally:
        if imap.state != "LOGOUT":
            imap.shutdown()
    assert "TLS" in dovecot_tls_login_line(tls_dovecot, "bob", mark)
    assert [login["user"] for login in daemon.logins("127.0.4.32")] == ["bob"]


def test_tls_backend_endpoint_logs_in_with_the_backend_verified(
    popbridge_daemon: StartPopbridge, tls_dovecot: TlsDovecot, tls_certificates: TlsCertificates, tmp_path: Path
) -> None:
    roots = trust_directory(tmp_path, tls_certificates.ca_file)
    daemon, port = start_proxy(popbridge_daemon, "pop3", tls_endpoint(tls_dovecot.pop3s_port, roots))
    mark = tls_dovecot.log.mark()
    pop = BoundPOP3("127.0.0.1", port, "127.0.4.33")
    try:
        pop.user("alice")
        assert pop.pass_("alice-pw").startswith(b"+OK")
        pop.quit()
    finally:
        pop.close()
    assert "TLS" in dovecot_tls_login_line(tls_dovecot, "alice", mark)
    assert [login["user"] for login in daemon.logins("127.0.4.33")] == ["alice"]


# ---------------------------------------------------------------- not verified: refused, nothing recorded


def assert_refused_before_the_backend_login(daemon: Popbridge, port: int, tls_dovecot: TlsDovecot, client: str) -> None:
    """alice gets -ERR, the TLS handshake fails at Dovecot, her password never reaches it, and
    popbridge records nothing for `client`."""
    mark = tls_dovecot.log.mark()
    error = pop3_session_refused(port, client, "alice", "alice-pw")
    assert "-ERR" in error, error
    tls_dovecot.log.wait_for(lambda line: "SSL_accept() failed" in line or "TLS handshaking" in line, since=mark)
    assert "Login: user=<alice>" not in tls_dovecot.log.text(mark)
    assert daemon.logins(client) == []


def test_backend_starttls_with_the_wrong_ca_refuses_the_login(
    popbridge_daemon: StartPopbridge, tls_dovecot: TlsDovecot, tls_certificates: TlsCertificates
) -> None:
    daemon, port = start_proxy(
        popbridge_daemon, "pop3", f"tcp:host=127.0.0.1:port={tls_dovecot.port}", starttls_backend_keys(tls_certificates.other_ca_file)
    )
    assert_refused_before_the_backend_login(daemon, port, tls_dovecot, "127.0.4.34")


def test_backend_starttls_with_the_wrong_hostname_refuses_the_login(
    popbridge_daemon: StartPopbridge, tls_dovecot: TlsDovecot, tls_certificates: TlsCertificates
) -> None:
    daemon, port = start_proxy(
        popbridge_daemon,
        "pop3",
        f"tcp:host=127.0.0.1:port={tls_dovecot.port}",
        starttls_backend_keys(tls_certificates.ca_file, hostname="other.popbridge.test"),
    )
    assert_refused_before_the_backend_login(daemon, port, tls_dovecot, "127.0.4.35")


def test_tls_backend_endpoint_with_the_wrong_ca_refuses_the_login(
    popbridge_daemon: StartPopbridge, tls_dovecot: TlsDovecot, tls_certificates: TlsCertificates, tmp_path: Path
) -> None:
    roots = trust_directory(tmp_path, tls_certificates.other_ca_file)
    daemon, port = start_proxy(popbridge_daemon, "pop3", tls_endpoint(tls_dovecot.pop3s_port, roots))
    assert_refused_before_the_backend_login(daemon, port, tls_dovecot, "127.0.4.36")


# ---------------------------------------------------------------- the end of a session


def test_client_hang_up_ends_the_tls_backend_session(
    popbridge_daemon: StartPopbridge, tls_dovecot: TlsDovecot, tls_certificates: TlsCertificates
) -> None:
    _, port = start_proxy(
        popbridge_daemon, "pop3", f"tcp:host=127.0.0.1:port={tls_dovecot.port}", starttls_backend_keys(tls_certificates.ca_file)
    )
    mark = tls_dovecot.log.mark()
    pop = BoundPOP3("127.0.0.1", port, "127.0.4.37")
    pop.user("carol")
    pop.pass_("carol-pw")
    pop.close()  # gone without QUIT: popbridge must close its TLS leg to Dovecot too
    line = tls_dovecot.log.wait_for(lambda line: "pop3(carol)" in line and "Disconnected" in line, since=mark, timeout=15)
    assert "Connection closed" in line, line


# ---------------------------------------------------------------- what the operator is told


def test_backend_certificate_failure_is_logged_with_its_reason(
    popbridge_daemon: StartPopbridge, tls_dovecot: TlsDovecot, tls_certificates: TlsCertificates
) -> None:
    daemon, port = start_proxy(
        popbridge_daemon, "pop3", f"tcp:host=127.0.0.1:port={tls_dovecot.port}", starttls_backend_keys(tls_certificates.other_ca_file)
    )
    mark = daemon.log.mark()
    pop3_session_refused(port, "127.0.4.38", "alice", "alice-pw")
    assert daemon.logins("127.0.4.38") == []
    # the client only hears "connection to the mail server lost": the log must say why
    daemon.log.wait_for(lambda line: "certificate" in line.lower() or "verif" in line.lower(), since=mark, timeout=5)


def test_backend_tls_ca_is_used_for_a_tls_backend_or_refused_by_check_config(
    popbridge_daemon: StartPopbridge, tls_dovecot: TlsDovecot, tls_certificates: TlsCertificates
) -> None:
    """`backend_tls_ca` next to a `tls:` backend must either be the CA popbridge checks the
    backend against, or a configuration error; accepted and ignored, it misleads."""
    extra = f"backend_tls_ca = {json.dumps(str(tls_certificates.ca_file))}\n"
    port = free_port()
    probe = Popbridge(backend_port=tls_dovecot.port, extra_config=plain_proxy("pop3", port, f"tls:host=127.0.0.1:port={tls_dovecot.pop3s_port}", extra))
    try:
        probe.config_path.write_text(probe.config_text())
        check = subprocess.run(
            [*popbridge_command(), "check-config", str(probe.config_path)],
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60,
        )
    finally:
        probe.cleanup()
    if check.returncode != 0:
        assert "backend_tls_ca" in check.stderr, check.stderr
        return
    _, port = start_proxy(popbridge_daemon, "pop3", f"tls:host=127.0.0.1:port={tls_dovecot.pop3s_port}", extra)
    pop = BoundPOP3("127.0.0.1", port, "127.0.4.39")
    try:
        pop.user("alice")
        assert pop.pass_("alice-pw").startswith(b"+OK"), "check-config accepted backend_tls_ca, but the login failed"
        pop.quit()
    except poplib.error_proto as e:
        pytest.fail(f"check-config accepted backend_tls_ca with a tls: backend, yet the backend was not trusted: {e}")
    finally:
        pop.close()
