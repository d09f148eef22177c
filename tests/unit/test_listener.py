from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs, formatEvent

from popbridge.daemon.listener import Listener


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


def test_a_socket_that_cannot_be_given_to_its_owner_still_serves_and_says_why():
    reactor = MemoryReactorClock()
    listener = Listener(reactor, "policy lookups", "unix:address=/tmp/pb-policy", Factory(), owner="no-such-user-pb")
    with capturedLogs() as events:
        listener.privilegedStartService()
    lines = [formatEvent(e) for e in events]
    assert any("cannot give unix:address=/tmp/pb-policy to no-such-user-pb" in line for line in lines), lines
    assert any(line.startswith("listening for policy lookups") for line in lines)
    assert listener.bound.result is True
