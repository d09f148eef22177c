"""Directory behaviour: one shared test run against LdapDirectory (ldap3 MOCK_SYNC) and the
MemoryDirectory twin, then the LDAP-only parts: cache, timeouts, outages, logging."""

from dataclasses import replace

import pytest
from ldap3.core.exceptions import LDAPSocketReceiveError
from twisted.application.internet import backoffPolicy
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.task import Clock, deferLater
from twisted.logger import capturedLogs, formatEvent
from zope.interface.verify import verifyObject

from popbridge.directory import FALLBACK, NOT_FOUND, IDirectory, LdapDirectory, MemoryDirectory
from popbridge.directory.ldap_search import ConnectionPool, UserFacts

from tests.doubles import direct_call, result

from .ldap_mock import BIND_PASSWORD, CONFIG, MockLdap

INJECTIONS = ["alice)(|(uid=*", "*", "alice*", "*)(memberOf=*", "alice\\", "alice\x00", "(uid=alice)", "ALICE )"]


PROBE_BACKOFF = backoffPolicy(initialDelay=1.0, maxDelay=30.0, factor=2.0, jitter=lambda: 0.0)  # 1, 2, 4 ... 30


def ldap_directory(ldap: MockLdap, clock: Clock, run_blocking=direct_call, **overrides) -> LdapDirectory:
    config = replace(CONFIG, **overrides)
    return LdapDirectory(config, ConnectionPool(ldap.connect, 2), run_blocking, clock, probe_backoff=PROBE_BACKOFF)


class HungLdap:
    """`run_blocking` for a directory that accepts connections and never answers (slapd under
    SIGSTOP): each query fails when ldap3's receive timeout frees its thread, `thread_timeout`
    after it started. `started` lists when each query was sent."""

    def __init__(self, clock: Clock, thread_timeout: float = 3.5) -> None:
        self.clock, self.thread_timeout = clock, thread_timeout
        self.started: list[float] = []
        self.answering: MockLdap | None = None  # set to make it answer again

    def __call__(self, f, *args) -> Deferred:
        self.started.append(self.clock.seconds())
        if self.answering is not None:
            return maybeDeferred(f, *args)
        return deferLater(self.clock, self.thread_timeout, _receive_timed_out)


def _receive_timed_out() -> None:
    raise LDAPSocketReceiveError("socket receive timed out")


def memory_directory() -> MemoryDirectory:
    return MemoryDirectory({
        "alice": UserFacts(exempt=True),
        "bob": UserFacts(),
        "carol": UserFacts(backend="mail2.example.org:1110"),
        "dave": UserFacts(exempt=True),
    })


@pytest.fixture(params=["ldap", "memory"])
def directory(request) -> IDirectory:
    if request.param == "memory":
        return memory_directory()
    return ldap_directory(MockLdap(), Clock())


# ---------------------------------------------------------------- shared behaviour


def test_directory_provides_the_interface(directory) -> None:
    assert verifyObject(IDirectory, directory)


def test_user_in_the_exempt_group_is_exempt(directory) -> None:
    assert result(directory.is_exempt("alice")) is True


def test_ordinary_user_is_not_exempt(directory) -> None:
    assert result(directory.is_exempt("bob")) is False


def test_unknown_user_gets_the_fallback_facts_as_an_answer(directory) -> None:
    assert result(directory.facts("mallory")) == NOT_FOUND
    assert result(directory.backend_for("mallory")) is None


def test_login_without_a_name_is_not_exempt(directory) -> None:
    assert result(directory.facts("")) == FALLBACK


@pytest.mark.parametrize("name", INJECTIONS)
def test_filter_injection_never_makes_a_name_exempt(directory, name) -> None:
    assert result(directory.is_exempt(name)) is False


def test_user_entry_names_its_backend(directory) -> None:
    assert result(directory.backend_for("carol")) == "mail2.example.org:1110"
    assert result(directory.backend_for("alice")) is None


# ---------------------------------------------------------------- LDAP only


def test_unusable_backend_value_means_the_default_backend_and_a_warning() -> None:
    directory = ldap_directory(MockLdap(), Clock())
    with capturedLogs() as events:
        facts = result(directory.facts("dave"))
    assert facts == UserFacts(exempt=True, backend=None)
    assert any("not host or host:port" in formatEvent(e) for e in events)


def test_answer_is_cached_for_cache_ttl() -> None:
    clock, ldap = Clock(), MockLdap()
    directory = ldap_directory(ldap, clock)
    assert result(directory.is_exempt("alice")) is True
    ldap.remove("alice")
    clock.advance(CONFIG.cache_ttl - 1)
    assert result(directory.is_exempt("alice")) is True
    clock.advance(1)
    assert result(directory.is_exempt("alice")) is False


