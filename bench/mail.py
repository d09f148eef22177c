#!/usr/bin/env python3
"""popbridge's mail benchmark: the same load straight to Dovecot, through popbridge, through
nginx's mail proxy and perdition when they are installed, and through a bare Twisted relay
(bench/twisted_relay.py, the floor for any Twisted proxy), in one run; one table of ratios.

Run as root from the repository (it starts a private Dovecot as the fixtures do):

    .venv/bin/python bench/mail.py            # full run, about 4-5 minutes
    .venv/bin/python bench/mail.py --quick    # about a minute, fewer and shorter rounds

popbridge's CPU per 1000 POP3 sessions against the bare Twisted relay alone (issue 14's target),
more rounds for a steadier median on a busy machine:

    .venv/bin/python bench/mail.py --only popbridge,twisted-relay \
        --skip memory,imap-logins,transfers,lookups --rounds 9

Rates and throughputs are medians over rounds; the targets take turns inside each round (the
order rotates) so that drift hits them all alike. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import resource
import socket
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import load
from bench.peers import BenchDovecot, Nginx, Perdition, TwistedRelay, tree_cpu, tree_rss
from tests.integration.servers.clients import message_of_size
from tests.integration.servers.popbridge_daemon import Popbridge
from tests.integration.servers.processes import ServerError

MESSAGE_SIZE = 20 * 1024 * 1024
BENCH_USER, BENCH_PASSWORD = "bench", "bench-pw"


# ---------------------------------------------------------------- targets


@dataclass
class Target:
    name: str
    pop3_port: int
    imap_port: int
    pids: Callable[[], list[int]] = list  # proxy processes whose CPU and RSS count
    helper_cpu: Callable[[], float] = lambda: 0.0
    stop: Callable[[], None] = lambda: None
    # results
    pop3_rates: list[float] = field(default_factory=list)
    imap_rates: list[float] = field(default_factory=list)
    pop3_latencies: list[float] = field(default_factory=list)
    imap_latencies: list[float] = field(default_factory=list)
    cpu_per_1000: list[float] = field(default_factory=list)
    helper_per_1000: list[float] = field(default_factory=list)
    retr: list[float] = field(default_factory=list)
    fetch: list[float] = field(default_factory=list)
    rss_per_session: float | None = None
    failures: int = 0

    @property
    def proxy(self) -> bool:
        return self.name != "direct"

    def cpu(self) -> float:
        return sum(tree_cpu(pid) for pid in self.pids())

    def rss(self) -> int:
        return sum(tree_rss(pid) for pid in self.pids())


def user(i: int) -> tuple[str, str]:
    return f"u{i % USERS:04d}", f"pw-{i % USERS:04d}"


USERS = 1000


# ---------------------------------------------------------------- measuring a phase


class Machine:
    """CPU used by this process (the load generator) and by the whole machine."""

    @staticmethod
    def own_cpu() -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    @staticmethod
    def jiffies() -> tuple[int, int]:
        fields = [
            int(f) for f in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
        ]
        idle = fields[3] + fields[4]
        return sum(fields) - idle, sum(fields)


def round_options(store: str) -> argparse.ArgumentParser:
    """The options of the round-based benchmarks (feed.py, workers.py), for argparse's
    `parents=`; `store` says whose [ledger] store --store sets. Their defaults are filled in
    by `quick_or_full` with LOGIN_ROUNDS."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--quick", action="store_true", help="fewer, shorter rounds")
    parser.add_argument("--rounds", type=int, help="rounds per measure (default 5, quick 3)")
    parser.add_argument("--duration", type=float, help="seconds per login round (default 3, quick 1.5)")
    parser.add_argument("--clients", type=int, default=50, help="concurrent login clients (default 50)")
    parser.add_argument("--lookup-duration", type=float, help="seconds per probe run (default 4, quick 2)")
    parser.add_argument("--store", default="memory", help=f"{store} [ledger] store (default memory)")
    parser.add_argument("-v", "--verbose", action="store_true", help="progress on stderr")
    return parser


