#!/usr/bin/env python3
"""What the Dovecot feed costs: logins straight to Dovecot with the feed on against the same
Dovecot setup with it off, against popbridge's proxy and nginx's mail proxy, in one run.

Run as root from the repository (it starts private Dovecots as the fixtures do):

    .venv/bin/python bench/feed.py            # full run, about 3 minutes
    .venv/bin/python bench/feed.py --quick    # about a minute

Two tuned Dovecots with the same users: "direct" has no auth policy; "dovecot+feed" reports
every authentication to a feed-only popbridge (docs/deploy/dovecot.md, "Dovecot without a proxy":
``auth_policy_report_after_auth = yes``, both checks off, ``record_on = "report"``).
popbridge's proxy and nginx (when installed) sit in front of "direct"; with nginx installed,
"dovecot+null" is a third Dovecot whose policy server is nginx answering "continue" and nothing
else: what Dovecot's own side of the auth policy costs, the floor under any feed. Each round
the targets take turns in a rotating order; the table shows medians. Rows:

- POP3 / IMAP logins/s with 50 clients (source addresses 127.0.0.2-254), ratio to direct;
- CPU s per 1000 POP3 logins of the whole mail path: Dovecot's process tree plus the proxy
  (nginx: plus its auth_http helper) or, for the feed, the feed daemon;
- the feed daemon's CPU s per 1000 reports (POP3 and IMAP rounds together);
- a paced policy client's p50 / p99 against the feed daemon, alone and while POP3 logins go
  to "dovecot+feed" at --report-rate (each one a report).
Not part of the test suite.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import shutil
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
from bench.mail import LOGIN_ROUNDS, USERS, Machine, Metered, PhaseCost, median, paced_probe, percentile, policy_requests, quick_or_full, raise_open_files, round_options, running_as_root, stop_all, user
from bench.peers import BenchDovecot, Nginx, tree_cpu
from tests.integration.servers.popbridge_daemon import FeedPopbridge, Popbridge
from tests.integration.servers.processes import ServerError, find_binary, free_port, short_directory, stop_process, tcp_connectable, wait_until

FEED_CHECKS = ("auth_policy_check_before_auth = no", "auth_policy_check_after_auth = no")


class NullPolicy:
    """nginx answering every auth-policy request with the "continue" JSON and doing nothing else:
    what Dovecot's own side of the auth policy costs, the floor under any policy server."""

    def __init__(self) -> None:
        self.directory = short_directory("pb-bench-null-")
        self.port = free_port()
        config = self.directory / "nginx.conf"
        config.write_text(
            f"""\
daemon off;
master_process off;
worker_processes 1;
pid {self.directory}/nginx.pid;
error_log {self.directory}/error.log warn;
events {{
    worker_connections 4000;
}}
http {{
    access_log off;
    server {{
        listen 127.0.0.1:{self.port};
        location / {{
            default_type application/json;
            return 200 '{{"status":0,"msg":""}}';
        }}
    }}
}}
"""
        )
        nginx = find_binary("nginx")
        assert nginx is not None
        self.process = subprocess.Popen(
            [nginx, "-p", str(self.directory), "-c", str(config), "-e", str(self.directory / "error.log")],
            stdin=subprocess.DEVNULL,
        )
        wait_until(lambda: tcp_connectable("127.0.0.1", self.port), "nginx null policy server")

    def dovecot_settings(self) -> str:
        lines = [f"auth_policy_server_url = http://127.0.0.1:{self.port}/", "auth_policy_hash_nonce = bench"]
        return "\n".join([*lines, "auth_policy_report_after_auth = yes", *FEED_CHECKS, ""])

    def stop(self) -> None:
        stop_process(self.process, 15)
        shutil.rmtree(self.directory, ignore_errors=True)


@dataclass
class Target:
    name: str
    pop3_port: int
    imap_port: int
    path_cpu: Callable[[], float]  # CPU seconds of every process on this target's mail path
    pop3_rates: list[float] = field(default_factory=list)
    imap_rates: list[float] = field(default_factory=list)
    cpu_per_1000: list[float] = field(default_factory=list)
    failures: int = 0


def dovecot_cpu(dovecot: BenchDovecot) -> Callable[[], float]:
    pid = dovecot.master_pid()
    assert pid is not None
    return lambda: tree_cpu(pid)


def process_cpu(daemon: Popbridge) -> Callable[[], float]:
    assert daemon.process is not None
    pid = daemon.process.pid
    return lambda: tree_cpu(pid)


