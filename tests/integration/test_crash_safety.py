"""SIGKILL in the middle of a login burst loses no login a client was told about and invents none.

200 concurrent POP3/IMAP logins (a tenth with a wrong password) go through the real daemon;
at a moment drawn from the seed (the k-th success line seen, k drawn) the daemon is SIGKILLed.
Afterwards every client that saw its success line is authorised under its own user and nothing
else, and every login held is one Dovecot logged. With SQLite the daemon is restarted on its
file; with Redis (appendonly, fsync always) a second node that was never killed is asked, then
the killed node once restarted. Client addresses 127.16.0.0/16 belong to this module.
"""

from __future__ import annotations

import asyncio
import random

import pytest

from .login_burst import Burst, BurstClient, draw_clients, run_burst, settled_check
from .servers import Dovecot, Popbridge, Redis
from .test_ledger_restarts import started

pytestmark = [pytest.mark.realserver, pytest.mark.wallclock]

CLIENTS = 200
SQLITE_SEEDS = [3, 8, 10, 11, 15]  # first kill after 16, 67, 129, 46, 118 success lines
REDIS_SEEDS = [2, 13]  # after 39, 107


def burst_with_a_kill(daemon: Popbridge, seed: int) -> tuple[list[BurstClient], Burst, int]:
    """The seed's clients through `daemon`, SIGKILLed when the drawn k-th client is told."""
    rng = random.Random(seed)
    clients = draw_clients(rng, CLIENTS, network=16, wrong_share=0.1, max_hold=0.5)
    kill_at = rng.randrange(1, CLIENTS * 3 // 4)
    assert daemon.process is not None and daemon.imap_port is not None
    process = daemon.process

    def on_told(told: int) -> None:
        if told == kill_at:
            process.kill()

    burst = asyncio.run(run_burst(clients, {"pop3": daemon.port, "imap4": daemon.imap_port}, Burst(), on_told))
    process.wait(timeout=10)
    return clients, burst, kill_at


def verified(
    clients: list[BurstClient], burst: Burst, daemon: Popbridge, dovecot: Dovecot, mark: int, seed: int, store: str, kill_at: int
) -> None:
    """Assert what `daemon` holds after the kill, and print the seed's figures."""
    held, problems = settled_check(clients, burst, daemon, dovecot, mark)
    wrong = {client.source for client in clients if not client.right_password}
    print(
        f"crash {store} seed {seed}: killed at success line {kill_at}; {len(burst.told)} told, "
        f"{len(held)} held after the kill ({len(set(held) - set(burst.told))} held but not told), "
        f"{len(burst.refused)} refused, {len(burst.broken)} cut off, {len(wrong & set(held))} wrong passwords held"
    )
    assert not problems, "\n".join(problems[:20])
    assert not wrong & set(held)


@pytest.mark.parametrize("seed", SQLITE_SEEDS)
def test_sqlite_holds_every_told_login_and_nothing_else_after_a_sigkill(seed, burst_dovecot, daemons):
    daemon = Popbridge(
        backend_port=burst_dovecot.port, imap_backend_port=burst_dovecot.imap_port, forward_client_address=True,
        store="sqlite:ledger.sqlite3",
    )
    daemons.append(started(daemon))
    mark = burst_dovecot.log.mark()
    clients, burst, kill_at = burst_with_a_kill(daemon, seed)
    started(daemon)  # the same file
    verified(clients, burst, daemon, burst_dovecot, mark, seed, "sqlite", kill_at)


@pytest.mark.parametrize("seed", REDIS_SEEDS)
def test_redis_holds_every_told_login_and_nothing_else_after_a_node_is_killed(seed, burst_dovecot, own_redis: Redis, daemons):
    killed, survivor = (
        Popbridge(
            backend_port=burst_dovecot.port, imap_backend_port=burst_dovecot.imap_port, forward_client_address=True,
            store=own_redis.url,
        )
        for _ in range(2)
    )
    daemons.extend([started(killed), started(survivor)])
    mark = burst_dovecot.log.mark()
    clients, burst, kill_at = burst_with_a_kill(killed, seed)
    verified(clients, burst, survivor, burst_dovecot, mark, seed, "redis (surviving node)", kill_at)
    started(killed)
    verified(clients, burst, killed, burst_dovecot, mark, seed, "redis (killed node, restarted)", kill_at)
