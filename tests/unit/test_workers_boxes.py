"""The channel's one-loop AMP box reader: the boxes Twisted's own reader would give, however
the bytes are chunked; a key over 255 bytes closes the channel."""

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.testing import StringTransport
from twisted.protocols import amp

from popbridge.daemon.workers.channel import OneLoopBoxes

keys = st.binary(min_size=1, max_size=255)
boxes = st.lists(st.dictionaries(keys, st.binary(max_size=600), max_size=6), max_size=5)


class Collecting(OneLoopBoxes):
    def __init__(self) -> None:
        super().__init__()
        self.received: list[dict[bytes, bytes]] = []

    def ampBoxReceived(self, box: amp.AmpBox) -> None:
        self.received.append(dict(box))


def read(data: bytes, cuts: list[int]) -> Collecting:
    reader = Collecting()
    reader.makeConnection(StringTransport())
    at = 0
    for cut in sorted(set(cuts)) + [len(data)]:
        reader.dataReceived(data[at:cut])
        at = max(at, cut)
    return reader


@given(boxes, st.lists(st.integers(min_value=0, max_value=8000), max_size=20))
def test_chunking_never_changes_the_boxes(sent, cuts):
    data = b"".join(amp.AmpBox(box).serialize() for box in sent)
    assert read(data, [cut for cut in cuts if cut < len(data)]).received == sent


@given(boxes)
def test_a_partial_box_waits_for_the_rest(sent):
    data = b"".join(amp.AmpBox(box).serialize() for box in sent)
    reader = read(data[:-1], [])
    assert reader.received == sent[:-1]
    reader.dataReceived(data[-1:])
    assert reader.received == sent


def test_a_key_over_255_bytes_closes_the_channel():
    reader = read(b"\x01\x00" + b"k" * 256 + b"\x00\x01v\x00\x00", [])
    assert reader.received == [] and reader.transport.disconnecting
