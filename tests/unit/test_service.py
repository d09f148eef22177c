import subprocess
import sys

import trustme
from twisted.internet.error import CannotListenError
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import capturedLogs, formatEvent

from popbridge.config import load_config, parse_config
from popbridge.daemon.listener import LISTEN_BACKLOG
from popbridge.daemon.service import Daemon, build_service
from popbridge.daemon.workers.daemon import SplitDaemon

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


def started(tmp_path, text=CONFIG, reactor=None):
    path = tmp_path / "popbridge.toml"
    path.write_text(text)
    reactor = reactor or MemoryReactorClock()
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


def policy_answer(reactor, path, client="192.0.2.9"):
    """What a new connection to the listening unix socket `path` answers for `client`."""
    [factory] = [factory for address, factory, *_ in reactor.unixServers if address == path]
    transport, protocol = StringTransport(), factory.buildProtocol(None)
    protocol.makeConnection(transport)
    protocol.dataReceived(f"request=smtpd_access_policy\nclient_address={client}\n\n".encode())
    return transport.value()


def test_reload_gives_a_changed_listener_its_new_settings_on_the_same_socket(tmp_path):
    daemon, reactor, path = started(tmp_path)
    try:
        assert policy_answer(reactor, "/tmp/pb-policy") == b"action=DUNNO\n\n"
        path.write_text(CONFIG.replace('listen = "unix:address=/tmp/pb-policy:mode=666"',
                                       'listen = "unix:address=/tmp/pb-policy:mode=666"\nunknown_action = "REJECT"'))
        daemon.reload()
        assert bound(reactor) == ["/tmp/pb-policy", "/tmp/pb-whoson"]  # not bound again
        assert policy_answer(reactor, "/tmp/pb-policy") == b"action=REJECT\n\n"
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


def test_reload_rereads_the_senders_map_and_a_broken_one_changes_nothing(tmp_path):
    senders_map = tmp_path / "senders"
    senders_map.write_text("shared@example.org alice\n")
    daemon, reactor, path = started(tmp_path, CONFIG + f'[senders]\nmap = "{senders_map}"\n')
    try:
        assert daemon.senders.rules.owned("shared@example.org", ["alice"])
        senders_map.write_text("shared@example.org bob\n")
        daemon.reload()
        assert daemon.senders.rules.owned("shared@example.org", ["bob"])
        assert not daemon.senders.rules.owned("shared@example.org", ["alice"])
        senders_map.write_text("shared@example.org carol\nbroken\n")
        with capturedLogs() as events:
            daemon.reload()
        assert any("configuration not reloaded" in formatEvent(e) and "line 2" in formatEvent(e) for e in events)
        assert daemon.senders.rules.owned("shared@example.org", ["bob"])
    finally:
        daemon.stopService()


class TakenPortReactor(MemoryReactorClock):
    """A reactor whose TCP `taken` port refuses to bind until the test frees it."""

    def __init__(self, taken):
        super().__init__()
        self.taken = taken

    def listenTCP(self, port, factory, backlog=50, interface=""):
        if port == self.taken:
            raise CannotListenError(interface, port, OSError(98, "Address already in use"))
        return super().listenTCP(port, factory, backlog, interface)


PROXY = """
[[proxy]]
protocol = "pop3"
listen = "tcp:port=1110:interface=127.0.0.1"
backend = "tcp:host=127.0.0.1:port=110"
"""


def test_a_listener_added_by_a_reload_on_a_taken_port_is_retried_while_the_rest_serves(tmp_path):
    daemon, reactor, path = started(tmp_path, reactor=TakenPortReactor(taken=1110))
    try:
        path.write_text(CONFIG + PROXY)
        with capturedLogs() as events:
            daemon.reload()
            reactor.advance(10)
        failures = [formatEvent(e) for e in events if "cannot listen for pop3 clients" in formatEvent(e)]
        assert len(failures) > 1 and all("trying again in" in line for line in failures)
        assert not reactor.hasStopped and reactor.tcpServers == [] and len(bound(reactor)) == 2
        reactor.taken = None
        reactor.advance(60)
        assert [port for port, *_ in reactor.tcpServers] == [1110]
        reactor.advance(600)
        assert len(reactor.tcpServers) == 1  # bound once, then no more attempts
    finally:
        daemon.stopService()


