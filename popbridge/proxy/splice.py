"""After the login: two transports joined with flow control, as twisted.protocols.portforward does.

Each transport is registered as the streaming producer of the other, so a slow client pauses
reading from the backend (and the reverse) instead of letting buffers grow without bound.
Reads get larger too: Twisted reads 64 KiB per pass, and at that size the reactor's own work
per read was most of popbridge's CPU per MB moved (bench/profile.py).
"""

from twisted.internet.interfaces import ITransport
from twisted.protocols.policies import ProtocolWrapper

PIPE_READ_SIZE = 256 * 1024


def splice(client: ITransport, backend: ITransport) -> None:
    client.registerProducer(backend, True)  # type: ignore[attr-defined]
    backend.registerProducer(client, True)  # type: ignore[attr-defined]
    for transport in (client, backend):
        _read_more(transport)


def _read_more(transport: object) -> None:
    """Raise the socket read size, looking through wrappers (PROXY header) to the socket."""
    while isinstance(transport, ProtocolWrapper):  # it forwards attribute reads, not writes
        transport = transport.transport
    if hasattr(transport, "bufferSize"):
        transport.bufferSize = PIPE_READ_SIZE
