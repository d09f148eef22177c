"""The IMAP4 login watcher (RFC 3501 / 9051, 7888 literals, 4959 SASL-IR), sans-IO.

Like the POP3 watcher, it stands between client and backend until the login succeeds:

- client commands reach the backend one at a time, each with its literals; the next command is
  read only after the tagged completion of the previous one, so pipelined or tag-reusing
  clients cannot make popbridge and the server disagree about which answer belongs to which
  command. A sync literal ``{n}`` waits for the backend's own ``+`` (relayed). A non-sync
  literal ``{n+}`` follows at once only where the backend advertised LITERAL+ (or LITERAL- and
  n <= 4096); anywhere else (Courier, or capabilities not seen yet) popbridge sends it as
  ``{n}``, waits for the backend's ``+`` itself and shows it to no one, since a server without
  LITERAL+ would read the literal's bytes as commands of its own. If the backend ends a
  command early (a tagged NO instead of ``+``), whatever the client sends next is read as a
  new command, as the server reads it; the bytes of a literal the client sent without waiting
  are dropped. ``{n-}`` and binary literals ``~{n}`` are no syntax here: the session ends;
- a login is recorded under a name only where the backend cannot have read the bytes any
  other way. ``LOGIN`` must be exactly ``tag LOGIN astring SP astring``; ``AUTHENTICATE``
  exactly ``tag AUTHENTICATE mechanism [initial-response]``, with a mechanism the backend
  listed (when its capabilities are known). An initial response goes on as sent only where
  the backend advertised SASL-IR; otherwise popbridge answers the backend's first challenge
  with it. What sasl.py refuses gets a tagged BAD before anything is forwarded, or, once the
  command is out, a ``*`` that cancels the exchange (a LOGIN found bad after part of it went
  out ends the session);
- a login counts only on the tagged ``OK`` whose tag is the LOGIN or AUTHENTICATE command's:
  never on ``PREAUTH``, untagged lines, NO, BAD, or the answer to any other command. A tagged
  answer with any other tag is a protocol error and ends the session;
- STARTTLS is refused locally and removed from capability lists until popbridge does TLS;
- a client's ID loses any x-originating-* / x-connected-* fields (only popbridge may vouch for
  the client's address). With `client_address`, popbridge sends its own ID with the real
  address before the client's first command (Dovecot honours it from login_trusted_networks).

After the login it emits `Authenticated` and becomes a plain pipe (IDLE, COMPRESS, FETCH...).
What it shares with POP3 is the pre-login core's (popbridge/wire/prelogin.py); the greeting,
popbridge's own STARTTLS and ID probes and the backend's capabilities are imap4_probe.py's; the
states are imap4_state.py's; the command outstanding, with its LOGIN checks, is an
`imap4_command.ImapCommand`; each state's handlers are in one table (`Turn`).
"""

from collections.abc import Callable
from enum import Enum
from typing import ClassVar, NamedTuple

from popbridge.wire.imap4_command import ImapCommand, fully_sent
from popbridge.wire.imap4_probe import Imap4ProbingWatcher
from popbridge.wire.imap4_state import PROBE_TAG, STARTTLS_TAG, ImapProtocolError, State
from popbridge.wire.imap4_syntax import (
    CRLF,
    Literal,
    ImapSyntaxError,
    id_command,
    id_fields,
    is_tag,
    literal_at_end,
    without_forwarding_fields,
)
from popbridge.wire.login import (
    Action,
    LoginFailed,
    LoginProtocolError,
    LoginSucceeded,
    TlsOptions,
    ToBackend,
    ToClient,
)
from popbridge.wire.routing import HeldLogin
from popbridge.wire.sasl import AmbiguousLogin, SaslUserReader, valid_mechanism

__all__ = ["PROBE_TAG", "STARTTLS_TAG", "Imap4LoginWatcher", "ImapProtocolError", "State"]

class Turn(NamedTuple):
    """One row of the state table (`Imap4LoginWatcher.TURNS`).

    Backend responses are read in every state (tagged and untagged ones are judged by
    `_on_response`). A state may also read the client's next line (`line`, given the line and
    its raw bytes) or the literal it announced (`literal`); with neither, the client's bytes
    wait. `continuation` takes the backend's ``+``; without it a ``+`` is a protocol error.
    """

    line: "Callable[[Imap4LoginWatcher, bytes, bytes], list[Action]] | None" = None
    literal: "Callable[[Imap4LoginWatcher], list[Action] | None] | None" = None
    continuation: "Callable[[Imap4LoginWatcher, bytes], list[Action]] | None" = None


