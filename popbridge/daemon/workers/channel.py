"""The channel between the main process and one proxy worker: AMP over the worker's stdin/stdout.

Why AMP: it is Twisted's own request/response protocol, with typed arguments, errors that travel
as errors, and answers matched to questions, so neither side parses anything of its own. The
worker's stdin and stdout are the pipe (`spawnProcess`'s childFDs 0 and 1); what a worker would
print goes to stderr, which the main process logs.

What travels (everything small: AMP values are at most 64 KiB):

- worker -> main: `Record` and `EndSession` (the ledger: a worker's login is released to its
  client only once `Record` has answered, and the main process answers only once its store has
  stored it), `Facts` (the directory, for routing users to their backends) and `Log` (its log
  lines, which the main process writes with ``worker N`` as their system, when the worker
  cannot write them to the daemon's log itself; see `popbridge.daemon.workers.child`).
- main -> worker: `Start` (its listeners' settings and which inherited descriptor is which) and
  `Report` (its counters, for ``/metrics`` and ``popbridge stats``).

The main process trusts nothing a worker says beyond what a single process would have believed
of its own proxy: arguments are typed by AMP, and a worker cannot read the ledger.
"""

import json
from collections import Counter
from collections.abc import Callable
from typing import Any, ClassVar

from twisted.internet.defer import Deferred
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger, LogLevel, InvalidLogLevelError
from twisted.protocols import amp
from twisted.python.failure import Failure

from popbridge.directory import IDirectory
from popbridge.ledger import ILedger, LedgerUnavailable, SessionId, new_session
from popbridge.metrics.counters import Counters

MAX_LOG_TEXT = 16_000  # characters of one log line sent over AMP (at most 4 bytes each, under 64 KiB)


class Record(amp.Command):
    """Store a successful login; answered once the main process's store has it."""

    arguments = [
        (b"address", amp.Unicode()),
        (b"user", amp.Unicode()),
        (b"protocol", amp.Unicode()),
        (b"session", amp.Integer(optional=True)),  # the worker's id of the session; None: no session
        (b"tls", amp.Boolean()),
    ]
    response = [
        (b"stored", amp.Boolean()),  # False: the address is not an IP address, nothing stored
        (b"client", amp.Unicode()),
        (b"when", amp.Float()),
        (b"open_sessions", amp.Integer()),
    ]
    errors = {LedgerUnavailable: b"LEDGER_UNAVAILABLE"}


class EndSession(amp.Command):
    """A session closed: nothing waits for it, so it is not answered (the main process logs a failure)."""

    arguments = [(b"address", amp.Unicode()), (b"user", amp.Unicode()), (b"protocol", amp.Unicode()), (b"session", amp.Integer())]
    requiresAnswer = False


class Facts(amp.Command):
    """What the directory says about a user (the worker routes logins with it)."""

    arguments = [(b"user", amp.Unicode())]
    response = [(b"exempt", amp.Boolean()), (b"backend", amp.Unicode(optional=True))]


class Log(amp.Command):
    arguments = [(b"level", amp.Unicode()), (b"text", amp.Unicode())]
    requiresAnswer = False


class Start(amp.Command):
    """The worker's settings, pickled (`popbridge.daemon.workers.child.WorkerSettings`): only the main
    process, which spawned the worker, ever sends them; the main process never unpickles."""

    arguments = [(b"settings", amp.String())]
    response: ClassVar[list[tuple[bytes, amp.Argument]]] = []


class Report(amp.Command):
    """The worker's counters: its event counts (JSON) and its metrics (Prometheus text)."""

    arguments: ClassVar[list[tuple[bytes, amp.Argument]]] = []
    response = [(b"events", amp.Unicode()), (b"metrics", amp.Unicode())]


Lease = tuple[str, str, str]  # (address, user, protocol) of a login whose session is open


class OneLoopBoxes(amp.AMP):
    """AMP, with its boxes read in one loop per chunk of input.

    `BinaryBoxProtocol` reads a box through a method call per key and per value (a state
    machine over `Int16StringReceiver`): for the dozen strings of a `Record` and its answer that
    was the largest part of what a login costs the two processes in AMP. This reads the same
    format (a 16-bit length and bytes for each key and each value, an empty key ending the
    box) into the same `AmpBox`es; what the channel does not use (TLS, protocol switching) is
    not offered. A key over 255 bytes is AMP's `TooLong`: the connection is closed.
    """

    _pending = b""
    _too_long = False

    def dataReceived(self, data: bytes) -> None:
        buffer = self._pending + data
        end, start = len(buffer), 0
        while True:
            box, at = boxes_from(buffer, start, end)
            if box is None:
                break
            if at < 0:
                self._too_long = True
                self.transport.loseConnection()  # type: ignore[union-attr]
                self._pending = b""
                return
            start = at
            self.ampBoxReceived(box)
        self._pending = buffer[start:]

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._too_long:
            reason = Failure(amp.TooLong(True, False, None, None))
        super().connectionLost(reason)


