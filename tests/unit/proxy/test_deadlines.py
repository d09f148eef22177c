"""SessionDeadlines: one timer, the same limits TimeoutMixin and a login deadline gave."""

from hypothesis import given, strategies as st
from twisted.internet.task import Clock

from popbridge.proxy.deadlines import SessionDeadlines


def deadlines(clock: Clock, idle: float = 60, login_timeout: float = 300) -> tuple[SessionDeadlines, list[tuple[str, float]]]:
    fired: list[tuple[str, float]] = []
    d = SessionDeadlines(
        clock, idle, login_timeout,
        on_idle=lambda: fired.append(("idle", clock.seconds())),
        on_too_slow=lambda: fired.append(("too slow", clock.seconds())),
    )
    return d, fired


def test_silence_ends_the_session_at_the_idle_limit():
    clock = Clock()
    _, fired = deadlines(clock)
    clock.advance(59)
    assert fired == []
    clock.advance(1)
    assert fired == [("idle", 60)]


def test_activity_moves_the_idle_limit_without_a_new_timer_per_chunk():
    clock = Clock()
    d, fired = deadlines(clock)
    for _ in range(50):
        clock.advance(1)
        d.active()
    assert len(clock.getDelayedCalls()) == 1
    clock.advance(59)
    assert fired == []
    clock.advance(1)
    assert fired == [("idle", 110)]


def test_a_client_trickling_bytes_meets_the_login_limit():
    clock = Clock()
    d, fired = deadlines(clock)
    for _ in range(400):
        clock.advance(1)
        d.active()
        if fired:
            break
    assert fired == [("too slow", 300)]


def test_after_the_login_only_the_new_idle_limit_counts():
    clock = Clock()
    d, fired = deadlines(clock)
    clock.advance(10)
    d.logged_in(idle=600)
    clock.advance(599)
    assert fired == []
    clock.advance(1)
    assert fired == [("idle", 610)]


def test_stopped_deadlines_never_fire():
    clock = Clock()
    d, fired = deadlines(clock)
    d.stop()
    clock.advance(1000)
    assert fired == [] and clock.getDelayedCalls() == []


@given(st.lists(st.floats(min_value=0.01, max_value=100), max_size=30), st.floats(min_value=1, max_value=100))
def test_idle_fires_at_the_first_moment_the_last_activity_is_idle_seconds_old(gaps: list[float], idle: float):
    clock = Clock()
    d, fired = deadlines(clock, idle=idle, login_timeout=1e9)
    last = 0.0
    for gap in gaps:
        clock.advance(gap)
        now = clock.seconds()
        if now >= last + idle:
            assert fired == [("idle", now)]
            return
        assert fired == []
        d.active()
        last = now
