"""popbridge's reactor: Twisted's epoll reactor, calling each ready socket directly.

`EPollReactor.doPoll` wraps every ready socket in ``log.callWithLogger``, which pushes a log
context so that legacy ``log.msg`` calls made while handling it carry the transport's
``logPrefix`` as their "system". popbridge logs through `twisted.logger`, which never reads that
context, and in bench/profile.py the wrapper was 11% of a policy lookup's CPU (about 7 µs of
62) and a like share of each POP3 and IMAP login's reactor events. Here the loop calls
``_doReadOrWrite`` itself. That method already turns a failing read or write into a closed
connection and a logged traceback; the guard below only keeps a fault in closing it from ending
the loop, as ``callWithLogger`` did.

It also moves everything the daemon built before it started serving (modules, settings, the
service tree) out of the garbage collector's way (`gc.freeze`, once running). The collector's
full passes walked those ~90,000 objects again and again although they live as long as the
process: about 30 µs of collection per POP3 session, half of it in full passes that each held
the loop for some 45 ms (measured with ``gc.callbacks`` under bench/workers.py's login load);
frozen, about 14 µs, and a full pass takes a few ms. Nothing else about collection changes.

``popbridge run`` selects it (``twistd --reactor=popbridge``); a plain ``twistd -n popbridge``
keeps Twisted's default reactor and works the same, a little slower. Under a Twisted outside
`popbridge.fast.TESTED_TWISTED` the plugin installs Twisted's own epoll reactor instead.
"""

import errno
import gc
from typing import Any

from twisted.internet.epollreactor import EPollReactor
from twisted.internet.main import installReactor
from twisted.logger import Logger

from popbridge.fast import twisted_is_tested


class PopbridgeReactor(EPollReactor):
    log = Logger()

    def __init__(self) -> None:
        super().__init__()
        self.callWhenRunning(gc.freeze)  # what exists once running lives as long as the daemon

    def doPoll(self, timeout: float | None) -> None:
        try:
            ready = self._poller.poll(-1 if timeout is None else timeout, len(self._selectables))
        except OSError as err:
            if err.errno == errno.EINTR:
                return
            raise
        selectables, read_or_write = self._selectables, self._doReadOrWrite
        for fd, event in ready:
            selectable = selectables.get(fd)
            if selectable is None:  # closed by an earlier event of this same turn
                continue
            try:
                read_or_write(selectable, fd, event)
            except Exception:
                self.log.failure("handling an event of {selectable} failed", selectable=selectable)

    doIteration = doPoll


def install() -> Any:
    """Install PopbridgeReactor (Twisted's reactor plugin protocol); Twisted's epoll reactor
    under a Twisted release it was not tested against."""
    reactor = PopbridgeReactor() if twisted_is_tested() else EPollReactor()
    installReactor(reactor)
    return reactor
