"""The main process's workers with a fake spawnProcess and a task.Clock: what each worker is
given, restarts with back-off, draining at SIGTERM and replacement at SIGHUP."""

import pickle
import socket
from dataclasses import dataclass

from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.protocols import amp
from twisted.python.failure import Failure

from popbridge.daemon.workers.fleet import Fleet, WorkerProcess
from popbridge.daemon.workers.settings import WorkerSocket
from popbridge.ledger.memory import MemoryLedger
from popbridge.metrics.counters import Counters
from popbridge.settings import ProxyConfig

SPEC = ProxyConfig("pop3", "tcp:1110", "tcp:host=127.0.0.1:port=110", shutdown_grace=30.0)


@dataclass
class BoundSocket:
    number: int
    spec: ProxyConfig = SPEC

    def fileno(self) -> int:
        return self.number

    def family(self) -> int:
        return socket.AF_INET


class FakeProcess:
    def __init__(self, pid: int, protocol: WorkerProcess, child_fds: dict) -> None:
        self.pid, self.protocol, self.child_fds = pid, protocol, child_fds
        self.written, self.signals = b"", []

    def writeToChild(self, fd: int, data: bytes) -> None:
        self.written += data

    def closeStdin(self) -> None:
        pass

    def signalProcess(self, name: str) -> None:
        self.signals.append(name)

    def serve(self) -> None:
        """Answer the Start command, as a worker that listens on its sockets does."""
        [start] = amp.parseString(self.written)
        self.protocol.childDataReceived(1, amp.AmpBox(_answer=start[b"_ask"]).serialize())

    def settings(self):
        [start] = amp.parseString(self.written)
        return pickle.loads(start[b"settings"])

    def end(self, signal: int | None = None) -> None:
        reason = ProcessTerminated(signal=signal) if signal else ProcessDone(0)
        self.protocol.processEnded(Failure(reason))


class ProcessReactor(Clock):
    def __init__(self) -> None:
        super().__init__()
        self.spawned: list[FakeProcess] = []

    def spawnProcess(self, protocol, executable, args, env=None, childFDs=None):
        process = FakeProcess(1000 + len(self.spawned), protocol, childFDs)
        self.spawned.append(process)
        protocol.makeConnection(process)
        return process


def fleet(size: int = 2, sockets=(BoundSocket(7),)) -> tuple[Fleet, ProcessReactor]:
    reactor = ProcessReactor()
    workers = Fleet(reactor, size, MemoryLedger(reactor, ttl=1800), None, lambda: list(sockets), Counters(0.0))
    with capturedLogs():
        workers.startService()
    return workers, reactor


def test_each_worker_gets_every_proxy_socket_from_descriptor_3_with_its_settings():
    _, reactor = fleet(size=2, sockets=(BoundSocket(7), BoundSocket(9)))
    assert len(reactor.spawned) == 2
    for n, process in enumerate(reactor.spawned, 1):
        assert process.child_fds == {0: "w", 1: "r", 2: "r", 3: 7, 4: 9}
        settings = process.settings()
        assert settings.name == f"worker {n}"
        assert settings.sockets == (WorkerSocket(3, socket.AF_INET, SPEC), WorkerSocket(4, socket.AF_INET, SPEC))


def test_a_dead_worker_is_restarted_after_a_back_off_that_doubles():
    _, reactor = fleet(size=1)
    with capturedLogs() as events:
        for delay in (1.0, 2.0, 4.0):
            reactor.spawned[-1].end(signal=9)
            before = len(reactor.spawned)
            reactor.advance(delay - 0.1)
            assert len(reactor.spawned) == before
            reactor.advance(0.1)
            assert len(reactor.spawned) == before + 1
    restarts = [e for e in events if "ended unexpectedly" in e["log_format"]]
    assert [(e["worker"], e["delay"]) for e in restarts] == [("worker 1", 1.0), ("worker 1", 2.0), ("worker 1", 4.0)]


def test_a_worker_that_ran_a_minute_is_restarted_after_the_first_delay_again():
    _, reactor = fleet(size=1)
    with capturedLogs():
        reactor.spawned[-1].end(signal=9)
        reactor.advance(1.0)
        reactor.spawned[-1].end(signal=9)
        reactor.advance(2.0)
        reactor.advance(61)
        reactor.spawned[-1].end(signal=9)
        reactor.advance(1.0)
    assert len(reactor.spawned) == 4


def test_stopping_drains_every_worker_and_waits_until_all_have_ended():
    workers, reactor = fleet(size=2)
    stopped = []
    with capturedLogs():
        workers.stopService().addCallback(stopped.append)
        assert [process.signals for process in reactor.spawned] == [["TERM"], ["TERM"]]
        reactor.spawned[0].end()
        assert stopped == []
        reactor.spawned[1].end()
    assert len(stopped) == 1
    reactor.advance(3600)
    assert len(reactor.spawned) == 2  # no restart once stopping


def test_a_worker_that_does_not_drain_is_killed_after_the_grace_period():
    workers, reactor = fleet(size=1)
    with capturedLogs():
        workers.stopService()
    reactor.advance(SPEC.shutdown_grace + 9)
    assert reactor.spawned[0].signals == ["TERM"]
    reactor.advance(1)
    assert reactor.spawned[0].signals == ["TERM", "KILL"]


def test_a_reload_drains_each_old_worker_once_its_successor_serves():
    workers, reactor = fleet(size=2)
    old = list(reactor.spawned)
    with capturedLogs():
        workers.replace()
        new = reactor.spawned[2:]
        assert len(new) == 2 and all(process.signals == [] for process in old)
        new[0].serve()
    assert old[0].signals == ["TERM"] and old[1].signals == []
    with capturedLogs():
        old[0].end()
    assert len(reactor.spawned) == 4  # a drained old worker is not restarted


def test_counters_of_serving_workers_are_gathered_every_second():
    workers, reactor = fleet(size=1)
    process = reactor.spawned[0]
    process.serve()
    process.written = b""
    reactor.advance(1.0)
    [ask] = amp.parseString(process.written)
    assert ask[b"_command"] == b"Report"
    answer = amp.AmpBox(_answer=ask[b"_ask"], events=b'{"login_succeeded": 3}', metrics=b"# metrics\n")
    process.protocol.childDataReceived(1, answer.serialize())
    assert workers.reports.live == {"1": "# metrics\n"}
    assert workers._counters.totals() == {"login_succeeded": 3}
    with capturedLogs():
        process.end(signal=9)
    assert workers._counters.totals() == {"login_succeeded": 3}  # what it counted stays counted


def test_a_worker_that_cannot_even_be_spawned_is_tried_again_after_the_back_off():
    class Exhausted(ProcessReactor):
        refusals = 1

        def spawnProcess(self, protocol, executable, args, env=None, childFDs=None):
            if self.refusals:
                self.refusals -= 1
                raise OSError(24, "Too many open files")
            return super().spawnProcess(protocol, executable, args, env, childFDs)

    reactor = Exhausted()
    workers = Fleet(reactor, 1, MemoryLedger(reactor, ttl=1800), None, lambda: [BoundSocket(7)], Counters(0.0))
    with capturedLogs() as events:
        workers.startService()
        assert reactor.spawned == []
        reactor.advance(1.0)
    assert len(reactor.spawned) == 1
    assert any("Too many open files" in str(e.get("reason")) for e in events)
