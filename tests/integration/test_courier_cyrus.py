"""Courier and Cyrus behind the real popbridge daemon, POP3 and IMAP, each from its Debian root.

Every login form the server offers (with Debian's defaults plus the SASL mechanisms an operator
turns on) is recorded under the user the server logged in; wrong passwords are not; commands
pipelined behind the login are answered (Courier itself drops them); a retrieval through
popbridge is byte for byte the direct one. Then each server's own answers: Courier's silent
close at MAXPERIP, its NO for syntax errors, its missing ID and its own STLS/STARTTLS (hidden);
Cyrus's `-ERR [LOGIN-DELAY]` after a right password, and its ID that takes no client address.
Cyrus's `-ERR [IN-USE]` cannot be provoked in 3.6 (it waits for a held mailbox lock rather than
refusing); popbridge treats it like any -ERR to PASS, which test_adversarial.py checks.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import socket
from collections.abc import Callable, Iterator

import pytest

from .chrooted_backends import ChrootedMailServer, Courier, Cyrus
from .conftest import require_debian_root
from .debian_root import COURIER_EXIM, CYRUS_SENDMAIL
from .imap_clients import imap_fetch_raw
from .scripted import read_until_closed
from .servers import Popbridge, ServerError, message_of_size, pop3_retr_raw

pytestmark = pytest.mark.realserver

USERS = {"alice": "alice-pw", "bob": "bob-pw", "dora": "dora-pw"}
BIG = message_of_size(300_000, subject="byte for byte")  # bob's first message: dot-stuffed lines too


def _start(server: ChrootedMailServer) -> ChrootedMailServer:
    try:
        return server.start()
    except ServerError as e:
        server.cleanup()
        pytest.fail(f"{server.name} did not start: {e}", pytrace=False)


@pytest.fixture(scope="module")
def courier() -> Iterator[Courier]:
    # MAXPERIP raised as README says; the MAXPERIP test keeps Debian's
    server = _start(Courier(require_debian_root(COURIER_EXIM), users=USERS, max_per_ip=40))
    assert isinstance(server, Courier)
    server.deliver("bob", BIG)
    server.deliver("alice", b"Subject: hello\r\n\r\nhello alice\r\n")
    yield server
    print(f"--- courier log:\n{server.log_text()}")
    server.cleanup()


@pytest.fixture(scope="module")
def cyrus() -> Iterator[Cyrus]:
    server = _start(Cyrus(require_debian_root(CYRUS_SENDMAIL), users=USERS))
    assert isinstance(server, Cyrus)
    server.deliver("bob", BIG)
    server.deliver("alice", b"Subject: hello\r\n\r\nhello alice\r\n")
    yield server
    print(f"--- cyrus log:\n{server.log_text()}")
    server.cleanup()


@pytest.fixture(scope="module")
def backend(request: pytest.FixtureRequest) -> ChrootedMailServer:
    """The server named by the test's `backend` parameter."""
    server = request.getfixturevalue(request.param)
    assert isinstance(server, ChrootedMailServer)
    return server


def start_popbridge(server: ChrootedMailServer, **options: object) -> Popbridge:
    daemon = Popbridge(backend_port=server.port, imap_backend_port=server.imap_port, **options)  # type: ignore[arg-type]
    try:
        return daemon.start()
    except ServerError as e:
        daemon.cleanup()
        pytest.fail(f"popbridge did not start: {e}", pytrace=False)


@pytest.fixture(scope="module")
def proxy(backend: ChrootedMailServer) -> Iterator[Popbridge]:
    """One daemon in front of `backend` for the module: every test uses addresses of its own."""
    daemon = start_popbridge(backend)
    yield daemon
    print(f"--- popbridge output:\n{daemon.output()}")
    daemon.cleanup()


def recorded(daemon: Popbridge, address: str) -> list[tuple[str, str]]:
    return [(login["user"], login["protocol"]) for login in daemon.logins(address)]  # type: ignore[misc]


# ---------------------------------------------------------------- a line-by-line client


class Dialogue:
    """A raw client from `source`: the greeting is read at once; `say` sends one line and reads
    one line back (POP3 status, SASL continuation); `tagged` reads up to an IMAP tag's status."""

    def __init__(self, port: int, source: str) -> None:
        self.socket = socket.create_connection(("127.0.0.1", port), timeout=30, source_address=(source, 0))
        self.reader = self.socket.makefile("rb")
        self.greeting = self.reader.readline()

    def send(self, data: bytes) -> None:
        self.socket.sendall(data)

    def say(self, line: str | bytes) -> bytes:
        self.send((line.encode() if isinstance(line, str) else line) + b"\r\n")
        return self.reader.readline()

    def tagged(self, tag: str) -> bytes:
        while True:
            line = self.reader.readline()
            if not line or line.startswith(tag.encode() + b" "):
                return line

    def close(self) -> None:
        self.reader.close()  # the socket closes only when its file object does too
        self.socket.close()


