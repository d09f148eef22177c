"""Which of Dovecot's auth-policy requests are mail logins: pure decisions, no I/O.

Two record points (``record_on``), found by reading src/auth/auth-policy.c, auth-request.c and
auth-request-handler.c at Dovecot 2.3.19.1, and by test (tests/integration/test_dovecot_feed.py):

- ``report`` (default): Dovecot POSTs ``command=report`` in the same step that tells the login
  process "OK" (``auth_request_handler_reply_success_finish``) and does not wait for the answer,
  so the report races the client's tagged OK / ``+OK``. It carries ``success``, so it proves
  the password whatever the other settings are.
- ``after_auth``: with ``auth_policy_check_after_auth = yes`` Dovecot POSTs ``command=allow``
  from ``auth_request_success`` (the mechanism accepted the credentials) and waits for the
  answer before it replies success, so a login recorded there is in the ledger before the
  client hears OK. But with ``auth_policy_check_before_auth = yes`` (Dovecot's default) an
  ``allow`` with exactly the same fields goes out *before* the password is checked, for wrong
  passwords too, and nothing in the request tells the two apart. ``after_auth`` is therefore
  sound only with ``auth_policy_check_before_auth = no``, which popbridge cannot see; the
  `AfterAuthGuard` below trips on the evidence that it is on (an ``allow`` followed by a failed
  report for the same login) and then records on reports only.
"""

import ipaddress
from collections import OrderedDict
from dataclasses import dataclass, field
from functools import lru_cache

from popbridge.addresses import client_key
from popbridge.wire.dovecot_policy import PolicyRequest

RECORD = "recorded"


@dataclass(frozen=True)
class FeedRules:
    """`protocols`: Dovecot service names that are mail logins; `ignore`: networks never recorded."""

    protocols: frozenset[str]
    ignore: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()

    @classmethod
    def of(cls, protocols: tuple[str, ...], ignore_addresses: tuple[str, ...]) -> "FeedRules":
        return cls(frozenset(protocols), tuple(ipaddress.ip_network(net) for net in ignore_addresses))

    def outcome(self, request: PolicyRequest, records_on_allow: bool = False) -> str:
        """`RECORD`, or why this request records nothing (its metrics label).

        An ``allow`` is only ``answered`` unless `records_on_allow` (``record_on =
        "after_auth"`` and the `AfterAuthGuard` agrees); then it is judged on its fields alone.
        """
        if request.command == "allow" and not records_on_allow:
            return "answered"
        if request.command == "report" and request.policy_reject:
            return "policy_reject"
        if request.command == "report" and not request.success:
            return "failed"
        if request.protocol not in self.protocols:
            return "other_protocol"
        if not request.login:  # Dovecot sends "" when it never learned a user name; nobody to record
            return "no_user"
        if not request.remote:
            return "no_address"
        if self.ignored(request.remote):
            return "ignored"
        return RECORD

    def ignored(self, remote: str) -> bool:
        key = client_key(remote)  # v4-mapped IPv6 folded, as the ledger will store it
        return key is not None and any(_address(key) in network for network in self.ignore)


@lru_cache(maxsize=65_536)  # reports come from the same clients over and over
def _address(key: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(key)


LoginKey = tuple[str, str, str]  # (client key, login, protocol)


@dataclass
class AfterAuthGuard:
    """Whether an ``allow`` may be recorded as a login, and the tripwire that stops it.

    It arms on the first report (proof that ``auth_policy_report_after_auth`` is on, so a wrong
    password would show up as a failed report). Then every login recorded at an ``allow`` is
    remembered until its report, for at most `window` seconds; a failed report for the same
    (address, login, protocol) in that time means an ``allow`` came before a password check: the
    guard trips for good and the caller revokes that address. A successful report settles the
    ``allow`` before it, so the same user mistyping a password a moment later (another device
    behind the same NAT) is not taken for the trap.
    """

    window: float = 30.0
    max_remembered: int = 10_000
    armed: bool = False
    tripped: bool = False
    _recent: "OrderedDict[LoginKey, float]" = field(default_factory=OrderedDict, repr=False)

    @property
    def records_on_allow(self) -> bool:
        return self.armed and not self.tripped

    def recorded_on_allow(self, request: PolicyRequest, now: float) -> None:
        key = _key(request)
        self._recent.pop(key, None)
        self._recent[key] = now
        while len(self._recent) > self.max_remembered:
            self._recent.popitem(last=False)

    def reported(self, request: PolicyRequest, now: float) -> bool:
        """Note a report; True when it trips the guard (the caller revokes `request.remote`)."""
        self.armed = True
        while self._recent and next(iter(self._recent.values())) < now - self.window:
            self._recent.popitem(last=False)
        if self._recent.pop(_key(request), None) is None or request.success:
            return False  # a success settles its allow: a later wrong password is another attempt
        self.tripped = True
        return True


def _key(request: PolicyRequest) -> LoginKey:
    return (client_key(request.remote) or request.remote, request.login, request.protocol)
