"""The main process's proxy workers: spawned, restarted, replaced on SIGHUP, drained, counted.

- Spawned with `spawnProcess`: the worker is ``python -m popbridge.daemon.workers.child``, its stdin and
  stdout are its channel (`popbridge.daemon.workers.channel`), and each [[proxy]] socket is passed as
  descriptor 3, 4, ... (childFDs). Its stderr is the daemon's log when that is a descriptor
  (``popbridge run`` logs to stdout: a terminal, a file, the journal), so a worker writes its
  own lines, each one ``write``, and this process does no work for them; otherwise (plain
  twistd with ``--logfile``) its lines come over the channel and stray stderr is logged here.
  Workers start after twistd has dropped privileges, so they run as the daemon's user.
- A worker that ends unexpectedly is restarted after a back-off (1 s, doubling up to 60 s; back
  to 1 s once a worker has run for a minute). Its open-session leases are ended by its channel.
- SIGHUP replaces every worker: a new generation starts with the reloaded settings on the kept
  or newly bound sockets, and each old worker is then sent SIGTERM, so it stops accepting and
  drains like a worker at shutdown (its sessions get the listener's `shutdown_grace`).
- SIGTERM of the daemon sends SIGTERM to every worker and waits until all have drained (SIGKILL
  after the longest `shutdown_grace` plus 10 s) before the rest of the daemon stops, so the
  ledger still takes the sessions' ends.
- Every second each worker reports its counters; ``/metrics`` and ``popbridge stats`` add them
  up (`popbridge.daemon.workers.metrics`). The counts of a worker that ended stay in the sums; its
  ``worker`` labelled series start again from zero with its successor.
"""

import os
import pickle
import sys
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.interfaces import IAddress, IDelayedCall, ITransport
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from popbridge.daemon.workers.channel import MainChannel, Start
from popbridge.daemon.workers.metrics import WorkerReports
from popbridge.daemon.workers.settings import WorkerSettings, WorkerSocket
from popbridge.daemon.workers.sockets import SharedSocket
from popbridge.directory import IDirectory
from popbridge.ledger import ILedger
from popbridge.log import debugging, log_descriptor
from popbridge.metrics.counters import Counters

FIRST_DELAY = 1.0  # seconds before a dead worker is restarted
MAX_DELAY = 60.0
STEADY = 60.0  # a worker that ran this long restarts after FIRST_DELAY again
REPORT_INTERVAL = 1.0  # seconds between counter reports
KILL_AFTER = 10.0  # seconds past the longest shutdown_grace before a draining worker is killed
MAX_STDERR_LINE = 16_384
SYSTEMD_ONLY = ("LISTEN_", "NOTIFY_SOCKET")
ENDED = "ended workers"  # where the event counts of workers that are gone are kept  # environment variables a worker does not inherit


@implementer(IAddress)
@dataclass(frozen=True)
class WorkerAddress:
    """Both ends of a channel: the worker process, by pid."""

    pid: int


@implementer(ITransport)
class _ToChild:
    """The channel's transport: writes go to the worker's stdin."""

    def __init__(self, process: Any) -> None:
        self._process = process

    def write(self, data: bytes) -> None:
        self._process.writeToChild(0, data)

    def writeSequence(self, data: Iterable[bytes]) -> None:
        self.write(b"".join(data))

    def loseConnection(self) -> None:
        self._process.closeStdin()

    def getPeer(self) -> WorkerAddress:
        return WorkerAddress(self._process.pid)

    def getHost(self) -> WorkerAddress:
        return WorkerAddress(self._process.pid)


