"""Scripted mail backends and a responsiveness probe for the adversarial tests.

A real Dovecot cannot misbehave on demand: it never answers a correct password with
``-ERR [IN-USE]``, greets with ``PREAUTH`` or sends a tagged ``OK`` nobody asked for. A
`ScriptedBackend` is a small TCP server on loopback whose every connection runs a script (a plain
function over a `Wire`) in a thread of its own, and which keeps what each connection received so a
test can check what reached the "mail server".

`GreetingProbe` is the "second client": while an attack runs it connects again and again and
measures how long its greeting takes, which is how long the daemon's reactor was busy.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

IO_TIMEOUT = 10.0


class Wire:
    """One backend connection as a script sees it: lines in, bytes out, everything recorded."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._buffer = b""
        self.received = b""  # every byte popbridge sent on this connection
        self.closed_by_peer = False

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self, timeout: float) -> bool:
        self.sock.settimeout(timeout)  # no select(): descriptors pass 1024 in the thousand-connection test
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            return False
        if not data:
            self.closed_by_peer = True
            return False
        self._buffer += data
        self.received += data
        return True

    def line(self, timeout: float = IO_TIMEOUT) -> bytes | None:
        """The next line with its terminator; None at EOF or after `timeout` seconds of silence."""
        while b"\n" not in self._buffer:
            if not self._fill(timeout):
                return None
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line + b"\n"

    def exactly(self, size: int, timeout: float = IO_TIMEOUT) -> bytes | None:
        while len(self._buffer) < size:
            if not self._fill(timeout):
                return None
        data, self._buffer = self._buffer[:size], self._buffer[size:]
        return data

    def pending(self, wait: float) -> bool:
        """Whether popbridge sent more than has been read, within `wait` seconds (a bounded look
        for bytes that must *not* come: the next pipelined command before this one's answer)."""
        return bool(self._buffer) or self._fill(wait)


Script = Callable[[Wire], None]


class ScriptedBackend:
    """A loopback TCP server running `script` on every connection, one thread each."""

    def __init__(self, script: Script, host: str = "127.0.0.1") -> None:
        self.script = script
        self.wires: list[Wire] = []
        self.failures: list[str] = []  # exceptions raised by scripts (a broken test, not a finding)
        self._lock = threading.Lock()
        self._listener = socket.create_server((host, 0), backlog=2048)
        self.host, self.port = host, self._listener.getsockname()[1]
        self._stopping = threading.Event()
        self._acceptor = threading.Thread(target=self._accept, name=f"scripted-{self.port}", daemon=True)
        self._acceptor.start()

    def _accept(self) -> None:
        while not self._stopping.is_set():
            try:
                sock, _ = self._listener.accept()
            except OSError:
                return
            wire = Wire(sock)
            with self._lock:
                self.wires.append(wire)
            threading.Thread(target=self._serve, args=(wire,), daemon=True).start()

    def _serve(self, wire: Wire) -> None:
        try:
            self.script(wire)
        except OSError:
            pass  # popbridge hung up: that is often the point
        except Exception as e:  # noqa: BLE001 - reported by the test, not swallowed
            self.failures.append(f"{type(e).__name__}: {e}")
        finally:
            with contextlib.suppress(OSError):
                wire.sock.close()

    @property
    def connections(self) -> int:
        with self._lock:
            return len(self.wires)

    def received(self) -> bytes:
        """Everything every connection received, in connection order."""
        with self._lock:
            return b"".join(wire.received for wire in self.wires)

    def close(self) -> None:
        self._stopping.set()
        self._listener.close()
        with self._lock:
            for wire in self.wires:
                with contextlib.suppress(OSError):
                    wire.sock.close()


# ---------------------------------------------------------------- POP3 scripts


def pop3_script(
    greeting: bytes = b"+OK scripted POP3 ready\r\n",
    pass_reply: bytes = b"-ERR [AUTH] Authentication failed.\r\n",
    auth_reply: bytes | None = None,
    replies: dict[bytes, bytes] | None = None,
) -> Script:
    """A POP3 server that refuses every password with `pass_reply` (and AUTH with `auth_reply`,
    by default the same), answers `replies[VERB]` where given and ``+OK`` to the rest."""
    answers = {b"CAPA": b"+OK\r\nUSER\r\nSASL PLAIN LOGIN\r\n.\r\n", b"QUIT": b"+OK bye\r\n", **(replies or {})}

    def script(wire: Wire) -> None:
        wire.send(greeting)
        while (line := wire.line()) is not None:
            verb = line.split(b" ", 1)[0].strip().upper()
            if verb == b"PASS" or verb == b"APOP":
                wire.send(pass_reply)
            elif verb == b"AUTH" and len(line.split()) == 2:
                wire.send(b"+ \r\n")
                response = wire.line()
                if response is None:
                    return
                wire.send(b"-ERR cancelled\r\n" if response.strip() == b"*" else (auth_reply or pass_reply))
            elif verb == b"AUTH" and len(line.split()) > 2:
                wire.send(auth_reply or pass_reply)
            else:
                wire.send(answers.get(verb, b"+OK\r\n"))
            if verb == b"QUIT":
                return

    return script


# ---------------------------------------------------------------- IMAP scripts

_LITERAL = re.compile(rb"\{(\d+)(\+?)\}\r?\n\Z")
IMAP_GREETING = b"* OK [CAPABILITY IMAP4rev1 SASL-IR LITERAL+ ID AUTH=PLAIN AUTH=LOGIN] scripted IMAP ready\r\n"


