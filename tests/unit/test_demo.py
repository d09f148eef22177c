"""`popbridge demo`: the toy POP3 backend, the demo config file and the instructions.

The backend is driven through `StringTransport` (and `iosim` where a pull producer has to
run), with an injected `Clock` for Twisted's POP3 idle timeout: no reactor, no sockets.
"""

import base64
import hmac
from collections.abc import Iterator
from hashlib import md5
from pathlib import Path

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import serverFromString
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactor, StringTransport
from twisted.logger import capturedLogs
from twisted.test import iosim

from popbridge.config import load_config
from popbridge.demo import DemoDirectoryError, demo_instructions, write_demo_config
from popbridge.demo.backend import DemoPop3Server, demo_backend_factory
from popbridge.settings import Config, DemoConfig

DEMO = DemoConfig(listen="tcp:port=11110:interface=127.0.0.1", users={"alice": "wonderland", "bob": "builder"})
PEER = IPv4Address("TCP", "127.0.0.1", 40000)


def run_now(iterator: Iterator[object]) -> "Deferred[None]":
    """Stands in for `task.coiterate`, which Twisted's POP3 uses for STAT and LIST answers."""
    for _ in iterator:
        pass
    return succeed(None)


def build_server(config: DemoConfig = DEMO) -> DemoPop3Server:
    """A demo backend protocol whose timers and cooperative loops stay off the global reactor."""
    server = demo_backend_factory(config).buildProtocol(PEER)
    server.callLater = Clock().callLater  # Twisted's POP3 idle timeout
    server.schedule = run_now
    return server


def connect(config: DemoConfig = DEMO) -> tuple[DemoPop3Server, StringTransport]:
    """A demo backend connection whose greeting has been read and cleared."""
    server = build_server(config)
    transport = StringTransport(peerAddress=PEER)
    server.makeConnection(transport)
    assert transport.value().startswith(b"+OK <")
    transport.clear()
    return server, transport


def send(server: DemoPop3Server, transport: StringTransport, line: bytes) -> bytes:
    """Feed one client line and return (and clear) the server's answer."""
    server.dataReceived(line + b"\r\n")
    answer = transport.value()
    transport.clear()
    return answer


def b64(data: bytes) -> bytes:
    return base64.b64encode(data)


def listened_unix(description: str) -> tuple[str, int]:
    """The socket path and mode a unix endpoint string really means, per Twisted's own parser."""
    reactor = MemoryReactor()
    serverFromString(reactor, description).listen(Factory())
    address, _, _, mode, _ = reactor.unixServers[0]
    return address, mode


# --- the backend ---------------------------------------------------------------------------


def test_user_pass_with_the_right_password_opens_the_mailbox() -> None:
    server, transport = connect()
    assert send(server, transport, b"USER alice").startswith(b"+OK")
    assert send(server, transport, b"PASS wonderland").startswith(b"+OK")
    assert send(server, transport, b"STAT").startswith(b"+OK 2 ")


def test_user_pass_with_a_wrong_password_is_refused() -> None:
    server, transport = connect()
    send(server, transport, b"USER alice")
    assert send(server, transport, b"PASS builder").startswith(b"-ERR")
    assert send(server, transport, b"STAT").startswith(b"-ERR")


def test_an_unknown_user_is_refused() -> None:
    server, transport = connect()
    send(server, transport, b"USER mallory")
    assert send(server, transport, b"PASS wonderland").startswith(b"-ERR")


def test_apop_with_the_right_digest_opens_the_mailbox() -> None:
    server, transport = connect()
    digest = md5(server.magic + b"builder").hexdigest().encode()
    assert send(server, transport, b"APOP bob " + digest).startswith(b"+OK")
    assert send(server, transport, b"STAT").startswith(b"+OK 2 ")


def test_apop_with_a_digest_of_the_wrong_password_is_refused() -> None:
    server, transport = connect()
    digest = md5(server.magic + b"wonderland").hexdigest().encode()
    assert send(server, transport, b"APOP bob " + digest).startswith(b"-ERR")
    assert send(server, transport, b"STAT").startswith(b"-ERR")


def test_capa_advertises_user_and_the_sasl_mechanisms() -> None:
    server, transport = connect()
    capabilities = send(server, transport, b"CAPA").split(b"\r\n")
    assert capabilities[0].startswith(b"+OK")
    assert b"USER" in capabilities
    assert b"SASL PLAIN LOGIN CRAM-MD5" in capabilities
    assert capabilities[-2:] == [b".", b""]


