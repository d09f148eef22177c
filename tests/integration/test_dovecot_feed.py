"""Logins learned from real Dovecot's auth-policy requests, with no proxy in the mail path.

One popbridge daemon (SQLite store, no [[proxy]]: only [[feed]] and [[lookup]] tables) takes
three feeds, each from a private Dovecot of its own (dovecot.conf lines from
`FeedPopbridge.dovecot_settings` plus the checks in FEEDS):

- `report`: Dovecot's default checks plus reports, recorded on reports (the setup in docs/deploy/dovecot.md);
- `after_auth`: ``auth_policy_check_before_auth = no``, recorded on the after-auth ``allow``;
- `trap`: Dovecot's defaults (before-auth check on) under ``record_on = "after_auth"``, where a
  wrong password also sends an ``allow``: the guard must trip and record nothing.

Clients (curl, imaplib) log in to Dovecot directly from 127.0.0.x; the real Postfix fixture
asks the daemon's policy socket, and `postmap -q` its socketmap. The last tests start daemons
of their own: other stores, and a daemon that proxies one Dovecot and takes another's feed.
"""

from __future__ import annotations

import imaplib
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from popbridge.ledger.redis import redis_client

from .conftest import MASTER_USERS, USERS, require, started
from .imap_clients import BoundIMAP4, curl_imap, imap_login
from .servers import Dovecot, FeedPopbridge, Popbridge, Postfix, ServerError, curl_pop3, free_port, pop3_login, unix_exchange, wait_until

pytestmark = pytest.mark.realserver

RELAY_DENIED = 554
ACCEPTED = 250
IGNORED = "127.0.0.86"
MASTER = "admin"  # a Dovecot master user: may log in as anyone

# feed name -> (record_on, the dovecot.conf auth_policy_check_* lines of its Dovecot)
FEEDS = {
    "report": ("report", ["auth_policy_check_before_auth = no", "auth_policy_check_after_auth = no"]),
    "after_auth": ("after_auth", ["auth_policy_check_before_auth = no", "auth_policy_check_after_auth = yes"]),
    "trap": ("after_auth", ["auth_policy_check_before_auth = yes", "auth_policy_check_after_auth = yes"]),
}


class FeedDaemon(FeedPopbridge):
    """The daemon with one [[feed]] per entry of FEEDS, and what these tests ask of it."""

    def wait_for_count(self, command: str, outcome: str, above: float) -> None:
        wait_until(lambda: self.feed_count(command, outcome) > above, f"a {command} counted as {outcome}")

    def users(self, address: str) -> list[object]:
        return [login["user"] for login in self.logins(address)]

    def post(self, feed: str, command: str, body: dict[str, object], key: str | None = None) -> int:
        """POST `body` as Dovecot would (with the right key unless `key` says otherwise); the HTTP status."""
        key = self.api_key if key is None else key
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.feed_ports[feed]}/?command={command}", data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json", **({"X-API-Key": key} if key else {})},
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as answer:
                return int(answer.status)
        except urllib.error.HTTPError as e:
            return e.code


@dataclass
class Site:
    daemon: FeedDaemon
    dovecots: dict[str, Dovecot]
    postfix: Postfix


@pytest.fixture(scope="module")
def site(postfix: Postfix, policy_socket: Path) -> Iterator[Site]:
    require("dovecot", "doveadm", "curl")
    feeds = {name: f'ignore_addresses = ["{IGNORED}"]\nrecord_on = "{record_on}"' for name, (record_on, _) in FEEDS.items()}
    daemon = FeedDaemon(backend_port=0, policy_socket=policy_socket, store="sqlite:ledger.db", feeds=feeds)
    dovecots: dict[str, Dovecot] = {}
    try:
        daemon.start()
        for name, (_, checks) in FEEDS.items():
            server = started(
                Dovecot(users=USERS, master_users=MASTER_USERS, extra_config=daemon.dovecot_settings(name, *checks))
            )
            assert isinstance(server, Dovecot)
            dovecots[name] = server
        yield Site(daemon, dovecots, postfix)
    except ServerError as e:
        pytest.fail(f"the feed site did not start: {e}", pytrace=False)
    finally:
        for server in dovecots.values():
            server.cleanup()
        print(f"--- popbridge output:\n{daemon.output()}")
        daemon.cleanup()


def whoson_query(path: Path, address: str) -> bytes:
    return unix_exchange(path, f"QUERY {address}\r\n\r\n".encode(), b"\r\n\r\n", timeout=10)


