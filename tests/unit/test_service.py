from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs, formatEvent

from popbridge.config import load_config, parse_config
from popbridge.service import Daemon, build_service
from popbridge.workers.daemon import SplitDaemon

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


CONFIG = """
[ledger]
ttl = 1800
store = "memory"
[[lookup]]
protocol = "policy"
listen = "unix:address=/tmp/pb-policy:mode=666"
[[lookup]]
protocol = "whoson"
listen = "unix:address=/tmp/pb-whoson:mode=660"
"""


def started(tmp_path, text=CONFIG):
    path = tmp_path / "popbridge.toml"
    path.write_text(text)
    reactor = MemoryReactorClock()
    daemon = build_service(load_config(path), reactor)
    daemon.privilegedStartService()
    daemon.startService()
    return daemon, reactor, path


def bound(reactor):
    return [path for path, *_ in reactor.unixServers]


def test_reload_adds_and_removes_listeners_and_changes_the_ttl(tmp_path):
    daemon, reactor, path = started(tmp_path)
    try:
        path.write_text(CONFIG.replace("ttl = 1800", "ttl = 600").replace(
            'protocol = "whoson"\nlisten = "unix:address=/tmp/pb-whoson:mode=660"',
            'protocol = "socketmap"\nlisten = "unix:address=/tmp/pb-socketmap:mode=666"'))
        daemon.reload()
        assert bound(reactor) == ["/tmp/pb-policy", "/tmp/pb-whoson", "/tmp/pb-socketmap"]
        assert sorted(key for key in daemon._listeners) == [("lookup", "unix:address=/tmp/pb-policy:mode=666"),
                                                            ("lookup", "unix:address=/tmp/pb-socketmap:mode=666")]
        assert daemon.ledger.ttl == 600
    finally:
        daemon.stopService()


def test_reload_rebinds_a_listener_whose_settings_changed(tmp_path):
    daemon, reactor, path = started(tmp_path)
    try:
        path.write_text(CONFIG.replace('listen = "unix:address=/tmp/pb-policy:mode=666"',
                                       'listen = "unix:address=/tmp/pb-policy:mode=666"\nunknown_action = "REJECT"'))
        daemon.reload()
        assert bound(reactor).count("/tmp/pb-policy") == 2
        assert daemon._specs[("lookup", "unix:address=/tmp/pb-policy:mode=666")].unknown_action == "REJECT"
    finally:
        daemon.stopService()


def test_reload_of_a_broken_file_keeps_the_running_config(tmp_path):
    daemon, reactor, path = started(tmp_path)
    try:
        path.write_text(CONFIG.replace("ttl = 1800", 'ttl = "soon"'))
        with capturedLogs() as events:
            daemon.reload()
        assert any("configuration not reloaded" in formatEvent(e) and "[ledger] ttl" in formatEvent(e) for e in events)
        assert daemon.ledger.ttl == 1800 and len(bound(reactor)) == 2
    finally:
        daemon.stopService()


def test_with_workers_the_main_process_binds_the_proxy_sockets_but_never_reads_them():
    not_read: list[int] = []

    class Reactor(MemoryReactorClock):
        def listenTCP(self, port, factory, backlog=50, interface=""):
            listening = super().listenTCP(port, factory, backlog, interface)
            listening.stopReading = lambda: not_read.append(port)
            return listening

    reactor = Reactor()
    service = build_service(parse_config({**DOCUMENT, "daemon": {"workers": 2}}, "t.toml"), reactor)
    assert isinstance(service, SplitDaemon)
    with capturedLogs():
        service.privilegedStartService()
    assert [(port, interface) for port, _, _, interface in reactor.tcpServers] == [(1110, "127.0.0.1")]
    assert not_read == [1110]
    assert len(reactor.unixServers) == 4  # lookups and control stay in the main process


def test_without_workers_the_daemon_is_one_process():
    service = build_service(parse_config(DOCUMENT, "t.toml"), MemoryReactorClock())
    assert isinstance(service, Daemon) and not isinstance(service, SplitDaemon)