LOGIN_ROUNDS = {"rounds": (3, 5), "duration": (1.5, 3.0), "lookup_duration": (2.0, 4.0)}


def quick_or_full(args: argparse.Namespace, defaults: dict[str, tuple[float, float]]) -> None:
    """Fill each option the command line left unset with its `--quick` or its full default."""
    for name, (quick, full) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)


def running_as_root(program: str, needs: str) -> bool:
    """Whether this process is root; if not, say so: private Dovecots must start as root."""
    if os.geteuid() == 0:
        return True
    print(f"{program} runs {needs} and must run as root", file=sys.stderr)
    return False


def raise_open_files(limit: int = 200_000) -> None:
    """Lift this process's soft descriptor limit towards `limit` (never past the hard one):
    thousands of concurrent clients each hold a socket."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, limit)), hard))


def stop_all(started: list[Callable[[], None]], program: str) -> None:
    """Stop what a run started, newest first; a stop that fails is reported and the others
    still run, so that no private server outlives the benchmark."""
    for stop in reversed(started):
        try:
            stop()
        except Exception as e:  # noqa: BLE001 - keep stopping the others
            print(f"{program}: stopping: {e}", file=sys.stderr)


@dataclass
class PhaseCost:
    wall: float = 0.0
    own: float = 0.0  # the load generator
    ours: float = 0.0  # load generator, Dovecot, every proxy and helper
    busy: int = 0  # jiffies, whole machine
    total: int = 0

    def add(self, wall: float, own: float, ours: float, busy: int, total: int) -> None:
        self.wall += wall
        self.own += own
        self.ours += ours
        self.busy += busy
        self.total += total


class Metered:
    def __init__(self, cost: PhaseCost, ours: Callable[[], float]) -> None:
        self.cost, self.ours_now = cost, ours

    def __enter__(self) -> Metered:  # noqa: PYI034
        self.ours = self.ours_now()
        self.wall, self.own, (self.busy, self.total) = (
            time.perf_counter(),
            Machine.own_cpu(),
            Machine.jiffies(),
        )
        return self

    def __exit__(self, *exc: object) -> None:
        busy, total = Machine.jiffies()
        wall, own = time.perf_counter() - self.wall, Machine.own_cpu() - self.own
        self.cost.add(
            wall, own, self.ours_now() - self.ours, busy - self.busy, total - self.total
        )


# ---------------------------------------------------------------- phases


class Bench:
    def __init__(
        self,
        args: argparse.Namespace,
        targets: list[Target],
        popbridge: Popbridge,
        dovecot_pid: int,
    ) -> None:
        self.args, self.targets, self.popbridge, self.dovecot_pid = (
            args,
            targets,
            popbridge,
            dovecot_pid,
        )
        self.loop = load.new_loop()
        asyncio.set_event_loop(self.loop)
        self.costs: dict[str, PhaseCost] = {}
        self.pop3_steps = [load.pop3_login_steps(*user(i)) for i in range(USERS)]
        self.imap_steps = [load.imap_login_steps(*user(i)) for i in range(USERS)]
        self.lookups: dict[str, object] = {}
        self.progress = args.verbose

    def say(self, text: str) -> None:
        if self.progress:
            print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)

    def run(self, coroutine):  # type: ignore[no-untyped-def]
        return self.loop.run_until_complete(coroutine)

    def metered(self, phase: str) -> Metered:
        return Metered(self.costs.setdefault(phase, PhaseCost()), self.our_cpu)

    def our_cpu(self) -> float:
        """CPU seconds of everything this benchmark runs: the rest of the machine's is noise."""
        return (
            Machine.own_cpu()
            + tree_cpu(self.dovecot_pid)
            + sum(t.cpu() + t.helper_cpu() for t in self.targets)
        )

    def rounds(self):  # type: ignore[no-untyped-def]
        for r in range(self.args.rounds):
            shift = r % len(self.targets)
            yield r, self.targets[shift:] + self.targets[:shift]

    def pop3_steps_for(self, i: int) -> list:
        return self.pop3_steps[i % USERS]

    def imap_steps_for(self, i: int) -> list:
        return self.imap_steps[i % USERS]

    def warm_up(self) -> None:
        for target in self.targets:
            self.say(f"warming up {target.name}")
            self.run(
                load.closed_loop_sessions(
                    "127.0.0.1", target.pop3_port, self.pop3_steps_for, 10, 0.5
                )
            )
            self.run(
                load.closed_loop_sessions(
                    "127.0.0.1", target.imap_port, self.imap_steps_for, 10, 0.5
                )
            )
            self.run(
                load.transfer(
                    load.Pop3Retr,
                    "127.0.0.1",
                    target.pop3_port,
                    BENCH_USER,
                    BENCH_PASSWORD,
                    1,
                )
            )
            self.run(
                load.transfer(
                    load.ImapFetch,
                    "127.0.0.1",
                    target.imap_port,
                    BENCH_USER,
                    BENCH_PASSWORD,
                    1,
                )
            )

    def idle_memory(self) -> None:
        n = self.args.idle_sessions
        for target in self.targets:
            if not target.proxy:
                continue
            self.say(f"{n} idle IMAP sessions through {target.name}")
            before = target.rss()
            with self.metered("idle IMAP sessions"):
                transports = self.run(
                    load.open_idle_imap("127.0.0.1", target.imap_port, user, n)
                )
                time.sleep(1.0)
                after = target.rss()
            target.rss_per_session = (after - before) / len(transports)
            for transport in transports:
                transport.abort()
            self.run(asyncio.sleep(2.0))  # let the proxy and Dovecot drop them

    def logins(self, protocol: str) -> None:
        steps = self.pop3_steps_for if protocol == "pop3" else self.imap_steps_for
        for r, order in self.rounds():
            for target in order:
                self.say(f"{protocol} logins, round {r + 1}, {target.name}")
                port = target.pop3_port if protocol == "pop3" else target.imap_port
                cpu, helper = target.cpu(), target.helper_cpu()
                with self.metered(f"{protocol.upper()} logins"):
                    result = self.run(
                        load.closed_loop_sessions(
                            "127.0.0.1",
                            port,
                            steps,
                            self.args.clients,
                            self.args.duration,
                            r * 100_000,
                        )
                    )
                time.sleep(0.2)  # forked proxies (perdition) are reaped by their parent
                target.failures += result.failures
                if protocol == "pop3":
                    target.pop3_rates.append(result.rate)
                    target.pop3_latencies.extend(result.latencies)
                    if target.proxy and result.sessions:
                        target.cpu_per_1000.append(
                            (target.cpu() - cpu) / result.sessions * 1000
                        )
                        target.helper_per_1000.append(
                            (target.helper_cpu() - helper) / result.sessions * 1000
                        )
                else:
                    target.imap_rates.append(result.rate)
                    target.imap_latencies.extend(result.latencies)
                time.sleep(0.3)

    def transfers(self) -> None:
        for r, order in self.rounds():
            for target in order:
                self.say(f"RETR and FETCH, round {r + 1}, {target.name}")
                with self.metered("RETR / FETCH 20 MiB"):
                    for kind, port, results in (
                        (load.Pop3Retr, target.pop3_port, target.retr),
                        (load.ImapFetch, target.imap_port, target.fetch),
                    ):
                        done = self.run(
                            load.transfer(
                                kind,
                                "127.0.0.1",
                                port,
                                BENCH_USER,
                                BENCH_PASSWORD,
                                self.args.transfers,
                            )
                        )
                        results.append(
                            sum(size for size, _ in done)
                            / sum(seconds for _, seconds in done)
                            / 1e6
                        )

    # -- lookups (popbridge only) -------------------------------------------------------

    def lookup_throughput(self) -> None:
        pb = self.popbridge
        kinds = (
            ("policy", str(pb.policy_socket), policy_requests(), policy_complete),
            (
                "socketmap",
                str(pb.socketmap_socket),
                socketmap_requests(),
                socketmap_complete,
            ),
        )
        for name, path, requests, complete in kinds:
            rates, latencies = [], []
            for r in range(self.args.rounds):
                self.say(f"{name} lookups, round {r + 1}")
                with self.metered(f"{name} lookups"):
                    result = self.run(
                        load.lookup_load(
                            path, requests, complete, 10, self.args.lookup_duration
                        )
                    )
                rates.append(result.rate)
                latencies.extend(result.latencies)
            self.lookups[name] = (
                statistics.median(rates),
                percentile(latencies, 50),
                percentile(latencies, 99),
            )

    def lookup_under_load(self) -> None:
        """A paced policy client in a process of its own; once alone, once while POP3 sessions
        run through the same popbridge at --pop3-rate."""
        pb = self.popbridge
        target = next(t for t in self.targets if t.name == "popbridge")
        request = policy_requests()[0]
        context = multiprocessing.get_context("fork")
        results = {}
        for label in ("idle", "loaded"):
            self.say(f"policy latency, {label}")
            receive, send = context.Pipe(duplex=False)
            probe = context.Process(
                target=paced_probe,
                args=(
                    str(pb.policy_socket),
                    request,
                    self.args.probe_rate,
                    self.args.lookup_duration * 2,
                    send,
                ),
            )
            probe.start()
            with self.metered("lookups under POP3 load"):
                if label == "loaded":
                    pop3 = self.run(
                        load.paced_sessions(
                            "127.0.0.1",
                            target.pop3_port,
                            self.pop3_steps_for,
                            self.args.pop3_rate,
                            self.args.lookup_duration * 2,
                        )
                    )
                    results["pop3_rate"] = pop3.rate
                latencies = receive.recv()
            probe.join()
            results[label] = (percentile(latencies, 50), percentile(latencies, 99))
        self.lookups["under_load"] = results


