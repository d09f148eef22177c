"""The demo POP3 backend behind ``popbridge demo``: a toy server built on `twisted.mail.pop3`.

The demo has to run on a machine with no mail server at all, so popbridge proxies to this
in-process server with the users and sample messages of the ``[demo]`` table. It is a toy:
passwords are plaintext in the config, mailboxes live in memory and every login sees the same
sample messages again, so the demo can be repeated. Never point real clients at it.

It offers what the proxy has to understand: USER/PASS, APOP, and AUTH PLAIN, LOGIN and
CRAM-MD5 (advertised in CAPA), so a `curl pop3://` through popbridge exercises the real
login-watching path whichever method curl picks.
"""

import base64
import binascii
import hmac
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from email.utils import format_datetime
from functools import partial
from hashlib import md5
from io import BytesIO
from typing import Any, overload

from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import CramMD5Credentials, IUsernameHashedPassword, IUsernamePassword
from twisted.cred.error import LoginFailed, UnauthorizedLogin
from twisted.cred.portal import IRealm, Portal
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IAddress, ITransport
from twisted.internet.protocol import ServerFactory
from twisted.logger import Logger
from twisted.mail.imap4 import IllegalClientResponse, LOGINCredentials, PLAINCredentials  # public re-exports
from twisted.mail.interfaces import IMailboxPOP3, IServerFactoryPOP3
from twisted.mail.pop3 import POP3, APOPCredentials
from twisted.python.failure import Failure
from zope.interface import implementer

from popbridge.settings import DemoConfig


def demo_backend_factory(config: DemoConfig) -> "DemoPop3Factory":
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

    def requestAvatarId(self, credentials: Any) -> "Deferred[bytes | tuple[()]]":
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
        self, avatarId: bytes | tuple[()], mind: object, *interfaces: Any
    ) -> tuple[Any, "DemoMailbox", Callable[[], None]]:
        if IMailboxPOP3 not in interfaces:
            raise NotImplementedError("the demo realm only serves POP3 mailboxes")
        assert isinstance(avatarId, bytes)  # DemoPasswordChecker names every user; nobody is anonymous
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

    @overload
    def listMessages(self) -> list[int]: ...

    @overload
    def listMessages(self, i: int) -> int: ...

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
    # twisted.mail.pop3.POP3 types both as None (class defaults); the factory sets them
    factory: "DemoPop3Factory"  # type: ignore[assignment]
    portal: Portal  # type: ignore[assignment]
    transport: ITransport

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
class DemoPop3Factory(ServerFactory[DemoPop3Server]):
    """Builds `DemoPop3Server`s sharing one portal.

    It provides `IServerFactoryPOP3` because only then does Twisted's CAPA list ``SASL``.
    """

    protocol = DemoPop3Server
    noisy = False  # twisted.mail's legacy log lines would duplicate the proxy's login log

    def __init__(self, portal: Portal) -> None:
        self.portal = portal
        # IChallengeResponse makers (CramMD5Credentials has the methods without declaring it)
        self.challengers: dict[bytes, Callable[[], Any]] = {
            b"PLAIN": PLAINCredentials,
            b"LOGIN": LOGINCredentials,
            b"CRAM-MD5": partial(CramMD5Credentials, b"popbridge.invalid"),
        }

    def buildProtocol(self, addr: IAddress | None) -> DemoPop3Server:
        protocol = super().buildProtocol(addr)
        assert protocol is not None  # Factory.buildProtocol makes one of `protocol`
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
