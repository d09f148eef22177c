"""The pieces of ``popbridge demo``: a toy POP3 backend, a demo config file, and what to try.

The demo has to run on a machine with no mail server at all, so the backend popbridge proxies
to is a small in-process POP3 server built on `twisted.mail.pop3`, with the users and sample
messages from the ``[demo]`` table. It is a toy: passwords are plaintext in the config, the
mailboxes live in memory and every login sees the same sample messages again, so the demo can
be repeated. Never point real clients at it.

It offers what the proxy has to understand: USER/PASS, APOP, and AUTH PLAIN, LOGIN and
CRAM-MD5 (advertised in CAPA), so a `curl pop3://` through popbridge exercises the real
login-watching path whichever method curl picks.
"""

import base64
import binascii
import hmac
import json
import os
import shlex
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from email.utils import format_datetime
from functools import partial
from hashlib import md5
from io import BytesIO
from pathlib import Path
from typing import Any
from urllib.parse import quote

from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import CramMD5Credentials, IUsernameHashedPassword, IUsernamePassword
from twisted.cred.error import LoginFailed, UnauthorizedLogin
from twisted.cred.portal import IRealm, Portal
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IAddress
from twisted.internet.protocol import Factory, ServerFactory
from twisted.internet.testing import MemoryReactor
from twisted.logger import Logger
from twisted.mail.imap4 import IllegalClientResponse, LOGINCredentials, PLAINCredentials  # public re-exports
from twisted.mail.interfaces import IChallengeResponse, IMailboxPOP3, IServerFactoryPOP3
from twisted.mail.pop3 import POP3, APOPCredentials
from twisted.python.failure import Failure
from zope.interface import implementer

from popbridge.config import Config, ConfigError, DemoConfig

CONFIG_NAME = "popbridge.toml"
SOCKET_NAMES = ("policy.sock", "socketmap.sock", "whoson.sock", "control.sock")
UNIX_PATH_MAX = 107  # sun_path is 108 bytes on Linux, including the terminating NUL
_PROXY_LISTEN = "tcp:port=1110:interface=127.0.0.1"
_DEMO_LISTEN = "tcp:port=11110:interface=127.0.0.1"
_DEMO_BACKEND = "tcp:host=127.0.0.1:port=11110"


class DemoDirectoryError(ConfigError):
    """The demo directory cannot hold unix sockets (its path is too long)."""


# --- the demo POP3 backend -------------------------------------------------------------------


def demo_backend_factory(config: DemoConfig) -> ServerFactory:
    """A POP3 server factory serving `config.users`, each with `config.messages` sample messages."""
    passwords = {user.encode("utf-8"): password.encode("utf-8") for user, password in config.users.items()}
    portal = Portal(DemoRealm(config.messages), [DemoPasswordChecker(passwords)])
    return DemoPop3Factory(portal)


class _Apop(APOPCredentials):
    """APOP credentials that can succeed.

    Twisted's `APOPCredentials.checkPassword` compares the str from ``hexdigest()`` with the
    bytes digest from the wire, so APOP never succeeds on Python 3 (Twisted 26.10).
    """

    def checkPassword(self, password: bytes) -> bool:
        expected = md5(self.magic + password).hexdigest().encode("ascii")
        return hmac.compare_digest(expected, self.digest.lower())


@implementer(ICredentialsChecker)
class DemoPasswordChecker:
    """Checks plaintext (USER/PASS, PLAIN, LOGIN) and hashed (APOP, CRAM-MD5) credentials.

    Both credential kinds carry their own `checkPassword`, so one table of plaintext passwords
    serves every method; that is only acceptable because this is a demo.
    """

    credentialInterfaces = (IUsernamePassword, IUsernameHashedPassword)

    def __init__(self, passwords: Mapping[bytes, bytes]) -> None:
        self._passwords = dict(passwords)

    def requestAvatarId(self, credentials: Any) -> "Deferred[bytes]":
        password = self._passwords.get(credentials.username or b"")
        if password is not None and credentials.checkPassword(password):
            return succeed(credentials.username)
        return fail(UnauthorizedLogin("unknown user or wrong password"))


