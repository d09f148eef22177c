"""A proxy worker process: ``python -m popbridge.daemon.workers.child``, spawned by the main process.

It serves the [[proxy]] listeners on sockets the main process bound and passed (descriptors
3, 4, ...) and records logins through the main process (`RemoteLedger`). Its stdin and stdout
are the channel, so anything printed goes to stderr instead. It logs to stderr when that is the
daemon's log (lines with ``[worker N]`` as their system), else over the channel.

Signals: SIGTERM drains (stop accepting, give sessions `shutdown_grace`, exit), as the single
process does. SIGHUP and SIGINT are the main process's to handle (a terminal's Ctrl-C reaches
the whole process group): the worker ignores them and waits for the main process to say. When
the main process goes away, the channel closes and the worker drains and exits too.
"""

import pickle
import signal
import sys
from typing import Any, cast

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.endpoints import AdoptedStreamServerEndpoint
from twisted.internet.stdio import StandardIO
from twisted.logger import (
    FileLogObserver,
    FilteringLogObserver,
    ILogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    formatEvent,
    globalLogBeginner,
)
from twisted.python.failure import Failure

from popbridge.daemon.proxy_listener import proxy_listener
from popbridge.daemon.workers.channel import WorkerChannel
from popbridge.daemon.workers.remote import RemoteDirectory, RemoteLedger
from popbridge.daemon.workers.settings import WorkerSettings
from popbridge.fast.transports import fast_sockets
from popbridge.log import classic_text, enable_debugging
from popbridge.metrics.counters import Counters
from popbridge.tls.reload import CertificateReloader


class Worker:
    """The worker's service tree, built when the main process sends `Start`."""

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor
        self.counters = Counters(started=reactor.seconds())
        self.channel = WorkerChannel(self.start, self.counters, self._main_gone)
        self.services = MultiService()
        self.wanted = LogLevelFilterPredicate(LogLevel.info)
        self._name = "worker"
        self._log_file: FileLogObserver | None = None  # the daemon's log, when stderr is it

    def start(self, pickled: bytes) -> "Deferred[None]":
        settings: WorkerSettings = pickle.loads(pickled)  # sent by the main process, which spawned us
        if settings.debugging:
            enable_debugging()
            self.wanted.defaultLogLevel = LogLevel.debug
        self._name = settings.name
        if settings.log_to_stderr:
            self._log_file = FileLogObserver(sys.stderr, classic_text)
        reactor = self._reactor
        ledger = RemoteLedger(self.channel)
        directory = RemoteDirectory(self.channel) if settings.routing else None
        certificates = CertificateReloader(reactor)  # read once: a reload starts new workers
        listeners = []
        for passed in settings.sockets:
            endpoint = AdoptedStreamServerEndpoint(fast_sockets(reactor), passed.fd, passed.family)
            certificate = certificates.add(passed.spec.listen, passed.spec.tls)
            listener = proxy_listener(passed.spec, reactor, ledger, self.counters, certificate, directory, endpoint)
            listener.setServiceParent(self.services)
            listeners.append(listener)
        reactor.addSystemEventTrigger("before", "shutdown", self.services.stopService)
        self.services.privilegedStartService()
        self.services.startService()
        return gatherResults([listener.bound for listener in listeners]).addCallback(self._all_bound)

    def _all_bound(self, results: list[bool]) -> None:
        if not all(results):
            raise RuntimeError("a passed socket could not be served")

    def _main_gone(self, reason: Failure) -> None:
        if self._reactor.running:
            self._reactor.stop()

    def observe(self, event: dict[str, Any]) -> None:
        """A log event, written to the daemon's log, or sent to the main process to write."""
        if self._log_file is not None:
            event["log_system"] = self._name
            self._log_file(event)
            return
        text = formatEvent(event)
        failure = event.get("log_failure")
        if failure is not None:
            text = f"{text}\n{failure.getTraceback()}"
        level = event.get("log_level", LogLevel.info)
        self.channel.send_log(level.name, text)


def main() -> None:
    from popbridge.fast.reactor import install

    reactor = install()
    sys.stdout = sys.stderr  # fd 1 is the channel: a stray print must not corrupt it
    worker = Worker(reactor)
    observer = cast(ILogObserver, worker.observe)  # a callable taking an event is an ILogObserver
    globalLogBeginner.beginLoggingTo([FilteringLogObserver(observer, [worker.wanted])], redirectStandardIO=False)
    StandardIO(worker.channel, reactor=reactor)
    for ignored in (signal.SIGHUP, signal.SIGINT):
        reactor.callWhenRunning(signal.signal, ignored, signal.SIG_IGN)
    reactor.run()


if __name__ == "__main__":
    main()