def policy_requests() -> list[bytes]:
    """Postfix-like policy requests: the authorised loopback client and unknown addresses."""

    def request(address: str, n: int) -> bytes:
        attributes = {
            "request": "smtpd_access_policy",
            "protocol_state": "RCPT",
            "protocol_name": "ESMTP",
            "client_address": address,
            "client_name": "unknown",
            "client_port": str(40000 + n),
            "reverse_client_name": "unknown",
            "server_address": "127.0.0.1",
            "server_port": "25",
            "helo_name": "client.example.org",
            "sender": f"user{n}@example.org",
            "recipient": f"someone{n}@example.com",
            "recipient_count": "0",
            "queue_id": "",
            "instance": f"{n:x}.5f3a",
            "size": "0",
            "etrn_domain": "",
            "stress": "",
            "sasl_method": "",
            "sasl_username": "",
            "sasl_sender": "",
            "ccert_subject": "",
            "ccert_issuer": "",
            "ccert_fingerprint": "",
            "ccert_pubkey_fingerprint": "",
            "encryption_protocol": "",
            "encryption_cipher": "",
            "encryption_keysize": "0",
            "policy_context": "",
            "compatibility_level": "3.6",
            "mail_version": "3.7.11",
        }
        return "".join(f"{k}={v}\n" for k, v in attributes.items()).encode() + b"\n"

    return [
        request("127.0.0.1" if n % 2 == 0 else f"192.0.2.{n % 250 + 1}", n)
        for n in range(64)
    ]


