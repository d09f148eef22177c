"""Typed access to the TOML document: every complaint names the file, the table and the key."""

import grp
import ipaddress
import pwd
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from ldap3.core.exceptions import LDAPException
from ldap3.operation.search import parse_filter
from twisted.internet.endpoints import _parse  # Twisted's endpoint tokenizer


class ConfigError(ValueError):
    """The configuration file is unusable; the message names the file and the key."""


@dataclass(frozen=True)
class Reader:
    """Typed access to TOML values; every complaint names the file, the table and the key."""

    source: str

    def fail(self, where: str, key: str, problem: str) -> NoReturn:
        prefix = f"{where} {key}" if where else key
        raise ConfigError(f"{self.source}: {prefix}: {problem}")

    def only_keys(self, where: str, table: Mapping[str, Any], allowed: tuple[str, ...] | list[str], note: str = "") -> None:
        for key in table:
            if key not in allowed:
                self.fail(where, key, f"unknown key{' ' + note if note else ''} (known: {', '.join(allowed)})")

    def table(self, where: str, value: Any) -> Mapping[str, Any]:
        if not isinstance(value, dict):
            raise ConfigError(f"{self.source}: {where}: must be a table")
        return value

    def array(self, where: str, value: Any) -> list[Mapping[str, Any]]:
        if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
            raise ConfigError(f"{self.source}: {where}: must be an array of tables")
        return value

    def required(self, where: str, table: Mapping[str, Any], key: str) -> Any:
        if key not in table:
            self.fail(where, key, "missing")
        return table[key]

    def string(self, where: str, table: Mapping[str, Any], key: str, default: str | None = None) -> str:
        value = table.get(key, default) if default is not None else self.required(where, table, key)
        if not isinstance(value, str) or not value:
            self.fail(where, key, "must be a non-empty string")
        return value

    def secret_file(self, where: str, table: Mapping[str, Any], key: str) -> str:
        """The secret in the file `key` names, without the final newline editors add; a complaint
        names the key and the path, never the content."""
        path = self.string(where, table, key)
        try:
            return Path(path).read_text().rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as e:
            self.fail(where, key, f"cannot read {path}: {getattr(e, 'strerror', None) or e}")

    def choice(self, where: str, table: Mapping[str, Any], key: str, choices: tuple[str, ...]) -> str:
        value = self.string(where, table, key)
        if value not in choices:
            self.fail(where, key, f"{value!r} is not one of {', '.join(map(repr, choices))}")
        return value

    def action(self, where: str, table: Mapping[str, Any], key: str, default: str) -> str:
        value = self.string(where, table, key, default)
        if any(c in value for c in "\r\n\0"):
            self.fail(where, key, "must be one line")
        if value.isdigit():
            self.fail(where, key, f"{value!r}: Postfix reads an all-digit action as OK; give a word such as DUNNO, OK or REJECT")
        return value

    def ldap_filter(self, where: str, table: Mapping[str, Any], key: str, default: str) -> str:
        value = self.string(where, table, key, default or None)
        try:  # checked with {user} filled in, as it will be used
            parse_filter(value.replace("{user}", "x"), None, False, False, None, False)
        except LDAPException as e:
            self.fail(where, key, f"not an LDAP filter {value!r}: {e}")
        return value

    def boolean(self, where: str, table: Mapping[str, Any], key: str, default: bool) -> bool:
        value = table.get(key, default)
        if not isinstance(value, bool):
            self.fail(where, key, "must be true or false")
        return value

    def number(
        self, where: str, table: Mapping[str, Any], key: str, default: float, minimum: float, integer: bool = False
    ) -> float:
        value = table.get(key, default)
        kinds = (int,) if integer else (int, float)
        if isinstance(value, bool) or not isinstance(value, kinds) or value < minimum:
            self.fail(where, key, f"must be {'an integer' if integer else 'a number'} >= {minimum}")
        return value

    def account(self, where: str, table: Mapping[str, Any], key: str) -> str | None:
        """A user ("owner") or group ("group") name that exists on this machine, or None."""
        if key not in table:
            return None
        name = self.string(where, table, key)
        try:
            (pwd.getpwnam if key == "owner" else grp.getgrnam)(name)
        except KeyError:
            self.fail(where, key, f"no such {'user' if key == 'owner' else 'group'} {name!r}")
        if not table.get("listen", "").startswith("unix:"):
            self.fail(where, key, "only unix: sockets have an owner and a group")
        return name

    def networks(self, where: str, table: Mapping[str, Any], key: str) -> tuple[str, ...]:
        value = table.get(key, [])
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            self.fail(where, key, 'must be a list of networks like ["127.0.0.1/32"]')
        try:
            return tuple(str(ipaddress.ip_network(item, strict=False)) for item in value)
        except ValueError as e:
            self.fail(where, key, str(e))

    def endpoint(self, where: str, table: Mapping[str, Any], key: str, parse: Callable[[Any, str], object]) -> str:
        description = self.string(where, table, key)
        if description.startswith("systemd:"):
            return self.systemd_endpoint(where, key, description)
        try:
            parse(_UNUSED_REACTOR, description)
        except Exception as e:  # Twisted's parsers raise ValueError, TypeError, KeyError...
            self.fail(where, key, f"not a usable endpoint {description!r}: {e}")
        return description


    def systemd_endpoint(self, where: str, key: str, description: str) -> str:
        """A socket passed by systemd, checked for form only.

        Twisted's parser looks the descriptor up at once, and only a process that systemd
        started has it; `popbridge check-config` (or ExecStartPre) must still pass.
        """
        args, kwargs = _parse(description)
        problem = ""
        if args != ["systemd"] or not set(kwargs) <= {"domain", "index", "name"}:
            problem = "takes domain= and one of index= or name= only"
        elif kwargs.get("domain") not in ("INET", "INET6", "UNIX"):
            problem = "domain= must be INET, INET6 or UNIX"
        elif ("index" in kwargs) == ("name" in kwargs):
            problem = "give exactly one of index= (a number) or name= (the unit's FileDescriptorName=)"
        elif "index" in kwargs and not kwargs["index"].isdigit():
            problem = "index= must be a number"
        if problem:
            self.fail(where, key, f"not a usable endpoint {description!r}: {problem}")
        return description


_UNUSED_REACTOR = object()  # endpoint parsers only store the reactor; nothing is bound or connected
