"""A session's two time limits, idle and login, kept by one timer that is never reset.

Twisted's `TimeoutMixin` moves a DelayedCall on every chunk of data, and the login deadline
was a second DelayedCall; with the backend's connect timeout and Twisted's own connect call
that made four timers per POP3 session and a tenth of its CPU (bench/profile.py). Here a chunk
only notes the time. The one timer fires at the earliest limit that could have been reached;
if activity since then moved the idle limit, it sets itself again for what is left.
"""

from collections.abc import Callable

from twisted.internet.interfaces import IDelayedCall, IReactorTime


class SessionDeadlines:
    """Calls `on_idle` after `idle` seconds without `active()`, and `on_too_slow` once
    `login_timeout` has passed since the start unless `logged_in()` came first."""

    def __init__(
        self,
        clock: IReactorTime,
        idle: float,
        login_timeout: float,
        on_idle: Callable[[], None],
        on_too_slow: Callable[[], None],
    ) -> None:
        self._clock, self._idle = clock, idle
        self._on_idle, self._on_too_slow = on_idle, on_too_slow
        now = clock.seconds()
        self._active_at: float = now
        self._login_by: float | None = now + login_timeout
        self._call: IDelayedCall | None = clock.callLater(min(idle, login_timeout), self._check)

    def active(self) -> None:
        self._active_at = self._clock.seconds()

    def logged_in(self, idle: float) -> None:
        """No login deadline any more, and from now on `idle` is the idle limit."""
        self._login_by, self._idle = None, idle
        self.active()

    def stop(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def _check(self) -> None:
        self._call = None
        now = self._clock.seconds()
        if self._login_by is not None and now >= self._login_by:
            self._on_too_slow()
            return
        idle_at = self._active_at + self._idle
        if now >= idle_at:
            self._on_idle()
            return
        next_at = idle_at if self._login_by is None else min(idle_at, self._login_by)
        self._call = self._clock.callLater(next_at - now, self._check)