def test_auth_plain_after_an_empty_challenge_opens_the_mailbox() -> None:
    server, transport = connect()
    assert send(server, transport, b"AUTH PLAIN") == b"+ \r\n"
    assert send(server, transport, b64(b"\0alice\0wonderland")).startswith(b"+OK")
    assert send(server, transport, b"STAT").startswith(b"+OK")


def test_auth_plain_with_an_initial_response_opens_the_mailbox() -> None:
    server, transport = connect()
    assert send(server, transport, b"AUTH PLAIN " + b64(b"\0alice\0wonderland")).startswith(b"+OK")


def test_auth_plain_with_a_wrong_password_is_refused() -> None:
    server, transport = connect()
    assert send(server, transport, b"AUTH PLAIN " + b64(b"\0alice\0builder")).startswith(b"-ERR")
    assert send(server, transport, b"STAT").startswith(b"-ERR")


def test_auth_login_asks_for_the_user_then_the_password() -> None:
    server, transport = connect()
    assert send(server, transport, b"AUTH LOGIN").startswith(b"+ ")
    assert send(server, transport, b64(b"bob")).startswith(b"+ ")
    assert send(server, transport, b64(b"builder")).startswith(b"+OK")


def test_auth_cram_md5_with_the_right_digest_opens_the_mailbox() -> None:
    server, transport = connect()
    challenge = base64.b64decode(send(server, transport, b"AUTH CRAM-MD5")[2:])
    digest = hmac.new(b"wonderland", challenge, md5).hexdigest().encode()
    assert send(server, transport, b64(b"alice " + digest)).startswith(b"+OK")


def test_auth_cram_md5_with_a_digest_of_the_wrong_password_is_refused() -> None:
    server, transport = connect()
    challenge = base64.b64decode(send(server, transport, b"AUTH CRAM-MD5")[2:])
    digest = hmac.new(b"builder", challenge, md5).hexdigest().encode()
    assert send(server, transport, b64(b"alice " + digest)).startswith(b"-ERR")


def test_auth_cancelled_with_a_star_returns_to_commands() -> None:
    server, transport = connect()
    send(server, transport, b"AUTH LOGIN")
    assert send(server, transport, b"*").startswith(b"-ERR")
    assert send(server, transport, b"NOOP").startswith(b"-ERR")  # still a command, not an AUTH response
    send(server, transport, b"USER alice")
    assert send(server, transport, b"PASS wonderland").startswith(b"+OK")


def test_auth_with_an_unknown_mechanism_or_bad_base64_is_refused() -> None:
    server, transport = connect()
    assert send(server, transport, b"AUTH GSSAPI").startswith(b"-ERR")
    send(server, transport, b"AUTH PLAIN")
    assert send(server, transport, b"not base64!").startswith(b"-ERR")
    send(server, transport, b"USER alice")
    assert send(server, transport, b"PASS wonderland").startswith(b"+OK")


def test_retr_sends_a_byte_stuffed_sample_message() -> None:
    class Recorder(Protocol):
        received = b""

        def dataReceived(self, data: bytes) -> None:
            self.received += data

    client, server, pump = iosim.connectedServerAndClient(build_server, Recorder)
    client.transport.write(b"USER alice\r\nPASS wonderland\r\nRETR 2\r\n")  # pipelined, as clients may
    pump.flush()
    message = client.received.split(b"\r\n", 3)[3]
    assert message.startswith(b"+OK ")
    assert b"Subject: popbridge demo message 2 of 2\r\n" in message
    assert b"\r\n..this line starts with a dot" in message
    assert message.endswith(b"\r\n.\r\n")


def test_logins_never_log_a_password() -> None:
    with capturedLogs() as events:
        server, transport = connect()
        send(server, transport, b"USER alice")
        send(server, transport, b"PASS not-the-password")
        send(server, transport, b"USER alice")
        send(server, transport, b"PASS wonderland")
        send(server, transport, b"AUTH PLAIN " + b64(b"\0bob\0builder"))
    text = repr(events)
    assert "wonderland" not in text and "not-the-password" not in text and "builder" not in text


# --- the config file -------------------------------------------------------------------------


