"""Ledger memory and lookup time at N live addresses (issue 9: 1,000,000 in <= 300 MB, O(1)).

Run: .venv/bin/python bench/ledger_size.py [N]   (in-process, memory store; prints RSS growth
per address, the median lookup time at a small and at the full size, to show it stays flat,
and how long a full garbage-collection pass takes with that many logins live)
"""

import gc
import statistics
import sys
import time

from twisted.internet.task import Clock

from popbridge.ledger.memory import MemoryLedger


def rss_kib() -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))


def address(n: int) -> str:
    return f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}" if n < 1 << 24 else f"2001:db8::{n:x}"


def median_lookup_us(ledger: MemoryLedger, count: int, probes: int = 20_000) -> float:
    samples = []
    for i in range(probes):
        a = address((i * 7919) % count)
        start = time.perf_counter()
        ledger.lookup_now(a)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples) * 1e6


def main() -> None:
    total = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    ledger = MemoryLedger(Clock(), ttl=1800)
    small = 10_000
    for i in range(small):
        ledger.record(address(i), f"user{i % 5000}", "pop3")
    at_small = median_lookup_us(ledger, small)
    gc.collect()
    before = rss_kib()
    for i in range(small, total):
        ledger.record(address(i), f"user{i % 5000}", "pop3")
    gc.collect()
    grown = rss_kib() - before
    at_full = median_lookup_us(ledger, total)
    started = time.perf_counter()
    gc.collect()
    full_pass_ms = (time.perf_counter() - started) * 1000
    print(f"live addresses           {total:>12,}")
    print(f"RSS growth               {grown / 1024:>12.1f} MiB ({grown * 1024 / (total - small):.0f} bytes per address)")
    print(f"lookup median at {small:,}  {at_small:>8.2f} us")
    print(f"lookup median at {total:,}  {at_full:>8.2f} us (flat = O(1))")
    print(f"full GC pass at {total:,}  {full_pass_ms:>8.1f} ms (the daemon stalls that long)")


if __name__ == "__main__":
    main()
