"""LoginTable's storage: what it keeps must not add to the garbage collector's work."""

import gc

from popbridge.ledger import new_session
from popbridge.ledger.table import LoginTable


def test_stored_logins_are_not_tracked_by_the_garbage_collector():
    table = LoginTable(ttl=1800)
    table.record("192.0.2.7", "alice", "pop3", 100.0, new_session(), tls=False)
    table.record("192.0.2.7", "bob", "imap4", 101.0, None, tls=True)
    for _ in range(3):  # the collector untracks a tuple once its elements are: a pass per level of nesting
        gc.collect()
    assert not any(gc.is_tracked(row) for row in table._rows["192.0.2.7"])
    assert not gc.is_tracked(table._rows["192.0.2.7"])


def test_what_is_read_back_is_a_login_with_every_field():
    table = LoginTable(ttl=1800)
    table.record("192.0.2.7", "alice", "pop3", 100.0, new_session(), tls=True)
    [login] = table.lookup("192.0.2.7", 5000.0)
    assert (login.client, login.user, login.protocol, login.when, login.open_sessions, login.tls) == (
        "192.0.2.7", "alice", "pop3", 100.0, 1, True,
    )
