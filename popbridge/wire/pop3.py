"""The POP3 login watcher (RFC 1939, 2449 CAPA, 5034 AUTH), sans-IO.

It sits between a mail client and the real POP3 server until the login succeeds:

- client commands reach the backend one at a time; the next is released only after the
  previous one's final response (pipelining clients are served in order, and nothing the
  client sent behind its login is lost to servers that drop pipelined input after a login);
- a login counts only on the backend's ``+OK`` to PASS, APOP or the final step of AUTH;
- CAPA answers lose STLS and XCLIENT (popbridge offers neither to clients yet), and a client's
  own STLS or XCLIENT is refused locally, never forwarded;
- a login is recorded under a name only where the backend cannot have read the bytes any other
  way (see popbridge/wire/sasl.py for SASL). Refused with ``-ERR`` before they are forwarded:
  ``USER`` names with surrounding blanks or unprintable characters, ``APOP`` when the greeting
  offered no timestamp or with anything but ``name digest``, ``AUTH`` with a mechanism the
  backend's CAPA did not list (when popbridge has seen it), and the SASL initial responses
  sasl.py refuses. An initial response goes on as sent only to a backend whose CAPA lists
  ``SASL`` (RFC 5034 servers, which read it as the first response); otherwise popbridge sends
  ``AUTH mechanism`` alone and answers the backend's first challenge with it, which means the
  same thing to every server. A later SASL response that sasl.py refuses is replaced by ``*``,
  which cancels the exchange;
- with `client_address`, the real client's address is passed to the backend with XCLIENT
  before any client command, when the backend offers it: Dovecot 2.3 does so with an
  ``[XCLIENT]`` code in its greeting (to hosts in ``login_trusted_networks``), other servers
  may list it in CAPA, which is asked only when the greeting does not say. The ``[XCLIENT]``
  code is removed from the greeting clients see.

After the login it emits `Authenticated` and turns into a plain pipe. Passwords, digests and
SASL data pass through untouched and are never kept. Framing, the bad-command budget, routed
logins, the greeting's release and TLS are the pre-login core's (popbridge/wire/prelogin.py);
the greeting, popbridge's own STLS / CAPA / XCLIENT probes and what the backend offers (CAPA,
APOP timestamp) are pop3_probe.py's; the states are pop3_state.py's. This module holds POP3's
client commands and their answers, one state table (`Turn`) from each state to its handler.
"""

import re
from collections.abc import Callable
from enum import Enum
from typing import ClassVar, NamedTuple

from popbridge.wire.login import (
    Action,
    LoginFailed,
    LoginProtocolError,
    LoginSucceeded,
    StartClientTls,
    TlsOptions,
    ToBackend,
    ToClient,
)
from popbridge.wire.pop3_probe import Pop3ProbingWatcher
from popbridge.wire.pop3_state import CRLF, Pop3ProtocolError, State, StatusHandler, everything, nothing, relay
from popbridge.wire.routing import HeldLogin
from popbridge.wire.sasl import AmbiguousLogin, SaslUserReader, checked_name, valid_mechanism

__all__ = ["Pop3LoginWatcher", "Pop3ProtocolError", "State"]

LOGIN_VERBS = (b"USER", b"PASS", b"APOP", b"AUTH")
APOP_ARGUMENTS = re.compile(rb"(\S+) [0-9a-f]{32}")


class Turn(NamedTuple):
    """One row of the state table (`Pop3LoginWatcher.TURNS`): whose line the state waits for,
    and the method that reads it."""

    client: bool  # a client line (the backend must be silent), else a backend line
    handle: "Callable[[Pop3LoginWatcher, bytes], list[Action]]"