def policy_complete(buffer: bytes) -> bool:
    return buffer.endswith(b"\n\n")


def socketmap_requests() -> list[bytes]:
    keys = []
    for n in range(64):
        payload = (
            "access 127.0.0.1" if n % 2 == 0 else f"access 192.0.2.{n % 250 + 1}"
        ).encode()
        keys.append(b"%d:%s," % (len(payload), payload))
    return keys


def socketmap_complete(buffer: bytes) -> bool:
    colon = buffer.find(b":")
    return colon > 0 and len(buffer) >= colon + int(buffer[:colon]) + 2


def paced_probe(path: str, request: bytes, rate: float, duration: float, send) -> None:  # type: ignore[no-untyped-def]
    """Blocking policy client, one request every 1/rate s; sends back the latencies."""
    latencies = []
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(path)
        start = time.perf_counter()
        n = 0
        while True:
            due = start + n / rate
            now = time.perf_counter()
            if now - start > duration:
                break
            if due > now:
                time.sleep(due - now)
            sent = time.perf_counter()
            s.sendall(request)
            buffer = b""
            while not buffer.endswith(b"\n\n"):
                chunk = s.recv(4096)
                if not chunk:
                    raise ConnectionError("policy socket closed")
                buffer += chunk
            latencies.append(time.perf_counter() - sent)
            n += 1
    send.send(latencies)


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p / 100))]