class FeedBench:
    def __init__(self, args: argparse.Namespace, targets: list[Target], feed: FeedPopbridge, feed_cpu: Callable[[], float]) -> None:
        self.args, self.targets, self.feed, self.feed_cpu = args, targets, feed, feed_cpu
        self.loop = load.new_loop()
        asyncio.set_event_loop(self.loop)
        self.steps = {
            "pop3": [load.pop3_login_steps(*user(i)) for i in range(USERS)],
            "imap": [load.imap_login_steps(*user(i)) for i in range(USERS)],
        }
        self.costs: dict[str, PhaseCost] = {}
        self.report_cpu: list[float] = []  # feed daemon CPU s per 1000 reports, per round
        self.latency: dict[str, tuple[float, float]] = {}
        self.report_rate = 0.0

    def say(self, text: str) -> None:
        if self.args.verbose:
            print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)

    def run(self, coroutine):  # type: ignore[no-untyped-def]
        return self.loop.run_until_complete(coroutine)

    def our_cpu(self) -> float:
        return Machine.own_cpu() + sum(t.path_cpu() for t in self.targets) + self.feed_cpu()

    def steps_for(self, protocol: str) -> Callable[[int], list]:
        steps = self.steps[protocol]
        return lambda i: steps[i % USERS]

    def warm_up(self, dovecots: list[BenchDovecot]) -> None:
        """Every user logs in once per protocol to each Dovecot (a first login writes the
        Maildir's indexes and costs several times a later one), then each target briefly."""
        for dovecot in dovecots:
            self.say(f"first logins on {dovecot.instance_name}")
            for protocol, port in (("pop3", dovecot.port), ("imap", dovecot.imap_port)):
                for first in range(0, USERS, 50):
                    result = load.LoadResult()
                    steps = self.steps[protocol]
                    self.run(asyncio.gather(*(load.one_session("127.0.0.1", port, steps[i], i, result) for i in range(first, first + 50))))
        for target in self.targets:
            self.say(f"warming up {target.name}")
            for protocol, port in (("pop3", target.pop3_port), ("imap", target.imap_port)):
                self.run(load.closed_loop_sessions("127.0.0.1", port, self.steps_for(protocol), 10, 0.5))

    def logins(self, protocol: str) -> None:
        for r in range(self.args.rounds):
            shift = r % len(self.targets)
            for target in self.targets[shift:] + self.targets[:shift]:
                self.say(f"{protocol} logins, round {r + 1}, {target.name}")
                port = target.pop3_port if protocol == "pop3" else target.imap_port
                cpu, feed_cpu = target.path_cpu(), self.feed_cpu()
                with Metered(self.costs.setdefault(f"{protocol.upper()} logins", PhaseCost()), self.our_cpu):
                    result = self.run(
                        load.closed_loop_sessions(
                            "127.0.0.1", port, self.steps_for(protocol), self.args.clients, self.args.duration, r * 100_000
                        )
                    )
                time.sleep(0.3)  # let the last reports arrive before reading the CPU
                target.failures += result.failures
                (target.pop3_rates if protocol == "pop3" else target.imap_rates).append(result.rate)
                if result.sessions and protocol == "pop3":
                    target.cpu_per_1000.append((target.path_cpu() - cpu) / result.sessions * 1000)
                if result.sessions and target.name == "dovecot+feed":
                    self.report_cpu.append((self.feed_cpu() - feed_cpu) / result.sessions * 1000)

    def lookups_while_reporting(self) -> None:
        """A paced policy client in a process of its own, alone and while reports arrive."""
        feed_target = next(t for t in self.targets if t.name == "dovecot+feed")
        request = policy_requests()[0]
        context = multiprocessing.get_context("fork")
        for label in ("alone", "reports"):
            self.say(f"policy latency, {label}")
            receive, send = context.Pipe(duplex=False)
            duration = self.args.lookup_duration
            probe = context.Process(
                target=paced_probe, args=(str(self.feed.policy_socket), request, self.args.probe_rate, duration, send)
            )
            before = self.feed.feed_count("report", "recorded")
            probe.start()
            with Metered(self.costs.setdefault(f"lookups, {label}", PhaseCost()), self.our_cpu):
                if label == "reports":
                    self.run(
                        load.paced_sessions(
                            "127.0.0.1", feed_target.pop3_port, self.steps_for("pop3"), self.args.report_rate, duration
                        )
                    )
                latencies = receive.recv()
            probe.join()
            if label == "reports":
                self.report_rate = (self.feed.feed_count("report", "recorded") - before) / duration
            self.latency[label] = (percentile(latencies, 50), percentile(latencies, 99))