def test_written_config_loads_with_every_socket_in_the_directory(tmp_path: Path) -> None:
    directory = tmp_path / "demo"
    config = load_config(write_demo_config(directory))
    assert (config.ledger.ttl, config.ledger.store, config.ledger.ipv6_prefix) == (1800, "memory", 128)
    assert [(p.protocol, p.listen, p.backend) for p in config.proxies] == [
        ("pop3", "tcp:port=1110:interface=127.0.0.1", "tcp:host=127.0.0.1:port=11110")
    ]
    sockets = {lookup.protocol: listened_unix(lookup.listen) for lookup in config.lookups}
    assert sockets == {name: (str(directory / f"{name}.sock"), 0o666) for name in ("policy", "socketmap", "whoson")}
    assert config.control is not None
    assert listened_unix(config.control.listen) == (str(directory / "control.sock"), 0o600)
    assert config.demo == DemoConfig(
        listen="tcp:port=11110:interface=127.0.0.1", users={"alice": "wonderland", "bob": "builder"}, messages=2
    )


def test_socket_paths_with_endpoint_and_toml_syntax_characters_round_trip(tmp_path: Path) -> None:
    directory = tmp_path / 'a:b=c\\d "e" é'
    config = load_config(write_demo_config(directory))
    assert {listened_unix(lookup.listen)[0] for lookup in config.lookups} == {
        str(directory / name) for name in ("policy.sock", "socketmap.sock", "whoson.sock")
    }


def test_a_relative_directory_is_written_as_absolute_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    path = write_demo_config(Path("demo"))
    assert path == tmp_path / "demo" / "popbridge.toml"
    config = load_config(path)
    assert listened_unix(config.lookups[0].listen)[0] == str(tmp_path / "demo" / "policy.sock")


def test_an_existing_config_is_left_alone(tmp_path: Path) -> None:
    existing = tmp_path / "popbridge.toml"
    existing.write_text("# edited by the operator\n")
    assert write_demo_config(tmp_path) == existing
    assert existing.read_text() == "# edited by the operator\n"


def test_a_directory_too_long_for_unix_sockets_is_refused_before_anything_is_created(tmp_path: Path) -> None:
    directory = tmp_path / ("d" * 100)
    with pytest.raises(DemoDirectoryError, match="shorter --dir"):
        write_demo_config(directory)
    assert not directory.exists()


def test_the_written_config_serves_its_demo_users(tmp_path: Path) -> None:
    config = load_config(write_demo_config(tmp_path))
    assert config.demo is not None
    server, transport = connect(config.demo)
    send(server, transport, b"USER bob")
    assert send(server, transport, b"PASS builder").startswith(b"+OK")


# --- the instructions ------------------------------------------------------------------------


def test_instructions_use_the_addresses_and_users_of_the_config(tmp_path: Path) -> None:
    text = demo_instructions(load_config(write_demo_config(tmp_path)))
    assert "curl pop3://alice:wonderland@127.0.0.1:1110/\n" in text
    assert "curl --interface 127.0.0.2 pop3://bob:builder@127.0.0.1:1110/\n" in text
    assert f"postmap -c {tmp_path}/postfix -q 127.0.0.2 socketmap:unix:{tmp_path}/socketmap.sock:access\n" in text
    assert f"ask {tmp_path}/policy.sock 'request=smtpd_access_policy\\nclient_address=127.0.0.2\\n\\n'\n" in text
    assert f"ask {tmp_path}/whoson.sock 'QUERY 127.0.0.2\\r\\n\\r\\n'\n" in text
    assert f"popbridge list --socket {tmp_path}/control.sock\n" in text
    assert "action=OK for a live login, action=DUNNO otherwise" in text


def test_the_postmap_hint_has_a_main_cf_to_read(tmp_path: Path) -> None:
    """Debian's postfix with "No configuration" has no /etc/postfix/main.cf; postmap needs one."""
    write_demo_config(tmp_path)
    (tmp_path / "postfix" / "main.cf").unlink()
    text = demo_instructions(load_config(write_demo_config(tmp_path)))
    assert (tmp_path / "postfix" / "main.cf").read_text() == ""
    assert f"postmap -c {tmp_path}/postfix -q" in text


def test_instructions_quote_users_and_paths_for_the_shell(tmp_path: Path) -> None:
    config = load_config(write_demo_config(tmp_path / "my demo"))
    odd = Config(
        source=config.source,
        proxies=config.proxies,
        lookups=config.lookups,
        control=config.control,
        demo=DemoConfig(listen=DEMO.listen, users={"a@b": "p:w /'"}),
    )
    text = demo_instructions(odd)
    assert "curl pop3://a%40b:p%3Aw%20%2F%27@127.0.0.1:1110/\n" in text
    assert f"popbridge list --socket '{tmp_path}/my demo/control.sock'\n" in text
