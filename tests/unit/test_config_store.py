"""`[ledger] store` and the Redis keys: what the config accepts and how it complains."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from popbridge.config import ConfigError, parse_config
from popbridge.ledger.spec import SENTINEL_SCHEME, SentinelAddress, parse_sentinel, parse_store
from popbridge.settings import DEFAULT_STORE

LOOKUP = {"lookup": [{"protocol": "policy", "listen": "unix:address=/tmp/pb-policy:mode=666"}]}


def ledger(**table):
    return parse_config({"ledger": table, **LOOKUP}, "t.toml").ledger


def complaint(**table) -> str:
    with pytest.raises(ConfigError) as e:
        ledger(**table)
    return str(e.value)


def test_sqlite_under_var_lib_is_the_default_store():
    assert ledger().store == DEFAULT_STORE == "sqlite:/var/lib/popbridge/ledger.sqlite3"


@pytest.mark.parametrize("store", [
    "memory", "sqlite:/srv/ledger.db", "redis://10.0.0.5:6379/2", "rediss://:pw@r.example:6380/0",
    "redis+sentinel://10.0.0.5:26379,10.0.0.6:26379,[2001:db8::7]:26379/popbridge/2",
])
def test_every_documented_store_is_accepted(store):
    assert ledger(store=store).store == store


@pytest.mark.parametrize(
    "store, problem",
    [
        ("sqlite:", "needs a file path"),
        ("redis://", "needs a host"),
        ("redis://host:port/0", "no usable port"),
        ("redis://host:6379/zero", "database in a Redis URL is a number"),
        ("postgres://x", "unsupported store"),
        ("redis+sentinel://10.0.0.5:26379/", "names the master's service"),
        ("redis+sentinel://10.0.0.5:26379,/popbridge/0", "is not a sentinel HOST:PORT"),
        ("redis+sentinel://10.0.0.5:263790/popbridge/0", "is not a sentinel HOST:PORT"),
        ("redis+sentinel://:pw@10.0.0.5:26379/popbridge/0", "no credentials"),
        ("redis+sentinel://10.0.0.5:26379/popbridge/zero", "database in a Redis URL is a number"),
        ("redis+sentinel://10.0.0.5:26379/popbridge?password=s3cret", "a Sentinel service name has only"),
        ("redis+sentinel://10.0.0.5?password=s3cret/popbridge/0", "is not a sentinel HOST:PORT"),
    ],
)
def test_an_unusable_store_names_the_key(store, problem):
    text = complaint(store=store)
    assert text.startswith("t.toml: [ledger] store: ") and problem in text


def test_redis_keys_need_a_redis_store():
    assert "[ledger] redis_timeout: only for a" in complaint(store="memory", redis_timeout=1)


def test_the_redis_password_comes_from_its_file_and_is_never_shown(tmp_path):
    secret = tmp_path / "redis.secret"
    secret.write_text("s3cret\n")
    config = ledger(store="redis://127.0.0.1:6379/0", redis_password_file=str(secret), redis_timeout=0.25)
    assert (config.redis_password, config.redis_timeout) == ("s3cret", 0.25)
    assert "s3cret" not in repr(config)


def test_an_unreadable_password_file_names_the_key(tmp_path):
    text = complaint(store="redis://127.0.0.1:6379/0", redis_password_file=str(tmp_path / "missing"))
    assert "[ledger] redis_password_file: cannot read" in text


def test_a_redis_store_is_described_without_its_password():
    assert parse_store("rediss://:s3cret@r.example:6380/1").describe() == "rediss://r.example:6380/1"


def test_a_password_tacked_onto_a_sentinel_service_is_refused_without_being_shown():
    assert "s3cret" not in complaint(store="redis+sentinel://10.0.0.5:26379/popbridge?password=s3cret")


def test_a_sentinel_url_names_its_sentinels_service_and_database():
    assert parse_sentinel("redis+sentinel://s1,[2001:db8::7]:26380/popbridge/3") == SentinelAddress(
        (("s1", 26379), ("2001:db8::7", 26380)), "popbridge", 3
    )


def test_the_redis_keys_apply_to_a_sentinel_store():
    config = ledger(store="redis+sentinel://127.0.0.1:26379/popbridge/0", redis_timeout=0.25)
    assert config.redis_timeout == 0.25


@given(st.text(max_size=60))
def test_any_sentinel_url_parses_or_says_what_is_wrong(tail):
    try:
        parse_store(SENTINEL_SCHEME + tail)
    except ValueError as e:
        assert str(e)


@given(
    st.lists(st.tuples(st.from_regex(r"[a-z0-9][a-z0-9.-]{0,20}", fullmatch=True), st.integers(1, 65535)), min_size=1, max_size=4),
    st.from_regex(r"[A-Za-z0-9_-]{1,20}", fullmatch=True),
    st.integers(0, 15),
)
def test_a_written_sentinel_url_reads_back_the_same(sentinels, service, database):
    url = f"{SENTINEL_SCHEME}{','.join(f'{host}:{port}' for host, port in sentinels)}/{service}/{database}"
    assert parse_sentinel(url) == SentinelAddress(tuple(sentinels), service, database)
    assert parse_store(url).describe() == url