class Imap4LoginWatcher(Imap4ProbingWatcher):
    """Fed client and backend bytes; returns the actions the glue carries out, in order.

    What each state waits for and which method reads it: `TURNS`, at the end of the class.
    """

    protocol = "imap4"
    GREETING, READY, HOLD = State.GREETING, State.READY, State.HOLD
    REPLAY_CHALLENGE, AUTHENTICATED = State.REPLAY_CHALLENGE, State.AUTHENTICATED

    def __init__(
        self,
        client_address: tuple[str, int] | None = None,
        tls: TlsOptions = TlsOptions(),
        max_line: int = 16_384,
        max_literal: int = 65_536,
        max_pending: int = 131_072,
        max_bad_commands: int = 5,
        route_logins: bool = False,
    ) -> None:
        super().__init__(client_address, tls, max_line, max_pending, max_bad_commands, route_logins)
        self._max_literal = max_literal
        self._command: ImapCommand | None = None  # the client command outstanding
        self._held_command: ImapCommand | None = None  # the routed login, while a new backend greets
        self._literal = 0  # bytes of the literal the client is sending or about to send
        self._hidden_continuation = False  # popbridge made the client's {n+} a {n}: its "+" is ours

    def goodbye(self, reason: str) -> bytes:
        return b"* BYE [UNAVAILABLE] popbridge: " + reason.encode() + CRLF

    # -- input --------------------------------------------------------------------------

    def _run(self) -> list[Action]:
        try:
            return super()._run()
        except ImapSyntaxError as e:
            raise ImapProtocolError(str(e)) from None

    def _error(self, message: str) -> LoginProtocolError:
        return ImapProtocolError(message)

    def _step(self) -> list[Action] | None:
        response = self._take_response()
        if response is not None:
            return self._on_response(*response)
        turn = self.TURNS[self.state]
        if turn.line is not None:
            return self._client_line(turn.line)
        return None if turn.literal is None else turn.literal(self)

    def _take_response(self) -> tuple[bytes, bytes] | None:
        """One whole backend response (server literals included): (raw bytes, first line)."""
        first = self._take_line(self._backend, 0)
        if first is None:
            return None
        line, position = first
        segment = line
        while not line.startswith(b"+") and (literal := literal_at_end(segment, self._max_pending)):
            if len(self._backend) < position + literal.size:
                return None
            following = self._take_line(self._backend, position + literal.size)
            if following is None:
                return None
            segment, position = following
        raw, self._backend = self._backend[:position], self._backend[position:]
        return raw, line

    # -- client commands ----------------------------------------------------------------

    def _client_line(self, handle: "Callable[[Imap4LoginWatcher, bytes, bytes], list[Action]]") -> list[Action] | None:
        """The client's next line, to `handle` as (line without terminator, raw bytes)."""
        taken = self._take_line(self._client, 0)
        if taken is None:
            return None
        line, end = taken
        raw, self._client = self._client[:end], self._client[end:]
        return handle(self, line, raw)

    def _take_literal(self) -> bytes | None:
        if len(self._client) < self._literal:
            return None
        data, self._client = self._client[: self._literal], self._client[self._literal :]
        return data

    def _literal_bytes(self) -> list[Action] | None:
        data = self._take_literal()
        if data is None:
            return None
        self._grow(data)
        self.state = State.CLIENT_LINE
        return [ToBackend(data)]

    def _discarded_literal(self) -> list[Action] | None:
        if self._take_literal() is None:
            return None
        self.state = State.DISCARD_LINE
        return []

    def _discarded_line(self, line: bytes, raw: bytes) -> list[Action]:
        return self._discard_rest(literal_at_end(line, self._max_literal))

    def _sasl_response(self, line: bytes, raw: bytes) -> list[Action]:
        assert self._command is not None and self._command.sasl is not None
        sasl = self._command.sasl
        first = sasl.responses == 0
        self.state = State.SASL_SERVER
        if sasl.client_response(line) is not None:
            return [ToBackend(b"*" + CRLF)]  # refused: cancel, and the backend answers BAD
        if first and self._holding.routable(sasl):
            return self._hold_login(HeldLogin(sasl.user, self._command.line, raw))
        return [ToBackend(raw)]

    def _discard_rest(self, literal: Literal | None) -> list[Action]:
        """Drop what the client still sends of a command that is over: a literal it sent
        without waiting (non-sync), and the line after it. A sync literal it waits to send."""
        if literal is None or literal.synchronising:
            self.state = State.READY
        else:
            self.state, self._literal = State.DISCARD_LITERAL, literal.size
        return []

    def _new_command(self, line: bytes, raw: bytes) -> list[Action]:
        tag, _, rest = line.partition(b" ")
        verb, _, arguments = rest.partition(b" ")
        if not is_tag(tag) or not verb:
            if literal_at_end(line, self._max_literal):
                raise ImapProtocolError("literal after an invalid command")
            return self._refuse(b"* BAD popbridge: missing or invalid tag\r\n")
        verb = verb.upper()
        if verb == b"STARTTLS":
            return self._client_tls(
                tag + b" OK Begin TLS negotiation now\r\n",
                already_active=tag + b" BAD TLS is already active\r\n",
                not_offered=tag + b" BAD STARTTLS is not offered here\r\n",
            )
        if verb in (b"LOGIN", b"AUTHENTICATE") and self._tls.required and not self.tls_active:
            if literal_at_end(line, self._max_literal):
                raise ImapProtocolError("TLS is required to log in here")
            return self._refuse(tag + b" NO [PRIVACYREQUIRED] TLS is required to log in here: use STARTTLS\r\n")
        if verb == b"ID":
            return self._client_id(tag, arguments)
        self._command = ImapCommand(tag, verb, line=raw)
        if verb == b"AUTHENTICATE":
            return self._authenticate(arguments, raw)
        try:
            sent = self._command_text(line, raw)
        except AmbiguousLogin as e:
            self.state, self._command = State.READY, None
            refused = self._refuse(tag + b" BAD popbridge: " + str(e).encode() + CRLF)
            return refused + self._discard_rest(literal_at_end(line, self._max_literal))
        if verb == b"LOGIN" and self._holding.enabled and self.state is State.RESPONSE:
            user, _ = self._command.identity()  # a one-line LOGIN: the user is known now
            if user:
                return self._hold_login(HeldLogin(user, raw))
        return sent

    def _command_text(self, line: bytes, raw: bytes) -> list[Action]:
        """A line of the current command: the first, or the rest after a literal.

        A LOGIN that is not well-formed raises `AmbiguousLogin` on its first line (nothing
        has gone out: the caller answers BAD) and ends the session on a later one.
        """
        assert self._command is not None
        literal = literal_at_end(line, self._max_literal)
        self._grow(line[: line.rfind(b"{")] if literal else line, announced=literal)
        self._hidden_continuation = False
        if literal is None:
            self.state = State.RESPONSE
        elif literal.synchronising:
            self.state, self._literal = State.CONTINUATION, literal.size
        elif self._takes_nonsync(literal.size):
            self.state, self._literal = State.CLIENT_LITERAL, literal.size
        else:
            self.state, self._literal, self._hidden_continuation = State.CONTINUATION, literal.size, True
            raw = line[:-2] + b"}" + CRLF  # "{n+}" -> "{n}": the backend's "+" is answered by popbridge
        return [ToBackend(raw)]

    def _grow(self, part: bytes, announced: Literal | None = None) -> None:
        """Add a part (line text, or a literal's bytes while in CLIENT_LITERAL) to the command;
        `announced` is the literal a line announces."""
        assert self._command is not None
        self._command.grow(part, self.state is State.CLIENT_LITERAL, announced is not None, self._max_pending)

    def _authenticate(self, arguments: bytes, raw: bytes) -> list[Action]:
        """``tag AUTHENTICATE mechanism [initial-response]``: refused with BAD, forwarded, or
        forwarded without its initial response, which then answers the first challenge."""
        command = self._command
        assert command is not None
        if literal_at_end(arguments, self._max_literal):
            raise ImapProtocolError("malformed AUTHENTICATE")
        mechanism, _, initial = arguments.partition(b" ")
        refusal = self._authenticate_refusal(mechanism, initial)
        sasl = SaslUserReader(mechanism.decode("ascii", "replace"))
        if refusal is None and initial:
            refusal = sasl.initial_response(initial)
        if refusal is not None:
            self.state, self._command = State.READY, None
            return self._refuse(command.tag + b" BAD popbridge: " + refusal.encode() + CRLF)
        command.sasl = sasl
        if initial and (self._offered is None or b"SASL-IR" not in self._offered or self._holding.enabled):
            raw = command.tag + b" AUTHENTICATE " + mechanism + CRLF
            self._unsent_response = initial + CRLF
        command.line, self.state = raw, State.SASL_SERVER
        if initial and self._holding.routable(sasl):
            return self._hold_login(HeldLogin(sasl.user, raw))
        return [ToBackend(raw)]

    def _authenticate_refusal(self, mechanism: bytes, initial: bytes) -> str | None:
        if not valid_mechanism(mechanism) or b" " in initial:
            return "AUTHENTICATE takes a mechanism and at most an initial response"
        if self._offered is not None and b"AUTH=" + mechanism.upper() not in self._offered:
            return f"{mechanism.decode()} is not offered here"
        return None

    def _client_id(self, tag: bytes, arguments: bytes) -> list[Action]:
        if literal_at_end(arguments, self._max_literal):
            raise ImapProtocolError("literals in ID are not accepted before login")
        try:
            fields = without_forwarding_fields(id_fields(arguments))
        except ImapSyntaxError:
            return self._refuse(tag + b" BAD popbridge: malformed ID\r\n")
        self._command, self.state = ImapCommand(tag, b"ID"), State.RESPONSE
        return [ToBackend(id_command(tag, fields))]

    # -- backend responses --------------------------------------------------------------

    def _on_response(self, raw: bytes, line: bytes) -> list[Action]:
        if self.state is State.HOLD:
            raise ImapProtocolError("backend spoke out of turn")
        if line.startswith(b"+"):
            continuation = self.TURNS[self.state].continuation
            if continuation is None:
                raise ImapProtocolError("backend sent an unexpected continuation")
            return continuation(self, raw)
        if line.startswith(b"* "):
            return self._untagged(raw, line)
        tag, _, rest = line.partition(b" ")
        status = rest.partition(b" ")[0].upper()
        if self.state is State.PROBE and tag == self._probe_tag:
            return self._after_probe(line, status)
        command = self._command
        if command is None or tag != command.tag or self.state in (State.GREETING, State.PROBE, State.READY, State.HOLD):
            raise ImapProtocolError(f"backend answered a command that is not outstanding: {line[:40]!r}")
        if status not in (b"OK", b"NO", b"BAD"):
            raise ImapProtocolError(f"backend sent no status: {line[:40]!r}")
        if status == b"OK" and (not fully_sent(command, self.state) or self._unsent_response):
            raise ImapProtocolError("backend accepted a login before it had all of it")
        if status == b"OK" and command.sasl is not None and command.sasl.cancelled:
            raise ImapProtocolError("backend accepted a cancelled login")
        if self.state in (State.CLIENT_LITERAL, State.CLIENT_LINE):
            raise ImapProtocolError("backend ended a command the client was still sending")
        self._note_capabilities(line)
        ended_early = self.state is State.CONTINUATION and self._hidden_continuation
        self.state, self._command, self._unsent_response = State.READY, None, b""
        if ended_early:  # the client sent that literal without waiting: it is no command
            self.state, self._hidden_continuation = State.DISCARD_LITERAL, False
        if status == b"BAD" or (status == b"NO" and command.verb in (b"LOGIN", b"AUTHENTICATE")):
            self._count_bad()
        if command.verb not in (b"LOGIN", b"AUTHENTICATE"):
            return [ToClient(self._capabilities(raw))]
        user, method = command.identity()
        if status != b"OK":
            return [LoginFailed(user, method), ToClient(raw)]
        return self._authenticated(LoginSucceeded(user, method), ToClient(self._capabilities(raw)))

    def _replayed_challenge(self, raw: bytes) -> list[Action]:
        self.state = State.SASL_SERVER
        return [ToBackend(self._holding.answer_challenge())]

    def _literal_invited(self, raw: bytes) -> list[Action]:
        self.state = State.CLIENT_LITERAL
        if self._hidden_continuation:
            self._hidden_continuation = False
            return []
        return [ToClient(raw)]

    def _challenged(self, raw: bytes) -> list[Action]:
        if self._unsent_response:
            response, self._unsent_response = self._unsent_response, b""
            return [ToBackend(response)]
        self.state = State.SASL_CLIENT
        return [ToClient(raw)]

    def _untagged(self, raw: bytes, line: bytes) -> list[Action]:
        if self.state is State.GREETING:
            return self._after_greeting(raw, line)
        self._note_capabilities(line)
        if self.state is State.PROBE and line[2:5].upper() == b"ID ":
            return []  # the answer to our own ID is not the client's business
        if line[2:6].upper() == b"BYE ":
            self.farewell_seen = True
        return [ToClient(self._capabilities(raw))]

    # -- routing logins to the user's own backend ---------------------------------------

    def _switching_backend(self) -> None:
        self._held_command = self._command  # the login command waits for the new backend

    def _resuming_held_login(self) -> None:
        self._command = self._held_command

    # -- the state table: built once, for every session ---------------------------------

    TURNS: ClassVar[dict[Enum, Turn]] = {
        State.GREETING: Turn(),
        State.PROBE: Turn(),
        State.READY: Turn(line=_new_command),
        State.CLIENT_LITERAL: Turn(literal=_literal_bytes),
        State.CLIENT_LINE: Turn(line=_command_text),
        State.CONTINUATION: Turn(continuation=_literal_invited),
        State.RESPONSE: Turn(),
        State.SASL_SERVER: Turn(continuation=_challenged),
        State.SASL_CLIENT: Turn(line=_sasl_response),
        State.HOLD: Turn(),
        State.REPLAY_CHALLENGE: Turn(continuation=_replayed_challenge),
        State.DISCARD_LITERAL: Turn(literal=_discarded_literal),
        State.DISCARD_LINE: Turn(line=_discarded_line),
    }