@implementer(IRealm)
class DemoRealm:
    """Gives each login a fresh mailbox of sample messages, so the demo can be repeated."""

    log = Logger()

    def __init__(self, messages: int) -> None:
        self._messages = messages

    def requestAvatar(
        self, avatarId: bytes, mind: object, *interfaces: Any
    ) -> tuple[Any, "DemoMailbox", Callable[[], None]]:
        if IMailboxPOP3 not in interfaces:
            raise NotImplementedError("the demo realm only serves POP3 mailboxes")
        user = avatarId.decode("utf-8", "replace")
        self.log.debug("demo backend: {user} logged in", user=user)
        return IMailboxPOP3, DemoMailbox(user, self._messages), lambda: None


def sample_message(user: str, number: int, total: int) -> bytes:
    """One short RFC 5322 message with ``\\n`` line ends (POP3 sends them as CRLF).

    A body line starts with a dot so that a proxy's multi-line handling meets byte-stuffing.
    """
    date = format_datetime(datetime(2026, 1, 1, tzinfo=timezone.utc))
    return (
        f"From: popbridge demo <demo@popbridge.invalid>\n"
        f"To: {user} <{user}@popbridge.invalid>\n"
        f"Subject: popbridge demo message {number} of {total}\n"
        f"Date: {date}\n"
        f"Message-ID: <demo.{number}.{user.encode('utf-8').hex()}@popbridge.invalid>\n"
        f"\n"
        f"Hello {user},\n"
        f"\n"
        f"you fetched this through popbridge, so your client address may relay mail now.\n"
        f".this line starts with a dot and travels byte-stuffed.\n"
    ).encode("utf-8")


@implementer(IMailboxPOP3)
class DemoMailbox:
    """An in-memory mailbox; deletions last until the session ends (sync forgets them)."""

    def __init__(self, user: str, count: int) -> None:
        self._messages = [sample_message(user, n, count) for n in range(1, count + 1)]
        self._uids = [f"demo-{n}-{user.encode('utf-8').hex()}".encode("ascii") for n in range(1, count + 1)]
        self._deleted: set[int] = set()

    def listMessages(self, i: int | None = None) -> int | list[int]:
        if i is None:
            return [0 if n in self._deleted else self._size(n) for n in range(len(self._messages))]
        self._check(i)
        return self._size(i)

    def getMessage(self, i: int) -> BytesIO:
        self._check(i)
        return BytesIO(self._messages[i])

    def getUidl(self, i: int) -> bytes:
        self._check(i)
        return self._uids[i]

    def deleteMessage(self, i: int) -> None:
        self._check(i)
        self._deleted.add(i)

    def undeleteMessages(self) -> None:
        self._deleted.clear()

    def sync(self) -> None:
        """Nothing to write: the next login gets the sample messages again."""

    def _size(self, i: int) -> int:
        return len(self._messages[i]) + self._messages[i].count(b"\n")  # octets as sent, with CRLF

    def _check(self, i: int) -> None:
        if not 0 <= i < len(self._messages) or i in self._deleted:
            raise ValueError(f"no message {i + 1}")