def test_direct_dovecot_logins_let_their_addresses_relay_and_no_other(site: Site) -> None:
    daemon, dovecot = site.daemon, site.dovecots["report"]
    assert site.postfix.rcpt_code("127.0.0.81") == RELAY_DENIED
    assert curl_pop3(dovecot.port, "127.0.0.81", "alice", "alice-pw").returncode == 0
    imap_login(dovecot.imap_port, "127.0.0.82", "bob", "bob-pw")
    wait_until(lambda: daemon.users("127.0.0.81") == ["alice"] and daemon.users("127.0.0.82") == ["bob"], "reports")
    assert site.postfix.rcpt_code("127.0.0.81") == ACCEPTED
    assert site.postfix.rcpt_code("127.0.0.82") == ACCEPTED
    assert site.postfix.rcpt_code("127.0.0.83") == RELAY_DENIED
    assert site.postfix.postmap_query("127.0.0.82", daemon.socketmap_table("user")) == "bob"
    assert site.postfix.postmap_query("127.0.0.83", daemon.socketmap_table("access")) is None
    assert whoson_query(daemon.whoson_socket, "127.0.0.81").startswith(b"+alice")
    listing = daemon.cli("list")
    assert listing.returncode == 0, listing.stderr
    assert any(line.split()[:3] == ["127.0.0.82", "bob", "imap"] for line in listing.stdout.splitlines())


def test_wrong_password_records_nothing(site: Site) -> None:
    daemon, dovecot = site.daemon, site.dovecots["report"]
    failed = daemon.feed_count("report", "failed")
    with pytest.raises(imaplib.IMAP4.error):
        imap_login(dovecot.imap_port, "127.0.0.84", "alice", "not-her-password")
    assert curl_imap(dovecot.imap_port, "127.0.0.85", "alice", "alice-pw").returncode == 0  # the control
    daemon.wait_for_count("report", "failed", failed)
    wait_until(lambda: daemon.users("127.0.0.85") == ["alice"], "the control's report")
    assert daemon.users("127.0.0.84") == []
    assert site.postfix.rcpt_code("127.0.0.84") == RELAY_DENIED


def test_report_from_an_ignored_address_records_nothing(site: Site) -> None:
    daemon, dovecot = site.daemon, site.dovecots["report"]
    ignored = daemon.feed_count("report", "ignored")
    imap_login(dovecot.imap_port, IGNORED, "alice", "alice-pw")
    imap_login(dovecot.imap_port, "127.0.0.87", "alice", "alice-pw")
    daemon.wait_for_count("report", "ignored", ignored)
    wait_until(lambda: daemon.users("127.0.0.87") == ["alice"], "the control's report")
    assert daemon.users(IGNORED) == []


def test_submission_style_report_records_nothing(site: Site) -> None:
    daemon = site.daemon
    report = {"login": "alice", "pwhash": "0a3f", "remote": "127.0.0.88", "success": True, "policy_reject": False, "tls": False}
    assert daemon.post("report", "report", {**report, "protocol": "submission"}) == 200
    assert daemon.post("report", "report", {**report, "protocol": "smtp"}) == 200
    assert daemon.users("127.0.0.88") == []
    assert daemon.post("report", "report", {**report, "protocol": "imap", "remote": "127.0.0.89"}) == 200
    assert daemon.users("127.0.0.89") == ["alice"]


def test_report_without_the_key_records_nothing(site: Site) -> None:
    daemon = site.daemon
    report = {"login": "bob", "protocol": "pop3", "success": True, "policy_reject": False, "tls": False}
    assert daemon.post("report", "report", {**report, "remote": "127.0.0.90"}, key="") == 401
    assert daemon.post("report", "report", {**report, "remote": "127.0.0.90"}, key="not-the-key") == 401
    assert daemon.users("127.0.0.90") == []
    assert daemon.post("report", "report", {**report, "remote": "127.0.0.91"}) == 200
    assert daemon.users("127.0.0.91") == ["bob"]
    assert daemon.api_key not in daemon.output() and "pwhash" not in daemon.output()


