"""The POP3 watcher's first steps and what it learns of the backend's capabilities, sans-IO.

Before any client command, the backend's greeting is read and held back while popbridge's own
commands go out: STLS towards the backend (`TlsOptions.backend_starttls`), then, with
`client_address`, XCLIENT with the real client's address where the backend offers it. Dovecot
2.3 says so with an ``[XCLIENT]`` code in its greeting (to hosts in ``login_trusted_networks``;
the code is removed from the greeting clients see), other servers may list it in CAPA, which is
asked only when the greeting does not say. The greeting's timestamp says whether APOP is
offered; CAPA answers (the client's or popbridge's own) say which SASL mechanisms are, and lose
STLS and XCLIENT on their way to the client. The commands themselves are read by
`pop3.Pop3LoginWatcher`, built on this class.
"""

import re
from collections.abc import Callable

from popbridge.wire.login import Action, BackendNotice, TlsOptions, ToBackend, ToClient
from popbridge.wire.pop3_state import CRLF, Pop3ProtocolError, State, StatusHandler, everything, nothing
from popbridge.wire.prelogin import PreLoginWatcher

HIDDEN_CAPABILITIES = (b"STLS", b"XCLIENT")
XCLIENT_GREETING = b"+OK [XCLIENT] "  # Dovecot 2.3 offers XCLIENT here, to trusted hosts only
APOP_TIMESTAMP = re.compile(rb"<[!-~]+>")  # RFC 1939: the greeting's msg-id offers APOP


class Pop3ProbingWatcher(PreLoginWatcher):
    """The greeting, popbridge's own STLS, CAPA and XCLIENT probes, and the backend's offers."""

    def __init__(
        self,
        client_address: tuple[str, int] | None,
        tls: TlsOptions,
        max_line: int,
        max_pending: int,
        max_bad_commands: int,
        route_logins: bool,
    ) -> None:
        super().__init__(client_address, tls, max_line, max_pending, max_bad_commands, route_logins)
        self._on_status: StatusHandler = self._after_greeting  # reads the outstanding command's status
        self._keep_line: Callable[[bytes], bool] = everything  # which lines of a multi-line answer show
        self._on_multiline_end: Callable[[], list[Action]] = nothing  # what follows its "." line
        self._offers_xclient = False
        self._offers_apop = False
        self._sasl_offered: set[bytes] | None = None  # the backend's CAPA SASL list, once seen
        self._capa_sasl: set[bytes] = set()  # the SASL line of a CAPA answer being read

    def _expect_multiline(self, keep: Callable[[bytes], bool], then: Callable[[], list[Action]]) -> None:
        """The command's +OK starts a multi-line answer: `keep` says which lines the client
        sees (the status line too), `then` what is added before the closing dot."""
        self._keep_line, self._on_multiline_end, self._on_status = keep, then, self._multiline_status

    def _multiline_status(self, line: bytes, ok: bool) -> list[Action]:
        shown: list[Action] = [ToClient(line + CRLF)] if self._keep_line(line) else []
        if ok:
            self.state = State.MULTILINE
            return shown
        return shown + self._on_multiline_end()

    # -- capabilities -------------------------------------------------------------------

    def _capability_shown(self, line: bytes) -> bool:
        """CAPA lines the client sees: never the backend's STLS or XCLIENT, and no login
        methods while TLS is required but not yet on."""
        self._note_capability(line)
        name = line.split(b" ", 1)[0].upper()
        if name in HIDDEN_CAPABILITIES:
            return False
        return not (self._tls.required and not self.tls_active and name in (b"USER", b"SASL"))

    def _note_capability(self, line: bytes) -> None:
        """Note a CAPA line; at the closing dot, the SASL mechanisms the backend listed are known."""
        words = line.upper().split()
        if words[:1] == [b"SASL"]:
            self._capa_sasl = set(words[1:])
        elif line == b".":
            self._sasl_offered, self._capa_sasl = self._capa_sasl, set()

    def _capabilities_added(self) -> list[Action]:
        """popbridge's own STLS, listed just before the closing dot."""
        return [ToClient(b"STLS\r\n")] if self._tls.offer_starttls and not self.tls_active else []

    # -- greeting and the XCLIENT probe -------------------------------------------------

    def _after_greeting(self, line: bytes, ok: bool) -> list[Action]:
        offered = line.startswith(XCLIENT_GREETING)
        greeting = b"+OK " + line.removeprefix(XCLIENT_GREETING) if offered else line
        if not ok:
            if self._holding.replaying:
                raise Pop3ProtocolError("the user's mail server refused the connection")
            self.farewell_seen = True
            return [ToClient(greeting + CRLF)]
        self._greeting, self._offers_xclient = greeting + CRLF, offered
        self._offers_apop = APOP_TIMESTAMP.search(greeting) is not None
        if self._tls.backend_starttls:
            self.state, self._on_status = State.PROBE, self._after_backend_stls
            return [ToBackend(b"STLS\r\n")]
        return self._forward_client_address()

    def _after_backend_stls(self, line: bytes, ok: bool) -> list[Action]:
        if not ok:
            raise Pop3ProtocolError("the mail server refused STLS")
        return [*self._backend_tls(), *self._forward_client_address()]

    def _forward_client_address(self) -> list[Action]:
        if self._forward_address is None:
            return self._release_greeting()
        self.state = State.PROBE
        if self._offers_xclient:
            return self._send_xclient()
        self._capa_sasl = set()
        self._expect_multiline(self._note_xclient, self._send_xclient)
        return [ToBackend(b"CAPA\r\n")]

    def _note_xclient(self, line: bytes) -> bool:
        """Line filter for our own CAPA probe: remember XCLIENT, show the client nothing."""
        self._note_capability(line)
        if line.split(b" ", 1)[0].upper() == b"XCLIENT":
            self._offers_xclient = True
        return False

    def _send_xclient(self) -> list[Action]:
        assert self._forward_address is not None
        if not self._offers_xclient:
            notice = BackendNotice("backend does not offer XCLIENT: client address not forwarded")
            return [notice, *self._release_greeting()]
        host, port = self._forward_address
        self.state, self._on_status = State.PROBE, self._after_xclient
        return [ToBackend(f"XCLIENT ADDR={host} PORT={port}\r\n".encode())]

    def _after_xclient(self, line: bytes, ok: bool) -> list[Action]:
        notice = [] if ok else [BackendNotice(f"backend refused XCLIENT: {line[:80]!r}")]
        return [*notice, *self._release_greeting()]
