#!/usr/bin/env python3
"""A POP3 server that costs almost nothing: every USER, PASS and QUIT gets ``+OK``.

    python bench/tiny_pop3.py PORT

The backend for bench/workers.py's scaling table, where the proxy, not the mail server, must
be what limits logins/s. On uvloop when it is installed. Never for anything but a benchmark.
"""

import asyncio
import sys


class TinyPop3(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.buffer = b""
        transport.write(b"+OK tiny\r\n")  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while b"\r\n" in self.buffer:
            line, self.buffer = self.buffer.split(b"\r\n", 1)
            if line[:4].upper() == b"QUIT":
                self.transport.write(b"+OK bye\r\n")  # type: ignore[attr-defined]
                self.transport.close()
                return
            self.transport.write(b"+OK\r\n")  # type: ignore[attr-defined]


async def main(port: int) -> None:
    server = await asyncio.get_running_loop().create_server(TinyPop3, "127.0.0.1", port, backlog=1024)
    print("ready", flush=True)
    await server.serve_forever()


if __name__ == "__main__":
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(main(int(sys.argv[1])))