def b64(data: str | bytes) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


def plain(user: str, password: str) -> str:
    return b64(f"\0{user}\0{password}")


def cram(challenge_line: bytes, user: str, password: str) -> str:
    challenge = base64.b64decode(challenge_line.split(b" ", 1)[1].strip())
    return b64(f"{user} {hmac.new(password.encode(), challenge, hashlib.md5).hexdigest()}")


# ---------------------------------------------------------------- POP3 login forms


def pop3_user_pass(d: Dialogue, user: str, password: str) -> bytes:
    assert d.say(f"USER {user}").startswith(b"+OK")
    return d.say(f"PASS {password}")


def pop3_apop(d: Dialogue, user: str, password: str) -> bytes:
    timestamp = re.search(rb"<[^>]+>", d.greeting)
    assert timestamp, d.greeting
    return d.say(f"APOP {user} {hashlib.md5(timestamp.group() + password.encode()).hexdigest()}")


def pop3_auth_plain_initial(d: Dialogue, user: str, password: str) -> bytes:
    return d.say(f"AUTH PLAIN {plain(user, password)}")


def pop3_auth_plain(d: Dialogue, user: str, password: str) -> bytes:
    assert d.say("AUTH PLAIN").startswith(b"+")
    return d.say(plain(user, password))


def pop3_auth_login(d: Dialogue, user: str, password: str) -> bytes:
    assert d.say("AUTH LOGIN").startswith(b"+")
    assert d.say(b64(user)).startswith(b"+")
    return d.say(b64(password))


def pop3_auth_cram_md5(d: Dialogue, user: str, password: str) -> bytes:
    challenge = d.say("AUTH CRAM-MD5")
    assert challenge.startswith(b"+ ")
    return d.say(cram(challenge, user, password))


POP3_FORMS: dict[str, Callable[[Dialogue, str, str], bytes]] = {
    "USER/PASS": pop3_user_pass,
    "APOP": pop3_apop,
    "AUTH PLAIN initial": pop3_auth_plain_initial,
    "AUTH PLAIN": pop3_auth_plain,
    "AUTH LOGIN": pop3_auth_login,
    "AUTH CRAM-MD5": pop3_auth_cram_md5,
}
# what each server offers (Cyrus greets with an APOP timestamp; Courier does not)
POP3_OFFERED = {"courier": [f for f in POP3_FORMS if f != "APOP"], "cyrus": list(POP3_FORMS)}


def _pairs(offered: dict[str, list[str]]) -> list[pytest.param]:
    return [pytest.param(server, form, id=f"{server}-{form}") for server, forms in offered.items() for form in forms]


@pytest.mark.parametrize(("backend", "form"), _pairs(POP3_OFFERED), indirect=["backend"])
def test_every_pop3_login_form_is_recorded_as_the_user(proxy: Popbridge, backend: ChrootedMailServer, form: str) -> None:
    source = f"127.0.1.{list(POP3_FORMS).index(form) + 1}"
    d = Dialogue(proxy.port, source)
    try:
        assert POP3_FORMS[form](d, "alice", "alice-pw").startswith(b"+OK")
        assert d.say("STAT").startswith(b"+OK 1 ")
        d.say("QUIT")
    finally:
        d.close()
    assert recorded(proxy, source) == [("alice", "pop3")]


@pytest.mark.parametrize("backend", ["courier", "cyrus"], indirect=True)
def test_wrong_pop3_password_records_nothing(proxy: Popbridge, backend: ChrootedMailServer) -> None:
    d = Dialogue(proxy.port, "127.0.1.20")
    try:
        assert pop3_user_pass(d, "alice", "wrong").startswith(b"-ERR")  # Courier after 5 s, Cyrus 3 s
    finally:
        d.close()
    assert recorded(proxy, "127.0.1.20") == []


# ---------------------------------------------------------------- IMAP login forms


def imap_login_atoms(d: Dialogue, user: str, password: str) -> bytes:
    d.send(f"a LOGIN {user} {password}\r\n".encode())
    return d.tagged("a")


def imap_login_quoted(d: Dialogue, user: str, password: str) -> bytes:
    d.send(f'a LOGIN "{user}" "{password}"\r\n'.encode())
    return d.tagged("a")


