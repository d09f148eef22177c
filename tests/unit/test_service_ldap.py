"""The service builds the LDAP directory only when ``[ldap]`` is configured, and owns its threads."""

from twisted.application.service import IServiceCollection
from twisted.internet.testing import MemoryReactorClock

from popbridge.config import parse_config
from popbridge.daemon.service import build_service
from popbridge.directory import ThreadPoolService

DOCUMENT = {
    "lookup": [{
        "protocol": "policy",
        "listen": "unix:address=/tmp/pb-policy:mode=666",
        "exempt_action": "FILTER smtp:[127.0.0.1]:10025",
    }],
    "ldap": {
        "url": ["ldap://127.0.0.1:1", "ldap://127.0.0.1:2"],
        "base": "dc=example,dc=org",
        "exempt_filter": "(memberOf=cn=exempt,ou=groups,dc=example,dc=org)",
    },
}


def thread_services(service: IServiceCollection) -> list[ThreadPoolService]:
    return [child for child in service if isinstance(child, ThreadPoolService)]


def test_ldap_table_adds_a_thread_pool_that_starts_and_stops_with_the_daemon() -> None:
    service = build_service(parse_config(DOCUMENT, "t.toml"), MemoryReactorClock())
    [threads] = thread_services(service)
    service.privilegedStartService()
    service.startService()
    assert threads.running
    service.stopService()
    assert not threads.running


def test_without_an_ldap_table_there_are_no_ldap_threads() -> None:
    document = {"lookup": [{"protocol": "policy", "listen": "unix:address=/tmp/pb-policy:mode=666"}]}
    assert thread_services(build_service(parse_config(document, "t.toml"), MemoryReactorClock())) == []
