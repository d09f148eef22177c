"""The `[ledger] store` string: ``memory``, ``sqlite:PATH`` or ``redis://HOST:PORT/DB`` (``rediss://``).

Parsed here, without I/O, so `check-config` and `migrate-store` judge a store string exactly as
the daemon does.
"""

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

DEFAULT_SQLITE_PATH = "/var/lib/popbridge/ledger.sqlite3"
DEFAULT_STORE = f"sqlite:{DEFAULT_SQLITE_PATH}"


@dataclass(frozen=True)
class StoreSpec:
    kind: str  # "memory", "sqlite" or "redis"
    path: Path | None = None  # sqlite
    url: str = ""  # redis, as written (it may carry a password: never log it)

    def describe(self) -> str:
        """For logs: the URL without any password."""
        if self.kind == "sqlite":
            return f"sqlite:{self.path}"
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
    raise ValueError(
        f'unsupported store {text!r}: use "sqlite:PATH", "memory", "redis://HOST:PORT/DB" or "rediss://..."'
    )