def test_a_listener_removed_while_it_waits_to_bind_stops_trying(tmp_path):
    daemon, reactor, path = started(tmp_path, reactor=TakenPortReactor(taken=1110))
    try:
        path.write_text(CONFIG + PROXY)
        daemon.reload()
        path.write_text(CONFIG)
        daemon.reload()
        reactor.taken = None
        reactor.advance(600)
        assert reactor.tcpServers == []  # a retry still pending would have bound the freed port
    finally:
        daemon.stopService()


def served_certificate(tmp_path):
    """The proxy table lines for a certificate and key written to served.crt and served.key."""
    certificate = trustme.CA().issue_cert("localhost")
    certificate.cert_chain_pems[0].write_to_path(str(tmp_path / "served.crt"))
    certificate.private_key_pem.write_to_path(str(tmp_path / "served.key"))
    return f'tls_certificate = "{tmp_path}/served.crt"\ntls_key = "{tmp_path}/served.key"\n'


def test_a_changed_proxy_whose_certificate_vanished_keeps_running_with_its_old_settings(tmp_path):
    tls = served_certificate(tmp_path)
    daemon, reactor, path = started(tmp_path, CONFIG + PROXY + tls)
    try:
        path.write_text(CONFIG + PROXY + tls + "require_tls = true\n")
        new = load_config(path)
        (tmp_path / "served.crt").unlink()  # between reading the file and building the listener
        with capturedLogs() as events:
            daemon.apply(new)
        key = ("proxy", "tcp:port=1110:interface=127.0.0.1")
        assert not daemon._specs[key].tls.require and len(reactor.tcpServers) == 1
        assert any("not changed, it keeps its running settings" in formatEvent(e) and "served.crt" in formatEvent(e)
                   for e in events)
        assert len(bound(reactor)) == 2
    finally:
        daemon.stopService()


def test_listeners_queue_a_burst_of_connections_unless_the_endpoint_names_a_backlog():
    document = dict(DOCUMENT, proxy=[*DOCUMENT["proxy"], dict(DOCUMENT["proxy"][0], listen="tcp:port=1111:backlog=7")])
    reactor = MemoryReactorClock()
    service = build_service(parse_config(document, "t.toml"), reactor)
    service.privilegedStartService()
    assert [(port, backlog) for port, _, backlog, _ in reactor.tcpServers] == [(1110, LISTEN_BACKLOG), (1111, 7)]
    assert {backlog for _, _, backlog, _, _ in reactor.unixServers} == {LISTEN_BACKLOG}


def test_a_removed_proxys_certificate_is_not_read_again(tmp_path):
    tls = served_certificate(tmp_path)
    daemon, reactor, path = started(tmp_path, CONFIG + PROXY + tls)
    try:
        path.write_text(CONFIG)
        daemon.reload()
        (tmp_path / "served.crt").unlink()
        assert daemon.certificates.reload() == 0
        with capturedLogs() as events:
            daemon.reload()
        assert not any("certificate not reloaded" in formatEvent(e) for e in events)
        assert any("0 of 0 certificates reloaded" in formatEvent(e) for e in events)
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


DEMO_MODULES = """
import sys
from twisted.internet.testing import MemoryReactorClock
from popbridge.config import parse_config
from popbridge.daemon.service import build_service
from tests.unit.test_service import DOCUMENT
document = dict(DOCUMENT, **({"demo": {"listen": "tcp:port=11110:interface=127.0.0.1"}} if sys.argv[1] == "demo" else {}))
service = build_service(parse_config(document, "t.toml"), MemoryReactorClock())
service.privilegedStartService()
print(sorted({name.split(".")[1] for name in sys.modules if name.startswith(("twisted.mail", "popbridge.demo"))}))
"""


def test_only_a_demo_table_loads_the_demo_server_and_twisted_mail():
    """A fresh interpreter each: sys.modules of this one has seen every test's imports."""

    def loaded(kind: str) -> str:
        run = subprocess.run([sys.executable, "-c", DEMO_MODULES, kind], capture_output=True, text=True, check=True)
        return run.stdout.strip()

    assert loaded("production") == "[]"
    assert loaded("demo") == "['demo', 'mail']"
