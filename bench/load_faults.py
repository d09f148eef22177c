"""Load and faults: many logins through popbridge to a real Dovecot while relays ask, Dovecot
killed and restarted mid-run, and a SIGHUP in the middle of it all. Loopback only, bounded in
time; run as root (a private Dovecot, as the integration tests start):

    .venv/bin/python bench/load_faults.py            # about a minute
    .venv/bin/python bench/load_faults.py --clients 1000 --relays 20

Phases, each a wave of clients from addresses of their own (so each address's fate is known):

1. load: `--clients` POP3 and IMAP logins at once (1 in 10 with a wrong password) while
   `--relays` relay clients ask the policy and socketmap sockets about addresses that have logged
   in (must be OK from the moment the client saw its +OK / tagged OK) and addresses that never
   did or were refused (must never be OK);
2. outage: a wave in progress when Dovecot is SIGKILLed; the clients caught in it must get a
   protocol error (-ERR / * BYE), then Dovecot restarts and a recovery wave must log in as before,
   with popbridge never restarted;
3. reload: held IMAP sessions stay open while a wave logs in and popbridge gets SIGHUP: no held
   session may drop and every login of the wave is recorded.

At the end the ledger (control socket `list`) must hold exactly the addresses whose clients saw a
successful login, and the daemon's log no traceback and no error line outside the outage. Prints a
summary and exits 1 if any check failed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.mail import raise_open_files, running_as_root  # noqa: E402
from bench.peers import BenchDovecot, _tree  # noqa: E402
from tests.integration.servers.popbridge_daemon import Popbridge  # noqa: E402
from tests.integration.servers.processes import binary, wait_until  # noqa: E402

IO_TIMEOUT = 15.0


def user(i: int) -> tuple[str, str]:
    return f"u{i:04d}", f"pw-{i:04d}"


def address(wave: int, i: int) -> str:
    """A source address of its own for client `i` of `wave` (127.W.x.y; 127.250.x.y never log in)."""
    return f"127.{wave}.{i // 250}.{i % 250 + 1}"


# ---------------------------------------------------------------- clients


@dataclass
class Outcome:
    address: str
    protocol: str
    wrong_password: bool
    result: str = "pending"  # ok, refused, protocol_error, dropped, timeout
    detail: bytes = b""
    logged_in_at: float | None = None


async def _line(reader: asyncio.StreamReader) -> bytes:
    return await asyncio.wait_for(reader.readline(), IO_TIMEOUT)


def _closed_or_error(line: bytes) -> str:
    if line.startswith((b"-ERR", b"* BYE")) or b" BYE " in line[:12]:
        return "protocol_error"
    return "dropped"


async def pop3_client(port: int, outcome: Outcome, password: str, name: str, ok_at: dict[str, float]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(outcome.address, 0))
    try:
        greeting = await _line(reader)
        if not greeting.startswith(b"+OK"):
            outcome.result, outcome.detail = _closed_or_error(greeting), greeting
            return
        writer.write(f"USER {name}\r\n".encode())
        answer = await _line(reader)
        if not answer.startswith(b"+OK"):
            outcome.result, outcome.detail = _closed_or_error(answer), answer
            return
        writer.write(f"PASS {password}\r\n".encode())
        answer = await _line(reader)
        if answer.startswith(b"+OK"):
            outcome.result, outcome.logged_in_at = "ok", time.monotonic()
            ok_at[outcome.address] = outcome.logged_in_at
            writer.write(b"STAT\r\nQUIT\r\n")
            await _line(reader)
            await _line(reader)
        elif answer.startswith(b"-ERR [AUTH]") or (answer.startswith(b"-ERR") and outcome.wrong_password):
            outcome.result, outcome.detail = "refused", answer
        else:
            outcome.result, outcome.detail = _closed_or_error(answer), answer
    finally:
        writer.close()


async def imap_tagged(reader: asyncio.StreamReader, tag: bytes) -> tuple[bytes, bytes]:
    """(the tagged line, the last untagged line before it); b"" at EOF."""
    last = b""
    while True:
        line = await _line(reader)
        if not line or line.startswith(tag + b" "):
            return line, last
        last = line


async def imap_client(
    port: int, outcome: Outcome, password: str, name: str, ok_at: dict[str, float], hold: asyncio.Event | None = None
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(outcome.address, 0))
    try:
        greeting = await _line(reader)
        if not greeting.startswith(b"* OK"):
            outcome.result, outcome.detail = _closed_or_error(greeting), greeting
            return
        writer.write(f'a LOGIN {name} "{password}"\r\n'.encode())
        answer, last = await imap_tagged(reader, b"a")
        if answer.startswith(b"a OK"):
            outcome.result, outcome.logged_in_at = "ok", time.monotonic()
            ok_at[outcome.address] = outcome.logged_in_at
            if hold is not None:  # a held session: prove it is alive after the event
                await hold.wait()
                writer.write(b"b NOOP\r\n")
                answer, _ = await imap_tagged(reader, b"b")
                if not answer.startswith(b"b OK"):
                    outcome.result, outcome.detail = "dropped", answer
                    return
            writer.write(b"c LOGOUT\r\n")
            await imap_tagged(reader, b"c")
        elif answer.startswith(b"a NO"):
            outcome.result, outcome.detail = ("refused" if outcome.wrong_password else "protocol_error"), answer
        else:
            outcome.result, outcome.detail = _closed_or_error(answer or last), answer or last
    finally:
        writer.close()


async def run_client(client: "object", outcome: Outcome) -> None:
    try:
        await asyncio.wait_for(client, IO_TIMEOUT * 3)  # type: ignore[arg-type]
    except (asyncio.TimeoutError, TimeoutError):
        outcome.result = "timeout"
    except (ConnectionError, OSError, asyncio.IncompleteReadError) as e:
        if outcome.result == "pending":
            outcome.result, outcome.detail = "dropped", repr(e).encode()


# ---------------------------------------------------------------- relays


@dataclass
class RelayStats:
    queries: int = 0
    wrong: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)


async def relay(
    kind: str, path: Path, ok_at: dict[str, float], never: list[str], stop: asyncio.Event, stats: RelayStats, n: int
) -> None:
    """Ask about logged-in addresses (must be yes) and strangers (must be no), in turns."""
    reader, writer = await asyncio.open_unix_connection(str(path))
    turn = n
    try:
        while not stop.is_set():
            turn += 1
            known = list(ok_at.items())
            if turn % 2 and known:
                addr, seen = known[turn % len(known)]
                expect_yes = True  # the client saw its success before this question was asked
            else:
                addr, expect_yes = never[turn % len(never)], False
            started = time.monotonic()
            if kind == "policy":
                writer.write(f"request=smtpd_access_policy\nprotocol_state=RCPT\nclient_address={addr}\n\n".encode())
                answer = (await asyncio.wait_for(reader.readuntil(b"\n\n"), IO_TIMEOUT)).decode()
                yes = answer == "action=OK\n\n"
                sane = yes or answer == "action=DUNNO\n\n"
            else:
                query = f"access {addr}".encode()
                writer.write(b"%d:%s," % (len(query), query))
                answer = (await asyncio.wait_for(reader.readuntil(b","), IO_TIMEOUT)).decode()
                yes = answer.split(":", 1)[1].startswith("OK ")
                sane = yes or answer == "9:NOTFOUND ,"
            stats.latencies.append(time.monotonic() - started)
            stats.queries += 1
            if yes != expect_yes or not sane:
                stats.wrong.append(f"{kind} {addr}: {answer!r} (expected {'yes' if expect_yes else 'no'})")
            await asyncio.sleep(0.002)  # a relay's pace, not synchronisation
    finally:
        writer.close()


# ---------------------------------------------------------------- the run


@dataclass
class Wave:
    name: str
    outcomes: list[Outcome] = field(default_factory=list)
    seconds: float = 0.0

    def counts(self) -> Counter[str]:
        return Counter(o.result for o in self.outcomes)


class Run:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.ok_at: dict[str, float] = {}
        self.never = [address(250, i) for i in range(200)]
        self.failures: list[str] = []
        self.waves: list[Wave] = []
        self.outage: tuple[int, int] | None = None  # log offsets around the outage

    def check(self, condition: bool, message: str) -> None:
        if not condition:
            self.failures.append(message)

    async def wave(
        self, name: str, number: int, count: int, concurrency: int, wrong_every: int = 10,
        started: asyncio.Event | None = None, hold: asyncio.Event | None = None, imap_only: bool = False,
    ) -> Wave:
        wave = Wave(name)
        limit = asyncio.Semaphore(concurrency)
        begun = time.monotonic()

        async def one(i: int) -> None:
            name_, password = user((number * 1000 + i) % self.args.users)
            wrong = wrong_every > 0 and i % wrong_every == wrong_every - 1
            protocol = "imap4" if imap_only or i % 2 else "pop3"
            outcome = Outcome(address(number, i), protocol, wrong)
            wave.outcomes.append(outcome)
            if wrong:
                self.never.append(outcome.address)
            async with limit:
                if started is not None and i == concurrency:
                    started.set()
                secret = "wrong-" + password if wrong else password
                if protocol == "pop3":
                    client = pop3_client(self.daemon.port, outcome, secret, name_, self.ok_at)
                else:
                    assert self.daemon.imap_port is not None
                    client = imap_client(self.daemon.imap_port, outcome, secret, name_, self.ok_at, hold)
                await run_client(client, outcome)

        await asyncio.gather(*(one(i) for i in range(count)))
        wave.seconds = time.monotonic() - begun
        self.waves.append(wave)
        return wave

    def control(self, command: str) -> dict[str, object]:
        import socket

        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(30)
            s.connect(str(self.daemon.control_socket))
            s.sendall(json.dumps({"command": command}).encode() + b"\n")
            data = b""
            while not data.endswith(b"\n"):
                data += s.recv(1 << 20)
        return json.loads(data)

    def kill_dovecot(self) -> None:
        master = self.dovecot.master_pid()
        assert master is not None
        for pid in reversed(_tree(master)):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def restart_dovecot(self) -> None:
        subprocess.run(
            [binary("dovecot"), "-c", str(self.dovecot.config_path)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True, timeout=30,
        )
        wait_until(self.dovecot._answers, "dovecot restart", timeout=30)

    async def main(self) -> None:
        args = self.args
        stop = asyncio.Event()
        relay_stats = [RelayStats() for _ in range(args.relays)]
        paths = [self.daemon.policy_socket, self.daemon.socketmap_socket]
        relays = [
            asyncio.create_task(relay(("policy", "socketmap")[n % 2], paths[n % 2], self.ok_at, self.never, stop, relay_stats[n], n))  # type: ignore[arg-type]
            for n in range(args.relays)
        ]
        loop = asyncio.get_running_loop()

        # 1. load
        load = await self.wave("load", 1, args.clients, args.clients)

        # 2. outage: Dovecot SIGKILLed while a wave runs, then restarted; then a recovery wave
        outage_started = asyncio.Event()
        outage_wave = asyncio.create_task(self.wave("outage", 2, args.clients // 2, 25, started=outage_started))
        await outage_started.wait()
        mark = self.daemon.log.mark()
        await loop.run_in_executor(None, self.kill_dovecot)
        killed_at = time.monotonic()
        await asyncio.sleep(args.outage)  # the outage lasts this long
        await loop.run_in_executor(None, self.restart_dovecot)
        restarted_in = time.monotonic() - killed_at
        outage = await outage_wave
        self.outage = (mark, self.daemon.log.mark())
        recovery = await self.wave("recovery", 3, args.clients // 5, 50)

        # 3. reload: held sessions + a wave, SIGHUP in the middle
        release = asyncio.Event()
        held = asyncio.create_task(self.wave("held-imap", 4, 100, 100, wrong_every=0, hold=release, imap_only=True))
        reload_started = asyncio.Event()
        during = asyncio.create_task(self.wave("during-sighup", 5, args.clients // 2, 50, started=reload_started))
        await reload_started.wait()
        while sum(a.startswith("127.4.") for a in self.ok_at) < 100 and not held.done():
            await asyncio.sleep(0.05)  # wait for the held sessions to be logged in (bounded by IO_TIMEOUT)
        hup_mark = self.daemon.log.mark()
        assert self.daemon.process is not None
        self.daemon.process.send_signal(signal.SIGHUP)
        await loop.run_in_executor(None, lambda: self.daemon.log.wait_for(lambda l: "SIGHUP" in l or "reload" in l, hup_mark, 10))
        during_wave = await during
        release.set()
        held_wave = await held

        stop.set()
        await asyncio.gather(*relays, return_exceptions=True)

        # -- checks
        for wave in (load, recovery, during_wave):
            bad = [o for o in wave.outcomes if o.result not in ("ok", "refused")]
            self.check(not bad, f"{wave.name}: {len(bad)} clients neither logged in nor refused: {[(o.address, o.result, o.detail[:80]) for o in bad[:5]]}")
            refused_right = [o for o in wave.outcomes if o.result == "refused" and not o.wrong_password]
            self.check(not refused_right, f"{wave.name}: correct passwords refused: {[(o.address, o.detail[:80]) for o in refused_right[:5]]}")
            let_in = [o for o in wave.outcomes if o.result == "ok" and o.wrong_password]
            self.check(not let_in, f"{wave.name}: wrong passwords accepted: {len(let_in)}")
        caught = [o for o in outage.outcomes if o.result not in ("ok", "refused")]
        silent = [o for o in caught if o.result != "protocol_error"]
        self.check(bool(caught), "outage: no client noticed the outage (Dovecot killed too late?)")
        self.check(not silent, f"outage: {len(silent)} clients got no protocol error: {Counter(o.result for o in silent)} e.g. {[(o.address, o.detail[:80]) for o in silent[:5]]}")
        dropped_held = [o for o in held_wave.outcomes if o.result != "ok"]
        self.check(not dropped_held, f"reload: {len(dropped_held)} held sessions dropped: {[(o.address, o.result, o.detail[:60]) for o in dropped_held[:5]]}")
        wrong = [w for stats in relay_stats for w in stats.wrong]
        self.check(not wrong, f"relays: {len(wrong)} wrong answers, e.g. {wrong[:5]}")
        listed = self.control("list")
        recorded = {login["client"] for login in listed["logins"]}  # type: ignore[index]
        succeeded = set(self.ok_at)
        self.check(succeeded <= recorded, f"ledger: {len(succeeded - recorded)} successful logins not recorded, e.g. {sorted(succeeded - recorded)[:5]}")
        self.check(recorded <= succeeded, f"ledger: {len(recorded - succeeded)} addresses recorded without a login the client saw, e.g. {sorted(recorded - succeeded)[:5]}")
        log = self.daemon.log.text()
        before, after = log.encode()[: self.outage[0]].decode(errors="replace"), log.encode()[self.outage[1] :].decode(errors="replace")
        during_outage = log.encode()[self.outage[0] : self.outage[1]].decode(errors="replace")
        fatal = [l for l in log.splitlines() if any(m in l for m in ("Traceback", "Unhandled", "#critical]"))]
        errors = [l for l in (before + after).splitlines() if "#error]" in l]
        self.check(not fatal, f"log: {len(fatal)} tracebacks or critical lines: {fatal[:3]}")
        self.check(not errors, f"log: {len(errors)} error lines outside the outage: {errors[:3]}")
        outage_errors = Counter(
            "backend unreachable" if "unreachable" in l else l.split("] ", 1)[-1][:60]
            for l in during_outage.splitlines() if "#error]" in l
        )

        # -- summary
        print(f"\npopbridge load and faults: {args.clients} clients, {args.relays} relays, Dovecot with {args.users} users")
        print(f"{'wave':<15}{'clients':>8}{'seconds':>9}{'logins/s':>10}  outcomes")
        for wave in self.waves:
            counts = wave.counts()
            rate = counts["ok"] / wave.seconds if wave.seconds else 0
            print(f"{wave.name:<15}{len(wave.outcomes):>8}{wave.seconds:>9.2f}{rate:>10.0f}  {dict(sorted(counts.items()))}")
        lat = sorted(l for s in relay_stats for l in s.latencies)
        queries = sum(s.queries for s in relay_stats)
        if lat:
            print(f"relays: {queries} queries, {len(wrong)} wrong; p50 {lat[len(lat) // 2] * 1000:.2f} ms, "
                  f"p99 {lat[int(len(lat) * 0.99)] * 1000:.2f} ms, max {lat[-1] * 1000:.1f} ms")
        print(f"outage: Dovecot SIGKILLed, back after {restarted_in:.1f} s; {len(caught)} clients caught: "
              f"{dict(Counter(o.result for o in caught))}; answers seen: {dict(Counter(o.detail[:40] for o in caught).most_common(3))}")
        print(f"        popbridge error lines during the outage: {dict(outage_errors)}")
        print(f"reload: SIGHUP with {len(held_wave.outcomes)} held IMAP sessions and a wave of {len(during_wave.outcomes)}: "
              f"held {dict(held_wave.counts())}")
        print(f"ledger: {len(recorded)} addresses recorded, {len(succeeded)} successful logins seen by clients, "
              f"{len(self.never)} addresses that never logged in")
        print(f"log: {len(log.splitlines())} lines, {len(fatal)} tracebacks/critical, {len(errors)} errors outside the outage")
        print("RESULT:", "PASS" if not self.failures else "FAIL")
        for failure in self.failures:
            print("  -", failure)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=500, help="clients in the load wave (default 500)")
    parser.add_argument("--relays", type=int, default=10, help="relay clients querying throughout (default 10)")
    parser.add_argument("--users", type=int, default=1000, help="Dovecot users (default 1000)")
    parser.add_argument("--outage", type=float, default=2.0, help="seconds Dovecot stays dead (default 2)")
    parser.add_argument("--store", default="sqlite:ledger.sqlite3", help="popbridge [ledger] store")
    parser.add_argument("--timeout", type=float, default=300, help="give up after this many seconds")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not running_as_root("bench/load_faults.py", "a private Dovecot"):
        return 2
    raise_open_files(65536)
    users = dict(user(i) for i in range(args.users))
    dovecot = BenchDovecot(users=users)
    dovecot.start()
    daemon = Popbridge(
        backend_port=dovecot.port, imap_backend_port=dovecot.imap_port, store=args.store,
        proxy_extra="max_sessions_per_client = 200",
    )
    run = Run(args)
    run.dovecot, run.daemon = dovecot, daemon  # type: ignore[attr-defined]
    started = time.monotonic()
    try:
        daemon.start()
        asyncio.run(asyncio.wait_for(run.main(), args.timeout))
    except (asyncio.TimeoutError, TimeoutError):
        run.failures.append(f"the run did not finish within {args.timeout:.0f} s")
        print("RESULT: FAIL (timeout)")
    finally:
        alive = daemon.process is not None and daemon.process.poll() is None
        if not alive:
            run.failures.append("popbridge exited during the run")
        daemon.stop()
        if run.failures:
            print(f"popbridge log tail:\n{daemon.log.text()[-3000:]}")
        daemon.cleanup()
        dovecot.cleanup()
    print(f"total {time.monotonic() - started:.1f} s")
    return 1 if run.failures else 0


if __name__ == "__main__":
    sys.exit(main())
