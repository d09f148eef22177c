"""Holding a login while its backend is chosen, then sending it on or replaying it elsewhere.

Shared by the POP3 and IMAP4 watchers (see popbridge/proxy/routing.py for the design). The
states passed in and handed back are the watcher's own; this class only keeps them.
"""

from dataclasses import dataclass
from typing import Any

from popbridge.wire.login import RouteLogin
from popbridge.wire.sasl import SaslUserReader

ROUTABLE_MECHANISMS = ("PLAIN", "LOGIN", "XOAUTH2", "OAUTHBEARER")  # the user is in the first response


@dataclass
class HeldLogin:
    """A login held while its backend is chosen, and how to send it to whichever backend wins.

    `command` is the login command; `response` the first SASL response when the user only
    appeared there (the command then already reached the default backend, and a new backend
    must be asked again and its challenge answered with the held response).
    """

    user: str
    command: bytes
    response: bytes | None = None


class LoginHold:
    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.replaying = False  # a new backend is greeting popbridge; the held login follows
        self._held: HeldLogin | None = None
        self._resume_state: Any = None

    def routable(self, sasl: SaslUserReader) -> bool:
        """Whether a SASL exchange names its user before any secret (so it may move)."""
        return self.enabled and bool(sasl.user) and sasl.mechanism in ROUTABLE_MECHANISMS

    def hold(self, held: HeldLogin, resume_state: Any) -> RouteLogin:
        self._held, self._resume_state = held, resume_state
        return RouteLogin(held.user)

    def send_on(self) -> tuple[bytes, Any]:
        """Not moved: what goes to the backend now, and the state to go on in."""
        held, self._held = self._held, None
        assert held is not None
        return (held.command if held.response is None else held.response), self._resume_state

    def replay(self) -> tuple[bytes, Any]:
        """Moved, and the new backend is ready: the command to send and the state to go on in;
        None while a held SASL response waits for the new backend's challenge."""
        held, self.replaying = self._held, False
        assert held is not None
        if held.response is None:
            self._held = None
            return held.command, self._resume_state
        return held.command, None

    def answer_challenge(self) -> bytes:
        """The new backend challenged: the held first SASL response answers it."""
        held, self._held = self._held, None
        assert held is not None and held.response is not None
        return held.response