def read_imap_command(wire: Wire) -> bytes | None:
    """One whole client command, literals included (answering ``+`` to synchronising ones)."""
    command = b""
    while True:
        line = wire.line()
        if line is None:
            return None
        command += line
        literal = _LITERAL.search(line)
        if literal is None:
            return command
        if not literal.group(2):
            wire.send(b"+ go ahead\r\n")
        data = wire.exactly(int(literal.group(1)))
        if data is None:
            return None
        command += data


def imap_script(
    greeting: bytes = IMAP_GREETING,
    login_reply: Callable[[bytes], bytes] = lambda tag: tag + b" NO [AUTHENTICATIONFAILED] Authentication failed.\r\n",
    replies: dict[bytes, Callable[[bytes], bytes]] | None = None,
) -> Script:
    """An IMAP server that refuses every LOGIN/AUTHENTICATE with `login_reply(tag)`, answers
    `replies[VERB](tag)` where given and a tagged OK to the rest."""
    answers: dict[bytes, Callable[[bytes], bytes]] = {
        b"CAPABILITY": lambda tag: b"* CAPABILITY IMAP4rev1 AUTH=PLAIN\r\n" + tag + b" OK done\r\n",
        b"LOGOUT": lambda tag: b"* BYE logging out\r\n" + tag + b" OK done\r\n",
        **(replies or {}),
    }

    def script(wire: Wire) -> None:
        wire.send(greeting)
        while (command := read_imap_command(wire)) is not None:
            tag, _, rest = command.partition(b" ")
            verb = rest.split(None, 1)[0].upper() if rest.split() else b""
            if verb == b"LOGIN":
                wire.send(login_reply(tag))
            elif verb == b"AUTHENTICATE" and len(rest.split()) == 2:
                wire.send(b"+ \r\n")
                response = wire.line()
                if response is None:
                    return
                wire.send(tag + b" BAD cancelled\r\n" if response.strip() == b"*" else login_reply(tag))
            elif verb == b"AUTHENTICATE":
                wire.send(login_reply(tag))
            else:
                wire.send(answers.get(verb, lambda t: t + b" OK done\r\n")(tag))
            if verb == b"LOGOUT":
                return

    return script


# ---------------------------------------------------------------- clients


def connect(port: int, source: str, host: str = "127.0.0.1", timeout: float = IO_TIMEOUT) -> socket.socket:
    return socket.create_connection((host, port), timeout=timeout, source_address=(source, 0))


def read_line(sock: socket.socket) -> bytes:
    """One line (terminator included), or what arrived before EOF."""
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(1)
        if not chunk:
            break
        data += chunk
    return data


def read_until_closed(sock: socket.socket, limit: int = 1 << 20) -> bytes:
    """Everything the peer sends until it closes (a reset counts as a close)."""
    data = b""
    with contextlib.suppress(ConnectionResetError):
        while len(data) < limit:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    return data


def read_for(sock: socket.socket, quiet: float) -> bytes:
    """What the peer sends until it closes or stays silent for `quiet` seconds (for answers
    that may or may not end the session)."""
    data = b""
    sock.settimeout(quiet)
    with contextlib.suppress(TimeoutError, ConnectionResetError):
        while chunk := sock.recv(65536):
            data += chunk
    return data


def is_closed(sock: socket.socket, timeout: float = IO_TIMEOUT) -> bool:
    """Whether the peer closes within `timeout`, reading (and dropping) what comes first."""
    sock.settimeout(timeout)
    try:
        read_until_closed(sock)
        return True
    except TimeoutError:
        return False


def control(socket_path: Path, command: dict[str, str]) -> dict[str, object]:
    """One request on the control socket (JSON lines)."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(IO_TIMEOUT)
        s.connect(str(socket_path))
        s.sendall(json.dumps(command).encode() + b"\n")
        return json.loads(read_line(s))


# ---------------------------------------------------------------- the second client


@dataclass
class GreetingProbe:
    """A client that keeps connecting to `port` from `source` and times each greeting.

    Used as a context manager around an attack: on exit it asserts every greeting arrived, each
    within `limit` seconds, and that it managed at least `minimum` rounds.
    """

    port: int
    source: str = "127.0.0.254"
    limit: float = 1.0
    minimum: int = 3
    latencies: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="greeting-probe", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                with connect(self.port, self.source, timeout=5) as s:
                    greeting = read_line(s)
                    elapsed = time.monotonic() - started
                    s.sendall(b"QUIT\r\n")
                if not greeting.startswith(b"+OK"):
                    self.failures.append(f"greeting {greeting!r}")
                self.latencies.append(elapsed)
            except OSError as e:
                self.failures.append(f"{type(e).__name__}: {e}")
            self._stop.wait(0.05)  # pacing between rounds, not synchronisation

    def __enter__(self) -> "GreetingProbe":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        deadline = time.monotonic() + 10  # measure at least `minimum` rounds, also after the attack
        while len(self.latencies) + len(self.failures) < self.minimum and time.monotonic() < deadline:
            self._stop.wait(0.05)
        self._stop.set()
        self._thread.join(timeout=10)
        if exc[0] is not None:
            return
        assert not self.failures, f"the second client was not served: {self.failures[:5]}"
        assert len(self.latencies) >= self.minimum, f"only {len(self.latencies)} greetings measured"
        assert max(self.latencies) < self.limit, f"slowest greeting {max(self.latencies):.3f} s: {sorted(self.latencies)[-5:]}"

    @property
    def slowest(self) -> float:
        return max(self.latencies, default=0.0)


@contextlib.contextmanager
def ignoring_errors() -> Iterator[None]:
    with contextlib.suppress(OSError):
        yield
