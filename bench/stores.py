"""Ledger stores compared: logins recorded per second, and policy lookup latency under load.

Not a test: it prints a table. Run from the repository root::

    .venv/bin/python bench/stores.py [--logins 3000] [--seconds 5] [--clients 10]

1. Lookups: for each store a real daemon (``popbridge run``) with a policy socket and a WHOSON
   socket that accepts LOGIN, seeded with logins; then `--clients` persistent policy clients
   (asyncio, one connection each, one request in flight each) ask for `--seconds`, half of
   the time about an authorised address and half about an unknown one. Reported: lookups per
   second in total and the p50/p99 round trip.
2. Recording: in this process, the store built exactly as the daemon builds it (thread pools
   and all), `--clients` concurrent callers each awaiting `record` before the next, as
   concurrent proxy sessions do. Reported: logins per second. For SQLite every one is committed
   (fsynced) before `record` fires; Redis acknowledged it (with this benchmark's redis-server:
   no persistence).

Redis is a private redis-server on a free loopback port (`tests/integration/servers/redis_server.py`);
without redis-server its rows are left out.
"""

import argparse
import asyncio
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.integration.servers.popbridge_daemon import popbridge_command  # noqa: E402
from tests.integration.servers.processes import find_binary, unix_connectable, wait_until  # noqa: E402
from tests.integration.servers.redis_server import Redis  # noqa: E402

SEEDED = 200  # authorised addresses in each daemon


def stores(directory: Path, redis: Redis | None) -> dict[str, str]:
    chosen = {"memory": "memory", "sqlite": f"sqlite:{directory / 'ledger.sqlite3'}"}
    if redis is not None:
        chosen["redis"] = redis.url
    return chosen


# ---------------------------------------------------------------- lookups through a daemon


def start_daemon(directory: Path, store: str) -> subprocess.Popen[bytes]:
    directory.mkdir(parents=True, exist_ok=True)
    config = directory / "popbridge.toml"
    config.write_text(
        f"""[ledger]
store = "{store}"
[[lookup]]
protocol = "policy"
listen = "unix:address={directory / 'policy.sock'}:mode=600"
[[lookup]]
protocol = "whoson"
listen = "unix:address={directory / 'whoson.sock'}:mode=600"
allow_updates = true
"""
    )
    log = open(directory / "popbridge.log", "ab")
    process = subprocess.Popen([*popbridge_command(), "run", "--config", str(config)], stdout=log, stderr=log, stdin=subprocess.DEVNULL)
    wait_until(lambda: all(unix_connectable(directory / name) for name in ("policy.sock", "whoson.sock")), "daemon")
    return process


async def seed(directory: Path) -> None:
    reader, writer = await asyncio.open_unix_connection(str(directory / "whoson.sock"))
    for n in range(SEEDED):
        writer.write(f"LOGIN 10.1.{n // 250}.{n % 250 + 1} user{n}\r\n\r\n".encode())
        await writer.drain()
        answer = await reader.readuntil(b"\r\n\r\n")
        assert answer.startswith(b"+"), answer
    writer.close()


async def policy_client(directory: Path, until: float, latencies: list[float]) -> None:
    reader, writer = await asyncio.open_unix_connection(str(directory / "policy.sock"))
    while time.monotonic() < until:
        n = random.randrange(SEEDED)
        address = f"10.1.{n // 250}.{n % 250 + 1}" if random.random() < 0.5 else f"10.2.0.{n % 250 + 1}"
        began = time.perf_counter()
        writer.write(f"request=smtpd_access_policy\nprotocol_state=RCPT\nclient_address={address}\n\n".encode())
        answer = await reader.readuntil(b"\n\n")
        latencies.append(time.perf_counter() - began)
        assert answer.startswith(b"action=OK") or answer.startswith(b"action=DUNNO"), answer
    writer.close()


async def lookups(directory: Path, clients: int, seconds: float) -> list[float]:
    await seed(directory)
    latencies: list[float] = []
    await asyncio.gather(*(policy_client(directory, time.monotonic() + 0.5, []) for _ in range(clients)))  # warm up
    until = time.monotonic() + seconds
    await asyncio.gather(*(policy_client(directory, until, latencies) for _ in range(clients)))
    return latencies


# ---------------------------------------------------------------- recording in process


async def record_rate(reactor: Any, store_text: str, logins: int, clients: int) -> float:
    from popbridge.settings import LedgerConfig
    from popbridge.daemon.stores import open_store

    store = open_store(LedgerConfig(store=store_text), reactor)
    store.service.startService()
    try:
        counter = iter(range(logins))

        async def caller() -> None:
            for n in counter:
                await store.ledger.record(f"10.3.{n // 250}.{n % 250 + 1}", f"user{n}", "pop3")

        from twisted.internet.defer import Deferred, gatherResults

        began = time.perf_counter()
        await gatherResults([Deferred.fromCoroutine(caller()) for _ in range(clients)])
        return logins / (time.perf_counter() - began)
    finally:
        store.service.stopService()


def record_rates(chosen: dict[str, str], logins: int, clients: int) -> dict[str, float]:
    from twisted.internet import reactor
    from twisted.internet.defer import Deferred

    rates: dict[str, float] = {}

    async def all_stores() -> None:
        for name, text in chosen.items():
            rates[name] = await record_rate(reactor, text, logins, clients)

    def finished(result: object) -> None:
        reactor.stop()
        if hasattr(result, "raiseException"):
            result.printTraceback()  # type: ignore[attr-defined]

    reactor.callWhenRunning(lambda: Deferred.fromCoroutine(all_stores()).addBoth(finished))
    reactor.run()
    return rates


# ---------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--logins", type=int, default=3000)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--clients", type=int, default=10)
    options = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="pb-bench-", dir="/tmp"))
    redis = Redis().start() if find_binary("redis-server") else None
    if redis is None:
        print("redis-server not installed: no Redis rows", file=sys.stderr)
    rows = []
    try:
        for name, text in stores(work / "lookups", redis).items():
            process = start_daemon(work / name, text)
            try:
                latencies = asyncio.run(lookups(work / name, options.clients, options.seconds))
            finally:
                process.terminate()
                process.wait(timeout=10)
            cuts = statistics.quantiles(latencies, n=100)
            rows.append([name, len(latencies) / options.seconds, cuts[49] * 1000, cuts[98] * 1000])
        if redis is not None:
            subprocess.run(["redis-cli", "-p", str(redis.port), "flushall"], capture_output=True)
        rates = record_rates(stores(work / "records", redis), options.logins, options.clients)
    finally:
        if redis is not None:
            redis.cleanup()
        shutil.rmtree(work, ignore_errors=True)
    print(f"\n{options.clients} concurrent clients; {options.logins} logins recorded per store; "
          f"{options.seconds:g} s of policy lookups per store; {os.cpu_count()} CPUs\n")
    print(f"{'store':8} {'logins/s':>10} {'lookups/s':>10} {'p50 ms':>8} {'p99 ms':>8}")
    for name, per_second, p50, p99 in rows:
        print(f"{name:8} {rates.get(name, 0):10.0f} {per_second:10.0f} {p50:8.2f} {p99:8.2f}")


if __name__ == "__main__":
    main()
