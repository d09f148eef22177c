"""An ldap3 MOCK_SYNC directory for unit tests: the same people the integration slapd has."""

from collections.abc import Callable

from ldap3 import MOCK_SYNC, Connection, Server
from ldap3.core.exceptions import LDAPSocketOpenError, LDAPSocketReceiveError

from popbridge.settings import LdapConfig

BASE = "dc=example,dc=org"
EXEMPT_GROUP = f"cn=exempt,ou=groups,{BASE}"
BIND_DN = f"cn=popbridge,ou=services,{BASE}"
BIND_PASSWORD = "s3cret-bind-pw"

CONFIG = LdapConfig(
    urls=("ldap://127.0.0.1:389",),
    base=BASE,
    bind_dn=BIND_DN,
    bind_password=BIND_PASSWORD,
    exempt_filter=f"(memberOf={EXEMPT_GROUP})",
    backend_attribute="mailHost",
    cache_ttl=300,
    negative_cache_ttl=60,
    stale_ttl=3600,
    timeout=3,
)

PEOPLE = {
    "alice": {"memberOf": EXEMPT_GROUP},  # exempt
    "bob": {},  # ordinary
    "carol": {"mailHost": "mail2.example.org:1110"},  # lives on another mail server
    "dave": {"memberOf": EXEMPT_GROUP, "mailHost": "not a host!"},  # exempt, broken routing value
}


class MockLdap:
    """One fake server; `connect` opens a bound MOCK_SYNC connection to it, or fails while `down`."""

    def __init__(self, people: dict[str, dict[str, str]] = PEOPLE) -> None:
        self.server = Server("mock-ldap")
        self.down = False
        self.connections = 0
        self._admin = Connection(self.server, client_strategy=MOCK_SYNC)
        service = {"objectClass": "person", "cn": "popbridge", "userPassword": BIND_PASSWORD}
        self._admin.strategy.add_entry(BIND_DN, service)
        for uid, extra in people.items():
            self.add(uid, extra)

    def add(self, uid: str, extra: dict[str, str] | None = None) -> None:
        entry = {"objectClass": ["inetOrgPerson", "inetLocalMailRecipient"], "uid": uid, "cn": uid, "sn": uid}
        self._admin.strategy.add_entry(f"uid={uid},ou=people,{BASE}", {**entry, **(extra or {})})

    def remove(self, uid: str) -> None:
        self._admin.strategy.remove_entry(f"uid={uid},ou=people,{BASE}")

    def connect(self, password: str = BIND_PASSWORD) -> Connection:
        if self.down:
            raise LDAPSocketOpenError("socket connection error while opening: [Errno 111] Connection refused")
        self.connections += 1
        connection = Connection(self.server, user=BIND_DN, password=password, client_strategy=MOCK_SYNC)
        if not connection.bind():
            raise LDAPSocketOpenError(f"bind refused: {connection.result['description']}")
        search = connection.search

        def search_unless_down(*args: object, **kwargs: object) -> bool:
            if self.down:  # an outage breaks pooled connections too
                raise LDAPSocketReceiveError("error receiving data: timed out")
            return search(*args, **kwargs)

        connection.search = search_unless_down  # type: ignore[method-assign]
        return connection

    def connector(self) -> Callable[[], Connection]:
        return self.connect