class WorkerProcess(ProcessProtocol):
    """One running worker, seen from the main process."""

    log = Logger()

    def __init__(self, slot: int, channel: MainChannel, started_at: float) -> None:
        self.slot, self.channel, self.started_at = slot, channel, started_at
        self.pid: int | None = None
        self.ready: Deferred[bool] = Deferred()  # True once it serves, False if it could not start
        self.serving = False
        self.ended: Deferred[None] = Deferred()
        self.reason: Failure | None = None  # why it ended
        self._stderr = b""

    def connectionMade(self) -> None:
        self.pid = self.transport.pid  # type: ignore[union-attr]
        self.channel.makeConnection(_ToChild(self.transport))

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if childFD == 1:
            self.channel.dataReceived(data)
            return
        *lines, self._stderr = (self._stderr + data).split(b"\n")
        if len(self._stderr) > MAX_STDERR_LINE:
            lines, self._stderr = [*lines, self._stderr], b""
        for line in lines:
            self._say(line)

    def _say(self, line: bytes) -> None:
        self.log.warn("{text}", text=line.decode("utf-8", "replace"), log_system=self.channel.name)

    def processEnded(self, reason: Failure) -> None:
        self.reason = reason
        if self._stderr:
            self._say(self._stderr)
        self.channel.connectionLost(reason)
        if not self.ready.called:
            self.ready.callback(False)
        self.ended.callback(None)

    def not_spawned(self, failure: Failure) -> None:
        """spawnProcess itself failed: this worker ended before it began."""
        self.reason = failure
        self.ready.callback(False)
        self.ended.callback(None)

    def signal(self, name: str) -> None:
        if self.transport is None:
            return  # never spawned
        try:
            self.transport.signalProcess(name)
        except ProcessExitedAlready:
            pass


def _worker_environment() -> dict[str, str]:
    """The daemon's environment, without what systemd meant for the main process alone (its
    activated sockets and its notify socket): a worker never speaks to systemd."""
    return {name: value for name, value in os.environ.items() if not name.startswith(SYSTEMD_ONLY)}