def imap_login_literals(d: Dialogue, user: str, password: str) -> bytes:
    assert d.say(f"a LOGIN {{{len(user)}}}").startswith(b"+")
    assert d.say(f"{user} {{{len(password)}}}").startswith(b"+")
    d.send(password.encode() + b"\r\n")
    return d.tagged("a")


def imap_login_nonsynchronising_literals(d: Dialogue, user: str, password: str) -> bytes:
    d.send(f"a LOGIN {{{len(user)}+}}\r\n{user} {{{len(password)}+}}\r\n{password}\r\n".encode())
    return d.tagged("a")


def imap_authenticate_plain_ir(d: Dialogue, user: str, password: str) -> bytes:
    d.send(f"a AUTHENTICATE PLAIN {plain(user, password)}\r\n".encode())
    return d.tagged("a")


def imap_authenticate_plain(d: Dialogue, user: str, password: str) -> bytes:
    assert d.say("a AUTHENTICATE PLAIN").startswith(b"+")
    d.send(plain(user, password).encode() + b"\r\n")
    return d.tagged("a")


def imap_authenticate_login(d: Dialogue, user: str, password: str) -> bytes:
    assert d.say("a AUTHENTICATE LOGIN").startswith(b"+")
    assert d.say(b64(user)).startswith(b"+")
    d.send(b64(password).encode() + b"\r\n")
    return d.tagged("a")


def imap_authenticate_cram_md5(d: Dialogue, user: str, password: str) -> bytes:
    challenge = d.say("a AUTHENTICATE CRAM-MD5")
    assert challenge.startswith(b"+ ")
    d.send(cram(challenge, user, password).encode() + b"\r\n")
    return d.tagged("a")


IMAP_FORMS: dict[str, Callable[[Dialogue, str, str], bytes]] = {
    "LOGIN atoms": imap_login_atoms,
    "LOGIN quoted": imap_login_quoted,
    "LOGIN literals": imap_login_literals,
    "LOGIN LITERAL+": imap_login_nonsynchronising_literals,
    "AUTHENTICATE PLAIN SASL-IR": imap_authenticate_plain_ir,
    "AUTHENTICATE PLAIN": imap_authenticate_plain,
    "AUTHENTICATE LOGIN": imap_authenticate_login,
    "AUTHENTICATE CRAM-MD5": imap_authenticate_cram_md5,
}
# Courier offers neither LITERAL+ nor SASL-IR; Cyrus offers both
IMAP_OFFERED = {"courier": [f for f in IMAP_FORMS if "SASL-IR" not in f and "+" not in f], "cyrus": list(IMAP_FORMS)}


@pytest.mark.parametrize(("backend", "form"), _pairs(IMAP_OFFERED), indirect=["backend"])
def test_every_imap_login_form_is_recorded_as_the_user(proxy: Popbridge, backend: ChrootedMailServer, form: str) -> None:
    source = f"127.0.2.{list(IMAP_FORMS).index(form) + 1}"
    d = Dialogue(proxy.imap_port, source)
    try:
        assert IMAP_FORMS[form](d, "alice", "alice-pw").startswith(b"a OK")
        d.send(b"b EXAMINE INBOX\r\n")
        assert d.tagged("b").startswith(b"b OK")
        d.send(b"c LOGOUT\r\n")
        d.tagged("c")
    finally:
        d.close()
    assert recorded(proxy, source) == [("alice", "imap4")]


@pytest.mark.parametrize("backend", ["courier", "cyrus"], indirect=True)
def test_wrong_imap_password_records_nothing(proxy: Popbridge, backend: ChrootedMailServer) -> None:
    d = Dialogue(proxy.imap_port, "127.0.2.20")
    try:
        assert imap_authenticate_plain(d, "alice", "wrong").startswith(b"a NO")  # Courier after 5 s
    finally:
        d.close()
    assert recorded(proxy, "127.0.2.20") == []


# ---------------------------------------------------------------- after the login


def answered(port: int, source: str, script: bytes) -> bytes:
    """Send the whole `script` in one write and return everything until the server closes."""
    d = Dialogue(port, source)
    try:
        d.send(script)
        return read_until_closed(d.socket)
    finally:
        d.close()


@pytest.mark.parametrize("backend", ["courier", "cyrus"], indirect=True)
def test_commands_pipelined_behind_the_login_are_answered(proxy: Popbridge, backend: ChrootedMailServer) -> None:
    pop3 = answered(proxy.port, "127.0.3.1", b"USER alice\r\nPASS alice-pw\r\nSTAT\r\nQUIT\r\n")
    assert [line[:3] for line in pop3.splitlines()] == [b"+OK"] * 4, pop3
    imap = answered(proxy.imap_port, "127.0.3.2", b"a LOGIN alice alice-pw\r\nb EXAMINE INBOX\r\nc LOGOUT\r\n")
    assert re.search(rb"^a OK.*^b OK.*^\* BYE.*^c OK", imap, re.M | re.S), imap
    assert recorded(proxy, "127.0.3.1") == [("alice", "pop3")]
    assert recorded(proxy, "127.0.3.2") == [("alice", "imap4")]


