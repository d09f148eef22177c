"""Counters since start, shared by the proxies and lookups and reported by the control socket."""

from collections import Counter
from dataclasses import dataclass, field


@dataclass
class Counters:
    """Event counts by name, e.g. ``login_succeeded``, ``login_failed``, ``lookup_policy``."""

    started: float
    events: Counter[str] = field(default_factory=Counter)

    def count(self, event: str) -> None:
        self.events[event] += 1
