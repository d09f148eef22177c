"""Hundreds of concurrent POP3 and IMAP logins through the real daemon, each from its own
127.x.y.z, and what they prove afterwards: who saw the success line, what popbridge holds, and
what Dovecot really logged in.

The clients are asyncio coroutines in the test process (threads for 500 sockets would cost more
than the daemon being measured). Each client logs in once, keeps its session open for a drawn
moment, then quits; a client "was told" when the backend's success line reached it through
popbridge, which popbridge releases only after the ledger holds the login.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from .servers import Dovecot, Popbridge, ServerError, wait_until

CLIENT_TIMEOUT = 30.0  # seconds one client waits for one answer
USERS = ("alice", "bob", "carol", "dave", "erin")  # the Dovecot fixture's users, password "<user>-pw"
_DOVECOT_LOGIN = re.compile(r"Login: user=<([^>]*)>.*?\brip=([0-9.]+)")


@dataclass
class BurstDovecot(Dovecot):
    """The Dovecot fixture's server, sized for bursts: login processes in high-performance mode
    (each serves many clients) and process limits above the 100 a stock Dovecot has, which
    would otherwise queue a burst of 500 logins behind a hundred forks."""

    def config_text(self) -> str:
        text = super().config_text()
        for service in ("pop3-login", "imap-login"):
            text = text.replace(
                f"service {service} {{\n", f"service {service} {{\n  service_count = 0\n  process_min_avail = 2\n  client_limit = 1000\n"
            )
        return f"default_process_limit = 600\ndefault_client_limit = 2000\n{text}"


@dataclass(frozen=True)
class BurstClient:
    source: str  # the client's own 127.x.y.z: one login per address, so an address names a client
    protocol: str  # "pop3" or "imap4"
    user: str
    right_password: bool
    hold: float  # seconds the session stays open after the login before QUIT/LOGOUT

    @property
    def password(self) -> str:
        return f"{self.user}-pw" if self.right_password else "not-the-password"


def draw_clients(rng: random.Random, count: int, network: int, wrong_share: float, max_hold: float) -> list[BurstClient]:
    """`count` clients on 127.`network`.y.z with drawn protocols, users, passwords and holds."""
    return [
        BurstClient(
            source=f"127.{network}.{n // 200}.{n % 200 + 1}",
            protocol=rng.choice(("pop3", "imap4")),
            user=rng.choice(USERS),
            right_password=rng.random() >= wrong_share,
            hold=rng.uniform(0, max_hold),
        )
        for n in range(count)
    ]


@dataclass
class Burst:
    """The outcome of one burst: which clients saw their success line, and when."""

    told: dict[str, float] = field(default_factory=dict)  # source -> time.monotonic() of the success line
    refused: set[str] = field(default_factory=set)  # sources told the login failed
    broken: dict[str, str] = field(default_factory=dict)  # source -> what ended the client early


async def run_burst(
    clients: list[BurstClient], ports: dict[str, int], burst: Burst, on_told: Callable[[int], None] = lambda told: None
) -> Burst:
    """Start every client at once, filling `burst` as they go (others may read it meanwhile);
    `on_told(n)` runs as the n-th success line arrives."""

    async def one(client: BurstClient) -> None:
        try:
            success = await _log_in(client, ports[client.protocol], burst, on_told)
        except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, ServerError) as e:
            burst.broken[client.source] = f"{type(e).__name__}: {e}"
            return
        if not success:
            burst.refused.add(client.source)

    await asyncio.gather(*(one(client) for client in clients))
    return burst


async def _log_in(client: BurstClient, port: int, burst: Burst, on_told: Callable[[int], None]) -> bool:
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection("127.0.0.1", port, local_addr=(client.source, 0)), CLIENT_TIMEOUT
    )
    try:
        await _line(reader)  # greeting
        if client.protocol == "pop3":
            await _command(reader, writer, f"USER {client.user}")
            answer = await _command(reader, writer, f"PASS {client.password}")
            success, bye = answer.startswith(b"+OK"), "QUIT"
        else:
            answer = await _tagged(reader, writer, "a1", f"LOGIN {client.user} {client.password}")
            success, bye = answer.startswith(b"a1 OK"), "a2 LOGOUT"
        if not success:
            return False
        burst.told[client.source] = time.monotonic()
        on_told(len(burst.told))
        await asyncio.sleep(client.hold)  # the session stays open, as a mail client's does
        writer.write(f"{bye}\r\n".encode())
        await writer.drain()
        return True
    finally:
        writer.close()


async def _line(reader: asyncio.StreamReader) -> bytes:
    line = await asyncio.wait_for(reader.readline(), CLIENT_TIMEOUT)
    if not line:
        raise ServerError("connection closed")
    return line


async def _command(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, command: str) -> bytes:
    writer.write(f"{command}\r\n".encode())
    return await _line(reader)


async def _tagged(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, tag: str, command: str) -> bytes:
    writer.write(f"{tag} {command}\r\n".encode())
    while not (line := await _line(reader)).startswith(f"{tag} ".encode()):
        pass  # untagged lines before the tagged answer
    return line


# ---------------------------------------------------------------- what the daemon and Dovecot hold


def recorded_users(daemon: Popbridge) -> dict[str, set[str]]:
    """Every live login the daemon holds, from `popbridge list --json`: address -> users."""
    result = daemon.cli("list", "--json")
    if result.returncode != 0:
        raise ServerError(f"popbridge list: exit {result.returncode}: {result.stderr.strip()}")
    held: dict[str, set[str]] = {}
    for login in json.loads(result.stdout)["logins"]:
        held.setdefault(login["client"], set()).add(login["user"])
    return held


def dovecot_logins(dovecot: Dovecot, since: int) -> set[tuple[str, str]]:
    """(client address, user) of every login Dovecot logged after `since` (a log mark); the
    daemons forward the client address, so Dovecot's rip= is the client's own."""
    return {(rip, user) for user, rip in _DOVECOT_LOGIN.findall(dovecot.log.text(since))}


def check_authorised(clients: list[BurstClient], burst: Burst, held: dict[str, set[str]], backend: set[tuple[str, str]]) -> list[str]:
    """What is wrong with `held`, as sentences (empty when right): every told client is held
    with its own user and only that; every held login is one Dovecot really logged in."""
    by_source = {client.source: client for client in clients}
    problems = [
        f"{source} saw its success line but is held as {sorted(held.get(source, set()))}, not [{by_source[source].user!r}]"
        for source in burst.told
        if held.get(source) != {by_source[source].user}
    ]
    for source, users in held.items():
        problems += [f"{source} is held as {user!r}, a login Dovecot never made" for user in users if (source, user) not in backend]
    return problems


def settled_check(
    clients: list[BurstClient], burst: Burst, daemon: Popbridge, dovecot: Dovecot, since: int, timeout: float = 5
) -> tuple[dict[str, set[str]], list[str]]:
    """What `daemon` holds and `check_authorised`'s problems with it, once they are gone or
    `timeout` seconds have passed: Dovecot writes its log through a separate process, so a login
    it made may show there a moment after the client was told."""
    held: dict[str, set[str]] = {}

    def settled() -> bool:
        held.update(recorded_users(daemon))
        return not check_authorised(clients, burst, held, dovecot_logins(dovecot, since))

    try:
        wait_until(settled, "Dovecot's log to show every held login", timeout=timeout)
    except ServerError:
        pass
    return held, check_authorised(clients, burst, held, dovecot_logins(dovecot, since))
