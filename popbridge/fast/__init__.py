"""Speed-ups below Twisted's public API, each with its measured reason (README, benchmarks).

Nothing here changes behaviour: without it popbridge runs the same, slower. Because these
modules lean on Twisted's internals (``EPollReactor._doReadOrWrite``, ``FileDescriptor``'s write
buffer, ``unix.Server``'s ``recvmsg``), they are used only with the Twisted releases they are
tested against, `TESTED_TWISTED`; ``install_requires`` in setup.cfg pins the same range. Any
other Twisted (a distribution's, installed without the pin) gets Twisted's stock reactor and
transports, and one warning says so.
"""

from functools import cache

from twisted import version as twisted_version
from twisted.logger import Logger

TESTED_TWISTED = ((26, 10), (27, 0))  # [from, below) as (major, minor): keep equal to setup.cfg
TWISTED_RELEASE = (twisted_version.major, twisted_version.minor)  # read once, at import

log = Logger()


@cache
def twisted_is_tested() -> bool:
    """Whether the running Twisted is one `fast/` was tested against; logs once when not."""
    low, high = TESTED_TWISTED
    if low <= TWISTED_RELEASE < high:
        return True
    log.warn(
        "Twisted {release} is outside the range popbridge's speed-ups are tested against "
        "(>={low}, <{high}): using Twisted's stock reactor and transports (the same, slower)",
        release=twisted_version.public(), low="%d.%d" % low, high="%d.%d" % high,
    )
    return False