# ---------------------------------------------------------------- the table


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def report(bench: Bench, args: argparse.Namespace, skipped: list[str]) -> str:
    direct, proxies = bench.targets[0], bench.targets[1:]
    rows: list[tuple[str, str, list[str]]] = []

    def ratio_row(
        label: str,
        get: Callable[[Target], float | None],
        unit: str,
        fmt: str = "{:.0f}",
    ) -> None:
        base = get(direct)
        cells = []
        for t in proxies:
            value = get(t)
            cells.append(
                "n/a"
                if value is None or not base
                else f"{value / base:.2f} ({fmt.format(value)})"
            )
        rows.append(
            (label, "n/a" if base is None else f"{fmt.format(base)} {unit}", cells)
        )

    def proxy_row(label: str, get: Callable[[Target], float | None], fmt: str) -> None:
        rows.append(
            (
                label,
                "-",
                ["n/a" if get(t) is None else fmt.format(get(t)) for t in proxies],
            )
        )

    ratio_row(
        f"POP3 logins/s, {args.clients} clients", lambda t: median(t.pop3_rates), "/s"
    )
    ratio_row(
        f"IMAP logins/s, {args.clients} clients", lambda t: median(t.imap_rates), "/s"
    )
    ratio_row("POP3 RETR 20 MiB, MB/s", lambda t: median(t.retr), "MB/s")
    ratio_row("IMAP FETCH BODY[] 20 MiB, MB/s", lambda t: median(t.fetch), "MB/s")
    proxy_row(
        "proxy CPU s per 1000 POP3 sessions",
        lambda t: median(t.cpu_per_1000),
        "{:.2f} s",
    )
    proxy_row(
        f"proxy RSS per idle IMAP session (N={args.idle_sessions})",
        lambda t: None if t.rss_per_session is None else t.rss_per_session / 1024,
        "{:.1f} KiB",
    )
    for proto, get in (
        ("POP3", lambda t: t.pop3_latencies),
        ("IMAP", lambda t: t.imap_latencies),
    ):
        for p in (50, 99):
            ratio_row(
                f"{proto} session latency p{p}, ms",
                lambda t, g=get, p=p: percentile(g(t), p) * 1000 if g(t) else None,
                "ms",
                "{:.2f}",
            )
    for name in ("policy", "socketmap"):
        if name in bench.lookups:
            rate, p50, p99 = bench.lookups[name]  # type: ignore[misc]
            rows.append(
                (
                    f"{name} lookups/s, 10 persistent clients",
                    "-",
                    [f"{rate:.0f}/s"] + [""] * (len(proxies) - 1),
                )
            )
            rows.append(
                (
                    f"{name} latency p50 / p99, ms",
                    "-",
                    [f"{p50 * 1000:.2f} / {p99 * 1000:.2f}"]
                    + [""] * (len(proxies) - 1),
                )
            )
    loaded = bench.lookups.get("under_load")
    if loaded:
        (i50, i99), (l50, l99) = loaded["idle"], loaded["loaded"]  # type: ignore[index]
        rows.append(
            (
                f"policy p50 / p99 ms, alone (paced {args.probe_rate:.0f}/s)",
                "-",
                [f"{i50 * 1000:.2f} / {i99 * 1000:.2f}"] + [""] * (len(proxies) - 1),
            )
        )
        rows.append(
            (
                f"  same while {loaded['pop3_rate']:.0f} POP3 sessions/s run",
                "-",  # type: ignore[index]
                [f"{l50 * 1000:.2f} / {l99 * 1000:.2f}"] + [""] * (len(proxies) - 1),
            )
        )
        rows.append(
            (
                "  added by the POP3 load, p50 / p99 ms",
                "-",
                [f"{(l50 - i50) * 1000:+.2f} / {(l99 - i99) * 1000:+.2f}"]
                + [""] * (len(proxies) - 1),
            )
        )

    headers = ["measure", "direct"] + [t.name for t in proxies]
    table = [headers] + [[label, base, *cells] for label, base, cells in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(headers))]
    lines = []
    for n, row in enumerate(table):
        lines.append(
            "| "
            + " | ".join(
                cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i])
                for i, cell in enumerate(row)
            )
            + " |"
        )
        if n == 0:
            lines.append(
                "|"
                + "|".join(
                    "-" * (w + 1) + (":" if i else "-") for i, w in enumerate(widths)
                )
                + "|"
            )
    notes = [
        "",
        "Proxy cells: ratio to direct (absolute value); rates higher is better, latency lower is better.",
        (
            f"Rounds: {args.rounds} x {args.duration:.1f} s per login measure (medians); {args.transfers} transfers per round;"
            f" Dovecot tuning '{args.dovecot}'; popbridge store '{args.store}'."
        ),
    ]
    for t in proxies:
        if t.name == "nginx" and t.helper_per_1000:
            notes.append(
                f"{t.name}: its auth_http helper (not counted above) used {median(t.helper_per_1000):.2f} CPU s per 1000 POP3 sessions."
            )
        if t.failures:
            notes.append(
                f"{t.name}: {t.failures} sessions failed during the login measures."
            )
    if direct.failures:
        notes.append(
            f"direct: {direct.failures} sessions failed during the login measures."
        )
    notes.append(
        "CPU per phase: the load generator (this process), the whole machine, and what other processes took (noise):"
    )
    for phase, cost in bench.costs.items():
        if cost.wall and cost.total:
            cores = os.cpu_count() or 1
            others = max(0.0, cost.busy / cost.total * cores * cost.wall - cost.ours)
            notes.append(
                f"  {phase:<26} load generator {cost.own / cost.wall:4.0%} of one core;"
                f" machine busy {cost.busy / cost.total:4.0%} of {cores} cores;"
                f" processes not ours {others / cost.wall:4.0%} of one core"
            )
    for reason in skipped:
        notes.append(f"skipped: {reason}")
    return "\n".join(lines + notes)


