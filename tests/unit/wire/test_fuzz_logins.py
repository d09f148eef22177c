"""Generated sessions for the POP3 and IMAP4 login watchers (budget: tests/conftest.py profiles).

Sessions are interleavings of plausible and hostile client commands and backend replies. Three
properties, checked on every generated session:

- only the format's own error (Pop3ProtocolError / ImapProtocolError) ever escapes;
- cutting every step at arbitrary points never changes the actions (or the error);
- a login is recorded only on the real success answer: POP3 ``+OK`` to PASS, APOP or the last
  step of AUTH; IMAP4 a tagged ``OK`` with the login command's tag, once that whole command
  (literals and SASL responses included) has reached the backend.
"""

import base64
import re

from hypothesis import example, given
from hypothesis import strategies as st

from popbridge.wire.imap4 import Imap4LoginWatcher, ImapProtocolError
from popbridge.wire.login import Action, Authenticated, LoginSucceeded, ToBackend, ToClient
from popbridge.wire.pop3 import Pop3LoginWatcher, Pop3ProtocolError
from popbridge.wire.proxy_header import V2_SIGNATURE, ProxyHeaderDecoder, ProxyHeaderError
from tests.unit.wire.sessions import GREETING as POP3_GREETING


def b64(data: bytes) -> bytes:
    return base64.b64encode(data)


IMAP_GREETING = b"* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] ready\r\n"

POP3_CLIENT = [
    b"USER alice\r\n", b"PASS secret\r\n", b"APOP alice 0123456789abcdef0123456789abcdef\r\n", b"AUTH PLAIN\r\n",
    b"AUTH PLAIN " + b64(b"\0alice\0pw") + b"\r\n", b"AUTH LOGIN\r\n", b64(b"alice") + b"\r\n", b"*\r\n",
    b"NOOP\r\n", b"CAPA\r\n", b"STAT\r\n", b"QUIT\r\n", b"STLS\r\n", b"XCLIENT ADDR=192.0.2.1\r\n", b"\r\n",
]
POP3_BACKEND = [
    b"+OK\r\n", b"+OK Logged in.\r\n", b"-ERR [AUTH] failed\r\n", b"-ERR [IN-USE] locked\r\n",
    b"-ERR [SYS/TEMP] later\r\n", b"+ \r\n", b"+ VXNlcm5hbWU6\r\n", b"+\r\n", b"USER\r\n.\r\n", b".\r\n",
    b"* OK\r\n", b"+OK\r\n+OK\r\n", b"OK\r\n", b"-ERR\r\n", b"+ok\r\n",
]
IMAP_CLIENT = [
    b"a LOGIN alice secret\r\n", b"a LOGIN {5}\r\n", b"a LOGIN {5+}\r\n", b"alice", b" pw\r\n", b" {2}\r\n",
    b"a AUTHENTICATE PLAIN\r\n", b"a AUTHENTICATE PLAIN " + b64(b"\0alice\0pw") + b"\r\n", b64(b"\0alice\0pw") + b"\r\n",
    b"*\r\n", b"b NOOP\r\n", b"a NOOP\r\n", b"b LOGIN bob pw\r\n", b"c CAPABILITY\r\n", b"c STARTTLS\r\n",
    b'c ID ("x-originating-ip" "192.0.2.1")\r\n', b"d LOGOUT\r\n",
]
IMAP_BACKEND = [
    b"a OK\r\n", b"a OK LOGIN completed\r\n", b"b OK\r\n", b"c OK\r\n", b"a NO failed\r\n", b"a BAD\r\n",
    b"b NO\r\n", b"+ go ahead\r\n", b"+ \r\n", b"* OK [ALERT] hi\r\n", b"* BYE bye\r\n", b"* PREAUTH\r\n",
    b"* CAPABILITY IMAP4rev1 STARTTLS\r\n", b'* ID ("x" {8}\r\na OK x\r\n)\r\n', b"a ok\r\n", b"A OK\r\n",
    b"* OK\r\na OK\r\n",
]


def sessions(client: list[bytes], backend: list[bytes]) -> st.SearchStrategy[list[tuple[str, bytes]]]:
    step = st.one_of(
        st.tuples(st.just("client"), st.sampled_from(client)),
        st.tuples(st.just("backend"), st.sampled_from(backend)),
        st.tuples(st.sampled_from(["client", "backend"]), st.binary(max_size=30)),
    )
    return st.lists(step, max_size=14)


