"""The exempt rule: every live login on the address must be an exempt user."""

from twisted.internet.defer import Deferred, fail
from twisted.internet.task import Clock
from twisted.logger import capturedLogs

from popbridge.directory import MemoryDirectory
from popbridge.directory.ldap_search import UserFacts
from popbridge.ledger.memory import MemoryLedger
from popbridge.verdict import Status, Verdicts

DIRECTORY = MemoryDirectory({"alice": UserFacts(exempt=True), "dave": UserFacts(exempt=True), "bob": UserFacts()})


def verdict(ledger: MemoryLedger, address: str, directory=DIRECTORY, exempt: bool = True):
    box: list[object] = []
    Deferred.fromCoroutine(Verdicts(ledger, directory).for_address(address, exempt=exempt)).addBoth(box.append)
    return box[0]


def ledger_with(*logins: tuple[str, str]) -> MemoryLedger:
    ledger = MemoryLedger(Clock(), ttl=1800)
    for address, user in logins:
        ledger.record(address, user, "pop3")
    return ledger


def test_exempt_user_alone_makes_the_address_exempt() -> None:
    result = verdict(ledger_with(("192.0.2.7", "alice")), "192.0.2.7")
    assert result.status is Status.EXEMPT and result.authorised and result.exempt


def test_ordinary_user_is_authorised_not_exempt() -> None:
    result = verdict(ledger_with(("192.0.2.7", "bob")), "192.0.2.7")
    assert result.status is Status.AUTHORISED


def test_one_ordinary_user_behind_nat_makes_the_address_ordinary() -> None:
    ledger = ledger_with(("192.0.2.7", "alice"), ("192.0.2.7", "bob"))
    assert verdict(ledger, "192.0.2.7").status is Status.AUTHORISED


def test_several_exempt_users_behind_nat_keep_the_address_exempt() -> None:
    ledger = ledger_with(("192.0.2.7", "alice"), ("192.0.2.7", "dave"))
    assert verdict(ledger, "192.0.2.7").status is Status.EXEMPT


def test_login_without_a_user_name_is_never_exempt() -> None:
    ledger = ledger_with(("192.0.2.7", "alice"), ("192.0.2.7", ""))
    assert verdict(ledger, "192.0.2.7").status is Status.AUTHORISED


def test_exempt_status_only_when_asked_for() -> None:
    assert verdict(ledger_with(("192.0.2.7", "alice")), "192.0.2.7", exempt=False).status is Status.AUTHORISED


def test_without_a_directory_nobody_is_exempt() -> None:
    assert verdict(ledger_with(("192.0.2.7", "alice")), "192.0.2.7", directory=None).status is Status.AUTHORISED


def test_unknown_address_stays_unknown_whatever_the_directory_says() -> None:
    assert verdict(ledger_with(("192.0.2.7", "alice")), "192.0.2.8").status is Status.UNKNOWN


def test_failing_directory_is_not_a_grant_but_the_login_still_counts() -> None:
    class BrokenDirectory(MemoryDirectory):
        def is_exempt(self, user: str) -> "Deferred[bool]":
            return fail(RuntimeError("directory bug"))

    with capturedLogs() as events:
        result = verdict(ledger_with(("192.0.2.7", "alice")), "192.0.2.7", directory=BrokenDirectory())
    assert result.status is Status.AUTHORISED
    assert any(e.get("log_failure") is not None for e in events)