def test_no_such_user_is_cached_for_negative_cache_ttl() -> None:
    clock, ldap = Clock(), MockLdap()
    directory = ldap_directory(ldap, clock)
    assert result(directory.is_exempt("erin")) is False
    ldap.add("erin", {"memberOf": CONFIG.exempt_filter[10:-1]})
    clock.advance(CONFIG.negative_cache_ttl - 1)
    assert result(directory.is_exempt("erin")) is False
    clock.advance(1)
    assert result(directory.is_exempt("erin")) is True


def test_outage_serves_the_stale_answer_up_to_stale_ttl_then_the_fallback() -> None:
    clock, ldap = Clock(), MockLdap()
    directory = ldap_directory(ldap, clock)
    assert result(directory.is_exempt("alice")) is True
    ldap.down = True
    clock.advance(CONFIG.cache_ttl + CONFIG.stale_ttl - 1)
    assert result(directory.is_exempt("alice")) is True
    clock.advance(1)
    assert result(directory.is_exempt("alice")) is False


def test_outage_without_a_cached_answer_gives_the_fallback() -> None:
    ldap = MockLdap()
    ldap.down = True
    directory = ldap_directory(ldap, Clock())
    assert result(directory.facts("alice")) == FALLBACK
    assert result(directory.facts("carol")) == FALLBACK


def test_fresh_answers_resume_once_a_probe_finds_ldap_back() -> None:
    clock, ldap = Clock(), MockLdap()
    ldap.down = True
    directory = ldap_directory(ldap, clock)
    assert result(directory.is_exempt("alice")) is False
    ldap.down = False
    assert result(directory.is_exempt("alice")) is False  # still the outage: no query until the probe
    clock.advance(PROBE_BACKOFF(0))
    assert result(directory.is_exempt("alice")) is True


def test_outage_is_logged_once_and_its_end_once() -> None:
    clock, ldap = Clock(), MockLdap()
    directory = ldap_directory(ldap, clock)
    ldap.down = True
    with capturedLogs() as events:
        for user in ("alice", "bob", "carol", "alice"):
            result(directory.facts(user))
        clock.advance(100)  # probes fail
        ldap.down = False
        clock.advance(30)  # the next probe succeeds
        result(directory.facts("alice"))
        ldap.down = True
        result(directory.facts("bob"))
    loud = [formatEvent(e) for e in events if e["log_level"].name in ("error", "critical", "info")]
    assert len([line for line in loud if "unavailable" in line]) == 2  # two outages
    assert len([line for line in loud if "answers again after" in line]) == 1


def test_after_the_first_timeout_lookups_answer_at_once_without_a_query() -> None:
    clock = Clock()
    hung = HungLdap(clock)
    directory = ldap_directory(MockLdap(), clock, run_blocking=hung)
    first = directory.facts("alice")
    clock.advance(CONFIG.timeout)
    assert result(first) == FALLBACK
    answers = [directory.facts(user) for user in ("bob", "carol", "dave") * 20]  # 60 recipients
    assert all(answer.called for answer in answers)
    assert {result(answer) for answer in answers} == {FALLBACK}
    assert hung.started == [0.0]


def test_a_cached_answer_serves_at_once_during_the_outage_even_when_stale() -> None:
    clock, ldap = Clock(), MockLdap()
    hung = HungLdap(clock)
    directory = ldap_directory(ldap, clock, run_blocking=hung)
    hung.answering = ldap
    assert result(directory.is_exempt("alice")) is True
    hung.answering = None
    clock.advance(CONFIG.cache_ttl)  # stale from now on
    directory.facts("bob")
    clock.advance(CONFIG.timeout)  # bob's look-up times out: the outage starts
    stale = directory.is_exempt("alice")
    assert stale.called and result(stale) is True


def test_one_probe_at_a_time_retries_with_growing_back_off() -> None:
    clock = Clock()
    hung = HungLdap(clock)
    directory = ldap_directory(MockLdap(), clock, run_blocking=hung)
    directory.facts("alice")
    while (due := min(call.getTime() for call in clock.getDelayedCalls())) < 200:
        clock.advance(due - clock.seconds())  # from one timer to the next, the relay asking at each
        directory.facts("bob")
    # query at 0, times out at 3; each probe times out 3 s after it is sent, then waits 1, 2, 4 ... 30 s
    expected, sent = [0.0], 3.0
    for delay in (1, 2, 4, 8, 16, 30, 30, 30, 30, 30):
        expected.append(sent + delay)
        sent = expected[-1] + CONFIG.timeout
    assert [round(t, 1) for t in hung.started] == [t for t in expected if t < 200]


