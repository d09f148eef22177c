"""Outside the Twisted range popbridge.fast is tested against, Twisted's stock parts are used."""

import pytest
from twisted.internet.epollreactor import EPollReactor
from twisted.logger import LogLevel, capturedLogs

import popbridge.fast
from popbridge.fast import reactor as fast_reactor
from popbridge.fast.reactor import PopbridgeReactor
from popbridge.fast.transports import FastSockets, fast_sockets


@pytest.fixture
def untested_twisted(monkeypatch):
    monkeypatch.setattr(popbridge.fast, "TWISTED_RELEASE", (99, 1))
    popbridge.fast.twisted_is_tested.cache_clear()
    yield
    popbridge.fast.twisted_is_tested.cache_clear()


def test_the_installed_twisted_is_in_the_tested_range():
    popbridge.fast.twisted_is_tested.cache_clear()
    assert popbridge.fast.twisted_is_tested()


def test_another_twisted_gets_stock_transports_and_one_warning(untested_twisted):
    reactor = EPollReactor()
    try:
        with capturedLogs() as events:
            assert fast_sockets(reactor) is reactor
            assert fast_sockets(reactor) is reactor
        warnings = [e for e in events if e["log_level"] == LogLevel.warn]
        assert len(warnings) == 1 and "stock reactor and transports" in warnings[0]["log_format"]
    finally:
        reactor._poller.close()


def test_the_tested_twisted_gets_the_fast_transports():
    popbridge.fast.twisted_is_tested.cache_clear()
    reactor = EPollReactor()
    try:
        assert isinstance(fast_sockets(reactor), FastSockets)
    finally:
        reactor._poller.close()


def test_another_twisted_gets_the_stock_epoll_reactor(untested_twisted, monkeypatch):
    installed = []
    monkeypatch.setattr(fast_reactor, "installReactor", installed.append)
    reactor = fast_reactor.install()
    try:
        assert type(reactor) is EPollReactor and not isinstance(reactor, PopbridgeReactor)
        assert installed == [reactor]
    finally:
        reactor._poller.close()
