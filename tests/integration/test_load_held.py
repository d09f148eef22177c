"""Load held: 500 concurrent POP3/IMAP logins through one daemon (default SQLite store) while
10 relay clients ask the policy and socketmap sockets without pause. Every login is recorded
under its user, no lookup fails or answers "unknown" for a client already told it is logged
in, and the lookup latencies are printed (p50/p99/max, as the relay clients saw them; the
figure is noisy on a shared 2-core machine and is reported, not asserted). Client addresses
127.17.0.0/16 belong to this module.
"""

from __future__ import annotations

import asyncio
import random
import resource
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from .login_burst import Burst, BurstClient, draw_clients, run_burst, settled_check
from .servers import Dovecot, Popbridge, ServerError, netstring

pytestmark = [pytest.mark.realserver, pytest.mark.wallclock]

LOGINS = 500
RELAY_CLIENTS = {"policy": 5, "socketmap": 5}
FILES_NEEDED = 4096  # the daemon holds two sockets per session; this process one


@pytest.fixture
def enough_files() -> Iterator[None]:
    """Raise this process's open-file limit (the daemon inherits it) as a unit file's LimitNOFILE does."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = FILES_NEEDED if hard == resource.RLIM_INFINITY else min(hard, FILES_NEEDED)
    if wanted < 2 * LOGINS + 100:
        pytest.skip(f"open-file hard limit {hard} is below what {LOGINS} sessions need")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, wanted), hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@dataclass
class RelayLog:
    latencies: list[float] = field(default_factory=list)  # seconds per answered lookup
    errors: list[str] = field(default_factory=list)


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


async def relay_client(
    protocol: str, path: Path, clients: list[BurstClient], told: dict[str, float], done: asyncio.Event,
    rng: random.Random, log: RelayLog,
) -> None:
    """Ask for drawn client addresses on one kept connection until `done`, as smtpd does."""
    reader, writer = await asyncio.open_unix_connection(str(path))
    try:
        while not done.is_set():
            client = rng.choice(clients)
            was_told = client.source in told
            began = time.perf_counter()
            if protocol == "policy":
                writer.write(f"request=smtpd_access_policy\nprotocol_state=RCPT\nclient_address={client.source}\n\n".encode())
                answer = await reader.readuntil(b"\n\n")
                known, fine = answer == b"action=OK\n\n", answer in (b"action=OK\n\n", b"action=DUNNO\n\n")
            else:
                writer.write(netstring(f"user {client.source}"))
                length = await reader.readuntil(b":")
                answer = await reader.readexactly(int(length[:-1]) + 1)
                known, fine = answer == f"OK {client.user},".encode(), answer in (f"OK {client.user},".encode(), b"NOTFOUND ,")
            log.latencies.append(time.perf_counter() - began)
            if not fine or (was_told and not known):
                log.errors.append(f"{protocol} {client.source} ({client.user}, told: {was_told}): {answer!r}")
    finally:
        writer.close()


async def logins_under_lookups(
    daemon: Popbridge, clients: list[BurstClient], rng: random.Random, log: RelayLog
) -> tuple[Burst, float]:
    """The burst, with the relay clients asking from its first moment to its last."""
    assert daemon.imap_port is not None
    done = asyncio.Event()
    sockets = {"policy": daemon.policy_socket, "socketmap": daemon.socketmap_socket}
    burst = Burst()
    relays = [
        asyncio.create_task(relay_client(protocol, sockets[protocol], clients, burst.told, done, random.Random(rng.random()), log))
        for protocol, count in RELAY_CLIENTS.items()
        for _ in range(count)
    ]
    began = time.monotonic()
    await run_burst(clients, {"pop3": daemon.port, "imap4": daemon.imap_port}, burst)
    elapsed = time.monotonic() - began
    done.set()
    await asyncio.gather(*relays)
    return burst, elapsed


def test_500_concurrent_logins_are_all_recorded_while_relays_ask_without_error(burst_dovecot: Dovecot, enough_files: None) -> None:
    daemon = Popbridge(
        backend_port=burst_dovecot.port, imap_backend_port=burst_dovecot.imap_port, forward_client_address=True,
        store="sqlite:ledger.sqlite3",
    )
    try:
        daemon.start()
    except ServerError as e:
        pytest.fail(f"popbridge did not start: {e}", pytrace=False)
    try:
        rng = random.Random(500)
        clients = draw_clients(rng, LOGINS, network=17, wrong_share=0.0, max_hold=0.2)
        mark, log = burst_dovecot.log.mark(), RelayLog()
        burst, elapsed = asyncio.run(logins_under_lookups(daemon, clients, rng, log))
        held, problems = settled_check(clients, burst, daemon, burst_dovecot, mark)
        print(
            f"load: {len(burst.told)} of {LOGINS} logins told and {len(held)} recorded in {elapsed:.1f} s; "
            f"{len(log.latencies)} lookups by {sum(RELAY_CLIENTS.values())} relay clients, "
            f"p50 {percentile(log.latencies, 0.5) * 1000:.1f} ms, p99 {percentile(log.latencies, 0.99) * 1000:.1f} ms, "
            f"max {max(log.latencies) * 1000:.1f} ms, {len(log.errors)} lookup errors"
        )
        assert not burst.refused and not burst.broken, (sorted(burst.refused)[:10], list(burst.broken.items())[:10])
        assert len(burst.told) == LOGINS
        assert not problems, "\n".join(problems[:20])
        assert not log.errors, "\n".join(log.errors[:20])
        assert log.latencies
    finally:
        daemon.stop()
        print(f"--- popbridge output ({daemon.config_path}):\n{daemon.output()[-3000:]}")
        daemon.cleanup()