def table(bench: FeedBench, args: argparse.Namespace, skipped: list[str]) -> str:
    direct, others = bench.targets[0], bench.targets[1:]
    rows: list[list[str]] = [["measure", "direct"] + [t.name for t in others]]

    def ratio_row(label: str, get: Callable[[Target], float | None], fmt: str) -> None:
        base = get(direct)
        cells = [
            "n/a" if get(t) is None or not base else f"{get(t) / base:.2f} ({fmt.format(get(t))})"  # type: ignore[operator]
            for t in others
        ]
        rows.append([label, "n/a" if base is None else fmt.format(base), *cells])

    ratio_row(f"POP3 logins/s, {args.clients} clients", lambda t: median(t.pop3_rates), "{:.0f}/s")
    ratio_row(f"IMAP logins/s, {args.clients} clients", lambda t: median(t.imap_rates), "{:.0f}/s")
    ratio_row("mail path CPU s per 1000 POP3 logins", lambda t: median(t.cpu_per_1000), "{:.2f}")
    blank = [""] * (len(others) - 1)
    cpu = median(bench.report_cpu)
    rows.append(["feed daemon CPU s per 1000 reports", "-", "n/a" if cpu is None else f"{cpu:.2f}", *blank])
    if bench.latency:
        (a50, a99), (r50, r99) = bench.latency["alone"], bench.latency["reports"]
        rows.append([f"policy p50 / p99 ms, paced {args.probe_rate:.0f}/s, alone", "-", f"{a50 * 1e3:.2f} / {a99 * 1e3:.2f}", *blank])
        rows.append([f"  same while {bench.report_rate:.0f} reports/s arrive", "-", f"{r50 * 1e3:.2f} / {r99 * 1e3:.2f}", *blank])
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["| " + " | ".join(c.ljust(widths[i]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(row)) + " |" for row in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 1) + (":" if i else "-") for i, w in enumerate(widths)) + "|")
    notes = [
        "",
        "Cells: ratio to direct (absolute value). Mail path CPU: Dovecot's tree plus the proxy, nginx's auth_http"
        " helper, or the feed daemon.",
        f"Rounds: {args.rounds} x {args.duration:.1f} s per login measure (medians); Dovecot tuning 'fast'; store '{args.store}'.",
    ]
    notes += [f"{t.name}: {t.failures} sessions failed during the login measures." for t in bench.targets if t.failures]
    cores = os.cpu_count() or 1
    for phase, cost in bench.costs.items():
        if cost.wall and cost.total:
            others_cpu = max(0.0, cost.busy / cost.total * cores * cost.wall - cost.ours)
            notes.append(
                f"  {phase:<22} machine busy {cost.busy / cost.total:4.0%} of {cores} cores;"
                f" processes not ours {others_cpu / cost.wall:4.0%} of one core"
            )
    notes += [f"skipped: {reason}" for reason in skipped]
    return "\n".join(lines + notes)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, parents=[round_options("the feed daemon's")]
    )
    parser.add_argument("--report-rate", type=float, default=500, help="POP3 logins/s, so reports/s, beside the probe (default 500)")
    parser.add_argument("--probe-rate", type=float, default=500, help="policy requests/s of the latency probe (default 500)")
    args = parser.parse_args(argv)
    quick_or_full(args, LOGIN_ROUNDS)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not running_as_root("bench/feed.py", "private Dovecots"):
        return 2
    raise_open_files()
    users = {user(i)[0]: user(i)[1] for i in range(USERS)}
    started: list[Callable[[], None]] = []
    skipped: list[str] = []
    try:
        direct = BenchDovecot(users=users)
        direct.start()
        started.append(direct.cleanup)
        feed = FeedPopbridge(backend_port=0, store=args.store)
        feed.start()
        started.append(feed.cleanup)
        fed = BenchDovecot(users=users, extra_config=feed.dovecot_settings("dovecot", *FEED_CHECKS))
        fed.start()
        started.append(fed.cleanup)
        proxy = Popbridge(backend_port=direct.port, imap_backend_port=direct.imap_port, store=args.store)
        proxy.start()
        started.append(proxy.cleanup)
        assert proxy.imap_port is not None
        dovecots = [direct, fed]
        direct_cpu, proxy_cpu = dovecot_cpu(direct), process_cpu(proxy)
        feed_cpu, fed_cpu = process_cpu(feed), dovecot_cpu(fed)
        targets = [
            Target("direct", direct.port, direct.imap_port, direct_cpu),
            Target("dovecot+feed", fed.port, fed.imap_port, lambda: fed_cpu() + feed_cpu()),
            Target("popbridge proxy", proxy.port, proxy.imap_port, lambda: direct_cpu() + proxy_cpu()),
        ]
        reason = Nginx.missing()
        if reason is None:
            null = NullPolicy()
            started.append(null.stop)
            nulled = BenchDovecot(users=users, extra_config=null.dovecot_settings())
            nulled.start()
            started.append(nulled.cleanup)
            dovecots.append(nulled)
            nulled_cpu, null_pid = dovecot_cpu(nulled), null.process.pid
            targets.insert(2, Target("dovecot+null", nulled.port, nulled.imap_port, lambda: nulled_cpu() + tree_cpu(null_pid)))
            nginx = Nginx(direct.port, direct.imap_port)
            started.append(nginx.stop)
            targets.append(
                Target("nginx", nginx.pop3_port, nginx.imap_port, lambda: direct_cpu() + tree_cpu(nginx.process.pid) + nginx.helper_cpu())
            )
        else:
            skipped.append(f"nginx: {reason}")
        bench = FeedBench(args, targets, feed, feed_cpu)
        bench.warm_up(dovecots)
        bench.logins("pop3")
        bench.logins("imap")
        bench.lookups_while_reporting()
        print(table(bench, args, skipped))
        return 0
    except ServerError as e:
        print(f"bench/feed.py: {e}", file=sys.stderr)
        return 1
    finally:
        stop_all(started, "bench/feed.py")


if __name__ == "__main__":
    sys.exit(main())
