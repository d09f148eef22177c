"""popbridge.log.classic_text writes exactly what Twisted's textFileLogObserver would."""

from hypothesis import given, strategies as st
from twisted.logger import FilteringLogObserver, LogLevel, LogLevelFilterPredicate, formatEventAsClassicLogText
from twisted.python.failure import Failure

from popbridge.log import LevelFilter, classic_text

fields = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=20)
formats = st.sampled_from(
    [
        "login {outcome}: user {user!r} from {client} via {protocol} {method}",
        "{user}",
        "{client:>12} and {{braces}}",
        "two\nlines {user}",
        "",
        "no fields at all",
    ]
)
events = st.fixed_dictionaries(
    {
        "log_format": formats,
        "log_time": st.integers(min_value=0, max_value=4_000_000_000).map(float),
        "log_level": st.sampled_from(list(LogLevel.iterconstants())),
        "log_namespace": st.sampled_from(["popbridge.proxy.session.LoginProxy", "twisted.internet.base"]),
        "outcome": fields, "user": fields, "client": fields, "protocol": fields, "method": fields,
    },
    optional={"log_system": fields},
)


@given(events)
def test_a_plain_event_gives_twisteds_line(event: dict) -> None:
    assert classic_text(event) == formatEventAsClassicLogText(event)


def test_a_twisted_format_extension_is_left_to_twisted() -> None:
    event = {"log_format": "{thing.name()}", "thing": LogLevel.info, "log_time": 0.0}
    assert classic_text(event) == formatEventAsClassicLogText(event)
    assert "info" in classic_text(event)


def test_a_failure_keeps_its_traceback() -> None:
    try:
        1 / 0
    except ZeroDivisionError:
        failure = Failure()
    event = {"log_format": "it broke", "log_failure": failure, "log_time": 0.0, "log_namespace": "x"}
    assert "ZeroDivisionError" in classic_text(event)
    assert classic_text(event) == formatEventAsClassicLogText(event)


def test_a_missing_key_is_reported_as_twisted_reports_it() -> None:
    event = {"log_format": "user {user}", "log_time": 0.0}
    assert classic_text(event) == formatEventAsClassicLogText(event)


levels = st.sampled_from(list(LogLevel.iterconstants()))
filtered_events = st.fixed_dictionaries(
    {},
    optional={"log_level": levels, "log_namespace": st.sampled_from(["", "popbridge.proxy", "twisted.internet.base"])},
)


@given(levels, filtered_events)
def test_the_level_filter_passes_what_twisteds_passes(level: LogLevel, event: dict) -> None:
    ours: list[dict] = []
    twisteds: list[dict] = []
    LevelFilter(ours.append, level)(event)
    FilteringLogObserver(twisteds.append, [LogLevelFilterPredicate(level)])(event)
    assert ours == twisteds
