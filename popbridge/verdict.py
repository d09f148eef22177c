"""Verdict: what the ledger and the directory say about one client address.

Lookup services ask here and only translate the answer into their wire format, so every
protocol gives the same answer for the same address. Ledger failures propagate as exceptions:
the caller turns them into that protocol's temporary failure, never into a yes.

Exempt rule (DESIGN.md): an address is EXEMPT only while every live login on it belongs to an
exempt user. Behind NAT one ordinary user makes the address ordinary, because the relay cannot
tell whose message it is. A login without a user name (GSSAPI, EXTERNAL) is never exempt, and
a directory failure counts as "not exempt": the address stays AUTHORISED by its logins, but
the failure never grants the exemption.

Sender binding (`for_sender`): an authorised address whose request names an envelope sender
that no user logged in there owns is a MISMATCH. It only narrows: an unknown address stays
unknown, the null sender (bounces) passes, and a sender the directory cannot judge raises
SendersUnavailable (a temporary failure), never a yes.
"""

from dataclasses import dataclass, replace
from enum import Enum

from twisted.internet.defer import Deferred, gatherResults
from twisted.logger import Logger

from popbridge.directory import IDirectory
from popbridge.ledger import ILedger, Login
from popbridge.senders.map import SenderRules, sender_key
from popbridge.senders.owners import SenderOwners


class Status(Enum):
    AUTHORISED = "authorised"
    EXEMPT = "exempt"  # authorised, and every live login on the address is an exempt user
    UNKNOWN = "unknown"
    MISMATCH = "mismatch"  # logged in, but no user logged in there owns the envelope sender


@dataclass(frozen=True)
class Verdict:
    status: Status
    user: str = ""  # the newest live login's user; "" when unknown or not known (GSSAPI)
    logins: tuple[Login, ...] = ()

    @property
    def authorised(self) -> bool:
        """Exempt addresses are authorised too: exemption only adds to the authorisation."""
        return self.status in (Status.AUTHORISED, Status.EXEMPT)

    @property
    def exempt(self) -> bool:
        return self.status is Status.EXEMPT

    @property
    def users(self) -> tuple[str, ...]:
        """The names logged in on the address, each once, newest first ("" for GSSAPI left out)."""
        return tuple(dict.fromkeys(login.user for login in self.logins if login.user))


UNKNOWN = Verdict(Status.UNKNOWN)


class Verdicts:
    """Turns ledger contents (and, when asked, directory facts) into a Verdict for one address."""

    log = Logger()

    def __init__(
        self, ledger: ILedger, directory: IDirectory | None = None, senders: SenderOwners | None = None
    ) -> None:
        self._ledger, self._directory = ledger, directory
        self.senders = senders or SenderOwners(SenderRules())  # no [senders]: nobody owns anything

    def instant(self, address: str, exempt: bool = False) -> Verdict | None:
        """The verdict at once when the ledger answers from memory and no directory question
        is needed; None when only `for_address` can tell (Redis, or an exempt question)."""
        lookup_now = getattr(self._ledger, "lookup_now", None)
        if lookup_now is None or (exempt and self._directory is not None):
            return None
        logins = lookup_now(address)
        return Verdict(Status.AUTHORISED, logins[0].user, tuple(logins)) if logins else UNKNOWN

    async def for_address(self, address: str, exempt: bool = False) -> Verdict:
        """With `exempt`, an authorised address may come back EXEMPT; without it the directory
        is not asked at all (WHOSON and the `access` map need only the logins)."""
        logins = await self._ledger.lookup(address)
        if not logins:
            return UNKNOWN
        status = Status.AUTHORISED
        if exempt and await self._all_exempt(logins):
            status = Status.EXEMPT
        return Verdict(status, logins[0].user, tuple(logins))

    def for_sender(self, verdict: Verdict, sender: str) -> "Verdict | Deferred[Verdict]":
        """`verdict` for mail from `sender` (as the request gives it): at once unless the
        directory has to be asked; the Deferred may fail with SendersUnavailable."""
        address = sender_key(sender)
        if not verdict.authorised or not address:
            return verdict
        owned = self.senders.owned(address, verdict.users)
        if isinstance(owned, bool):
            return _owned_or_mismatch(owned, verdict)
        return owned.addCallback(_owned_or_mismatch, verdict)

    async def _all_exempt(self, logins: list[Login]) -> bool:
        users = sorted({login.user for login in logins})
        if self._directory is None or "" in users:
            return False
        try:
            answers = await gatherResults([self._directory.is_exempt(user) for user in users], consumeErrors=True)
        except Exception:  # directories should not fail; if one does, it is not a grant
            self.log.failure("exempt look-up for {users} failed: answering not exempt", users=users)
            return False
        return all(answers)


def _owned_or_mismatch(owned: bool, verdict: Verdict) -> Verdict:
    return verdict if owned else replace(verdict, status=Status.MISMATCH)
