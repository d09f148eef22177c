"""The IMAP4 client command a login watcher has sent on and waits to see answered, sans-IO.

It keeps what the watcher needs to judge the answer: the tag and verb; the first line as sent,
to replay a routed login; for AUTHENTICATE the SASL exchange; and for LOGIN its parts as they
arrive, checked as they grow, so the user recorded is the one the backend read: a LOGIN that
is not exactly ``tag LOGIN astring SP astring`` with a clean UTF-8 user is refused before any
of it goes out, or ends the session once part of it has.
"""

from dataclasses import dataclass, field
from enum import Enum

from popbridge.wire.imap4_state import State
from popbridge.wire.imap4_syntax import CommandPart, ImapSyntaxError, LiteralData, login_arguments
from popbridge.wire.sasl import AmbiguousLogin, SaslUserReader, checked_name

LOGIN_VERBS = (b"LOGIN", b"AUTHENTICATE")


@dataclass
class ImapCommand:
    tag: bytes
    verb: bytes
    line: bytes = b""  # the first line as sent, to replay a routed login
    parts: list[CommandPart] = field(default_factory=list)  # kept for LOGIN only, to read the user
    size: int = 0
    sasl: SaslUserReader | None = None

    def grow(self, part: bytes, in_literal: bool, announces_literal: bool, max_size: int) -> None:
        """Add a part: line text, or (`in_literal`) a literal's bytes; `announces_literal`:
        the line ends by announcing one, whose bytes must fit where the next word goes.

        A LOGIN that is not well-formed raises `AmbiguousLogin` on its first line (nothing has
        gone out: the caller answers BAD); on a later part, and past `max_size`, the session
        ends (`ImapSyntaxError`).
        """
        self.size += len(part)
        if self.size > max_size:
            raise ImapSyntaxError("command too long")
        if self.verb != b"LOGIN":
            return
        first_line = not self.parts
        self.parts.append(LiteralData(part) if in_literal else part)
        try:
            checked_login(self.parts + [LiteralData(b"")] * announces_literal, complete=not in_literal and not announces_literal)
        except AmbiguousLogin as e:
            if first_line:
                raise
            raise ImapSyntaxError(str(e)) from None

    def identity(self) -> tuple[str, str]:
        """(user, method) of a LOGIN or AUTHENTICATE command; the user may be ""."""
        if self.sasl is not None:
            return self.sasl.user, f"AUTHENTICATE {self.sasl.mechanism}"
        arguments = login_arguments(self.parts, complete=False)  # checked as it arrived
        return (arguments[0].decode("utf-8") if arguments else ""), "LOGIN"


def checked_login(parts: list[CommandPart], complete: bool) -> None:
    """Raise `AmbiguousLogin` unless `parts` are (the start of) a well-formed LOGIN whose
    user is a clean UTF-8 name."""
    try:
        arguments = login_arguments(parts, complete)
        if arguments:
            checked_name(arguments[0].decode("utf-8"))
    except ImapSyntaxError as e:
        raise AmbiguousLogin(str(e)) from None
    except UnicodeDecodeError:
        raise AmbiguousLogin("user names must be UTF-8") from None


def fully_sent(command: ImapCommand, state: Enum) -> bool:
    """Whether the client's side of a LOGIN / AUTHENTICATE was all sent when the OK came.

    An OK while a literal or a SASL response is still owed answers nothing the client said:
    never believed as a login (other commands are not checked: they log nobody in).
    """
    if command.verb == b"LOGIN":
        return state is State.RESPONSE
    if command.verb == b"AUTHENTICATE":
        return state is State.SASL_SERVER and command.sasl is not None and command.sasl.responses > 0
    return True
