"""A full run at debug level: every login method, right and wrong, and no secret in the log.

The log is grepped for each password, its base64, the SASL PLAIN blobs and the LOGIN
mechanism's base64 password, so neither the text nor an encoded form can leak.
"""

from __future__ import annotations

import base64
import poplib
import socket

import pytest

from .conftest import USERS
from .imap_clients import curl_imap, imap_authenticate_plain, imap_login
from .servers import StartPopbridge, curl_pop3, pop3_login

pytestmark = pytest.mark.realserver

WRONG = "Wr0ng-Pa55word-x7"


def secrets(user: str, password: str) -> list[str]:
    plain = f"\0{user}\0{password}".encode()
    return [
        password,
        base64.b64encode(password.encode()).decode(),
        base64.b64encode(plain).decode(),
        base64.b64encode(plain).decode().rstrip("="),
    ]


def test_debug_log_of_every_login_method_holds_no_secret(popbridge_daemon: StartPopbridge) -> None:
    daemon = popbridge_daemon(imap4=True, log_level="debug")
    user, password = "alice", USERS["alice"]
    pop3_login(daemon.port, "127.0.0.71", user, password)
    with pytest.raises(poplib.error_proto):
        pop3_login(daemon.port, "127.0.0.71", user, WRONG)
    for options in ((), ("--login-options", "AUTH=PLAIN"), ("--login-options", "AUTH=LOGIN")):
        assert curl_pop3(daemon.port, "127.0.0.72", user, password, *options).returncode == 0
        curl_pop3(daemon.port, "127.0.0.72", user, WRONG, *options)
    imap_login(daemon.imap_port, "127.0.0.73", user, password)
    imap_authenticate_plain(daemon.imap_port, "127.0.0.73", user, password)
    for options in ((), ("--login-options", "AUTH=PLAIN"), ("--login-options", "AUTH=LOGIN")):
        assert curl_imap(daemon.imap_port, "127.0.0.74", user, password, *options).returncode == 0
        curl_imap(daemon.imap_port, "127.0.0.74", user, WRONG, *options)
    with socket.socket(socket.AF_UNIX) as policy:
        policy.connect(str(daemon.policy_socket))
        policy.sendall(b"request=smtpd_access_policy\nclient_address=127.0.0.74\n\n")
        assert policy.recv(100) == b"action=OK\n\n"
    log = daemon.output()
    assert "login succeeded: user 'alice' from 127.0.0.74 via imap4" in log
    assert "#debug]" in log  # the run really was at debug level
    for secret in secrets(user, password) + secrets(user, WRONG):
        assert secret not in log, f"{secret!r} is in the log"
