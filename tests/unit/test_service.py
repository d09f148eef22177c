from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs, formatEvent

from popbridge.config import parse_config
from popbridge.service import build_service

DOCUMENT = {
    "ledger": {"store": "memory"},  # the default SQLite file lives under /var/lib
    "proxy": [{"protocol": "pop3", "listen": "tcp:port=1110:interface=127.0.0.1", "backend": "tcp:host=127.0.0.1:port=110"}],
    "lookup": [
        {"protocol": "policy", "listen": "unix:address=/tmp/pb-policy:mode=666"},
        {"protocol": "socketmap", "listen": "unix:address=/tmp/pb-socketmap:mode=666"},
        {"protocol": "whoson", "listen": "unix:address=/tmp/pb-whoson:mode=660"},
    ],
    "control": {"listen": "unix:address=/tmp/pb-control:mode=600"},
}


def test_every_listener_in_the_config_is_bound_and_logged():
    reactor = MemoryReactorClock()
    service = build_service(parse_config(DOCUMENT, "t.toml"), reactor)
    with capturedLogs() as events:
        service.privilegedStartService()
        service.startService()
    assert [(port, interface) for port, _, _, interface in reactor.tcpServers] == [(1110, "127.0.0.1")]
    assert [(path, mode) for path, _, _, mode, _ in reactor.unixServers] == [
        ("/tmp/pb-policy", 0o666), ("/tmp/pb-socketmap", 0o666), ("/tmp/pb-whoson", 0o660), ("/tmp/pb-control", 0o600)
    ]
    lines = [formatEvent(e) for e in events]
    assert sum(line.startswith("listening for ") for line in lines) == 5


def test_building_the_service_binds_nothing():
    reactor = MemoryReactorClock()
    build_service(parse_config(DOCUMENT, "t.toml"), reactor)
    assert reactor.tcpServers == [] and reactor.unixServers == []


def test_a_listener_that_cannot_bind_stops_the_daemon():
    class RefusingReactor(MemoryReactorClock):
        def listenUNIX(self, *args, **kwargs):
            raise OSError(13, "Permission denied")

    reactor = RefusingReactor()
    service = build_service(parse_config(DOCUMENT, "t.toml"), reactor)
    with capturedLogs() as events:
        service.privilegedStartService()
    assert any("cannot listen for policy lookups" in formatEvent(e) for e in events)
    reactor.run()
    assert reactor.hasStopped