def test_after_auth_records_before_dovecot_answers_the_client(site: Site) -> None:
    daemon, dovecot = site.daemon, site.dovecots["after_auth"]
    daemon.post("after_auth", "report", {"login": "x", "remote": "", "protocol": "imap", "success": False,
                                         "policy_reject": False})  # arms the guard, as any earlier login would
    recorded_on_allow = daemon.feed_count("allow", "recorded")
    imap = BoundIMAP4("127.0.0.1", dovecot.imap_port, "127.0.0.92")
    try:
        imap.login("bob", "bob-pw")
        # no waiting: Dovecot sent the tagged OK only after popbridge answered the after-auth allow
        assert site.postfix.postmap_query("127.0.0.92", daemon.socketmap_table("user")) == "bob"
    finally:
        imap.logout()
    assert daemon.feed_count("allow", "recorded") == recorded_on_allow + 1
    assert site.postfix.rcpt_code("127.0.0.92") == ACCEPTED
    with pytest.raises(imaplib.IMAP4.error):
        imap_login(dovecot.imap_port, "127.0.0.93", "bob", "wrong")
    assert daemon.users("127.0.0.93") == []


def test_allow_before_the_password_check_trips_the_after_auth_guard(site: Site) -> None:
    daemon, dovecot = site.daemon, site.dovecots["trap"]
    imap_login(dovecot.imap_port, "127.0.0.94", "alice", "alice-pw")  # arms the guard; recorded
    wait_until(lambda: daemon.users("127.0.0.94") == ["alice"], "the first report")
    with pytest.raises(imaplib.IMAP4.error):
        imap_login(dovecot.imap_port, "127.0.0.95", "alice", "not-her-password")
    daemon.wait_for_count("report", "allow_before_password", 0)
    wait_until(lambda: daemon.users("127.0.0.95") == [], "the revocation")
    assert site.postfix.rcpt_code("127.0.0.95") == RELAY_DENIED
    assert "auth_policy_check_before_auth" in daemon.output()


def test_a_master_user_login_records_the_user_it_logged_in_as(site: Site) -> None:
    daemon, dovecot = site.daemon, site.dovecots["report"]
    imap = BoundIMAP4("127.0.0.1", dovecot.imap_port, "127.0.0.96")
    try:
        imap.authenticate("PLAIN", lambda _: f"bob\0{MASTER}\0{MASTER_USERS[MASTER]}".encode())
    finally:
        imap.logout()
    wait_until(lambda: daemon.users("127.0.0.96") == ["bob"], "the master login's report")


@pytest.mark.parametrize("store", ["memory", "redis"])
def test_the_feed_records_into_every_store(store: str, postfix: Postfix, request: pytest.FixtureRequest) -> None:
    if store == "redis":
        redis = request.getfixturevalue("redis_server")
        redis_client(redis.url, "", 2.0).flushdb()
        store = redis.url
    daemon = FeedDaemon(backend_port=0, store=store)
    try:
        daemon.start()
        report = {"login": "alice", "remote": "127.0.0.97", "protocol": "pop3", "success": True, "policy_reject": False}
        assert daemon.post("dovecot", "report", report) == 200
        assert postfix.postmap_query("127.0.0.97", daemon.socketmap_table("user")) == "alice"
        assert whoson_query(daemon.whoson_socket, "127.0.0.97").startswith(b"+alice")
    finally:
        daemon.cleanup()


def test_one_daemon_proxies_one_server_and_takes_the_feed_of_another(dovecot: Dovecot) -> None:
    port = free_port()
    feed = f'\n[[feed]]\nprotocol = "dovecot"\nlisten = "tcp:port={port}:interface=127.0.0.1"\nallow_unauthenticated = true\n'
    daemon = Popbridge(backend_port=dovecot.port, extra_config=feed)
    other = Dovecot(
        users=USERS,
        extra_config=f"auth_policy_server_url = http://127.0.0.1:{port}/\nauth_policy_hash_nonce = popbridge-test-nonce\n"
        "auth_policy_check_before_auth = no\nauth_policy_check_after_auth = no\n",
    )
    try:
        daemon.start()
        started(other)
        pop3_login(daemon.port, "127.0.0.98", "alice", "alice-pw")  # through the proxy
        imap_login(other.imap_port, "127.0.0.99", "bob", "bob-pw")  # straight to the other Dovecot
        wait_until(lambda: [login["user"] for login in daemon.logins("127.0.0.99")] == ["bob"], "the report")
        assert [(login["user"], login["protocol"]) for login in daemon.logins("127.0.0.98")] == [("alice", "pop3")]
    finally:
        other.cleanup()
        daemon.cleanup()
