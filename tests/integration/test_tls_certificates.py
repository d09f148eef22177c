"""popbridge's certificate files: re-read on SIGHUP without dropping sessions, kept when the new
files are bad, and refused at start when expired. Client addresses 127.0.4.40-49 belong to this
module.
"""

from __future__ import annotations

import datetime
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from .imap_clients import BoundIMAP4
from .servers import (
    BoundPOP3,
    Dovecot,
    Popbridge,
    StartPopbridge,
    free_port,
    popbridge_command,
)
from .tls_support import (
    BoundPOP3SSL,
    CertificatePair,
    TlsCertificates,
    implicit_tls_proxy,
    implicit_tls_socket,
    wait_for_listeners,
    write_pair,
)

pytestmark = pytest.mark.realserver

NOW = datetime.datetime.now(datetime.timezone.utc)


def start_reloadable(
    popbridge_daemon: StartPopbridge, dovecot: Dovecot, pair: CertificatePair
) -> tuple[Popbridge, int]:
    """popbridge with `pair` on its pop3 (STLS) and imap4 (STARTTLS) proxies and on an `ssl:`
    pop3 listener, whose port is returned."""
    pop3s = free_port()
    daemon = popbridge_daemon(
        imap4=True,
        proxy_extra=pair.toml(),
        extra_config=implicit_tls_proxy("pop3", pop3s, f"tcp:host=127.0.0.1:port={dovecot.port}", pair),
    )
    wait_for_listeners(daemon, pop3s)
    return daemon, pop3s


def hang_up(daemon: Popbridge) -> str:
    """SIGHUP the daemon; returns its log line that says how many certificates were reloaded."""
    assert daemon.process is not None
    mark = daemon.log.mark()
    daemon.process.send_signal(signal.SIGHUP)
    return daemon.log.wait_for(lambda line: "SIGHUP:" in line and "certificates reloaded" in line, since=mark)


def served_certificate(port: int, source: str, certificates: TlsCertificates) -> bytes:
    """The DER certificate a new client sees on an `ssl:` listener."""
    with implicit_tls_socket(port, source, certificates.client_context()) as connection:
        certificate = connection.getpeercert(binary_form=True)
    assert certificate is not None
    return certificate


def test_sighup_serves_a_new_certificate_and_keeps_open_sessions(
    popbridge_daemon: StartPopbridge, dovecot: Dovecot, tls_certificates: TlsCertificates, tmp_path: Path
) -> None:
    old = tls_certificates.issue(tmp_path, "served", "localhost", "127.0.0.1")
    old_der = old.der()
    daemon, pop3s = start_reloadable(popbridge_daemon, dovecot, old)
    context = tls_certificates.client_context()
    pop = BoundPOP3SSL("127.0.0.1", pop3s, "127.0.4.41", context)
    imap = BoundIMAP4("127.0.0.1", daemon.imap_port or 0, "127.0.4.41")
    try:
        pop.user("alice")
        pop.pass_("alice-pw")
        imap.starttls(context)
        imap.login("alice", "alice-pw")
        assert pop.sock.getpeercert(binary_form=True) == old_der

        write_pair(tls_certificates.ca.issue_cert("localhost", "127.0.0.1"), old)  # new files, same paths
        new_der = old.der()
        assert new_der != old_der
        assert hang_up(daemon).endswith("SIGHUP: 3 of 3 certificates reloaded")

        assert served_certificate(pop3s, "127.0.4.42", tls_certificates) == new_der
        stls = BoundPOP3("127.0.0.1", daemon.port, "127.0.4.42")
        try:
            stls.stls(context)
            assert stls.sock.getpeercert(binary_form=True) == new_der
        finally:
            stls.close()

        # the sessions opened before the reload are still up, and still usable
        assert pop.stat()[0] >= 1
        assert imap.select("INBOX", readonly=True)[0] == "OK"
        assert pop.quit().startswith(b"+OK")
        assert imap.logout()[0] == "BYE"
    finally:
        pop.close()
        if imap.state != "LOGOUT":
            imap.shutdown()
    assert sorted(login["protocol"] for login in daemon.logins("127.0.4.41")) == ["imap4", "pop3"]


