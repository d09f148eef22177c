"""Verdict: what the ledger (and, later, the directory) says about one client address.

Lookup services ask here and only translate the answer into their wire format, so every
protocol gives the same answer for the same address. Failures propagate as exceptions: the
caller turns them into that protocol's temporary failure, never into a yes.
"""

from dataclasses import dataclass
from enum import Enum

from popbridge.ledger import ILedger, Login


class Status(Enum):
    AUTHORISED = "authorised"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class Verdict:
    status: Status
    user: str = ""  # the newest live login's user; "" when unknown or not known (GSSAPI)
    logins: tuple[Login, ...] = ()

    @property
    def authorised(self) -> bool:
        return self.status is Status.AUTHORISED


UNKNOWN = Verdict(Status.UNKNOWN)


class Verdicts:
    """Turns ledger contents into a Verdict for one address."""

    def __init__(self, ledger: ILedger) -> None:
        self._ledger = ledger

    async def for_address(self, address: str) -> Verdict:
        logins = await self._ledger.lookup(address)
        if not logins:
            return UNKNOWN
        return Verdict(Status.AUTHORISED, logins[0].user, tuple(logins))