def test_courier_itself_drops_commands_pipelined_behind_its_login(courier: Courier) -> None:
    """Why popbridge releases nothing behind a login before its answer: Courier execs its mail
    process after the login and loses what it had read. (Said once, then quiet: we wait 3 s.)"""
    d = Dialogue(courier.imap_port, "127.0.3.3")
    try:
        d.send(b"a LOGIN alice alice-pw\r\nb EXAMINE INBOX\r\n")
        assert d.tagged("a").startswith(b"a OK")
        d.socket.settimeout(3)
        with pytest.raises(TimeoutError):
            d.tagged("b")
    finally:
        d.close()


@pytest.mark.parametrize("backend", ["courier", "cyrus"], indirect=True)
def test_retrieval_through_popbridge_is_byte_for_byte_the_direct_one(
    proxy: Popbridge, backend: ChrootedMailServer
) -> None:
    direct = pop3_retr_raw(backend.port, "127.0.0.1", "bob", "bob-pw")
    assert len(direct) > 300_000
    assert pop3_retr_raw(proxy.port, "127.0.3.4", "bob", "bob-pw") == direct
    direct = imap_fetch_raw(backend.imap_port, "127.0.0.1", "bob", "bob-pw")
    assert len(direct) > 300_000
    assert imap_fetch_raw(proxy.imap_port, "127.0.3.5", "bob", "bob-pw") == direct


# ---------------------------------------------------------------- Courier's own answers


@pytest.mark.parametrize(("max_per_ip", "fifth"), [(None, b"-ERR [SYS/TEMP] "), (40, b"+OK")])
def test_courier_maxperip_counts_every_popbridge_session_as_one_client(
    max_per_ip: int | None, fifth: bytes
) -> None:
    """Debian's MAXPERIP=4 for POP3 sees popbridge's address on every session: a fifth user is
    turned away (Courier closes without a word; popbridge says -ERR [SYS/TEMP]) until the
    operator raises it, as README says."""
    server = _start(Courier(require_debian_root(COURIER_EXIM), users=USERS, max_per_ip=max_per_ip))
    daemon = start_popbridge(server)
    sessions: list[Dialogue] = []
    try:
        for n in range(1, 5):
            sessions.append(Dialogue(daemon.port, f"127.0.4.{n}"))
            assert pop3_user_pass(sessions[-1], "alice", "alice-pw").startswith(b"+OK")
        sessions.append(Dialogue(daemon.port, "127.0.4.5"))
        assert sessions[-1].greeting.startswith(fifth)
        assert recorded(daemon, "127.0.4.5") == []
    finally:
        for session in sessions:
            session.close()
        print(f"--- popbridge output:\n{daemon.output()}\n--- courier log:\n{server.log_text()}")
        daemon.cleanup()
        server.cleanup()


@pytest.mark.parametrize("backend", ["courier"], indirect=True)
def test_courier_answers_syntax_errors_no_and_the_login_after_them_counts(proxy: Popbridge, backend: Courier) -> None:
    d = Dialogue(proxy.imap_port, "127.0.4.10")
    try:
        d.send(b"x FOO\r\ny ID NIL\r\n")
        assert d.tagged("x").startswith(b"x NO ")  # where Dovecot and Cyrus say BAD
        assert d.tagged("y").startswith(b"y NO ")  # Courier has no ID
        assert imap_login_atoms(d, "alice", "alice-pw").startswith(b"a OK")
    finally:
        d.close()
    assert recorded(proxy, "127.0.4.10") == [("alice", "imap4")]


@pytest.mark.parametrize("backend", ["courier"], indirect=True)
def test_courier_own_stls_and_starttls_are_not_offered_through_popbridge(proxy: Popbridge, backend: Courier) -> None:
    """Debian's Courier offers STLS/STARTTLS with its own certificate; TLS ends at popbridge."""
    for port, source, expect in ((backend.port, "127.0.0.1", True), (proxy.port, "127.0.4.11", False)):
        d = Dialogue(port, source)
        try:
            assert d.say("CAPA").startswith(b"+OK")
            capabilities = list(iter(d.reader.readline, b".\r\n"))
            assert (b"STLS\r\n" in capabilities) is expect, capabilities
        finally:
            d.close()
    for port, source, expect in ((backend.imap_port, "127.0.0.1", True), (proxy.imap_port, "127.0.4.12", False)):
        d = Dialogue(port, source)
        try:
            d.send(b"a CAPABILITY\r\n")
            assert (b" STARTTLS" in d.greeting + d.reader.readline()) is expect
        finally:
            d.close()


