"""SIGHUP never takes the real daemon down: a reload whose new listener cannot come up (a taken
port, a socket directory the daemon may not write) or whose certificate vanished leaves every
running listener serving logins and lookups, and the new listener comes up once it can.
Client addresses 127.0.163.1-49 belong to this module.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
from pathlib import Path

import pytest

from .servers import (
    MAIL_GID,
    MAIL_UID,
    BoundPOP3,
    Dovecot,
    Popbridge,
    StartPopbridge,
    free_port,
    netstring,
    policy_action,
    pop3_login,
    short_directory,
    socketmap_answer,
)
from .tls_support import TlsCertificates, plain_proxy

pytestmark = pytest.mark.realserver


def reload_with(daemon: Popbridge, extra_config: str, logged: str, policy_extra: str = "") -> str:
    """Rewrite the daemon's file with `extra_config` (and `policy_extra` in its policy [[lookup]]),
    SIGHUP it, and return the first log line containing `logged` written after the signal."""
    assert daemon.process is not None
    daemon.extra_config = extra_config
    policy_table = f'protocol = "policy"\nlisten = "unix:address={daemon.policy_socket}:mode=666"\n'
    daemon.config_path.write_text(daemon.config_text().replace(policy_table, policy_table + policy_extra))
    mark = daemon.log.mark()
    daemon.process.send_signal(signal.SIGHUP)
    return daemon.log.wait_for(lambda line: logged in line, since=mark)



def assert_serving(daemon: Popbridge, port: int, source: str, user: str) -> None:
    """The daemon is up, proxies a login on `port`, and both lookups answer for it."""
    assert daemon.process is not None and daemon.process.poll() is None, daemon.output()
    assert pop3_login(port, source, user, f"{user}-pw").startswith(b"+OK")
    assert policy_action(daemon.policy_socket, source) == "action=OK"
    assert socketmap_answer(daemon.socketmap_socket, source, "user") == netstring(f"OK {user}")


def test_a_reload_adding_a_proxy_on_a_taken_port_keeps_serving_and_binds_it_once_free(
    popbridge_daemon: StartPopbridge, dovecot: Dovecot
) -> None:
    daemon = popbridge_daemon()
    port = free_port()
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", port))
        holder.listen()
        line = reload_with(
            daemon, plain_proxy("pop3", port, f"tcp:host=127.0.0.1:port={dovecot.port}"), "cannot listen for pop3"
        )
        assert f"tcp:port={port}" in line and "trying again in" in line, line
        assert_serving(daemon, daemon.port, "127.0.163.1", "alice")
        mark = daemon.log.mark()
    daemon.log.wait_for(lambda line: f"listening for pop3 clients on tcp:port={port}" in line, since=mark, timeout=30)
    assert_serving(daemon, port, "127.0.163.2", "bob")
    assert_serving(daemon, daemon.port, "127.0.163.3", "carol")


def test_a_reload_adding_a_lookup_in_an_unwritable_directory_keeps_serving_and_binds_it_once_writable(
    popbridge_daemon: StartPopbridge,
) -> None:
    daemon = popbridge_daemon(run_as=("nobody", "nogroup"))  # binds as root, then serves as nobody
    locked = short_directory("pb-locked-")  # root's, mode 755: nobody may not create the socket
    try:
        added = locked / "socketmap.sock"
        lookup = f'\n[[lookup]]\nprotocol = "socketmap"\nlisten = "unix:address={added}:mode=666"\n'
        line = reload_with(daemon, lookup, "cannot listen for socketmap lookups")
        assert str(added) in line and "Permission denied" in line and "trying again in" in line, line
        assert_serving(daemon, daemon.port, "127.0.163.11", "alice")
        mark = daemon.log.mark()
        os.chown(locked, MAIL_UID, MAIL_GID)  # the operator fixes the directory: nobody's now
        daemon.log.wait_for(lambda line: f"listening for socketmap lookups on unix:address={added}" in line,
                            since=mark, timeout=30)
        assert socketmap_answer(added, "127.0.163.11", "user") == netstring("OK alice")
        assert_serving(daemon, daemon.port, "127.0.163.12", "bob")
    finally:
        shutil.rmtree(locked, ignore_errors=True)


def test_a_reload_changing_a_lookup_keeps_its_socket_after_privileges_were_dropped(
    popbridge_daemon: StartPopbridge,
) -> None:
    daemon = popbridge_daemon(run_as=("nobody", "nogroup"))  # its sockets sit in root's directories
    assert policy_action(daemon.policy_socket, "127.0.163.31") == "action=DUNNO"
    reload_with(daemon, "", "new settings for policy lookups", policy_extra='unknown_action = "REJECT"\n')
    assert policy_action(daemon.policy_socket, "127.0.163.31") == "action=REJECT"
    assert_serving(daemon, daemon.port, "127.0.163.32", "alice")
    assert "cannot listen" not in daemon.output()


def test_a_reload_after_the_certificate_vanished_keeps_serving_with_the_certificate_in_use(
    popbridge_daemon: StartPopbridge, tls_certificates: TlsCertificates, tmp_path: Path
) -> None:
    pair = tls_certificates.issue(tmp_path, "served", "localhost", "127.0.0.1")
    served, saved = pair.der(), tmp_path / "saved"
    daemon = popbridge_daemon(proxy_extra=pair.toml())
    saved.mkdir()
    shutil.move(pair.certificate, saved)
    shutil.move(pair.key, saved)
    added = daemon.directory / "whoson2.sock"
    lookup = f'\n[[lookup]]\nprotocol = "whoson"\nlisten = "unix:address={added}:mode=666"\n'
    line = reload_with(daemon, lookup, "configuration not reloaded")
    assert "tls_certificate" in line and str(pair.certificate) in line, line
    assert_serving(daemon, daemon.port, "127.0.163.21", "alice")
    pop = BoundPOP3("127.0.0.1", daemon.port, "127.0.163.22")
    try:
        pop.stls(tls_certificates.client_context())
        assert pop.sock.getpeercert(binary_form=True) == served  # the certificate read at start
        pop.user("bob")
        assert pop.pass_("bob-pw").startswith(b"+OK")
        pop.quit()
    finally:
        pop.close()
    shutil.move(saved / pair.certificate.name, pair.certificate)
    shutil.move(saved / pair.key.name, pair.key)
    reload_with(daemon, lookup, f"listening for whoson lookups on unix:address={added}")
    assert_serving(daemon, daemon.port, "127.0.163.23", "carol")
