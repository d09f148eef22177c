"""Lookup services: everything a relay or an admin asks over a socket.

The service calls `lookup_factory` once per ``[[lookup]]`` table and `control_factory` for
``[control]``, and listens on the configured endpoint with the factory it gets.
"""

from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import ServerFactory

from popbridge.ledger import ILedger
from popbridge.lookup.control import control_server_factory
from popbridge.lookup.policy import policy_factory
from popbridge.lookup.socketmap import socketmap_factory
from popbridge.lookup.whoson import whoson_factory
from popbridge.metrics.counters import Counters
from popbridge.settings import LookupConfig
from popbridge.verdict import Verdicts

__all__ = ["control_factory", "lookup_factory"]


def lookup_factory(
    config: LookupConfig, verdicts: Verdicts, ledger: ILedger, counters: Counters, clock: IReactorTime
) -> ServerFactory:
    """The factory for one ``[[lookup]]`` listener (policy, socketmap or whoson)."""
    if config.protocol == "policy":
        return policy_factory(config, verdicts, counters, clock)
    if config.protocol == "socketmap":
        return socketmap_factory(config, verdicts, counters, clock)
    if config.protocol == "whoson":
        return whoson_factory(config, verdicts, ledger, counters, clock)
    raise ValueError(f"unknown lookup protocol {config.protocol!r}")


def control_factory(ledger: ILedger, counters: Counters, clock: IReactorTime) -> ServerFactory:
    """The factory for the ``[control]`` admin socket (list, query, revoke, stats)."""
    return control_server_factory(ledger, counters, clock)
