"""Private real servers for the integration tests and bench/: Dovecot, Postfix, slapd, Redis and
popbridge itself, one module per family, with the process and port helpers they share.

Each class starts its server in a directory of its own, on loopback high ports, and returns only
when the server accepts connections (polled against a deadline, never a fixed sleep). Nothing here
touches the system instances or their configuration. See ../shared/TEST-SERVERS.md for the facts
these configurations rest on.

Tests import the names from here (``from .servers import Dovecot``); bench/ imports each from its
own module (``from tests.integration.servers.dovecot import Dovecot``).
"""

from .clients import (
    BoundPOP3,
    curl_pop3,
    message_of_size,
    netstring,
    policy_action,
    pop3_login,
    pop3_retr_raw,
    socketmap_answer,
    unix_exchange,
)
from .dovecot import MAIL_GID, MAIL_UID, Dovecot
from .popbridge_daemon import FeedPopbridge, Popbridge, StartPopbridge, popbridge_command
from .postfix import Postfix, SinkMessage, SmtpSink
from .processes import (
    ForegroundServer,
    LogFile,
    ServerError,
    binary,
    find_binary,
    free_port,
    log_tail,
    short_directory,
    stop_process,
    tcp_connectable,
    tcp_listening,
    unix_connectable,
    wait_until,
)
from .redis_server import Redis, RedisSentinel
from .slapd import LDAP_BASE, LDAP_BIND_DN, LDAP_BIND_PASSWORD, LDAP_EXEMPT_GROUP, Slapd

__all__ = [
    "LDAP_BASE",
    "LDAP_BIND_DN",
    "LDAP_BIND_PASSWORD",
    "LDAP_EXEMPT_GROUP",
    "MAIL_GID",
    "MAIL_UID",
    "BoundPOP3",
    "Dovecot",
    "FeedPopbridge",
    "ForegroundServer",
    "LogFile",
    "Popbridge",
    "Postfix",
    "Redis",
    "RedisSentinel",
    "ServerError",
    "SinkMessage",
    "Slapd",
    "SmtpSink",
    "StartPopbridge",
    "binary",
    "curl_pop3",
    "find_binary",
    "free_port",
    "log_tail",
    "message_of_size",
    "netstring",
    "policy_action",
    "pop3_login",
    "pop3_retr_raw",
    "popbridge_command",
    "short_directory",
    "socketmap_answer",
    "stop_process",
    "tcp_connectable",
    "tcp_listening",
    "unix_connectable",
    "wait_until",
]
