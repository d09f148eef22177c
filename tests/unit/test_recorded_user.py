"""The recorded user is the user the backend logged in: generated client sessions, legal and
hostile, run through the login watchers against model servers (tests/unit/login_models.py)
that read the forwarded bytes as real servers do, modern and old-fashioned alike.

Whatever the client sends, popbridge records a login only under the name the model logged in,
and (when the session was not ended as a protocol error) records every login the model made.
"""

import hashlib
from base64 import b64encode

from hypothesis import example, given
from hypothesis import strategies as st

from popbridge.wire.imap4 import Imap4LoginWatcher
from popbridge.wire.login import Action, Authenticated, LoginProtocolError, LoginSucceeded, ToBackend
from popbridge.wire.pop3 import Pop3LoginWatcher
from tests.unit.login_models import CHALLENGE, ImapModel, Pop3Model, cram_md5

NAMES = st.sampled_from(["alice", "bob", "mallory", "ALICE", " alice", "al\\ice", "b\x01ob"])
PASSWORDS = st.sampled_from(["alice-pw", "bob-pw", "wrong", ""])


def plain(user: str, password: str, authzid: str = "") -> bytes:
    return b64encode(f"{authzid}\0{user}\0{password}".encode())


def literal(data: bytes, plus: bool) -> bytes:
    return b"{%d%s}\r\n" % (len(data), b"+" if plus else b"") + data


@st.composite
def imap_strings(draw: st.DrawFn, value: str) -> bytes:
    """`value` as an atom, a quoted string (escaped or with a needless escape), or a literal."""
    data = value.encode()
    form = draw(st.sampled_from(["atom", "quoted", "needless-escape", "sync", "non-sync", "command-literal"]))
    if form == "atom":
        return data
    if form == "quoted":
        return b'"' + data.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
    if form == "needless-escape":
        return b'"\\' + data + b'"'
    if form == "command-literal":  # Courier reads these bytes as commands of its own
        return literal(b"b LOGIN bob bob-pw\r\n", draw(st.booleans()))
    return literal(data, form == "non-sync")


@st.composite
def imap_pieces(draw: st.DrawFn) -> bytes:
    user, password = draw(NAMES), draw(PASSWORDS)
    kind = draw(st.sampled_from(["login", "login-extra-blank", "plain-ir", "plain", "empty-ir", "login-mech",
                                 "cram", "cram-ir", "cancel", "noop", "junk"]))
    if kind == "login":
        return b"a LOGIN " + draw(imap_strings(user)) + b" " + draw(imap_strings(password)) + b"\r\n"
    if kind == "login-extra-blank":
        return f"a LOGIN  {user} {password}\r\n".encode()
    if kind == "plain-ir":
        return b"a AUTHENTICATE PLAIN " + plain(user, password, draw(st.sampled_from(["", user, "bob"]))) + b"\r\n"
    if kind == "plain":
        return b"a AUTHENTICATE PLAIN\r\n" + plain(user, password) + b"\r\n"
    if kind == "empty-ir":
        return b"a AUTHENTICATE PLAIN =\r\n" + plain(user, password) + b"\r\n"
    if kind == "login-mech":
        return b"a AUTHENTICATE LOGIN\r\n" + b64encode(user.encode()) + b"\r\n" + b64encode(password.encode()) + b"\r\n"
    if kind in ("cram", "cram-ir"):
        ir = b" " + cram_md5(draw(NAMES), "bob-pw") if kind == "cram-ir" else b""
        return b"a AUTHENTICATE CRAM-MD5" + ir + b"\r\n" + cram_md5(user, password) + b"\r\n"
    return {"cancel": b"*\r\n", "noop": b"n NOOP\r\n", "junk": b"x\r\n"}[kind]


