#!/usr/bin/env python3
"""Profile the popbridge daemon under the benchmark's loads with py-spy (pip install py-spy).

    .venv/bin/python bench/profile.py [--seconds 10] [--out /tmp/popbridge-profiles]

Starts the benchmark's Dovecot and popbridge, then for each load (POP3 logins at 50 clients,
IMAP logins, POP3 RETR and IMAP FETCH of the 20 MiB message, policy lookups) samples the daemon
with `py-spy record` and writes OUT/LOAD.svg (flame graph) and OUT/LOAD.txt (collapsed stacks),
then prints the functions with the most samples, by own time and inclusive time, with the
daemon's CPU seconds per session or per MB from /proc.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import load
from bench.mail import (
    BENCH_PASSWORD,
    BENCH_USER,
    MESSAGE_SIZE,
    USERS,
    policy_complete,
    policy_requests,
    user,
)
from bench.peers import BenchDovecot, tree_cpu
from tests.integration.servers.clients import message_of_size
from tests.integration.servers.popbridge_daemon import Popbridge


def py_spy() -> str:
    found = shutil.which(
        "py-spy", path=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"
    )
    if found is None:
        sys.exit("py-spy is not installed: .venv/bin/pip install py-spy")
    return found


def record(
    pid: int, seconds: float, out: Path, fmt: str, native: bool = False
) -> subprocess.Popen[bytes]:
    argv = [
        py_spy(),
        "record",
        "--pid",
        str(pid),
        "--duration",
        str(int(seconds)),
        "--rate",
        "200",
        "--format",
        fmt,
        "--output",
        str(out),
        "--nonblocking",
        "--gil",
    ]
    if native:
        argv.append("--native")
    return subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def summarise(collapsed: Path, top: int) -> str:
    """Own and inclusive sample shares per function from py-spy's raw (collapsed) output."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        n = int(count)
        frames = [
            f.split(" (")[0]
            + " ("
            + f.split(" (")[1].split(":")[0].split("/")[-1]
            + ")"
            if " (" in f
            else f
            for f in stack.split(";")
        ]
        total += n
        own[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n
    lines = [
        f"  {total} samples (py-spy --gil: only while popbridge holds the GIL, i.e. runs Python); own time:"
    ]
    lines += [f"    {n / total:6.1%}  {name}" for name, n in own.most_common(top)]
    lines.append("  inclusive time:")
    lines += [
        f"    {n / total:6.1%}  {name}" for name, n in inclusive.most_common(top + 10)
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--out", type=Path, default=Path("/tmp/popbridge-profiles"))
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--store", default="memory")
    args = parser.parse_args()
    args.out.mkdir(exist_ok=True)
    users = {user(i)[0]: user(i)[1] for i in range(USERS)} | {
        BENCH_USER: BENCH_PASSWORD
    }
    dovecot = BenchDovecot(users=users)
    dovecot.start()
    popbridge = None
    try:
        dovecot.deliver(BENCH_USER, message_of_size(MESSAGE_SIZE, "bench"))
        popbridge = Popbridge(
            backend_port=dovecot.port,
            imap_backend_port=dovecot.imap_port,
            store=args.store,
        ).start()
        assert popbridge.process is not None and popbridge.imap_port is not None
        pid = popbridge.process.pid
        loop = load.new_loop()
        asyncio.set_event_loop(loop)
        pop3 = [load.pop3_login_steps(*user(i)) for i in range(USERS)]
        imap = [load.imap_login_steps(*user(i)) for i in range(USERS)]
        loop.run_until_complete(
            load.closed_loop_sessions(
                "127.0.0.1", popbridge.port, lambda i: pop3[i % USERS], 10, 1
            )
        )
        loop.run_until_complete(
            load.transfer(
                load.Pop3Retr,
                "127.0.0.1",
                popbridge.port,
                BENCH_USER,
                BENCH_PASSWORD,
                1,
            )
        )
        loop.run_until_complete(
            load.transfer(
                load.ImapFetch,
                "127.0.0.1",
                popbridge.imap_port,
                BENCH_USER,
                BENCH_PASSWORD,
                1,
            )
        )

        async def transfers(kind: type, port: int) -> tuple[int, float]:
            deadline = time.perf_counter() + args.seconds
            total = 0
            while time.perf_counter() < deadline:
                done = await load.transfer(
                    kind, "127.0.0.1", port, BENCH_USER, BENCH_PASSWORD, 3
                )
                total += sum(size for size, _ in done)
            return total, 0.0

        async def lookups() -> load.LoadResult:
            return await load.lookup_load(
                str(popbridge.policy_socket),
                policy_requests(),
                policy_complete,
                10,
                args.seconds,
            )

        loads = {
            "pop3-logins": lambda: load.closed_loop_sessions(
                "127.0.0.1", popbridge.port, lambda i: pop3[i % USERS], 50, args.seconds
            ),
            "imap-logins": lambda: load.closed_loop_sessions(
                "127.0.0.1",
                popbridge.imap_port,
                lambda i: imap[i % USERS],
                50,
                args.seconds,
            ),
            "pop3-retr": lambda: transfers(load.Pop3Retr, popbridge.port),
            "imap-fetch": lambda: transfers(load.ImapFetch, popbridge.imap_port),
            "policy-lookups": lookups,
        }
        for name, make in loads.items():
            raw = args.out / f"{name}.txt"
            recorders = [record(pid, args.seconds + 1, raw, "raw")]
            time.sleep(0.5)  # py-spy attaches
            cpu = tree_cpu(pid)
            started = time.perf_counter()
            result = loop.run_until_complete(make())
            wall = time.perf_counter() - started
            used = tree_cpu(pid) - cpu
            for recorder in recorders:
                recorder.wait(60)
            if isinstance(result, tuple):
                mb = result[0] / 1e6
                per = f"{mb / wall:.0f} MB/s; popbridge CPU {used:.2f} s = {used / wall:.0%} of a core; {used / mb * 1000:.2f} ms per MB"
            else:
                per = (
                    f"{result.rate:.0f}/s; popbridge CPU {used:.2f} s = {used / wall:.0%} of a core;"
                    f" {used / max(result.sessions, 1) * 1e6:.0f} us per session/request"
                )
            print(f"== {name}: {per}")
            if raw.exists():
                print(summarise(raw, args.top))
            else:
                print("  (py-spy wrote nothing)")
            sys.stdout.flush()
    finally:
        if popbridge is not None:
            popbridge.cleanup()
        dovecot.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