class DemoPop3Server(POP3):
    """Twisted's POP3 server, with working APOP and multi-step SASL.

    Twisted's own AUTH handling takes a single ``user response`` line, which fits CRAM-MD5
    only; this drives any `IChallengeResponse` (PLAIN, LOGIN, CRAM-MD5), accepts an RFC 5034
    initial response and ``*`` to cancel.
    """

    log = Logger()
    _sasl: Any = None

    def authenticateUserAPOP(self, user: bytes, digest: bytes) -> "Deferred[tuple[Any, Any, Any]]":
        return self.portal.login(_Apop(self.magic, user, digest), None, IMailboxPOP3)

    def do_AUTH(self, mechanism: bytes | None = None, initial: bytes | None = None, *extra: bytes) -> None:
        if mechanism is None:
            super().do_AUTH()
            return
        make = self.factory.challengers.get(mechanism.upper())
        if make is None or extra:
            self.failResponse(b"Unsupported SASL mechanism")
            return
        self._sasl = make()
        challenge = self._sasl.getChallenge()
        self.state = "AUTH"
        if initial is None:
            self.sendLine(b"+ " + base64.b64encode(challenge))
        else:
            self.state_AUTH(b"" if initial == b"=" else initial)

    def state_AUTH(self, line: bytes) -> None:
        if line == b"*":
            self.state = "COMMAND"
            self.failResponse(b"AUTH cancelled")
            return
        try:
            self._sasl.setResponse(base64.b64decode(line, validate=True))
        except (binascii.Error, IllegalClientResponse, ValueError):
            self.state = "COMMAND"
            self.failResponse(b"Invalid AUTH response")
            return
        if self._sasl.moreChallenges():
            self.sendLine(b"+ " + base64.b64encode(self._sasl.getChallenge()))
            return
        self.state = "COMMAND"
        d = self.portal.login(self._sasl, None, IMailboxPOP3)
        d.addCallbacks(self._cbMailbox, self._ebMailbox, callbackArgs=(self._sasl.username,))
        d.addErrback(self._ebUnexpected)

    def _ebMailbox(self, failure: Failure) -> None:
        """Twisted's version answers ``-ERR Access denied: <class ...>``; say it plainly."""
        failure.trap(LoginFailed)
        self.log.debug("demo backend: login refused from {peer}", peer=self.transport.getPeer())
        self.failResponse(b"[AUTH] Invalid login")


@implementer(IServerFactoryPOP3)
class DemoPop3Factory(ServerFactory):
    """Builds `DemoPop3Server`s sharing one portal.

    It provides `IServerFactoryPOP3` because only then does Twisted's CAPA list ``SASL``.
    """

    protocol = DemoPop3Server
    noisy = False  # twisted.mail's legacy log lines would duplicate the proxy's login log

    def __init__(self, portal: Portal) -> None:
        self.portal = portal
        self.challengers: dict[bytes, Callable[[], IChallengeResponse]] = {
            b"PLAIN": PLAINCredentials,
            b"LOGIN": LOGINCredentials,
            b"CRAM-MD5": partial(CramMD5Credentials, b"popbridge.invalid"),
        }

    def buildProtocol(self, addr: IAddress) -> DemoPop3Server:
        protocol = super().buildProtocol(addr)
        protocol.portal = self.portal
        return protocol

    def cap_IMPLEMENTATION(self) -> str:
        return "popbridge-demo"

    def cap_EXPIRE(self) -> int:
        raise NotImplementedError()

    def perUserExpiration(self) -> bool:
        return False

    def cap_LOGIN_DELAY(self) -> int:
        raise NotImplementedError()

    def perUserLoginDelay(self) -> bool:
        return False


# --- the demo configuration file -------------------------------------------------------------


def write_demo_config(directory: Path) -> Path:
    """Write ``popbridge.toml`` for the demo into `directory`, unless one is there already.

    An existing file is left alone (and its path returned) so that an operator's edits survive
    the next ``popbridge demo``. The lookup and control sockets live in `directory` too, so a
    directory whose socket paths would not fit a unix socket address is refused before anything
    is created.
    """
    directory = Path(os.path.abspath(directory))
    path = directory / CONFIG_NAME
    if path.exists():
        return path
    for name in SOCKET_NAMES:
        size = len(os.fsencode(directory / name))
        if size > UNIX_PATH_MAX:
            raise DemoDirectoryError(
                f"{directory}: too long for the demo's unix sockets ({directory / name} is {size} bytes,"
                f" the limit is {UNIX_PATH_MAX}); choose a shorter --dir, for example --dir /tmp/popbridge-demo"
            )
    directory.mkdir(parents=True, exist_ok=True)
    sockets = {
        name.removesuffix(".sock"): _toml(_unix_endpoint(directory / name, "600" if name == "control.sock" else "666"))
        for name in SOCKET_NAMES
    }
    text = _DEMO_TEMPLATE.format(
        proxy_listen=_toml(_PROXY_LISTEN),
        proxy_backend=_toml(_DEMO_BACKEND),
        demo_listen=_toml(_DEMO_LISTEN),
        **sockets,
    )
    try:
        with open(path, "x", encoding="utf-8") as f:  # "x": never overwrite a file that appeared meanwhile
            f.write(text)
    except FileExistsError:
        pass
    return path