class Fleet(Service):
    """The `size` workers of the split daemon (module docstring)."""

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        size: int,
        ledger: ILedger,
        directory: IDirectory | None,
        sockets: Callable[[], list[SharedSocket]],
        counters: Counters,
    ) -> None:
        """`directory`: the one users are routed with, or None; `sockets`: the bound [[proxy]] sockets now."""
        self._reactor, self._size, self._ledger, self._directory = reactor, size, ledger, directory
        self._sockets, self._counters = sockets, counters
        self._current: dict[int, WorkerProcess] = {}
        self._retiring: set[WorkerProcess] = set()
        self._restarts: dict[int, IDelayedCall] = {}
        self._delays: dict[int, float] = {}
        self.reports = WorkerReports()  # by worker label ("1", "2", ...)
        self._reporting = LoopingCall(self._ask_for_reports)
        self._reporting.clock = reactor
        self.setName("proxy workers")

    # -- starting and restarting -----------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        for slot in range(1, self._size + 1):
            self._spawn(slot)
        self._reporting.start(REPORT_INTERVAL, now=False)

    def _spawn(self, slot: int) -> WorkerProcess:
        name = f"worker {slot}"
        sockets = [shared for shared in self._sockets() if shared.fileno() is not None]
        log_fd = log_descriptor()
        child_fds: dict[int, int | str] = {0: "w", 1: "r", 2: "r" if log_fd is None else log_fd}
        passed = []
        for fd, shared in enumerate(sockets, 3):
            child_fds[fd] = shared.fileno()  # type: ignore[assignment]
            passed.append(WorkerSocket(fd, shared.family(), shared.spec))
        settings = WorkerSettings(name, tuple(passed), self._directory is not None, debugging(), log_fd is not None)
        worker = WorkerProcess(slot, MainChannel(name, self._ledger, self._directory), self._reactor.seconds())
        argv = [sys.executable, "-m", "popbridge.daemon.workers.child"]
        self._current[slot] = worker
        worker.ended.addCallback(lambda _: self._ended(worker))
        try:
            self._reactor.spawnProcess(worker, sys.executable, argv, env=_worker_environment(), childFDs=child_fds)
        except OSError:  # out of descriptors, processes or memory: retried like a crash
            worker.not_spawned(Failure())
            return worker
        started = worker.channel.callRemote(Start, settings=pickle.dumps(settings))
        started.addCallbacks(self._started, self._not_started, callbackArgs=(worker, len(passed)), errbackArgs=(worker,))
        return worker

    def _started(self, _: object, worker: WorkerProcess, listeners: int) -> None:
        self.log.info(
            "{worker} (pid {pid}) serving {listeners} proxy listener(s)",
            worker=worker.channel.name, pid=worker.pid, listeners=listeners,
        )
        worker.serving = True
        worker.ready.callback(True)

    def _not_started(self, failure: Failure, worker: WorkerProcess) -> None:
        if not worker.ready.called:
            self.log.error("{worker} (pid {pid}) did not start: {error}", worker=worker.channel.name, pid=worker.pid,
                           error=failure.getErrorMessage())
            worker.signal("KILL")
            worker.ready.callback(False)

    def _ended(self, worker: WorkerProcess) -> None:
        name = worker.channel.name
        reason = worker.reason.getErrorMessage() if worker.reason is not None else "unknown"
        if worker in self._retiring:
            self._retiring.discard(worker)
            self.log.info("{worker} (pid {pid}) of the previous configuration has ended", worker=name, pid=worker.pid)
            return
        if self._current.get(worker.slot) is not worker:
            return
        del self._current[worker.slot]
        self._keep_counts(worker)
        if not self.running:
            self.log.info("{worker} (pid {pid}) has ended", worker=name, pid=worker.pid)
            return
        lived = self._reactor.seconds() - worker.started_at
        delay = FIRST_DELAY if lived >= STEADY else self._delays.get(worker.slot, FIRST_DELAY)
        self._delays[worker.slot] = min(delay * 2, MAX_DELAY)
        self.log.error(
            "{worker} (pid {pid}) ended unexpectedly: {reason}; restarting it in {delay:.0f} s",
            worker=name, pid=worker.pid, reason=reason, delay=delay,
        )
        self._restarts[worker.slot] = self._reactor.callLater(delay, self._restart, worker.slot)

    def _restart(self, slot: int) -> None:
        del self._restarts[slot]
        self._spawn(slot)

    # -- SIGHUP and SIGTERM ----------------------------------------------------------------

    def replace(self) -> "Deferred[Any]":
        """A new generation on the current sockets and settings; each old worker drains once its
        successor serves. Fires when the new generation has started (or failed to)."""
        self._cancel_restarts()
        old, self._current = self._current, {}
        self._retiring.update(old.values())
        for worker in old.values():
            self._keep_counts(worker)
        started = []
        for slot in range(1, self._size + 1):
            new = self._spawn(slot)
            predecessor = old.get(slot)
            if predecessor is not None:
                new.ready.addCallback(lambda _, worker: self._drain(worker), predecessor)
            started.append(new.ready)
        return DeferredList(started)

    def stopService(self) -> "Deferred[Any]":
        super().stopService()
        if self._reporting.running:
            self._reporting.stop()
        self._cancel_restarts()
        workers = [*self._current.values(), *self._retiring]
        for worker in workers:
            self._drain(worker)
        return DeferredList([worker.ended for worker in workers])

    def _drain(self, worker: WorkerProcess) -> None:
        """SIGTERM: the worker stops accepting and drains; SIGKILL if it takes far too long."""
        worker.signal("TERM")
        grace = max((shared.spec.shutdown_grace for shared in self._sockets()), default=0.0)
        kill = self._reactor.callLater(grace + KILL_AFTER, worker.signal, "KILL")
        worker.ended.addCallback(lambda _: kill.cancel() if kill.active() else None)

    def _cancel_restarts(self) -> None:
        for call in self._restarts.values():
            call.cancel()
        self._restarts.clear()

    # -- counters --------------------------------------------------------------------------

    def _ask_for_reports(self) -> None:
        for worker in list(self._current.values()):
            if worker.serving:
                worker.channel.report().addCallbacks(self._reported, self._no_report, (worker,), errbackArgs=(worker,))

    def _reported(self, report: tuple[Any, str], worker: WorkerProcess) -> None:
        if self._current.get(worker.slot) is worker:
            events, metrics = report
            self._counters.elsewhere[worker.channel.name] = events
            self.reports.reported(str(worker.slot), metrics)

    def _keep_counts(self, worker: WorkerProcess) -> None:
        """A worker is gone or going: what it counted stays in the sums."""
        self.reports.worker_ended(str(worker.slot))
        events = self._counters.elsewhere.pop(worker.channel.name, None)
        if events:
            self._counters.elsewhere.setdefault(ENDED, Counter()).update(events)

    def _no_report(self, failure: Failure, worker: WorkerProcess) -> None:
        if self._current.get(worker.slot) is worker:
            self.log.warn("no counters from {worker}: {error}", worker=worker.channel.name, error=failure.getErrorMessage())