def _garbage(certificates: TlsCertificates, pair: CertificatePair) -> str:
    pair.certificate.write_text("this is not a certificate\n")
    return "not a PEM certificate"


def _expired(certificates: TlsCertificates, pair: CertificatePair) -> str:
    leaf = certificates.ca.issue_cert(
        "localhost", "127.0.0.1", not_before=NOW - datetime.timedelta(days=30), not_after=NOW - datetime.timedelta(days=1)
    )
    write_pair(leaf, pair)
    return "expired"


def _key_of_another_certificate(certificates: TlsCertificates, pair: CertificatePair) -> str:
    pair.key.write_bytes(certificates.ca.issue_cert("localhost").private_key_pem.bytes())
    return "does not belong"


def _unreadable(certificates: TlsCertificates, pair: CertificatePair) -> str:
    pair.certificate.unlink()
    return "cannot read"


@pytest.mark.parametrize(
    ("breakage", "source"),
    [(_garbage, "127.0.4.43"), (_expired, "127.0.4.44"), (_key_of_another_certificate, "127.0.4.45"), (_unreadable, "127.0.4.46")],
    ids=["garbage", "expired", "mismatched-key", "missing-file"],
)
def test_failed_reload_keeps_the_old_certificate(
    popbridge_daemon: StartPopbridge,
    dovecot: Dovecot,
    tls_certificates: TlsCertificates,
    tmp_path: Path,
    breakage: Callable[[TlsCertificates, CertificatePair], str],
    source: str,
) -> None:
    pair = tls_certificates.issue(tmp_path, "served", "localhost", "127.0.0.1")
    old_der = pair.der()
    daemon, pop3s = start_reloadable(popbridge_daemon, dovecot, pair)
    reason = breakage(tls_certificates, pair)
    mark = daemon.log.mark()
    assert hang_up(daemon).endswith("SIGHUP: 0 of 3 certificates reloaded")
    why = daemon.log.text(mark)
    assert "certificate not reloaded, the old one stays in use" in why and reason in why, why
    assert str(pair.certificate if reason != "does not belong" else pair.key) in why, why
    assert served_certificate(pop3s, source, tls_certificates) == old_der
    pop = BoundPOP3SSL("127.0.0.1", pop3s, source, tls_certificates.client_context())
    try:
        pop.user("alice")
        assert pop.pass_("alice-pw").startswith(b"+OK")
        pop.quit()
    finally:
        pop.close()
    assert [login["tls"] for login in daemon.logins(source)] == [True]


# ---------------------------------------------------------------- at start


@pytest.fixture
def expired_config(dovecot: Dovecot, tls_certificates: TlsCertificates, tmp_path: Path) -> tuple[Path, CertificatePair]:
    """A complete popbridge.toml whose proxies use an expired certificate."""
    expired = tls_certificates.issue(
        tmp_path, "expired", "localhost", "127.0.0.1",
        not_before=NOW - datetime.timedelta(days=30), not_after=NOW - datetime.timedelta(days=1),
    )
    daemon = Popbridge(backend_port=dovecot.port, policy_socket=tmp_path / "policy.sock", proxy_extra=expired.toml())
    try:
        config = tmp_path / "popbridge.toml"
        config.write_text(daemon.config_text())
    finally:
        daemon.cleanup()
    return config, expired


def test_check_config_names_an_expired_certificate(expired_config: tuple[Path, CertificatePair]) -> None:
    config, expired = expired_config
    result = subprocess.run(
        [*popbridge_command(), "check-config", str(config)], stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0
    message = result.stdout + result.stderr
    assert str(expired.certificate) in message and "expired" in message, message
    assert "tls_certificate" in message, message


def test_run_with_an_expired_certificate_exits_with_one_line(expired_config: tuple[Path, CertificatePair]) -> None:
    config, expired = expired_config
    result = subprocess.run(
        [*popbridge_command(), "run", "--config", str(config)],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode != 0
    lines = (result.stdout + result.stderr).strip().splitlines()
    assert len(lines) == 1, lines
    assert str(expired.certificate) in lines[0] and "expired" in lines[0], lines