def _unix_endpoint(path: Path, mode: str) -> str:
    """A ``unix:`` endpoint string for `path`.

    Backslash, colon and '=' are the endpoint syntax's own characters; `quoteStringArgument`
    escapes the first two only, so all three are escaped here.
    """
    escaped = "".join("\\" + c if c in "\\:=" else c for c in str(path))
    return f"unix:address={escaped}:mode={mode}"


def _toml(value: str) -> str:
    """A TOML basic string: JSON's string escapes are all valid TOML escapes."""
    return json.dumps(value, ensure_ascii=False)


_DEMO_TEMPLATE = """\
# popbridge demo configuration, written by `popbridge demo`. Edit it freely: the demo never
# overwrites it (delete it to get a fresh one). Check it with `popbridge check-config FILE`.
#
# Every place that listens or connects is a Twisted endpoint string: "tcp:port=...:interface=...",
# "unix:address=PATH:mode=666", "ssl:...", "haproxy:tcp:...", "systemd:...". Inside one, ':' '='
# and '\\' are escaped with a backslash (which TOML needs doubled: "\\\\:").

[ledger]
ttl = 1800                  # seconds a successful POP3 login lets its client address relay
store = "memory"            # where logins are kept; "memory" forgets them when popbridge stops
ipv6_prefix = 128           # group IPv6 clients by this prefix (64 = one entry per /64)

# The POP3 proxy: mail clients connect here; logins are passed to the backend, and a login the
# backend accepts is recorded for the client's address. Add more [[proxy]] tables for more ports.
[[proxy]]
protocol = "pop3"
listen = {proxy_listen}
backend = {proxy_backend}  # the demo POP3 server below; normally Dovecot & co.
# forward_client_address = true   # send XCLIENT so the backend sees the real client address

# Lookups answer the outbound relay: "may this client address relay?". All are read-only.
[[lookup]]
protocol = "policy"         # Postfix: smtpd_recipient_restrictions = check_policy_service unix:...
listen = {policy}
authorised_action = "OK"    # the answer for an address with a live login
unknown_action = "DUNNO"    # the answer for any other address (DUNNO: let other rules decide)

[[lookup]]
protocol = "socketmap"      # Postfix >= 2.10 / Sendmail: socketmap:unix:PATH:access (or :user)
listen = {socketmap}

[[lookup]]
protocol = "whoson"         # WHOSON: "QUERY address" answers "+user" or "-"
listen = {whoson}
# allow_updates = false     # true would let WHOSON clients LOGIN/LOGOUT addresses themselves

# The admin socket used by `popbridge list|query|revoke|stats --socket PATH`; keep it mode 600.
[control]
listen = {control}

# The demo POP3 server, run inside popbridge; only `popbridge demo` starts it. Toy only:
# plaintext passwords, sample messages in memory.
[demo]
listen = {demo_listen}
users = {{ alice = "wonderland", bob = "builder" }}
messages = 2                # sample messages in each mailbox
"""


# --- what to try -----------------------------------------------------------------------------