def boxes_from(buffer: bytes, start: int, end: int) -> tuple[amp.AmpBox | None, int]:
    """The box that starts at `start` and where the next one starts; (None, start) if it is not
    all there yet; (box, -1) for a key over 255 bytes."""
    box, at = amp.AmpBox(), start
    while at + 2 <= end:
        key_length = int.from_bytes(buffer[at : at + 2], "big")
        if key_length == 0:
            return box, at + 2
        if key_length > 255:
            return box, -1
        value_at = at + 2 + key_length
        if value_at + 2 > end:
            break
        value_length = int.from_bytes(buffer[value_at : value_at + 2], "big")
        if value_at + 2 + value_length > end:
            break
        box[buffer[at + 2 : value_at]] = buffer[value_at + 2 : value_at + 2 + value_length]
        at = value_at + 2 + value_length
    return None, start


class MainChannel(OneLoopBoxes):
    """The main process's end of one worker's channel: its ledger and directory, served.

    It keeps the worker's open-session leases. When the worker goes (a crash, SIGKILL), their
    sessions are ended here, so the addresses get their `ttl` from then instead of staying
    authorised for ever.
    """

    log = Logger()

    def __init__(self, name: str, ledger: ILedger, directory: IDirectory | None) -> None:
        super().__init__()
        self.name, self._ledger, self._directory = name, ledger, directory
        self.sessions: dict[int, tuple[Lease, SessionId]] = {}  # the worker's open sessions, by its id
        self.closed = False

    @Record.responder
    def record(self, address: str, user: str, protocol: str, session: int | None, tls: bool) -> "Deferred[dict[str, Any]]":
        # The worker's session ids are its own; the ledger gets one of this process's, so that
        # two workers' sessions never share an id.
        ours = new_session() if session is not None else None
        return self._ledger.record(address, user, protocol, ours, tls=tls).addCallback(
            self._recorded, (address, user, protocol), session, ours
        )

    def _recorded(self, login: Any, lease: Lease, session: int | None, ours: SessionId | None) -> dict[str, Any]:
        if login is None:
            return {"stored": False, "client": "", "when": 0.0, "open_sessions": 0}
        if session is not None and ours is not None:
            if self.closed:  # the worker died while this was being stored: nobody will end it
                self._end(lease, ours)
            else:
                self.sessions[session] = (lease, ours)
        return {"stored": True, "client": login.client, "when": login.when, "open_sessions": login.open_sessions}

    @EndSession.responder
    def end_session(self, address: str, user: str, protocol: str, session: int) -> dict[str, Any]:
        opened = self.sessions.pop(session, None)
        if opened is not None:
            self._end(*opened)
        return {}

    @Facts.responder
    def facts(self, user: str) -> "Deferred[dict[str, Any]] | dict[str, Any]":
        if self._directory is None:
            return {"exempt": False, "backend": None}
        return self._directory.facts(user).addCallback(lambda facts: {"exempt": facts.exempt, "backend": facts.backend})

    @Log.responder
    def log_line(self, level: str, text: str) -> dict[str, Any]:
        try:
            log_level = LogLevel.levelWithName(level)
        except InvalidLogLevelError:
            log_level = LogLevel.warn
        self.log.emit(log_level, "{text}", text=text, log_system=self.name)
        return {}

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        super().connectionLost(reason)
        self.closed = True
        sessions, self.sessions = self.sessions, {}
        for lease, ours in sessions.values():
            self._end(lease, ours)

    def _end(self, lease: Lease, session: SessionId) -> None:
        address, user, protocol = lease
        self._ledger.end_session(address, user, protocol, session).addErrback(
            lambda f: self.log.failure("could not end a session of {worker} for {client}", f, worker=self.name, client=address)
        )

    def report(self) -> "Deferred[tuple[Counter[str], str]]":
        """The worker's event counts and its metrics in the Prometheus text format."""
        return self.callRemote(Report).addCallback(lambda answer: (Counter(json.loads(answer["events"])), answer["metrics"]))


class WorkerChannel(OneLoopBoxes):
    """The worker's end: started by the main process, reports its counters when asked."""

    def __init__(self, start: Callable[[bytes], "Deferred[None]"], counters: Counters, lost: Callable[[Failure], None]) -> None:
        super().__init__()
        self._start, self._counters, self._lost = start, counters, lost

    @Start.responder
    def start(self, settings: bytes) -> "Deferred[dict[str, Any]]":
        return self._start(settings).addCallback(lambda _: {})

    @Report.responder
    def report(self) -> dict[str, Any]:
        metrics = self._counters.metrics.exposition().decode()
        return {"events": json.dumps(dict(self._counters.events)), "metrics": metrics}

    def send_log(self, level: str, text: str) -> None:
        """One log line for the main process to write; dropped before the channel is up (AMP
        itself drops what is sent after it closed)."""
        if self.transport is not None:
            self.callRemote(Log, level=level, text=text[:MAX_LOG_TEXT])

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        super().connectionLost(reason)
        self._lost(reason)
