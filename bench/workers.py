#!/usr/bin/env python3
"""popbridge with ``[daemon] workers``: what the split buys, measured against one process.

Run as root from the repository (it starts a private Dovecot, as bench/mail.py does):

    .venv/bin/python bench/workers.py            # about 4 minutes
    .venv/bin/python bench/workers.py --quick    # about 2 minutes

Tables (medians over rounds; daemons take turns inside each round, the order rotating):

1. Relay lookups beside mail: a paced policy client (``--probe-rate``, 5,000/s) in a process of
   its own, p50/p99 alone and beside ``--pop3-rate`` (500) POP3 sessions/s through the same
   daemon, for workers = 0, 1 and 2.
2. POP3 logins/s with ``--clients`` (50) concurrent clients against Dovecot: direct, and
   through popbridge with workers = 0, 1, 2; and CPU seconds per 1000 POP3 sessions of every
   popbridge process (main and workers) beside bench/twisted_relay.py in the same rounds.
3. Scaling when the proxy is the limit: POP3 logins/s through popbridge in front of
   bench/tiny_pop3.py (a backend that costs next to nothing), popbridge pinned with taskset to
   one core and to two.

The machine's own load is printed under the tables: on a shared machine every figure is noise
around the truth, so compare columns of one run, never runs. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import load
from bench.mail import LOGIN_ROUNDS, USERS, Machine, paced_probe, percentile, policy_requests, quick_or_full, raise_open_files, round_options, running_as_root, stop_all, user
from bench.peers import BenchDovecot, TwistedRelay, tree_cpu
from tests.integration.servers.popbridge_daemon import Popbridge
from tests.integration.servers.processes import ServerError, free_port, stop_process, tcp_connectable, wait_until

HERE = Path(__file__).resolve().parent


@dataclass
class PinnedPopbridge(Popbridge):
    """The real daemon, with ``[daemon] workers`` and, when `cpus` is set, under ``taskset -c``."""

    workers: int = 0
    cpus: str = ""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.workers:
            self.extra_config += f"\n[daemon]\nworkers = {self.workers}\n"

    def _command(self) -> list[str]:
        command = super()._command()
        return ["taskset", "-c", self.cpus, *command] if self.cpus else command

    def start(self) -> PinnedPopbridge:
        super().start()
        wait_until(lambda: self.output().count(") serving") >= self.workers, "workers to serve", timeout=30)
        return self

    def cpu(self) -> float:
        assert self.process is not None
        return tree_cpu(self.process.pid)


@dataclass
class Row:
    name: str
    port: int
    cpu: Callable[[], float] | None = None  # CPU seconds of the proxy's processes; None: not a proxy
    rates: list[float] = field(default_factory=list)
    cpu_per_1000: list[float] = field(default_factory=list)
    failures: int = 0


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def steps_for(i: int) -> list:
    return load.pop3_login_steps(*user(i))


def login_rounds(rows: list[Row], args: argparse.Namespace, say: Callable[[str], None]) -> None:
    loop = load.new_loop()
    for r in range(args.rounds):
        shift = r % len(rows)
        for row in rows[shift:] + rows[:shift]:
            say(f"POP3 logins, round {r + 1}, {row.name}")
            before = row.cpu() if row.cpu is not None else 0.0
            result = loop.run_until_complete(
                load.closed_loop_sessions("127.0.0.1", row.port, steps_for, args.clients, args.duration, r * 100_000)
            )
            time.sleep(0.3)
            row.rates.append(result.rate)
            row.failures += result.failures
            if result.sessions and row.cpu is not None:
                row.cpu_per_1000.append((row.cpu() - before) / result.sessions * 1000)
    loop.close()


def lookups_beside_mail(daemon: PinnedPopbridge, args: argparse.Namespace) -> dict[str, tuple[float, float]]:
    loop = load.new_loop()
    context = multiprocessing.get_context("fork")
    request = policy_requests()[0]
    results = {}
    for label in ("alone", "beside POP3"):
        receive, send = context.Pipe(duplex=False)
        probe = context.Process(
            target=paced_probe, args=(str(daemon.policy_socket), request, args.probe_rate, args.lookup_duration, send)
        )
        probe.start()
        if label != "alone":
            loop.run_until_complete(
                load.paced_sessions("127.0.0.1", daemon.port, steps_for, args.pop3_rate, args.lookup_duration)
            )
        latencies = receive.recv()
        probe.join()
        results[label] = (percentile(latencies, 50), percentile(latencies, 99))
    loop.close()
    return results


class TinyPop3:
    def __init__(self) -> None:
        self.port = free_port()
        self.process = subprocess.Popen(
            [sys.executable, str(HERE / "tiny_pop3.py"), str(self.port)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL
        )
        wait_until(lambda: tcp_connectable("127.0.0.1", self.port), "tiny POP3 backend")

    def stop(self) -> None:
        stop_process(self.process, 15)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, parents=[round_options("popbridge")]
    )
    parser.add_argument("--probe-rate", type=float, default=5000, help="policy requests/s of the probe (default 5000)")
    parser.add_argument("--pop3-rate", type=float, default=500, help="POP3 sessions/s beside the probe (default 500)")
    parser.add_argument("--skip", default="", help="comma-separated: lookups,logins,scaling")
    args = parser.parse_args(argv)
    quick_or_full(args, LOGIN_ROUNDS)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not running_as_root("bench/workers.py", "a private Dovecot"):
        return 2
    raise_open_files()
    skip = set(filter(None, args.skip.split(",")))

    def say(text: str) -> None:
        if args.verbose:
            print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)

    started: list[Callable[[], None]] = []
    lines: list[str] = []
    busy_before, total_before = Machine.jiffies()
    try:
        dovecot = BenchDovecot(users={user(i)[0]: user(i)[1] for i in range(USERS)})
        dovecot.start()
        started.append(dovecot.cleanup)

        def popbridge(workers: int, backend: int, cpus: str = "") -> PinnedPopbridge:
            daemon = PinnedPopbridge(backend_port=backend, store=args.store, workers=workers, cpus=cpus)
            started.append(daemon.cleanup)
            return daemon.start()

        daemons = {workers: popbridge(workers, dovecot.port) for workers in (0, 1, 2)}

        if "lookups" not in skip:
            lines += [
                f"## Policy latency, paced {args.probe_rate:.0f}/s, alone and beside {args.pop3_rate:.0f} POP3 sessions/s",
                "",
                "| workers | alone p50 | alone p99 | beside POP3 p50 | beside POP3 p99 |",
                "|---|---|---|---|---|",
            ]
            for workers, daemon in daemons.items():
                rounds = []
                for r in range(args.rounds):
                    say(f"policy probe, workers = {workers}, round {r + 1}")
                    rounds.append(lookups_beside_mail(daemon, args))
                cells = [
                    f"{median([result[label][n] for result in rounds]) * 1000:.2f} ms"
                    for label in ("alone", "beside POP3") for n in (0, 1)
                ]
                lines.append(f"| {workers} | " + " | ".join(cells) + " |")
            lines.append("")

        if "logins" not in skip:
            relay = TwistedRelay(dovecot.port, dovecot.imap_port)
            started.append(relay.stop)
            rows = [Row("direct Dovecot", dovecot.port)]
            rows += [Row(f"popbridge workers = {w}", d.port, d.cpu) for w, d in daemons.items()]
            rows.append(Row("bench/twisted_relay.py", relay.pop3_port, lambda: tree_cpu(relay.process.pid)))
            login_rounds(rows, args, say)
            relay_cpu = median(rows[-1].cpu_per_1000)
            lines += [
                f"## POP3 logins/s, {args.clients} clients, Dovecot backend; CPU s per 1000 sessions (all processes)",
                "",
                "| target | logins/s | CPU s / 1000 sessions | CPU vs twisted relay | failed sessions |",
                "|---|---|---|---|---|",
            ]
            for row in rows:
                cpu = median(row.cpu_per_1000) if row.cpu_per_1000 else None
                vs = f"{cpu / relay_cpu:.2f}x" if cpu is not None and row.name != "direct Dovecot" else "-"
                lines.append(
                    f"| {row.name} | {median(row.rates):.0f} | {'-' if cpu is None else f'{cpu:.2f}'} | {vs} | {row.failures} |"
                )
            lines.append("")

        if "scaling" not in skip:
            tiny = TinyPop3()
            started.append(tiny.stop)
            cores = len(os.sched_getaffinity(0))
            two = "0-1" if cores >= 2 else "0"
            pinned = [(w, cpus, popbridge(w, tiny.port, cpus)) for w in (0, 1, 2) for cpus in ("0", two)]
            rows = [Row(f"workers = {w}, taskset -c {cpus}", d.port, d.cpu) for w, cpus, d in pinned]
            login_rounds(rows, args, say)
            lines += [
                f"## Scaling: POP3 logins/s, {args.clients} clients, near-zero-CPU backend (bench/tiny_pop3.py)",
                "",
                "| popbridge | logins/s | CPU s / 1000 sessions |",
                "|---|---|---|",
            ]
            lines += [f"| {row.name} | {median(row.rates):.0f} | {median(row.cpu_per_1000):.2f} |" for row in rows]
            lines.append("")
    except ServerError as e:
        print(f"bench/workers.py: {e}", file=sys.stderr)
        return 1
    finally:
        stop_all(started, "bench/workers.py")
    busy, total = Machine.jiffies()
    lines.append(
        f"Machine: {len(os.sched_getaffinity(0))} CPUs, {100 * (busy - busy_before) / max(1, total - total_before):.0f}% busy "
        "over the run (this benchmark and anything else running)."
    )
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
