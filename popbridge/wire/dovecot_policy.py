"""Dovecot's auth-policy requests, decoded without I/O.

Dovecot (2.2.25+) POSTs a JSON object to ``auth_policy_server_url?command=allow`` or
``?command=report`` (src/auth/auth-policy.c, ``auth_policy_create_json`` at 2.3.19.1). The
object holds the attributes of ``auth_policy_request_attributes`` as JSON strings (a key with
``/`` in it becomes a nested object), then, for ``report`` only, ``"success"`` and
``"policy_reject"``, then ``"tls"`` (2.3.2+). popbridge needs ``login``, ``remote`` and
``protocol``, which Dovecot's default attributes carry; anything else (``pwhash``,
``device_id``, nested objects) is accepted and dropped here, so no digest travels further.
"""

import json
from dataclasses import dataclass
from typing import Any

from popbridge.addresses import client_key

COMMANDS = ("allow", "report")
MAX_BODY = 65_536  # bytes; Dovecot's requests are a few hundred
MAX_LOGIN = 255  # characters, as the proxy keeps them (wire.sasl.clean_name)

# Dovecot reads "status" and "msg"; 0 is "continue" to both its before- and after-auth checks,
# and a report's answer is not read at all.
ALLOW_ANSWER = b'{"status":0,"msg":""}'


class PolicyRequestError(ValueError):
    """The request is not one Dovecot sends; `reason` is its metrics label and log key."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


@dataclass(frozen=True)
class PolicyRequest:
    """One decoded request. `success` and `policy_reject` are False for ``allow``."""

    command: str
    login: str
    remote: str  # as Dovecot sent it (%{rip}); "" when Dovecot had no client address (a local socket)
    protocol: str  # Dovecot's service name: pop3, imap, submission, smtp, sieve ...
    tls: bool
    success: bool = False
    policy_reject: bool = False


def decode_policy_request(command: str | None, body: bytes, max_body: int = MAX_BODY) -> PolicyRequest:
    """The request in `body` for `command` (the URL's ``command=``), or PolicyRequestError."""
    if command not in COMMANDS:
        raise PolicyRequestError("unknown_command", f"command {str(command)[:40]!r} is not allow or report")
    if len(body) > max_body:
        raise PolicyRequestError("too_large", f"body over {max_body} bytes")
    try:
        document = json.loads(body, parse_constant=_no_constant)
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise PolicyRequestError("malformed", f"not JSON: {str(e)[:80]}") from None
    if not isinstance(document, dict):
        raise PolicyRequestError("malformed", "not a JSON object")
    report = command == "report"
    login = _field(document, "login", str)
    remote = _field(document, "remote", str)
    if remote and client_key(remote) is None:
        raise PolicyRequestError("bad_remote", f"remote {remote[:60]!r} is not an IP address")
    if len(login) > MAX_LOGIN or not login.isprintable():
        raise PolicyRequestError("bad_field", "login is not a printable name of at most 255 characters")
    return PolicyRequest(
        command=command,
        login=login,
        remote=remote,
        protocol=_field(document, "protocol", str),
        tls=_field(document, "tls", bool) if "tls" in document else False,  # absent before Dovecot 2.3.2
        success=_field(document, "success", bool) if report else False,
        policy_reject=_field(document, "policy_reject", bool) if report else False,
    )


def _field(document: dict[str, Any], name: str, kind: type) -> Any:
    if name not in document:
        raise PolicyRequestError("missing_field", f"no {name!r}")
    value = document[name]
    if type(value) is not kind:  # exact: a bool is not taken for a string, nor 1 for true
        raise PolicyRequestError("bad_field", f"{name!r} is not a {kind.__name__}")
    return value


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")