# ---------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="about one minute: fewer, shorter rounds"
    )
    parser.add_argument(
        "--rounds", type=int, help="rounds per measure (default 5, quick 3)"
    )
    parser.add_argument(
        "--duration", type=float, help="seconds per login round (default 3, quick 1.5)"
    )
    parser.add_argument(
        "--clients", type=int, default=50, help="concurrent login clients (default 50)"
    )
    parser.add_argument(
        "--transfers", type=int, help="20 MiB transfers per round (default 3, quick 2)"
    )
    parser.add_argument(
        "--idle-sessions",
        type=int,
        help="idle logged-in IMAP sessions for the memory measure (default 2000, quick 1000)",
    )
    parser.add_argument(
        "--lookup-duration",
        type=float,
        help="seconds per lookup round (default 2, quick 1)",
    )
    parser.add_argument(
        "--pop3-rate",
        type=float,
        default=500,
        help="POP3 sessions/s beside the lookup latency probe (default 500)",
    )
    parser.add_argument(
        "--probe-rate",
        type=float,
        default=500,
        help="policy requests/s of the latency probe (default 500)",
    )
    parser.add_argument(
        "--store", default="memory", help="popbridge [ledger] store (default memory)"
    )
    parser.add_argument(
        "--dovecot",
        choices=("fast", "stock"),
        default="fast",
        help="fast: login and mail processes serve many clients (default); stock: a process per session",
    )
    parser.add_argument(
        "--nginx-workers",
        type=int,
        default=1,
        help="nginx worker_processes (default 1, like popbridge's one process)",
    )
    parser.add_argument(
        "--relay-python",
        default=sys.executable,
        help="interpreter for the twisted-relay column (default this one; /usr/bin/pypy3 "
        "with Twisted installed measures PyPy)",
    )
    parser.add_argument(
        "--only",
        default="",
        help="comma-separated subset of popbridge,nginx,perdition,twisted-relay",
    )
    parser.add_argument(
        "--skip",
        default="",
        help="comma-separated measures to skip: memory,logins (or just pop3-logins, imap-logins),transfers,lookups",
    )
    parser.add_argument(
        "--hold",
        action="store_true",
        help="print the ports and wait for Enter before stopping (for profiling)",
    )
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="progress on stderr"
    )
    args = parser.parse_args(argv)
    defaults = {
        "rounds": (3, 5),
        "duration": (1.5, 3.0),
        "transfers": (2, 3),
        "idle_sessions": (1000, 2000),
        "lookup_duration": (1.0, 2.0),
    }
    quick_or_full(args, defaults)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not running_as_root("bench/mail.py", "a private Dovecot"):
        return 2
    raise_open_files()
    only = set(filter(None, args.only.split(","))) or {
        "popbridge",
        "nginx",
        "perdition",
        "twisted-relay",
    }
    skip = set(filter(None, args.skip.split(",")))

    users = {user(i)[0]: user(i)[1] for i in range(USERS)} | {
        BENCH_USER: BENCH_PASSWORD
    }
    started: list[Callable[[], None]] = []
    skipped: list[str] = []
    try:
        dovecot = BenchDovecot(users=users)
        dovecot.tuning = args.dovecot
        dovecot.start()
        started.append(dovecot.cleanup)
        dovecot.deliver(BENCH_USER, message_of_size(MESSAGE_SIZE, "bench"))
        targets = [Target("direct", dovecot.port, dovecot.imap_port)]
        popbridge = Popbridge(
            backend_port=dovecot.port,
            imap_backend_port=dovecot.imap_port,
            store=args.store,
        )
        if "popbridge" in only:
            popbridge.start()
            started.append(popbridge.cleanup)
            assert popbridge.process is not None and popbridge.imap_port is not None
            pid = popbridge.process.pid
            targets.append(
                Target(
                    "popbridge", popbridge.port, popbridge.imap_port, pids=lambda: [pid]
                )
            )
        for peer_class in (Nginx, Perdition, TwistedRelay):
            if peer_class.name not in only:
                continue
            reason = peer_class.missing()
            if reason is not None:
                skipped.append(f"{peer_class.name}: {reason}")
                continue
            options = {Nginx: {"workers": args.nginx_workers}, TwistedRelay: {"python": args.relay_python}}
            peer = peer_class(dovecot.port, dovecot.imap_port, **options.get(peer_class, {}))  # type: ignore[operator]
            started.append(peer.stop)
            targets.append(
                Target(
                    peer.name,
                    peer.pop3_port,
                    peer.imap_port,
                    pids=peer.pids,
                    helper_cpu=peer.helper_cpu,
                )
            )
        if args.hold:
            for t in targets:
                print(
                    f"{t.name}: pop3 {t.pop3_port} imap {t.imap_port} pids {t.pids()}"
                )
            print(
                f"users u0000..u{USERS - 1:04d} / pw-NNNN; {BENCH_USER}/{BENCH_PASSWORD} has the 20 MiB message"
            )
            input("Enter stops everything> ")
            return 0
        dovecot_pid = dovecot.master_pid()
        assert dovecot_pid is not None
        bench = Bench(args, targets, popbridge, dovecot_pid)
        bench.warm_up()
        if "memory" not in skip:
            bench.idle_memory()
        for protocol in ("pop3", "imap"):
            if "logins" not in skip and f"{protocol}-logins" not in skip:
                bench.logins(protocol)
        if "transfers" not in skip:
            bench.transfers()
        if "lookups" not in skip and "popbridge" in only:
            bench.lookup_throughput()
            bench.lookup_under_load()
        print(report(bench, args, skipped))
        return 0
    except ServerError as e:
        print(f"bench/mail.py: {e}", file=sys.stderr)
        return 1
    finally:
        stop_all(started, "bench/mail.py")


if __name__ == "__main__":
    sys.exit(main())