@st.composite
def pop3_pieces(draw: st.DrawFn) -> bytes:
    user, password = draw(NAMES), draw(PASSWORDS)
    kind = draw(st.sampled_from(["user", "pass", "apop", "plain-ir", "plain", "empty-ir", "login-mech", "cram",
                                 "cram-ir", "cancel", "capa", "noop"]))
    if kind == "user":
        return f"USER {user}\r\n".encode()
    if kind == "pass":
        return f"PASS {password}\r\n".encode()
    if kind == "apop":
        return f"APOP {user} {hashlib.md5(CHALLENGE + password.encode()).hexdigest()}\r\n".encode()
    if kind == "plain-ir":
        return b"AUTH PLAIN " + plain(user, password, draw(st.sampled_from(["", user, "bob"]))) + b"\r\n"
    if kind == "plain":
        return b"AUTH PLAIN\r\n" + plain(user, password) + b"\r\n"
    if kind == "empty-ir":
        return b"AUTH PLAIN =\r\n" + plain(user, password) + b"\r\n"
    if kind == "login-mech":
        return b"AUTH LOGIN\r\n" + b64encode(user.encode()) + b"\r\n" + b64encode(password.encode()) + b"\r\n"
    if kind in ("cram", "cram-ir"):
        ir = b" " + cram_md5(draw(NAMES), "bob-pw") if kind == "cram-ir" else b""
        return b"AUTH CRAM-MD5" + ir + b"\r\n" + cram_md5(user, password) + b"\r\n"
    return {"cancel": b"*\r\n", "capa": b"CAPA\r\n", "noop": b"NOOP\r\n"}[kind]


def drive(watcher, model, script: list[bytes]) -> tuple[list[str], bool]:
    """Run `script` (client pieces, sent without waiting) through the watcher to the model;
    (the users popbridge recorded, whether the session ended as a protocol error)."""
    recorded: list[str] = []
    to_model: list[bytes] = []

    def carry(actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, ToBackend):
                to_model.append(action.data)
            elif isinstance(action, LoginSucceeded):
                recorded.append(action.user)
            elif isinstance(action, Authenticated):
                to_model.append(action.client_data)

    try:
        carry(watcher.feed_backend(model.greeting()))
        for piece in script:
            carry(watcher.feed_client(piece))
            while to_model and not recorded:
                answer = model.feed(to_model.pop(0))
                if answer:
                    carry(watcher.feed_backend(answer))
    except LoginProtocolError:
        return recorded, True
    return recorded, False


def check(recorded: list[str], ended: bool, logged_in: list[str]) -> None:
    assert recorded == logged_in[: len(recorded)]
    if not ended:
        assert recorded == logged_in[:1]


@example(literal_plus=False, sasl_ir=False, script=[b"a LOGIN mallory {20+}\r\na LOGIN bob bob-pw\r\n\r\n"])
@example(literal_plus=True, sasl_ir=True, script=[b"a AUTHENTICATE CRAM-MD5 " + cram_md5("mallory", "bob-pw") + b"\r\n"
                                                  + cram_md5("alice", "alice-pw") + b"\r\n"])
@given(literal_plus=st.booleans(), sasl_ir=st.booleans(), script=st.lists(imap_pieces(), min_size=1, max_size=6))
def test_imap_records_only_the_user_the_server_logged_in(literal_plus, sasl_ir, script):
    model = ImapModel(literal_plus=literal_plus, sasl_ir=sasl_ir)
    recorded, ended = drive(Imap4LoginWatcher(max_bad_commands=50), model, script)
    check(recorded, ended, model.logged_in)


@example(sasl_ir=False, apop=True, script=[b"AUTH PLAIN " + plain("mallory", "x") + b"\r\n" + plain("bob", "bob-pw") + b"\r\n"])
@example(sasl_ir=True, apop=True, script=[b"AUTH CRAM-MD5 " + cram_md5("mallory", "bob-pw") + b"\r\n"
                                          + cram_md5("alice", "alice-pw") + b"\r\n"])
@given(sasl_ir=st.booleans(), apop=st.booleans(), script=st.lists(pop3_pieces(), min_size=1, max_size=6))
def test_pop3_records_only_the_user_the_server_logged_in(sasl_ir, apop, script):
    model = Pop3Model(sasl_ir=sasl_ir, apop=apop)
    recorded, ended = drive(Pop3LoginWatcher(max_bad_commands=50), model, [b"CAPA\r\n", *script] if sasl_ir else script)
    check(recorded, ended, model.logged_in)
