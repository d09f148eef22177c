"""Who owns which sender address, as the ``[senders]`` map file and ``domains`` say (sans-IO).

Address rules, the same for the policy request's ``sender``, map keys and directory values:

- One pair of angle brackets is stripped; what is left empty is the null sender (bounces).
- The domain compares case-insensitively (it is lowercased); the local part compares as
  written, because only the receiving host may fold it (RFC 5321 2.4): ``Alice@Example.ORG``
  is ``Alice@example.org``, not ``alice@example.org``.
- Sub-addressing: whoever owns ``alice@example.org`` owns ``alice+anything@example.org`` too,
  unless the map lists ``alice+anything@example.org`` itself. The delimiter is ``+`` only, and
  a local part that starts with ``+`` is not split.

The map file is Postfix's ``smtpd_sender_login_maps`` source format: ``address  user1, user2``
and ``@domain  user``; owners are separated by commas and/or whitespace; ``#`` starts a comment
line; a line that starts with whitespace continues the previous one. Lookups follow Postfix:
the address, then the address without its extension, then ``@domain``; the first key found
decides for the map. Unlike Postfix, a key without a domain (``alice``) is an error rather
than a lookup that depends on ``$myorigin``, and so is a repeated key: popbridge does not know
your local domains, and a silently ignored duplicate would leave an owner out.
"""

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

MAX_MAP_BYTES = 64 * 1024 * 1024  # a larger map is a mistake (a wrong path, a binary file)
_OWNERS = re.compile(r"[,\s]+")


class SenderMapError(ValueError):
    """The map file is unusable; the message names the line."""


def sender_key(text: str) -> str:
    """`text` as an address to compare: brackets stripped, domain lowercased; "" for <>."""
    if text.startswith("<") and text.endswith(">"):
        text = text[1:-1]
    local, at, domain = text.rpartition("@")
    return f"{local}@{domain.lower()}" if at else text


def is_address(key: str) -> bool:
    """`key` (from `sender_key`) has a local part and a domain."""
    local, at, domain = key.rpartition("@")
    return bool(at and local and domain)


def unextended(address: str) -> str | None:
    """``alice@example.org`` for ``alice+lists@example.org``; None without an extension."""
    local, at, domain = address.rpartition("@")
    base, plus, _ = local.partition("+")
    return f"{base}@{domain}" if at and plus and base else None


def address_forms(address: str) -> tuple[str, ...]:
    """The address, then (with sub-addressing) the address without its extension."""
    base = unextended(address)
    return (address,) if base is None else (address, base)


@dataclass(frozen=True)
class SenderMap:
    """Owners by key: a normalised address, or ``@domain``."""

    owners: Mapping[str, frozenset[str]] = field(default_factory=dict)

    def find(self, address: str) -> frozenset[str] | None:
        """The owners the first matching key gives (address, unextended, @domain), or None."""
        _, _, domain = address.rpartition("@")
        for key in (*address_forms(address), f"@{domain}"):
            found = self.owners.get(key)
            if found is not None:
                return found
        return None

    def lists(self, address: str) -> bool:
        """Whether the map names owners for this very address (not only for its domain)."""
        return any(form in self.owners for form in address_forms(address))


def parse_sender_map(text: str) -> SenderMap:
    """The entries of a map file's `text`; SenderMapError names the line that is wrong."""
    owners: dict[str, frozenset[str]] = {}
    first_line: dict[str, int] = {}
    for number, line in _logical_lines(text):
        key_text, *rest = line.split(None, 1)
        key = sender_key(key_text)
        if not key.startswith("@") and not is_address(key):
            raise SenderMapError(f"line {number}: {key_text!r} is not address@domain or @domain")
        if key.startswith("@") and len(key) == 1:
            raise SenderMapError(f"line {number}: '@' needs a domain")
        names = frozenset(name for name in _OWNERS.split(rest[0] if rest else "") if name)
        if not names:
            raise SenderMapError(f"line {number}: {key_text!r} has no owners")
        if key in owners:
            raise SenderMapError(f"line {number}: {key_text!r} repeats the key of line {first_line[key]}")
        owners[key], first_line[key] = names, number
    return SenderMap(owners)


def _logical_lines(text: str) -> Iterable[tuple[int, str]]:
    """(number of its first line, text) for each logical line, comments and blanks dropped."""
    start, parts = 0, list[str]()  # the logical line being gathered
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if line[0].isspace():
            if not parts:
                raise SenderMapError(f"line {number}: starts with whitespace but continues nothing")
            parts.append(stripped)
            continue
        if parts:
            yield start, " ".join(parts)
        start, parts = number, [stripped]
    if parts:
        yield start, " ".join(parts)


@dataclass(frozen=True)
class SenderRules:
    """What the map file and ``domains`` say about sender addresses (LDAP comes on top).

    ``domains``: a login name ``alice`` owns ``alice@D`` for every listed domain D; a login name
    that is an address owns itself when its domain is listed (so a backend that accepts
    address-shaped names for other providers cannot vouch for domains you did not list).
    """

    map: SenderMap = SenderMap()
    domains: frozenset[str] = frozenset()

    def owned(self, address: str, users: Iterable[str]) -> bool:
        """Whether the map or `domains` gives `address` (from `sender_key`) to one of `users`."""
        named = {user for user in users if user}
        owners = self.map.find(address)
        if owners is not None and not owners.isdisjoint(named):
            return True
        if not self.domains:
            return False
        names = {user for user in named if "@" not in user}  # "alice" owns alice@D
        addresses = {sender_key(user) for user in named if "@" in user}  # "alice@example.org" owns itself
        for form in address_forms(address):
            local, _, domain = form.rpartition("@")
            if domain in self.domains and local and (local in names or form in addresses):
                return True
        return False

    def lists(self, address: str) -> bool:
        """Whether the map names this very address's owners: during an LDAP outage such an
        address is judged by the map and `domains` alone."""
        return self.map.lists(address)