# ---------------------------------------------------------------- the client's address


@pytest.mark.parametrize("backend", ["courier", "cyrus"], indirect=True)
def test_forward_client_address_is_warned_about_and_the_server_logs_popbridge(backend: ChrootedMailServer) -> None:
    """Neither offers XCLIENT; Courier has no ID, Cyrus answers ID but takes no address from
    it: logins work, popbridge warns where it can tell, and the server logs 127.0.0.1."""
    daemon = start_popbridge(backend, forward_client_address=True)
    mark = len(backend.log_lines())
    try:
        d = Dialogue(daemon.port, "127.0.4.20")
        assert pop3_user_pass(d, "alice", "alice-pw").startswith(b"+OK")
        d.close()
        d = Dialogue(daemon.imap_port, "127.0.4.21")
        assert imap_login_atoms(d, "alice", "alice-pw").startswith(b"a OK")
        d.close()
        assert recorded(daemon, "127.0.4.20") == [("alice", "pop3")]
        assert recorded(daemon, "127.0.4.21") == [("alice", "imap4")]
        daemon.log.wait_for(lambda line: "backend does not offer XCLIENT" in line and "127.0.4.20" in line)
        if isinstance(backend, Courier):
            daemon.log.wait_for(lambda line: "backend does not offer ID" in line and "127.0.4.21" in line)
        logins = [line for line in backend.log_lines()[mark:] if "alice" in line and "login" in line.lower()]
        assert logins and all("127.0.4." not in line for line in logins), logins
        assert all("127.0.0.1" in line for line in logins), logins
    finally:
        print(f"--- popbridge output:\n{daemon.output()}")
        daemon.cleanup()


# ---------------------------------------------------------------- Cyrus's own answers


def test_cyrus_login_delay_after_a_right_password_is_not_a_login() -> None:
    """Debian's popminpoll: 1 lets a POP3 user log in once a minute; the next login gets
    -ERR [LOGIN-DELAY] to a right PASS. The client sees it; nothing is recorded."""
    server = _start(Cyrus(require_debian_root(CYRUS_SENDMAIL), users=USERS, popminpoll=1))
    daemon = start_popbridge(server)
    try:
        d = Dialogue(server.port, "127.0.0.1")  # a direct login starts dora's minute
        assert pop3_user_pass(d, "dora", "dora-pw").startswith(b"+OK")
        assert d.say("QUIT").startswith(b"+OK")
        d.close()
        d = Dialogue(daemon.port, "127.0.4.30")
        assert pop3_user_pass(d, "dora", "dora-pw").startswith(b"-ERR [LOGIN-DELAY] ")
        d.close()
        assert recorded(daemon, "127.0.4.30") == []
    finally:
        print(f"--- popbridge output:\n{daemon.output()}\n--- cyrus log:\n{server.log_text()}")
        daemon.cleanup()
        server.cleanup()


def test_cyrus_with_upstreams_allowplaintext_off_refuses_plain_logins_from_popbridge() -> None:
    """popbridge's leg to the server is plain (unless backend_starttls): with upstream's
    `allowplaintext: no` Cyrus refuses passwords in the clear (CRAM-MD5 still works), and
    popbridge records only the login Cyrus accepted."""
    server = _start(Cyrus(require_debian_root(CYRUS_SENDMAIL), users=USERS, allowplaintext=False))
    daemon = start_popbridge(server)
    try:
        d = Dialogue(daemon.imap_port, "127.0.4.40")
        assert imap_login_quoted(d, "alice", "alice-pw").startswith(b"a NO")
        d.close()
        d = Dialogue(daemon.port, "127.0.4.41")
        assert d.say("USER alice").startswith(b"-ERR [AUTH] ")  # "only available under a layer"
        d.close()
        d = Dialogue(daemon.imap_port, "127.0.4.42")
        assert imap_authenticate_cram_md5(d, "alice", "alice-pw").startswith(b"a OK")
        d.close()
        assert recorded(daemon, "127.0.4.40") == recorded(daemon, "127.0.4.41") == []
        assert recorded(daemon, "127.0.4.42") == [("alice", "imap4")]
    finally:
        print(f"--- popbridge output:\n{daemon.output()}\n--- cyrus log:\n{server.log_text()}")
        daemon.cleanup()
        server.cleanup()
