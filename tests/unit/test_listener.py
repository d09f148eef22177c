from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory
from twisted.internet.testing import MemoryReactorClock

from popbridge.listener import Listener


def test_a_listener_given_new_settings_still_waits_for_the_old_sessions_at_shutdown():
    reactor = MemoryReactorClock()
    old_sessions, new_sessions = Deferred(), Deferred()
    listener = Listener(reactor, "pop3 clients", "tcp:1110", Factory(), drain=lambda: old_sessions)
    listener.privilegedStartService()
    listener.startService()
    listener.adopt(Listener(reactor, "pop3 clients", "tcp:1110", Factory(), drain=lambda: new_sessions))
    stopped = []
    listener.stopService().addCallback(stopped.append)
    new_sessions.callback(None)
    assert stopped == []
    old_sessions.callback(None)
    assert stopped == [None]
