"""The pre-login core shared by the POP3 and IMAP4 login watchers, sans-IO.

Both watchers stand between a client and its mail server until the login succeeds, and do
the same things around their own grammar; this class does them once:

- framing: lines end in CRLF (or LF), at most `max_line` bytes, with no CR or NUL inside;
  unread client input is bounded by `max_pending`;
- the bad-command budget: refused and failed commands, failed logins included, end the session
  after `max_bad_commands`;
- holding a login while its backend is chosen (`RouteLogin`), then sending it on, or replaying
  it to a new backend once that backend's greeting and probes are done;
- releasing the greeting to the client only after popbridge's own probes (STLS, XCLIENT, ID);
- dropping whatever a peer sent behind STARTTLS / STLS before the handshake (never obeyed);
- the switch to a plain pipe (`Authenticated`) with the bytes still in flight.

A watcher is a subclass with its own `State` enum, naming the core's five landmarks as class
attributes (GREETING, READY, HOLD, REPLAY_CHALLENGE, AUTHENTICATED), its own error type
(`_error`), and a table from each state to its handler, consulted by `_step`.
"""

from enum import Enum
from typing import ClassVar

from popbridge.wire.login import (
    Action,
    Authenticated,
    LoginProtocolError,
    StartBackendTls,
    StartClientTls,
    TlsOptions,
    ToBackend,
    ToClient,
)
from popbridge.wire.routing import HeldLogin, LoginHold

class PreLoginWatcher:
    """What both watchers do before the login; a subclass supplies the grammar (`_step`)."""

    protocol: ClassVar[str]
    GREETING: ClassVar[Enum]  # waiting for the backend's greeting
    READY: ClassVar[Enum]  # no command outstanding: the client's next command may go
    HOLD: ClassVar[Enum]  # a login waits while its backend is chosen
    REPLAY_CHALLENGE: ClassVar[Enum]  # a new backend's first challenge gets the held response
    AUTHENTICATED: ClassVar[Enum]  # a plain pipe

    def __init__(
        self,
        client_address: tuple[str, int] | None,
        tls: TlsOptions,
        max_line: int,
        max_pending: int,
        max_bad_commands: int,
        route_logins: bool,
    ) -> None:
        self.state: Enum = self.GREETING
        self._forward_address = client_address  # passed on to the backend (XCLIENT, ID)
        self._tls = tls
        self.tls_active = tls.active
        self._max_line, self._max_pending = max_line, max_pending
        self._max_bad, self._bad = max_bad_commands, 0
        self._client, self._backend = b"", b""  # unread input of each side
        self._greeting = b""  # the backend's greeting, kept until the probes are done
        self._unsent_response = b""  # an initial response kept for the backend's first challenge
        self._holding = LoginHold(route_logins)
        self.farewell_seen = False  # the backend's last word (BYE, QUIT's answer) reached the client

    # -- input --------------------------------------------------------------------------

    def feed_client(self, data: bytes) -> list[Action]:
        if self.state is self.AUTHENTICATED:
            return [ToBackend(data)]
        self._client += data
        if len(self._client) > self._max_pending:
            raise self._error("too much input before login")
        return self._run()

    def feed_backend(self, data: bytes) -> list[Action]:
        if self.state is self.AUTHENTICATED:
            return [ToClient(data)]
        self._backend += data
        return self._run()

    def _run(self) -> list[Action]:
        actions: list[Action] = []
        while self.state is not self.AUTHENTICATED:
            step = self._step()
            if step is None:
                break
            actions += step
        return actions

    def _error(self, message: str) -> LoginProtocolError:
        """The format's one error type (`Pop3ProtocolError`, `ImapProtocolError`)."""
        raise NotImplementedError

    def _step(self) -> list[Action] | None:
        """Handle the next piece of input the current state waits for; None until it is there."""
        raise NotImplementedError

    def _take_line(self, buffer: bytes, start: int) -> tuple[bytes, int] | None:
        """The line at `start` (terminator removed) and where the next one begins."""
        end = buffer.find(b"\n", start, start + self._max_line + 1)
        if end < 0:
            if len(buffer) - start > self._max_line:
                raise self._error(f"line over {self._max_line} bytes")
            return None
        line = buffer[start:end].removesuffix(b"\r")
        if b"\r" in line or b"\0" in line:
            raise self._error("CR or NUL inside a line")
        return line, end + 1

    # -- the bad-command budget ---------------------------------------------------------

    def _count_bad(self) -> None:
        """Refused and failed commands, failed logins included, up to `max_bad_commands`."""
        self._bad += 1
        if self._bad > self._max_bad:
            raise self._error("too many bad commands")

    def _refuse(self, answer: bytes) -> list[Action]:
        self._count_bad()
        return [ToClient(answer)]

    # -- TLS ----------------------------------------------------------------------------

    def _client_tls(self, accepted: bytes, already_active: bytes, not_offered: bytes) -> list[Action]:
        """The client's STLS / STARTTLS: refused, or accepted with what it sent behind dropped."""
        if self.tls_active:
            return self._refuse(already_active)
        if not self._tls.offer_starttls:
            return self._refuse(not_offered)
        self.tls_active = True
        self._client = b""  # bytes sent behind STLS were sent in the clear: never obeyed
        return [ToClient(accepted), StartClientTls()]

    def _backend_tls(self) -> list[Action]:
        """The backend accepted popbridge's STLS / STARTTLS."""
        self._backend = b""  # what the backend sent before its handshake is never believed
        return [StartBackendTls()]

    # -- greeting, login, pipe ----------------------------------------------------------

    def _release_greeting(self) -> list[Action]:
        """The client sees the greeting once the probes are done; a switched backend's
        greeting is not shown at all (the client was greeted long ago): the held login goes."""
        greeting, self._greeting = self._greeting, b""
        self.state = self.READY
        return self._replay() if self._holding.replaying else [ToClient(greeting)]

    def _authenticated(self, *before: Action) -> list[Action]:
        """From now a plain pipe: `before`, then the bytes either side sent behind the login."""
        self.state = self.AUTHENTICATED
        leftovers = Authenticated(self._client, self._backend)
        self._client = self._backend = b""
        return [*before, leftovers]

    # -- routing logins to the user's own backend ---------------------------------------

    def _hold_login(self, held: HeldLogin) -> list[Action]:
        """Keep the login until `route_decided`; the state it would have had is kept aside."""
        route = self._holding.hold(held, self.state)
        self.state = self.HOLD
        return [route]

    def route_decided(self, switch: bool) -> list[Action]:
        assert self.state is self.HOLD
        if not switch:
            data, self.state = self._holding.send_on()
            return [ToBackend(data)]
        self._backend, self._holding.replaying, self.state = b"", True, self.GREETING
        self._switching_backend()
        return []

    def _switching_backend(self) -> None:
        """A new backend greets next: keep aside what the held command needs later."""

    def _replay(self) -> list[Action]:
        """The new backend is ready: send it the held login, as if it had been there all along."""
        command, state = self._holding.replay()
        self._resuming_held_login()
        self.state = state or self.REPLAY_CHALLENGE
        return [ToBackend(command)]

    def _resuming_held_login(self) -> None:
        """The held login goes to the new backend: restore what `_switching_backend` kept."""
