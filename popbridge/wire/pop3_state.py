"""The states of a POP3 login watcher, its protocol error, and the handlers of a status line
or a multi-line answer that simply relay it.

Shared by the watcher (pop3.py) and its greeting, probes and CAPA reading (pop3_probe.py).
"""

from collections.abc import Callable
from enum import Enum, auto

from popbridge.wire.login import Action, LoginProtocolError, ToClient

CRLF = b"\r\n"


class Pop3ProtocolError(LoginProtocolError):
    def __init__(self, message: str) -> None:
        super().__init__(message, b"-ERR [SYS/PERM] popbridge: " + message.encode() + b"\r\n")


class State(Enum):
    GREETING = auto()  # waiting for the backend's greeting
    PROBE = auto()  # our own STLS, CAPA and XCLIENT, before the client may speak
    READY = auto()  # no command outstanding: the next client line may go
    REPLY = auto()  # a client command is out; waiting for its status line
    MULTILINE = auto()  # reading a multi-line answer up to its "." line
    SASL_SERVER = auto()  # AUTH is out; waiting for "+ challenge", +OK or -ERR
    SASL_CLIENT = auto()  # the backend challenged; the next client line is SASL data
    HOLD = auto()  # a login waits while its backend is chosen (RouteLogin)
    REPLAY_CHALLENGE = auto()  # a new backend's first AUTH challenge, answered with the held response
    AUTHENTICATED = auto()  # a plain pipe


StatusHandler = Callable[[bytes, bool], list[Action]]  # reads the status line of the command outstanding


def relay(line: bytes, ok: bool) -> list[Action]:
    """A status handler that shows the client the line as it came."""
    return [ToClient(line + CRLF)]


def everything(line: bytes) -> bool:
    """A multi-line filter that shows the client every line."""
    return True


def nothing() -> list[Action]:
    """Nothing added at the end of a multi-line answer."""
    return []