class Pop3LoginWatcher(Pop3ProbingWatcher):
    """Fed client and backend bytes; returns the actions the glue carries out, in order.

    What each state waits for and which method reads it: `TURNS`, at the end of the class.
    """

    protocol = "pop3"
    GREETING, READY, HOLD = State.GREETING, State.READY, State.HOLD
    REPLAY_CHALLENGE, AUTHENTICATED = State.REPLAY_CHALLENGE, State.AUTHENTICATED

    def __init__(
        self,
        client_address: tuple[str, int] | None = None,
        tls: TlsOptions = TlsOptions(),
        max_line: int = 16_384,
        max_pending: int = 65_536,
        max_bad_commands: int = 5,
        route_logins: bool = False,
    ) -> None:
        super().__init__(client_address, tls, max_line, max_pending, max_bad_commands, route_logins)
        self._status_after_switch: StatusHandler = relay  # a held command's, while a new backend greets
        self._named_user = ""  # USER's name while its answer is awaited
        self._user: str | None = None  # the name USER set, for the PASS that follows
        self._login_method = ""  # the login command outstanding (USER, APOP, AUTH PLAIN...)
        self._login_user: str | SaslUserReader = ""  # its user, or the SASL exchange that names it
        self._sasl: SaslUserReader | None = None  # the AUTH exchange in progress
        self._sasl_command = b""  # the AUTH line of that exchange, for a replay

    def goodbye(self, reason: str) -> bytes:
        """The last line popbridge itself sends before it closes a session (RFC 3206 code)."""
        return f"-ERR [SYS/TEMP] popbridge: {reason}\r\n".encode()

    def _error(self, message: str) -> LoginProtocolError:
        return Pop3ProtocolError(message)

    def _step(self) -> list[Action] | None:
        turn = self.TURNS[self.state]
        if turn.client and self._backend:
            raise Pop3ProtocolError("backend spoke out of turn")
        buffer = self._client if turn.client else self._backend
        taken = self._take_line(buffer, 0)
        if taken is None:
            return None
        line, end = taken
        if turn.client:
            self._client = self._client[end:]
        else:
            self._backend = self._backend[end:]
        return turn.handle(self, line)

    # -- client commands ----------------------------------------------------------------

    def _sasl_response(self, line: bytes) -> list[Action]:
        assert self._sasl is not None
        first = self._sasl.responses == 0
        self.state = State.SASL_SERVER
        if self._sasl.client_response(line) is not None:
            return [ToBackend(b"*\r\n")]  # refused: cancel, and the backend says -ERR
        if first and self._holding.routable(self._sasl):
            return self._hold_login(HeldLogin(self._sasl.user, self._sasl_command, line + CRLF))
        return [ToBackend(line + CRLF)]

    def _command(self, line: bytes) -> list[Action]:
        verb, _, argument = line.partition(b" ")
        verb = verb.upper()
        if verb == b"STLS":
            return self._stls()
        if verb == b"XCLIENT":
            return self._refuse(b"-ERR XCLIENT is not accepted from clients\r\n")
        if verb in LOGIN_VERBS and (verb != b"AUTH" or argument) and self._tls.required and not self.tls_active:
            return self._refuse(b"-ERR [AUTH] TLS is required to log in here: use STLS first\r\n")
        self.state, self._on_status = State.REPLY, relay
        if verb == b"CAPA":
            self._capa_sasl = set()
            self._expect_multiline(self._capability_shown, self._capabilities_added)
        elif verb == b"USER":
            try:
                name = _user_argument(argument)
            except AmbiguousLogin as e:
                return self._refuse_login(e)
            self._named_user, self._on_status = name, self._after_user
            if self._holding.enabled:
                return self._hold_login(HeldLogin(name, line + CRLF))
        elif verb == b"PASS":
            self._expect_login("USER", self._user or "")
        elif verb == b"APOP":
            try:
                name = self._apop_user(argument)
            except AmbiguousLogin as e:
                return self._refuse_login(e)
            self._expect_login("APOP", name)
        elif verb == b"AUTH" and argument:
            return self._auth(line, argument)
        elif verb == b"AUTH":
            self._expect_multiline(everything, nothing)
        elif verb == b"QUIT":
            self._on_status = self._after_quit
        return [ToBackend(line + CRLF)]

    def _refuse_login(self, error: AmbiguousLogin) -> list[Action]:
        self.state = State.READY
        return self._refuse(b"-ERR popbridge: " + str(error).encode() + CRLF)

    def _apop_user(self, argument: bytes) -> str:
        if not self._offers_apop:
            raise AmbiguousLogin("APOP is not offered here")
        arguments = APOP_ARGUMENTS.fullmatch(argument)
        if arguments is None:
            raise AmbiguousLogin("APOP takes a name and an MD5 digest")
        return _name(arguments.group(1))

    def _auth(self, line: bytes, argument: bytes) -> list[Action]:
        """``AUTH mechanism [initial-response]``: refused, forwarded, or forwarded without its
        initial response, which then answers the backend's first challenge."""
        mechanism, _, initial = argument.partition(b" ")
        if not valid_mechanism(mechanism):
            return self._refuse_login(AmbiguousLogin("malformed AUTH mechanism"))
        if self._sasl_offered is not None and mechanism.upper() not in self._sasl_offered:
            return self._refuse_login(AmbiguousLogin(f"{mechanism.decode()} is not offered here"))
        sasl = SaslUserReader(mechanism.decode("ascii"))
        refusal = sasl.initial_response(initial) if initial else None
        if refusal is not None:
            return self._refuse_login(AmbiguousLogin(refusal))
        self._sasl = sasl
        command = line + CRLF
        if initial and (self._sasl_offered is None or self._holding.enabled):
            command, self._unsent_response = b"AUTH " + mechanism + CRLF, initial + CRLF
        self._sasl_command = command
        self.state = State.SASL_SERVER
        self._expect_login(f"AUTH {sasl.mechanism}", sasl)
        if initial and self._holding.routable(sasl):
            return self._hold_login(HeldLogin(sasl.user, command))
        return [ToBackend(command)]

    def _expect_login(self, method: str, user: "str | SaslUserReader") -> None:
        self._login_method, self._login_user, self._on_status = method, user, self._after_login

    # -- backend lines ------------------------------------------------------------------

    def _multiline_line(self, line: bytes) -> list[Action]:
        shown: list[Action] = [ToClient(line + CRLF)] if self._keep_line(line) else []
        if line == b".":
            self.state = State.READY
            return self._on_multiline_end() + shown
        return shown

    def _out_of_turn(self, line: bytes) -> list[Action]:
        raise Pop3ProtocolError("backend spoke out of turn")

    def _replayed_challenge(self, line: bytes) -> list[Action]:
        if _is_challenge(line):
            self.state = State.SASL_SERVER
            return [ToBackend(self._holding.answer_challenge())]
        return self._status_line(line)

    def _challenge(self, line: bytes) -> list[Action]:
        if not _is_challenge(line):
            return self._status_line(line)
        if self._unsent_response:
            response, self._unsent_response = self._unsent_response, b""
            return [ToBackend(response)]
        self.state = State.SASL_CLIENT
        return [ToClient(line + CRLF)]

    def _status_line(self, line: bytes) -> list[Action]:
        ok = _status(line)
        if not ok and self.state not in (State.GREETING, State.PROBE):  # a client command failed
            self._count_bad()
        self.state = State.READY
        return self._on_status(line, ok)

    # -- routing logins to the user's own backend ---------------------------------------

    def _switching_backend(self) -> None:
        self._status_after_switch, self._on_status = self._on_status, self._after_greeting

    def _resuming_held_login(self) -> None:
        self._on_status = self._status_after_switch

    # -- TLS ----------------------------------------------------------------------------

    def _stls(self) -> list[Action]:
        actions = self._client_tls(
            b"+OK Begin TLS negotiation\r\n",
            already_active=b"-ERR Command not permitted when TLS active\r\n",
            not_offered=b"-ERR STLS is not offered here\r\n",
        )
        if isinstance(actions[-1], StartClientTls):
            self._user = None  # a USER sent in the clear names no one after the handshake
        return actions

    # -- answers to client commands -----------------------------------------------------

    def _after_quit(self, line: bytes, ok: bool) -> list[Action]:
        self.farewell_seen = True
        return [ToClient(line + CRLF)]

    def _after_user(self, line: bytes, ok: bool) -> list[Action]:
        self._user = self._named_user if ok else None
        return [ToClient(line + CRLF)]

    def _after_login(self, line: bytes, ok: bool) -> list[Action]:
        user = self._login_user
        name = user if isinstance(user, str) else user.user
        unanswered, self._unsent_response = bool(self._unsent_response), b""
        if ok and isinstance(user, SaslUserReader) and (user.responses == 0 or unanswered or user.cancelled):
            raise Pop3ProtocolError("backend accepted AUTH before the client's SASL response, or after a cancel")
        if not ok:
            return [LoginFailed(name, self._login_method), ToClient(line + CRLF)]
        return self._authenticated(LoginSucceeded(name, self._login_method), ToClient(line + CRLF))

    # -- the state table: built once, for every session ---------------------------------

    TURNS: ClassVar[dict[Enum, Turn]] = {
        State.GREETING: Turn(False, _status_line),
        State.PROBE: Turn(False, _status_line),
        State.READY: Turn(True, _command),
        State.REPLY: Turn(False, _status_line),
        State.MULTILINE: Turn(False, _multiline_line),
        State.SASL_SERVER: Turn(False, _challenge),
        State.SASL_CLIENT: Turn(True, _sasl_response),
        State.HOLD: Turn(False, _out_of_turn),
        State.REPLAY_CHALLENGE: Turn(False, _replayed_challenge),
    }


def _name(data: bytes) -> str:
    try:
        return checked_name(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise AmbiguousLogin("user names must be UTF-8") from None


def _user_argument(argument: bytes) -> str:
    """``USER name``: one name, no blanks around it (servers differ on trimming them)."""
    if not argument or argument != argument.strip(b" \t"):
        raise AmbiguousLogin("USER takes one name without surrounding blanks")
    return _name(argument)


def _is_challenge(line: bytes) -> bool:
    return line == b"+" or line.startswith(b"+ ")


def _status(line: bytes) -> bool:
    """True for ``+OK``, False for ``-ERR``; anything else is a protocol error."""
    indicator = line.split(b" ", 1)[0]
    if indicator == b"+OK":
        return True
    if indicator == b"-ERR":
        return False
    raise Pop3ProtocolError(f"backend sent no status indicator: {line[:40]!r}")
