"""The `[ledger] store` string: ``memory``, ``sqlite:PATH``, ``redis://HOST:PORT/DB`` (``rediss://``)
or ``redis+sentinel://HOST:PORT,HOST:PORT/SERVICE/DB``.

Parsed here, without I/O, so `check-config` and `migrate-store` judge a store string exactly as
the daemon does.
"""

import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

SENTINEL_SCHEME = "redis+sentinel://"
SENTINEL_PORT = 26379
_SENTINEL = re.compile(r"(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+)(?::(?P<port>\d{1,5}))?")  # a name or an address
_SERVICE = re.compile(r"[A-Za-z0-9._-]+")  # what Redis allows in a `sentinel monitor` name


@dataclass(frozen=True)
class SentinelAddress:
    """Where a ``redis+sentinel://`` store is: the sentinels to ask, the master's service name
    (Sentinel's ``sentinel monitor`` name) and the database number."""

    sentinels: tuple[tuple[str, int], ...]
    service: str
    database: int


def parse_sentinel(url: str) -> SentinelAddress:
    """``redis+sentinel://HOST[:PORT],HOST[:PORT]/SERVICE[/DB]``; ValueError says what is wrong.

    No password in the URL: it would be shown wherever the store string is; the master's
    password comes from ``redis_password_file``.
    """
    netloc, _, path = url.removeprefix(SENTINEL_SCHEME).partition("/")
    if "@" in netloc:
        raise ValueError("no credentials in a redis+sentinel URL: use redis_password_file")
    sentinels = []
    for item in netloc.split(","):
        match = _SENTINEL.fullmatch(item)
        if match is None or not 0 < int(match["port"] or SENTINEL_PORT) < 65536:
            raise ValueError(f"{item!r} is not a sentinel HOST:PORT (redis+sentinel://HOST:PORT,HOST:PORT/SERVICE/DB)")
        sentinels.append((match["host"].strip("[]"), int(match["port"] or SENTINEL_PORT)))
    service, _, database = path.partition("/")
    if not service:
        raise ValueError("a redis+sentinel URL names the master's service: redis+sentinel://HOST:PORT,HOST:PORT/SERVICE/DB")
    if not _SERVICE.fullmatch(service):  # so a "?password=..." tail never reaches describe() and the logs
        raise ValueError("a Sentinel service name has only letters, digits, '.', '_' and '-'")  # not echoed: it may hold one
    if database and not database.isdigit():
        raise ValueError(f"the database in a Redis URL is a number (.../SERVICE/0), not {database!r}")
    return SentinelAddress(tuple(sentinels), service, int(database or 0))


@dataclass(frozen=True)
class StoreSpec:
    kind: str  # "memory", "sqlite" or "redis" (redis://, rediss:// and redis+sentinel://)
    path: Path | None = None  # sqlite
    url: str = ""  # redis, as written (it may carry a password: never log it)

    def describe(self) -> str:
        """For logs: the URL without any password."""
        if self.kind == "sqlite":
            return f"sqlite:{self.path}"
        if self.url.startswith(SENTINEL_SCHEME):
            return self.url  # parse_sentinel refuses credentials in it
        if self.kind == "redis":
            parts = urlsplit(self.url)
            return f"{parts.scheme}://{parts.hostname}:{parts.port or 6379}{parts.path or '/0'}"
        return self.kind


def parse_store(text: str) -> StoreSpec:
    """The store `text` names; ValueError says what is wrong with it."""
    if text == "memory":
        return StoreSpec("memory")
    if text.startswith("sqlite:"):
        path = text.removeprefix("sqlite:")
        if not path:
            raise ValueError('"sqlite:" needs a file path, e.g. "sqlite:/var/lib/popbridge/ledger.sqlite3"')
        return StoreSpec("sqlite", path=Path(path))
    if text.startswith(("redis://", "rediss://")):
        parts = urlsplit(text)
        try:
            parts.port  # noqa: B018  urlsplit checks the port only when asked for it
        except ValueError:
            raise ValueError(f"{parts.netloc!r} has no usable port") from None
        if not parts.hostname:
            raise ValueError("a Redis URL needs a host: redis://HOST:PORT/DB")
        database = parts.path.lstrip("/")
        if database and not database.isdigit():
            raise ValueError(f"the database in a Redis URL is a number (redis://HOST:PORT/0), not {database!r}")
        return StoreSpec("redis", url=text)
    if text.startswith(SENTINEL_SCHEME):
        parse_sentinel(text)
        return StoreSpec("redis", url=text)
    raise ValueError(
        f'unsupported store {text!r}: use "sqlite:PATH", "memory", "redis://HOST:PORT/DB", "rediss://..." '
        'or "redis+sentinel://HOST:PORT,HOST:PORT/SERVICE/DB"'
    )
