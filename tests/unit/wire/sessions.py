"""Helpers to drive a login watcher (POP3 or IMAP4) through scripted sessions."""

from dataclasses import dataclass, field

from popbridge.wire.login import (
    Action,
    Authenticated,
    BackendNotice,
    LoginFailed,
    LoginSucceeded,
    LoginWatcher,
    ToBackend,
    ToClient,
)
from popbridge.wire.pop3 import Pop3LoginWatcher

GREETING = b"+OK Dovecot ready. <1896.697170952@dbc.mtview.ca.us>\r\n"


@dataclass
class Outcome:
    """What a session produced, independent of how the input was chunked."""

    to_client: bytes = b""
    to_backend: bytes = b""
    events: list[object] = field(default_factory=list)

    def take(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, ToClient):
                self.to_client += action.data
            elif isinstance(action, ToBackend):
                self.to_backend += action.data
            elif isinstance(action, Authenticated):
                self.to_backend += action.client_data
                self.to_client += action.backend_data
                self.events.append("authenticated")
            else:
                self.events.append(action)

    @property
    def logins(self) -> list[LoginSucceeded]:
        return [e for e in self.events if isinstance(e, LoginSucceeded)]

    @property
    def failures(self) -> list[LoginFailed]:
        return [e for e in self.events if isinstance(e, LoginFailed)]

    @property
    def notices(self) -> list[BackendNotice]:
        return [e for e in self.events if isinstance(e, BackendNotice)]


def run_session(steps: list[tuple[str, bytes]], watcher: LoginWatcher | None = None, chunk: int = 0) -> Outcome:
    """Feed ("client"|"backend", bytes) steps in order; `chunk` > 0 splits every step."""
    watcher = watcher or Pop3LoginWatcher()
    outcome = Outcome()
    for side, data in steps:
        feed = watcher.feed_client if side == "client" else watcher.feed_backend
        pieces = [data[i : i + chunk] for i in range(0, len(data), chunk)] if chunk else [data]
        for piece in pieces:
            outcome.take(feed(piece))
    return outcome