def demo_instructions(config: Config) -> str:
    """Commands to try against a running demo, with the addresses and names from `config`."""
    lines = [f"popbridge demo, configured by {config.source}", "Once it is listening, try in another terminal:", ""]
    users = list(config.demo.users.items()) if config.demo else []
    first = users[0] if users else ("USER", "PASSWORD")
    second = users[1] if len(users) > 1 else first
    if config.proxies:
        url = _pop3_url(config.proxies[0].listen)
        lines += [
            "# 1. fetch mail through popbridge; the login records 127.0.0.1",
            f"curl {shlex.quote(url.format(_userinfo(*first)))}",
            "# ... and from another client address, 127.0.0.2",
            f"curl --interface 127.0.0.2 {shlex.quote(url.format(_userinfo(*second)))}",
            "",
        ]
    lookups = {lookup.protocol: lookup for lookup in config.lookups}
    if lookups:
        lines += [
            "# 2. ask what the relay would ask (127.0.0.3 never logged in); `ask` talks to a unix socket",
            "ask() { python3 -c 'import socket, sys; s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]);"
            ' s.sendall(sys.argv[2].encode().decode("unicode_escape").encode());'
            ' print(s.recv(65536).decode())\' "$@"; }',
        ]
    if "policy" in lookups:
        policy = lookups["policy"]
        socket_path = shlex.quote(_unix_address(policy.listen))
        lines += [
            f"# policy: action={policy.authorised_action} for a live login, action={policy.unknown_action} otherwise",
            f"ask {socket_path} 'request=smtpd_access_policy\\nclient_address=127.0.0.2\\n\\n'",
            f"ask {socket_path} 'request=smtpd_access_policy\\nclient_address=127.0.0.3\\n\\n'",
        ]
    if "socketmap" in lookups:
        socket_path = _unix_address(lookups["socketmap"].listen)
        query = "access 127.0.0.2"
        lines += [
            "# socketmap: the same question as Postfix asks it (postmap comes with Postfix) ...",
            f"postmap -q 127.0.0.2 {shlex.quote(f'socketmap:unix:{socket_path}:access')}",
            f"postmap -q 127.0.0.2 {shlex.quote(f'socketmap:unix:{socket_path}:user')}",
            "# ... or by hand, as a netstring",
            f"ask {shlex.quote(socket_path)} '{len(query)}:{query},'",
        ]
    if "whoson" in lookups:
        lines += [
            "# WHOSON: '+user' for a live login, '-' otherwise",
            f"ask {shlex.quote(_unix_address(lookups['whoson'].listen))} 'QUERY 127.0.0.2\\r\\n\\r\\n'",
        ]
    if config.control:
        lines += [
            "",
            "# 3. what popbridge knows, through the admin socket",
            f"popbridge list --socket {shlex.quote(_unix_address(config.control.listen))}",
        ]
    lines += ["", "Stop the demo with Ctrl-C; edit the configuration to experiment (it is never overwritten)."]
    return "\n".join(lines) + "\n"


def _userinfo(user: str, password: str) -> str:
    return f"{quote(user, safe='')}:{quote(password, safe='')}"


def _listened(description: str) -> MemoryReactor:
    """Let Twisted's own parser decode `description`: a MemoryReactor records the listen call."""
    reactor = MemoryReactor()
    serverFromString(reactor, description).listen(Factory())
    return reactor


def _pop3_url(description: str) -> str:
    """A curl URL template (``{}`` for the user info) reaching a proxy listener.

    A wildcard interface is reached on loopback; a listener curl cannot reach by address
    (``systemd:``, unix) falls back to the standard port on loopback.
    """
    scheme, port, interface = "pop3", 110, "127.0.0.1"
    try:
        reactor = _listened(description)
        if reactor.tcpServers:
            port, _, _, interface = reactor.tcpServers[0]
        elif reactor.sslServers:
            scheme, (port, _, _, _, interface) = "pop3s", reactor.sslServers[0]
    except Exception:  # Twisted's parsers and adopt-style endpoints raise many kinds
        pass
    host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(interface, interface)
    return f"{scheme}://{{}}@{f'[{host}]' if ':' in host else host}:{port}/"


def _unix_address(description: str) -> str:
    try:
        return _listened(description).unixServers[0][0]
    except Exception:  # not a unix socket (or not parseable): show the description itself
        return description
