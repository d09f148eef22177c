"""The states of an IMAP4 login watcher, its protocol error and its own command tags.

Shared by the watcher (imap4.py), its greeting and probes (imap4_probe.py) and the check of
the command outstanding (imap4_command.py).
"""

from enum import Enum, auto

from popbridge.wire.imap4_syntax import CRLF
from popbridge.wire.login import LoginProtocolError

PROBE_TAG = b"popbridge0"  # our own ID command; client commands only start after it is done
STARTTLS_TAG = b"popbridge1"  # our own STARTTLS towards the backend


class ImapProtocolError(LoginProtocolError):
    def __init__(self, message: str) -> None:
        super().__init__(message, b"* BYE popbridge: " + message.encode() + CRLF)


class State(Enum):
    GREETING = auto()  # waiting for the backend's greeting
    PROBE = auto()  # our own STARTTLS or ID is out; client commands wait
    READY = auto()  # no command outstanding: the next client line starts one
    CLIENT_LITERAL = auto()  # reading the bytes of a literal from the client
    CLIENT_LINE = auto()  # reading the rest of a command line after a literal
    CONTINUATION = auto()  # a sync literal was announced: waiting for the backend's "+"
    RESPONSE = auto()  # the whole command is out: waiting for its tagged completion
    SASL_SERVER = auto()  # AUTHENTICATE is out: waiting for "+ challenge" or completion
    SASL_CLIENT = auto()  # the next client line is SASL data, never a command
    HOLD = auto()  # a login waits while its backend is chosen (RouteLogin)
    REPLAY_CHALLENGE = auto()  # a new backend's first AUTHENTICATE challenge, answered with the held response
    DISCARD_LITERAL = auto()  # dropping a literal of a command that was refused or ended early
    DISCARD_LINE = auto()  # dropping the rest of such a command's line
    AUTHENTICATED = auto()  # a plain pipe
