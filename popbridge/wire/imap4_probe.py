"""The IMAP4 watcher's first steps and what it learns of the backend's capabilities, sans-IO.

Before any client command, the backend's greeting is read (OK, PREAUTH or BYE) and held back
while popbridge's own commands go out: STARTTLS towards the backend (`TlsOptions.backend_starttls`),
then an ID carrying the real client's address (with `client_address`; Dovecot honours it from
login_trusted_networks). Throughout the session the backend's capabilities are noted from
CAPABILITY responses and [CAPABILITY] codes (`_offered`: which literals, SASL mechanisms, SASL-IR
and ID it takes) and the lists the client sees get popbridge's STARTTLS, not the backend's. What a
list said before the backend's TLS is not believed after it. The commands themselves are read by
`imap4.Imap4LoginWatcher`, built on this class.
"""

from popbridge.wire.imap4_state import PROBE_TAG, STARTTLS_TAG, ImapProtocolError, State
from popbridge.wire.imap4_syntax import (
    CRLF,
    NONSYNC_LIMIT_LITERAL_MINUS,
    capabilities_in,
    client_capabilities,
    quoted,
    without_capability_code,
)
from popbridge.wire.login import Action, BackendNotice, TlsOptions, ToBackend, ToClient
from popbridge.wire.prelogin import PreLoginWatcher


class Imap4ProbingWatcher(PreLoginWatcher):
    """The greeting, popbridge's own STARTTLS and ID probes, and the backend's capabilities."""

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
        self._probe_tag = b""  # the tag of popbridge's own command that is out
        self._offered: set[bytes] | None = None  # the backend's capabilities, once it listed them

    # -- capabilities -------------------------------------------------------------------

    def _capabilities(self, raw: bytes) -> bytes:
        """Capability lists as the client must see them: popbridge's STARTTLS, not the backend's."""
        before_tls = not self.tls_active
        return client_capabilities(raw, self._tls.offer_starttls and before_tls, self._tls.required and before_tls)

    def _takes_nonsync(self, size: int) -> bool:
        """Whether the backend advertised non-sync literals of `size` (RFC 7888)."""
        offered = self._offered or set()
        return b"LITERAL+" in offered or (b"LITERAL-" in offered and size <= NONSYNC_LIMIT_LITERAL_MINUS)

    def _note_capabilities(self, line: bytes) -> None:
        """What the backend says it offers: a CAPABILITY response or a [CAPABILITY] code."""
        if line[:13].upper() == b"* CAPABILITY ":
            self._offered = set(line[13:].upper().split())
        elif (listed := capabilities_in(line)) is not None:
            self._offered = listed

    # -- greeting and probes ------------------------------------------------------------

    def _after_greeting(self, raw: bytes, line: bytes) -> list[Action]:
        status = line[2:].partition(b" ")[0].upper()
        greeting = self._capabilities(raw)
        if status == b"PREAUTH":  # logged in without a login: pass it on, record nothing
            return self._authenticated(ToClient(greeting))
        if status not in (b"OK", b"BYE") or (self._holding.replaying and status != b"OK"):
            raise ImapProtocolError(f"backend greeting is not OK, PREAUTH or BYE: {line[:40]!r}")
        self.state = State.READY
        if status == b"BYE":
            self.farewell_seen = True
            return [ToClient(greeting)]
        self._greeting, self._offered = greeting, capabilities_in(line)
        if self._tls.backend_starttls:
            self._greeting = without_capability_code(greeting)  # the backend's list changes with TLS
            return self._probe(STARTTLS_TAG, b"STARTTLS")
        return self._forward_client_address()

    def _probe(self, tag: bytes, command: bytes) -> list[Action]:
        self._probe_tag, self.state = tag, State.PROBE
        return [ToBackend(tag + b" " + command + CRLF)]

    def _forward_client_address(self) -> list[Action]:
        self.state = State.READY
        if self._forward_address is None:
            return self._release_greeting()
        if self._offered is not None and b"ID" not in self._offered:
            return [BackendNotice("backend does not offer ID: client address not forwarded"), *self._release_greeting()]
        host, port = self._forward_address
        fields = b'("x-originating-ip" ' + quoted(host.encode()) + b' "x-originating-port" "' + str(port).encode() + b'")'
        return self._probe(PROBE_TAG, b"ID " + fields)

    def _after_probe(self, line: bytes, status: bytes) -> list[Action]:
        self.state = State.READY
        if self._probe_tag == STARTTLS_TAG:
            if status != b"OK":
                raise ImapProtocolError("the mail server refused STARTTLS")
            self._offered = None  # what it offered before TLS is not believed either: the list changes
            return [*self._backend_tls(), *self._forward_client_address()]
        notice = [] if status == b"OK" else [BackendNotice(f"backend refused ID: {line[:80]!r}")]
        return [*notice, *self._release_greeting()]
