"""The ``[senders]`` table: who owns which envelope sender address (for ``sender_binding``).

The map file is read here, with the rest of the configuration: `popbridge check-config` reports
a broken map (naming the file and the line), and a SIGHUP that finds one changes nothing.
"""

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from popbridge.config.reader import Reader
from popbridge.senders.map import MAX_MAP_BYTES, SenderMap, SenderMapError, SenderRules, parse_sender_map
from popbridge.settings import SendersConfig

SENDERS_KEYS = ("map", "ldap_attributes", "domains")
_ATTRIBUTE = re.compile(r"[A-Za-z][A-Za-z0-9-]*")  # an LDAP attribute name (RFC 4512 descr)
_DOMAIN = re.compile(r"[^\s@.]+(?:\.[^\s@.]+)*")


def parse_senders(reader: Reader, value: Any) -> SendersConfig:
    where = "[senders]"
    table = reader.table(where, value)
    reader.only_keys(where, table, SENDERS_KEYS)
    if not table:
        reader.fail(where, "map", "give at least one of map, ldap_attributes, domains")
    path = reader.string(where, table, "map") if "map" in table else ""
    attributes = _names(reader, where, table, "ldap_attributes", _ATTRIBUTE, "an LDAP attribute name")
    domains = _names(reader, where, table, "domains", _DOMAIN, "a domain name")
    return SendersConfig(
        map=path,
        ldap_attributes=attributes,
        rules=SenderRules(_load_map(reader, where, path) if path else SenderMap(), frozenset(d.lower() for d in domains)),
    )


def _names(reader: Reader, where: str, table: Mapping[str, Any], key: str, form: re.Pattern[str], what: str) -> tuple[str, ...]:
    value = table.get(key, [])
    if not isinstance(value, list) or (not value and key in table) or not all(isinstance(item, str) for item in value):
        example = '["mail"]' if key == "ldap_attributes" else '["example.org"]'
        reader.fail(where, key, f"must be a non-empty list of strings, like {example}")
    for item in value:
        if not form.fullmatch(item):
            reader.fail(where, key, f"{item!r} is not {what}")
    return tuple(value)


def _load_map(reader: Reader, where: str, path: str) -> SenderMap:
    try:
        size = Path(path).stat().st_size
        if size > MAX_MAP_BYTES:
            reader.fail(where, "map", f"{path} is {size} bytes; the limit is {MAX_MAP_BYTES}")
        return parse_sender_map(Path(path).read_bytes().decode("utf-8"))
    except OSError as e:
        reader.fail(where, "map", f"cannot read {path}: {e.strerror}")
    except UnicodeDecodeError:
        reader.fail(where, "map", f"{path} is not UTF-8 text")
    except SenderMapError as e:
        reader.fail(where, "map", f"{path} {e}")
