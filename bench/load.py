"""The benchmark's load generator: asyncio protocols on raw transports (uvloop when installed).

Each client is a small state machine fed by `data_received`: no stream readers, no coroutine
per line, so one process drives thousands of sessions per second on a fraction of a core. The
clients wait for the server to close after QUIT / LOGOUT (the TIME_WAIT then lands on the
server side and the load generator never runs out of ephemeral ports).
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial

try:  # optional: a faster event loop means a cheaper load generator
    import uvloop
except ImportError:  # pragma: no cover - plain asyncio works too
    uvloop = None


def new_loop() -> asyncio.AbstractEventLoop:
    return uvloop.new_event_loop() if uvloop is not None else asyncio.new_event_loop()


IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)
SOURCES = [
    f"127.0.0.{n}" for n in range(2, 255)
]  # clients come from many addresses, as in life


async def connect(
    factory: Callable[[], asyncio.Protocol], host: str, port: int, i: int
) -> tuple:
    """A TCP connection from source address number `i` (rotating over 127.0.0.2-254), its
    port chosen at connect time so that the sources do not exhaust each other's ports."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_IP, IP_BIND_ADDRESS_NO_PORT, 1)
        sock.bind((SOURCES[i % len(SOURCES)], 0))
        sock.setblocking(False)
        await loop.sock_connect(sock, (host, port))
    except BaseException:
        sock.close()
        raise
    return await loop.create_connection(factory, sock=sock)


class SessionFailed(Exception):
    pass


class Scripted(asyncio.Protocol):
    """Sends one command after each complete answer; done when the server closes.

    `steps` are (bytes to send once the previous answer is complete, predicate telling whether
    the buffer holds the complete answer). The first step's bytes are empty (the greeting).
    """

    __slots__ = ("buffer", "done", "index", "ok", "steps", "transport")

    def __init__(
        self,
        steps: Sequence[tuple[bytes, Callable[[bytes], bool | None]]],
        done: asyncio.Future,
    ) -> None:
        self.steps, self.index, self.buffer, self.done = steps, 0, b"", done
        self.transport: asyncio.Transport | None = None
        self.ok = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while self.index < len(self.steps):
            verdict = self.steps[self.index][1](self.buffer)
            if verdict is None:
                return  # answer incomplete
            if verdict is False:
                self.transport.abort()  # type: ignore[union-attr]
                return
            self.buffer = b""
            self.index += 1
            if self.index < len(self.steps):
                self.transport.write(self.steps[self.index][0])  # type: ignore[union-attr]
            else:
                self.ok = True

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(self.ok)


def pop3_status(buffer: bytes) -> bool | None:
    if b"\n" not in buffer:
        return None
    return buffer.startswith(b"+OK")


def imap_tagged(tag: bytes) -> Callable[[bytes], bool | None]:
    ok, no, bad = tag + b" OK", tag + b" NO", tag + b" BAD"

    def check(buffer: bytes) -> bool | None:
        if not buffer.endswith(b"\n"):
            return None
        last = buffer[buffer.rfind(b"\n", 0, len(buffer) - 1) + 1 :]
        if last.startswith(ok):
            return True
        if last.startswith((no, bad)):
            return False
        return None

    return check


def imap_greeting(buffer: bytes) -> bool | None:
    if b"\n" not in buffer:
        return None
    return buffer.startswith(b"* OK")


def pop3_login_steps(
    user: str, password: str
) -> list[tuple[bytes, Callable[[bytes], bool | None]]]:
    return [
        (b"", pop3_status),
        (f"USER {user}\r\n".encode(), pop3_status),
        (f"PASS {password}\r\n".encode(), pop3_status),
        (b"QUIT\r\n", pop3_status),
    ]


def imap_login_steps(
    user: str, password: str
) -> list[tuple[bytes, Callable[[bytes], bool | None]]]:
    return [
        (b"", imap_greeting),
        (f"a LOGIN {user} {password}\r\n".encode(), imap_tagged(b"a")),
        (b"b LOGOUT\r\n", imap_tagged(b"b")),
    ]


@dataclass
class LoadResult:
    sessions: int = 0
    failures: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.sessions / self.seconds if self.seconds else 0.0


async def one_session(host: str, port: int, steps: list, i: int, result: LoadResult) -> bool:
    """Run one scripted session (source address chosen by `i`) and count it in `result`."""
    done = asyncio.get_running_loop().create_future()
    started = time.perf_counter()
    try:
        await connect(partial(Scripted, steps, done), host, port, i)
        ok = await asyncio.wait_for(done, 30)
    except (TimeoutError, OSError):
        ok = False
    if ok:
        result.sessions += 1
        result.latencies.append(time.perf_counter() - started)
    else:
        result.failures += 1
    return ok


