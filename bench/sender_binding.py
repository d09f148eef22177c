#!/usr/bin/env python3
"""What `sender_binding` costs a policy answer, in process (no sockets, no reactor).

    .venv/bin/python bench/sender_binding.py [--requests 100000] [--rounds 7] [--map-entries 100000]

One PolicyResponder on a memory ledger answers the same Postfix-like requests (every client
logged in) with binding off, then on with a sender owned through `domains`, owned through a
map of `--map-entries` entries, owned through a cached LDAP entry, and not owned (a mismatch,
logged at warn into Twisted's start-up buffer, as a daemon's would be formatted). Prints each case's median and range of microseconds per request over the
rounds and its ratio to binding off measured in the same run. The answers themselves are the
unit tests' business; this only times them.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from twisted.internet.task import Clock  # noqa: E402

from popbridge.settings import LookupConfig  # noqa: E402
from popbridge.directory import MemoryDirectory  # noqa: E402
from popbridge.directory.ldap_search import UserFacts  # noqa: E402
from popbridge.ledger.memory import MemoryLedger  # noqa: E402
from popbridge.lookup.policy import PolicyResponder  # noqa: E402
from popbridge.metrics.counters import Counters  # noqa: E402
from popbridge.senders.map import SenderMap, SenderRules  # noqa: E402
from popbridge.senders.owners import SenderOwners  # noqa: E402
from popbridge.verdict import Verdicts  # noqa: E402
from popbridge.wire.policy import PolicyDecoder, PolicyRequest  # noqa: E402

CLIENTS = 256


def requests(sender: str) -> list[PolicyRequest]:
    """Postfix-like requests (the attributes Postfix 3.7 sends) from CLIENTS logged-in addresses."""
    text = "".join(
        f"request=smtpd_access_policy\nprotocol_state=RCPT\nprotocol_name=ESMTP\nclient_address=10.0.{n // 250}.{n % 250 + 1}\n"
        f"client_name=unknown\nclient_port={40000 + n}\nreverse_client_name=unknown\nhelo_name=client.example.org\n"
        f"sender={sender.format(n=n)}\nrecipient=someone{n}@example.com\nrecipient_count=0\nqueue_id=\n"
        f"instance={n:x}.5f3a\nsize=0\nsasl_method=\nsasl_username=\nsasl_sender=\npolicy_context=\n\n"
        for n in range(CLIENTS)
    )
    return PolicyDecoder(max_request=1 << 30).feed(text.encode())


def responder(binding: bool, map_entries: int) -> PolicyResponder:
    clock = Clock()
    ledger = MemoryLedger(clock, ttl=1800)
    for n in range(CLIENTS):
        ledger.record(f"10.0.{n // 250}.{n % 250 + 1}", f"user{n}", "pop3")
    owners = {f"alias{n}@example.net": frozenset({f"user{n % CLIENTS}"}) for n in range(map_entries)}
    directory = MemoryDirectory({f"user{n}": UserFacts(addresses=frozenset({f"user{n}@ldap.example"})) for n in range(CLIENTS)})
    senders = SenderOwners(SenderRules(SenderMap(owners), frozenset({"example.org"})), directory)
    config = LookupConfig("policy", "unix:address=/tmp/bench", sender_binding=binding)
    return PolicyResponder(config, Verdicts(ledger, directory, senders), Counters(started=0))


def per_request(respond: PolicyResponder, batch: list[PolicyRequest], total: int) -> float:
    """Microseconds per answer over `total` answers."""
    rounds = total // len(batch)
    started = time.perf_counter()
    for _ in range(rounds):
        for request in batch:
            respond(request)
    return (time.perf_counter() - started) / (rounds * len(batch)) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=100_000, help="answers per case and round")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--map-entries", type=int, default=100_000)
    args = parser.parse_args()
    cases = {
        "binding off": (False, "user{n}@example.org"),
        "owned by domains": (True, "user{n}@example.org"),
        "owned by the map": (True, "alias{n}@example.net"),
        "owned by cached LDAP": (True, "user{n}@ldap.example"),
        "mismatch (logged)": (True, "someone{n}@example.com"),
    }
    built = {name: (responder(binding, args.map_entries), requests(sender)) for name, (binding, sender) in cases.items()}
    results: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(args.rounds):  # interleaved, so a noisy moment hits every case alike
        for name, (respond, batch) in built.items():
            results[name].append(per_request(respond, batch, args.requests))
    base = statistics.median(results["binding off"])
    print(f"{'case':<24} {'µs/request median':>18} {'range':>15} {'vs off':>7}")
    for name, values in results.items():
        median = statistics.median(values)
        print(f"{name:<24} {median:>18.2f} {min(values):>7.2f}-{max(values):<7.2f} {median / base:>7.2f}")


if __name__ == "__main__":
    main()
