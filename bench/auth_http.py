"""nginx mail's auth_http answerer for the benchmark: every login is OK and goes to the
private Dovecot. Usage: auth_http.py PORT POP3_BACKEND_PORT IMAP_BACKEND_PORT

nginx opens one HTTP/1.0 connection per login and reads the answer's headers:
Auth-Status, Auth-Server (an IP address) and Auth-Port.
"""

import asyncio
import sys

try:
    import uvloop
except ImportError:
    uvloop = None


def answer(port: int) -> bytes:
    return (
        "HTTP/1.0 200 OK\r\nAuth-Status: OK\r\nAuth-Server: 127.0.0.1\r\n"
        f"Auth-Port: {port}\r\n\r\n"
    ).encode()


class AuthRequest(asyncio.Protocol):
    def __init__(self, answers: dict[bytes, bytes]) -> None:
        self.answers, self.buffer = answers, b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if b"\r\n\r\n" not in self.buffer:
            return
        protocol = b"imap" if b"Auth-Protocol: imap" in self.buffer else b"pop3"
        self.transport.write(self.answers[protocol])
        self.transport.close()


async def serve(port: int, pop3: int, imap: int) -> None:
    answers = {b"pop3": answer(pop3), b"imap": answer(imap)}
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: AuthRequest(answers), "127.0.0.1", port, backlog=1024
    )
    await server.serve_forever()


if __name__ == "__main__":
    port, pop3, imap = (int(a) for a in sys.argv[1:4])
    if uvloop is not None:
        uvloop.install()
    asyncio.run(serve(port, pop3, imap))