async def closed_loop_sessions(
    host: str,
    port: int,
    steps_for: Callable[[int], list],
    concurrency: int,
    duration: float,
    first: int = 0,
) -> LoadResult:
    """`concurrency` clients, each opening one session after another for `duration` seconds;
    session i uses `steps_for(i)` (rotating over users)."""
    result = LoadResult()
    counter = [first]
    deadline = time.perf_counter() + duration

    async def client() -> None:
        while time.perf_counter() < deadline:
            i = counter[0]
            counter[0] += 1
            if not await one_session(host, port, steps_for(i), i, result):
                await asyncio.sleep(0.01)

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    result.seconds = time.perf_counter() - started
    return result


async def paced_sessions(
    host: str,
    port: int,
    steps_for: Callable[[int], list],
    rate: float,
    duration: float,
    limit: int = 500,
) -> LoadResult:
    """Open-loop load: a new session every 1/rate seconds (at most `limit` in flight)."""
    loop = asyncio.get_running_loop()
    result = LoadResult()
    in_flight: set[asyncio.Task] = set()

    started = time.perf_counter()
    i = 0
    while True:
        now = time.perf_counter() - started
        if now >= duration:
            break
        due = int(now * rate) + 1
        while i < due:
            if len(in_flight) < limit:
                task = loop.create_task(one_session(host, port, steps_for(i), i, result))
                in_flight.add(task)
                task.add_done_callback(in_flight.discard)
            i += 1
        await asyncio.sleep(0.002)
    if in_flight:
        await asyncio.wait(in_flight, timeout=30)
    result.seconds = time.perf_counter() - started
    return result


# ------------------------------------------------------------------ bulk transfers


class Pop3Retr(asyncio.Protocol):
    """USER/PASS, then RETR 1 `repeat` times (timing each), then QUIT."""

    def __init__(
        self, user: str, password: str, repeat: int, done: asyncio.Future
    ) -> None:
        self.user, self.password, self.repeat, self.done = user, password, repeat, done
        self.state, self.buffer, self.tail, self.count = "greeting", b"", b"", 0
        self.started, self.timings, self.sizes = 0.0, [], []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self.state == "retr":
            self.count += len(data)
            tail = (self.tail + data[-5:])[-5:]
            self.tail = tail
            if tail == b"\r\n.\r\n":
                self.timings.append(time.perf_counter() - self.started)
                self.sizes.append(self.count)
                self._next_retr()
            return
        self.buffer += data
        if b"\n" not in self.buffer:
            return
        if not self.buffer.startswith(b"+OK"):
            self.transport.abort()
            return
        self.buffer = b""
        if self.state == "greeting":
            self.state = "user"
            self.transport.write(f"USER {self.user}\r\n".encode())
        elif self.state == "user":
            self.state = "pass"
            self.transport.write(f"PASS {self.password}\r\n".encode())
        elif self.state == "pass":
            self._next_retr()
        elif self.state == "quit":
            self.state = "done"

    def _next_retr(self) -> None:
        if len(self.timings) >= self.repeat:
            self.state = "quit"
            self.transport.write(b"QUIT\r\n")
            return
        self.state, self.count, self.tail = "retr", 0, b""
        self.started = time.perf_counter()
        self.transport.write(b"RETR 1\r\n")

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(self.state == "done")


class ImapFetch(asyncio.Protocol):
    """LOGIN, EXAMINE INBOX, then `f FETCH 1 BODY.PEEK[]` `repeat` times, then LOGOUT."""

    def __init__(
        self, user: str, password: str, repeat: int, done: asyncio.Future
    ) -> None:
        self.user, self.password, self.repeat, self.done = user, password, repeat, done
        self.state, self.buffer, self.remaining, self.count = "greeting", b"", 0, 0
        self.started, self.timings, self.sizes = 0.0, [], []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self.state == "literal":
            self.count += len(data)
            if len(data) < self.remaining:
                self.remaining -= len(data)
                return
            data, self.remaining = data[self.remaining :], 0
            self.state, self.buffer = "trailer", b""
        self.buffer += data
        if self.state == "fetch":
            end = self.buffer.find(b"}\r\n")
            if end < 0:
                return
            size = int(self.buffer[self.buffer.rfind(b"{", 0, end) + 1 : end])
            rest = self.buffer[end + 3 :]
            self.count = len(self.buffer)
            self.remaining, self.buffer, self.state = size, b"", "literal"
            self.count -= len(rest)
            if rest:
                self.data_received(rest)
            return
        if not self.buffer.endswith(b"\n"):
            return
        last = self.buffer[self.buffer.rfind(b"\n", 0, len(self.buffer) - 1) + 1 :]
        if self.state == "greeting":
            if not last.startswith(b"* OK"):
                self.transport.abort()
                return
            self.buffer, self.state = b"", "login"
            self.transport.write(f"a LOGIN {self.user} {self.password}\r\n".encode())
        elif self.state == "login" and last.startswith(b"a "):
            self.buffer, self.state = b"", "examine"
            self.transport.write(b"e EXAMINE INBOX\r\n")
        elif self.state == "examine" and last.startswith(b"e "):
            self.buffer = b""
            self._next_fetch()
        elif self.state == "trailer" and last.startswith(b"f "):
            self.count += len(self.buffer)
            self.timings.append(time.perf_counter() - self.started)
            self.sizes.append(self.count)
            self.buffer = b""
            self._next_fetch()
        elif self.state == "logout" and last.startswith(b"z "):
            self.state = "done"

    def _next_fetch(self) -> None:
        if len(self.timings) >= self.repeat:
            self.state = "logout"
            self.transport.write(b"z LOGOUT\r\n")
            return
        self.state, self.count = "fetch", 0
        self.started = time.perf_counter()
        self.transport.write(b"f FETCH 1 BODY.PEEK[]\r\n")

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(self.state == "done")