def test_the_first_successful_probe_ends_the_outage_and_answers_the_last_user_asked_for() -> None:
    clock, ldap = Clock(), MockLdap()
    hung = HungLdap(clock)
    directory = ldap_directory(ldap, clock, run_blocking=hung)
    directory.facts("bob")
    clock.advance(CONFIG.timeout)
    assert result(directory.is_exempt("alice")) is False  # the fallback, at once
    hung.answering = ldap
    with capturedLogs() as events:
        clock.advance(PROBE_BACKOFF(0))  # the probe looks up alice, and LDAP answers
    assert any("answers again after" in formatEvent(e) for e in events)
    queries = len(hung.started)
    assert result(directory.is_exempt("alice")) is True  # from the cache the probe filled
    assert len(hung.started) == queries
    assert result(directory.is_exempt("dave")) is True  # an ordinary query again
    assert len(hung.started) == queries + 1
    clock.advance(1000)
    assert len(hung.started) == queries + 1  # no probe after the outage


def test_a_late_answer_from_before_the_outage_ends_it_too() -> None:
    clock, ldap, pending = Clock(), MockLdap(), []

    def held(f, *args):
        d: Deferred = Deferred()
        pending.append((d, f, args))
        return d

    directory = ldap_directory(ldap, clock, run_blocking=held)
    directory.facts("alice")
    clock.advance(CONFIG.timeout)  # the outage starts; alice's query is still out
    d, f, args = pending[0]
    d.callback(f(*args))
    directory.is_exempt("bob")
    assert len(pending) == 2  # bob is asked for: no outage any more



def test_slow_ldap_answers_the_fallback_after_timeout() -> None:
    clock, pending = Clock(), []

    def never(f, *args):
        d: Deferred = Deferred()
        pending.append((d, f, args))
        return d

    directory = ldap_directory(MockLdap(), clock, run_blocking=never)
    answer = directory.facts("alice")
    assert not answer.called
    clock.advance(CONFIG.timeout - 0.01)
    assert not answer.called
    with capturedLogs() as events:
        clock.advance(0.01)
    assert result(answer) == FALLBACK
    assert any("no answer within 3 s" in formatEvent(e) for e in events)
    # the late answer still lands in the cache and serves the next look-up
    d, f, args = pending[0]
    d.callback(f(*args))
    assert result(directory.is_exempt("alice")) is True


def test_concurrent_lookups_of_one_user_share_one_query() -> None:
    clock, pending = Clock(), []

    def held(f, *args):
        d: Deferred = Deferred()
        pending.append((d, f, args))
        return d

    directory = ldap_directory(MockLdap(), clock, run_blocking=held)
    answers = [directory.is_exempt("alice") for _ in range(3)] + [directory.is_exempt("bob")]
    assert len(pending) == 2
    for d, f, args in pending:
        d.callback(f(*args))
    assert [result(a) for a in answers] == [True, True, True, False]


def test_unexpected_error_is_logged_and_is_not_a_grant() -> None:
    def broken(f, *args):
        return maybeDeferred(lambda: 1 / 0)

    directory = ldap_directory(MockLdap(), Clock(), run_blocking=broken)
    with capturedLogs() as events:
        assert result(directory.is_exempt("alice")) is False
    assert any(e.get("log_failure") is not None for e in events)


def test_bind_password_never_reaches_the_log() -> None:
    ldap = MockLdap()

    def refusing():
        from ldap3.core.exceptions import LDAPBindError
        raise LDAPBindError(f"bind with password {BIND_PASSWORD} refused")

    directory = LdapDirectory(CONFIG, ConnectionPool(refusing, 2), direct_call, Clock())
    with capturedLogs() as events:
        assert result(directory.facts("alice")) == FALLBACK
    assert events
    assert not any(BIND_PASSWORD in formatEvent(e) for e in events)
    assert BIND_PASSWORD not in repr(CONFIG)
    assert ldap.connections == 0


def test_no_exempt_filter_means_nobody_is_exempt() -> None:
    directory = ldap_directory(MockLdap(), Clock(), exempt_filter="")
    assert result(directory.is_exempt("alice")) is False


def test_sender_addresses_come_through_the_cache() -> None:
    clock, ldap = Clock(), MockLdap()
    ldap.add("erin", {"mail": "erin@example.org"})
    directory = LdapDirectory(CONFIG, ConnectionPool(ldap.connect, 2), direct_call, clock, address_attributes=("mail",))
    assert result(directory.facts("erin")).addresses == {"erin@example.org"}
    ldap.down = True
    assert result(directory.facts("erin")).addresses == {"erin@example.org"}
    with capturedLogs():
        assert result(directory.facts("mallory")) == FALLBACK and not FALLBACK.answered
