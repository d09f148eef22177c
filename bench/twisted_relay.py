#!/usr/bin/env python3
"""The benchmark's floor for any Twisted proxy: `twisted.protocols.portforward`, no parsing.

    python bench/twisted_relay.py LISTEN_PORT:BACKEND_PORT [LISTEN_PORT:BACKEND_PORT ...]

Each listening port on 127.0.0.1 forwards every connection byte for byte to the backend port
on 127.0.0.1, on Twisted's default reactor: no watcher, no ledger, no log line per session.
What this costs per session is what Twisted itself costs; popbridge's column beside it shows
what the login watching, the ledger and the rest add.
"""

import sys

from twisted.internet import reactor
from twisted.protocols.portforward import ProxyFactory


def main(pairs: list[str]) -> None:
    for pair in pairs:
        listen, backend = (int(port) for port in pair.split(":"))
        factory = ProxyFactory("127.0.0.1", backend)
        factory.noisy = False
        reactor.listenTCP(listen, factory, interface="127.0.0.1", backlog=1024)
    print("ready", flush=True)
    reactor.run()


if __name__ == "__main__":
    main(sys.argv[1:])