async def transfer(
    protocol_class: type, host: str, port: int, user: str, password: str, repeat: int
) -> list[tuple[int, float]]:
    """(bytes, seconds) of each RETR / FETCH; raises SessionFailed if the session broke."""
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    proto = protocol_class(user, password, repeat, done)
    await connect(lambda: proto, host, port, 0)
    ok = await asyncio.wait_for(done, 300)
    if not ok or len(proto.timings) < repeat:
        raise SessionFailed(
            f"{protocol_class.__name__} on port {port} broke in state {proto.state}"
        )
    return list(zip(proto.sizes, proto.timings))


# ------------------------------------------------------------------ idle IMAP sessions


class IdleImap(asyncio.Protocol):
    """Logs in and then stays connected, silent, until closed."""

    __slots__ = ("buffer", "ready", "state", "steps", "transport")

    def __init__(self, user: str, password: str, ready: asyncio.Future) -> None:
        self.steps = f"a LOGIN {user} {password}\r\n".encode()
        self.buffer, self.state, self.ready = b"", 0, ready

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.buffer.endswith(b"\n"):
            return
        if self.state == 0:
            self.state, self.buffer = 1, b""
            self.transport.write(self.steps)
        elif self.state == 1:
            last = self.buffer[self.buffer.rfind(b"\n", 0, len(self.buffer) - 1) + 1 :]
            if last.startswith(b"a "):
                self.state, self.buffer = 2, b""
                if not self.ready.done():
                    self.ready.set_result(last.startswith(b"a OK"))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.ready.done():
            self.ready.set_result(False)


async def open_idle_imap(
    host: str,
    port: int,
    credentials: Callable[[int], tuple[str, str]],
    count: int,
    concurrency: int = 50,
) -> list[asyncio.BaseTransport]:
    loop = asyncio.get_running_loop()
    transports: list[asyncio.BaseTransport] = []
    counter = [0]
    failures = [0]

    async def opener() -> None:
        while counter[0] < count:
            i = counter[0]
            counter[0] += 1
            ready = loop.create_future()
            user, password = credentials(i)
            try:
                transport, _ = await connect(
                    partial(IdleImap, user, password, ready), host, port, i
                )
                ok = await asyncio.wait_for(ready, 30)
            except (TimeoutError, OSError):
                ok = False
            if ok:
                transports.append(transport)
            else:
                failures[0] += 1
                if failures[0] > count // 20 + 5:
                    raise SessionFailed(
                        f"idle IMAP sessions on port {port}: {failures[0]} failed"
                    )

    await asyncio.gather(*(opener() for _ in range(concurrency)))
    return transports


# ------------------------------------------------------------------ lookups


class Lookup(asyncio.Protocol):
    """A persistent lookup client: one request, wait for the complete reply, the next."""

    def __init__(
        self,
        requests: Sequence[bytes],
        complete: Callable[[bytes], bool],
        deadline: float,
        done: asyncio.Future,
    ) -> None:
        self.requests, self.complete, self.deadline, self.done = (
            requests,
            complete,
            deadline,
            done,
        )
        self.buffer, self.i, self.sent, self.latencies = b"", 0, 0.0, []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self._send()

    def _send(self) -> None:
        self.sent = time.perf_counter()
        self.transport.write(self.requests[self.i % len(self.requests)])
        self.i += 1

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.complete(self.buffer):
            return
        now = time.perf_counter()
        self.latencies.append(now - self.sent)
        self.buffer = b""
        if now < self.deadline:
            self._send()
        else:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(None)


def _same(protocol: asyncio.Protocol) -> asyncio.Protocol:
    return protocol


async def lookup_load(
    path: str,
    requests: Sequence[bytes],
    complete: Callable[[bytes], bool],
    clients: int,
    duration: float,
) -> LoadResult:
    loop = asyncio.get_running_loop()
    started = time.perf_counter()
    deadline = started + duration
    protocols = []
    for n in range(clients):
        done = loop.create_future()
        shifted = list(requests[n:]) + list(requests[:n])
        proto = Lookup(shifted, complete, deadline, done)
        await loop.create_unix_connection(partial(_same, proto), path)
        protocols.append(proto)
    await asyncio.gather(*(p.done for p in protocols))
    result = LoadResult(seconds=time.perf_counter() - started)
    for p in protocols:
        result.latencies.extend(p.latencies)
    result.sessions = len(result.latencies)
    return result
