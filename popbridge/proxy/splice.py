"""After the login: two transports joined with flow control, as twisted.protocols.portforward does.

Each transport is registered as the streaming producer of the other, so a slow client pauses
reading from the backend (and the reverse) instead of letting buffers grow without bound.
"""

from twisted.internet.interfaces import ITransport


def splice(client: ITransport, backend: ITransport) -> None:
    client.registerProducer(backend, True)  # type: ignore[attr-defined]
    backend.registerProducer(client, True)  # type: ignore[attr-defined]