def run(watcher_class: type, greeting: bytes, steps: list[tuple[str, bytes]], cuts: list[int] | None = None):
    """(actions in order, the protocol error if one ended the session)."""
    watcher = watcher_class(max_line=200, max_pending=2048, **({"max_literal": 100} if watcher_class is Imap4LoginWatcher else {}))
    error_class = Pop3ProtocolError if watcher_class is Pop3LoginWatcher else ImapProtocolError
    actions: list[Action] = []
    try:
        actions += watcher.feed_backend(greeting)
        for n, (side, data) in enumerate(steps):
            feed = watcher.feed_client if side == "client" else watcher.feed_backend
            pieces = [data]
            if cuts is not None and data:
                cut = cuts[n % len(cuts)] % (len(data) + 1) if cuts else len(data)
                pieces = [data[:cut], data[cut:]]
            for piece in pieces:
                actions += feed(piece)
    except error_class as e:
        return _merged(actions), str(e)
    return _merged(actions), None


def _merged(actions: list[Action]) -> list[object]:
    """Actions with adjacent writes to one side joined (chunking may split a write, not reorder)."""
    merged: list[object] = []
    for action in actions:
        if isinstance(action, Authenticated):
            action = ("authenticated", ToBackend(action.client_data), ToClient(action.backend_data))
            for part in action:
                if isinstance(part, (ToBackend, ToClient)) and not part.data:
                    continue
                _append(merged, part)
            continue
        _append(merged, action)
    return merged


def _append(merged: list[object], action: object) -> None:
    if isinstance(action, (ToBackend, ToClient)) and not action.data:
        return
    if merged and isinstance(action, (ToBackend, ToClient)) and type(merged[-1]) is type(action):
        merged[-1] = type(action)(merged[-1].data + action.data)  # type: ignore[attr-defined]
    else:
        merged.append(action)


# ---------------------------------------------------------------- only the format's error


@given(sessions(POP3_CLIENT, POP3_BACKEND))
def test_pop3_generated_sessions_raise_only_the_protocol_error(steps):
    run(Pop3LoginWatcher, POP3_GREETING, steps)


@given(sessions(IMAP_CLIENT, IMAP_BACKEND))
def test_imap_generated_sessions_raise_only_the_protocol_error(steps):
    run(Imap4LoginWatcher, IMAP_GREETING, steps)


# ---------------------------------------------------------------- chunking


@given(sessions(POP3_CLIENT, POP3_BACKEND), st.lists(st.integers(min_value=0, max_value=200), min_size=1, max_size=14))
@example([("client", b"USER alice\r\n"), ("client", b"USER alice\r\n"), ("backend", b"+OK\r\n+OK\r\n")], [5])  # found nightly
def test_pop3_cutting_steps_anywhere_never_changes_the_actions(steps, cuts):
    assert_same_outcome(run(Pop3LoginWatcher, POP3_GREETING, steps, cuts), run(Pop3LoginWatcher, POP3_GREETING, steps))


@given(sessions(IMAP_CLIENT, IMAP_BACKEND), st.lists(st.integers(min_value=0, max_value=200), min_size=1, max_size=14))
def test_imap_cutting_steps_anywhere_never_changes_the_actions(steps, cuts):
    assert_same_outcome(run(Imap4LoginWatcher, IMAP_GREETING, steps, cuts), run(Imap4LoginWatcher, IMAP_GREETING, steps))


OUT_OF_TURN = "backend spoke out of turn"


def assert_same_outcome(cut: tuple[list[object], str | None], whole: tuple[list[object], str | None]) -> None:
    """The same actions; when a protocol error ends the session, the same error and the same
    logins (the writes of the step that failed are dropped with it, so how much of that step was
    already released depends on where it was cut: the session is closed either way).

    One difference is allowed, and only towards strictness: backend bytes that arrive before
    the command they would answer was sent are out of turn. Whether a generated reply did
    depends on the cut (the second of two "+OK" in one read came before its USER was sent;
    cut after the first, it came after). Even then the logins recorded may not differ.
    """
    if OUT_OF_TURN in (cut[1], whole[1]) and cut[1] != whole[1]:
        stricter, laxer = (cut, whole) if cut[1] == OUT_OF_TURN else (whole, cut)
        logins = [a for a in stricter[0] if isinstance(a, LoginSucceeded)]
        assert logins == [a for a in laxer[0] if isinstance(a, LoginSucceeded)][: len(logins)]
        return
    if whole[1] is None:
        assert cut == whole
    else:
        assert cut[1] == whole[1]
        assert [a for a in cut[0] if not isinstance(a, (ToClient, ToBackend))] == [
            a for a in whole[0] if not isinstance(a, (ToClient, ToBackend))
        ]


