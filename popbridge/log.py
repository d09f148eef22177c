"""Log observers for twistd's ``--logger`` option: text on stdout, filtered by level.

twistd writes every event, debug included, and formatting a debug line per lookup was a
quarter of a lookup's CPU (bench/profile.py). ``popbridge run`` uses `info_observer` unless
``--log-level debug`` is given; with plain twistd, pass ``--logger popbridge.log.info_observer``
(or ``debug_observer`` for the per-lookup debug lines).
"""

import sys

from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    textFileLogObserver,
)


_debugging = False


def debugging() -> bool:
    """Whether debug lines are wanted: hot paths (a line per lookup) ask before building one,
    since even a filtered event costs as much as answering the lookup."""
    return _debugging


def _observer(level: LogLevel) -> ILogObserver:
    return FilteringLogObserver(textFileLogObserver(sys.stdout), [LogLevelFilterPredicate(level)])


def debug_observer() -> ILogObserver:
    global _debugging
    _debugging = True
    return _observer(LogLevel.debug)


def info_observer() -> ILogObserver:
    return _observer(LogLevel.info)


def warn_observer() -> ILogObserver:
    return _observer(LogLevel.warn)


OBSERVERS = {"debug": "debug_observer", "info": "info_observer", "warn": "warn_observer"}
