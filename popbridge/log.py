"""Log observers for twistd's ``--logger`` option: text on stdout, filtered by level.

twistd writes every event, debug included, and formatting a debug line per lookup was a
quarter of a lookup's CPU (bench/profile.py). The filter is `LevelFilter`, not Twisted's
`FilteringLogObserver`: that one asks a `LogLevelFilterPredicate`, which looks the namespace up
level by level and compares `LogLevel` constants by walking their container, per event. ``popbridge run`` uses `info_observer` unless
``--log-level debug`` is given; with plain twistd, pass ``--logger popbridge.log.info_observer``
(or ``debug_observer`` for the per-lookup debug lines).
"""

import sys
import time
from typing import Any

from twisted.logger import FileLogObserver, ILogObserver, LogLevel, formatEventAsClassicLogText
from zope.interface import implementer


_debugging = False


def debugging() -> bool:
    """Whether debug lines are wanted: hot paths (a line per lookup) ask before building one,
    since even a filtered event costs as much as answering the lookup."""
    return _debugging


_descriptor: int | None = None


def _observer(level: LogLevel) -> ILogObserver:
    global _descriptor
    try:
        _descriptor = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):
        _descriptor = None
    return LevelFilter(FileLogObserver(sys.stdout, classic_text), level)


@implementer(ILogObserver)
class LevelFilter:
    """Passes on the events of `level` and above, as ``FilteringLogObserver`` with a
    ``LogLevelFilterPredicate(level)`` does: an event without a level or a namespace is dropped."""

    def __init__(self, observer: ILogObserver, level: LogLevel) -> None:
        self._observer = observer
        self._levels = frozenset(known for known in LogLevel.iterconstants() if known >= level)

    def __call__(self, event: dict[str, Any]) -> None:
        if event.get("log_level") in self._levels and event.get("log_namespace"):
            self._observer(event)


def log_descriptor() -> int | None:
    """The file descriptor popbridge's observer writes the log to, if it is one: proxy workers
    are given it, and write their own lines to it (`popbridge.daemon.workers`)."""
    return _descriptor


def classic_text(event: dict[str, Any]) -> str | None:
    """The line `textFileLogObserver` writes, built at C speed when it can be.

    Twisted formats each line with `string.Formatter` in Python and its timestamp through
    `datetime` with a time zone per call: 53 µs for a login line, a twentieth of a POP3
    session's CPU (bench/profile.py). A plain event (no failure, a format that ``str.format``
    takes) is formatted here, with the timestamp cached per second; anything else (tracebacks,
    Twisted's ``{callable()}`` fields, a missing key) is left to Twisted. Both give the same text
    (tests/unit/test_log.py).
    """
    fields = event.get("log_format")
    if fields is None or "log_failure" in event:
        return formatEventAsClassicLogText(event, formatTime=_timestamp)
    try:
        text = fields.format_map(event)
    except Exception:  # Twisted's own format extensions, or a bad format: its wording
        return formatEventAsClassicLogText(event, formatTime=_timestamp)
    if not text:
        return None
    line = f"{_timestamp(event.get('log_time'))} [{_system(event)}] {text}"
    return line.replace("\n", "\n\t") + "\n"


_second, _stamp = -1, ""


def _timestamp(when: float | None) -> str:
    """Twisted's default ``%Y-%m-%dT%H:%M:%S%z`` in local time, formatted once a second."""
    global _second, _stamp
    if when is None:
        return "-"
    second = int(when)
    if second != _second:
        _second, _stamp = second, time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(second))
    return _stamp


def _system(event: dict[str, Any]) -> str:
    system = event.get("log_system")
    if system is not None:
        return str(system)
    level = event.get("log_level")
    return f"{event.get('log_namespace', '-')}#{level.name if level is not None else '-'}"


def enable_debugging() -> None:
    """Hot paths build their debug lines from now on (a proxy worker told by its main process)."""
    global _debugging
    _debugging = True


def debug_observer() -> ILogObserver:
    enable_debugging()
    return _observer(LogLevel.debug)


def info_observer() -> ILogObserver:
    return _observer(LogLevel.info)


def warn_observer() -> ILogObserver:
    return _observer(LogLevel.warn)


OBSERVERS = {"debug": "debug_observer", "info": "info_observer", "warn": "warn_observer"}