@given(st.sampled_from([
    b"PROXY TCP4 192.0.2.7 198.51.100.1 50123 110\r\nUSER a\r\n",
    b"PROXY TCP6 2001:db8::7 2001:db8::1 4000 143\r\n",
    b"PROXY UNKNOWN\r\n",
    V2_SIGNATURE + bytes([0x21, 0x11, 0, 12, 192, 0, 2, 7, 198, 51, 100, 1, 0, 80, 0, 110]) + b"rest",
]), st.lists(st.integers(min_value=1, max_value=60), max_size=8))
def test_proxy_header_cut_anywhere_decodes_the_same(data, cuts):
    def decode(pieces):
        decoder = ProxyHeaderDecoder()
        for n, piece in enumerate(pieces):
            header = decoder.feed(piece)
            if header is not None:
                return header, decoder.rest + b"".join(pieces[n + 1 :])
        return None, b""

    points = sorted({c for c in cuts if c < len(data)})
    pieces = [data[a:b] for a, b in zip([0, *points], [*points, len(data)])]
    assert decode(pieces) == decode([data])


@given(st.binary(max_size=120), st.lists(st.integers(min_value=1, max_value=120), max_size=6))
def test_proxy_header_arbitrary_bytes_in_any_chunks_raise_only_the_header_error(data, cuts):
    decoder = ProxyHeaderDecoder()
    points = sorted({c for c in cuts if c < len(data)})
    try:
        for a, b in zip([0, *points], [*points, len(data)]):
            if decoder.feed(data[a:b]) is not None:
                break
    except ProxyHeaderError:
        pass


# ---------------------------------------------------------------- only the real success answer


POP3_LOGIN_VERBS = (b"PASS", b"APOP", b"AUTH")


def pop3_logins_are_real(actions: list[object]) -> None:
    """Every LoginSucceeded: the line released next is a +OK, and the command it answers (the
    last one sent) is PASS, APOP, AUTH or a SASL response inside AUTH."""
    sent, in_auth = b"", False
    for n, action in enumerate(actions):
        if isinstance(action, ToBackend):  # the harness may join writes: read every line
            for sent in filter(None, action.data.splitlines()):
                verb = sent.split(b" ", 1)[0].upper()
                in_auth = verb == b"AUTH" or (in_auth and verb not in (b"USER", b"PASS", b"APOP", b"NOOP", b"QUIT"))
        if isinstance(action, LoginSucceeded):
            released = actions[n + 1]
            assert isinstance(released, ToClient) and released.data.startswith(b"+OK"), actions
            assert sent.split(b" ", 1)[0].upper() in POP3_LOGIN_VERBS or in_auth, actions


@given(sessions(POP3_CLIENT, POP3_BACKEND))
def test_pop3_no_backend_reply_but_ok_to_a_login_records_a_login(steps):
    actions, _ = run(Pop3LoginWatcher, POP3_GREETING, steps)
    pop3_logins_are_real(actions)


_ANNOUNCED_LITERAL = re.compile(rb"\{\d+[+-]?\}\r?\n\Z")


def imap_logins_are_real(actions: list[object]) -> None:
    """Every LoginSucceeded: the line released next is `<tag> OK` for the tag of the last
    LOGIN/AUTHENTICATE sent; that command is complete (no literal announced and unsent, no
    continuation relayed to the client and still unanswered)."""
    sent = b""  # everything sent to the backend since the last command started
    tag, owed = b"", False
    for n, action in enumerate(actions):
        if isinstance(action, ToBackend):
            for line in action.data.splitlines(keepends=True):
                words = line.split(b" ")
                if len(words) > 1 and words[1].upper().rstrip(b"\r\n") in (b"LOGIN", b"AUTHENTICATE") and not owed and not _ANNOUNCED_LITERAL.search(sent):
                    tag, sent = words[0], b""
                sent += line
            owed = False
        elif isinstance(action, ToClient) and action.data.startswith(b"+"):
            owed = True
        elif isinstance(action, LoginSucceeded):
            released = actions[n + 1]
            assert isinstance(released, ToClient) and released.data.split(None, 2)[:2] in ([tag, b"OK"], [tag, b"ok"], [tag, b"Ok"], [tag, b"oK"]), actions
            assert not owed, f"login recorded while the client still owed the backend data: {actions}"
            assert not _ANNOUNCED_LITERAL.search(sent), f"login recorded before the announced literal was sent: {actions}"


@given(sessions(IMAP_CLIENT, IMAP_BACKEND))
@example([("client", b"a LOGIN {5}\r\n"), ("backend", b"+ go ahead\r\n"), ("backend", b"a OK\r\n")])  # found by this test
@example([("client", b"a AUTHENTICATE PLAIN\r\n"), ("backend", b"+ \r\n"), ("backend", b"a OK\r\n")])
def test_imap_no_backend_reply_but_the_tagged_ok_to_a_whole_login_records_a_login(steps):
    actions, _ = run(Imap4LoginWatcher, IMAP_GREETING, steps)
    imap_logins_are_real(actions)
