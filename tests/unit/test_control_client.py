"""The blocking control client, with a scripted socket in place of a real one."""

import json
import socket
from pathlib import Path

import pytest

from popbridge.cli import control_client
from popbridge.cli.control_client import ControlError, control_request


class ScriptedSocket:
    """Stands in for socket.socket: `connect` may raise, `recv` hands out scripted chunks."""

    def __init__(self, chunks: list[bytes | BaseException], connect_error: OSError | None = None) -> None:
        self.chunks, self.connect_error = list(chunks), connect_error
        self.sent = b""
        self.timeout: float | None = None
        self.address: str | None = None

    def __call__(self, family: int, kind: int) -> "ScriptedSocket":
        assert (family, kind) == (socket.AF_UNIX, socket.SOCK_STREAM)
        return self

    def __enter__(self) -> "ScriptedSocket":
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def settimeout(self, timeout: float) -> None:
        self.timeout = timeout

    def connect(self, address: str) -> None:
        self.address = address
        if self.connect_error:
            raise self.connect_error

    def sendall(self, data: bytes) -> None:
        self.sent += data

    def recv(self, size: int) -> bytes:
        chunk = self.chunks.pop(0) if self.chunks else b""
        if isinstance(chunk, BaseException):
            raise chunk
        return chunk


def script(monkeypatch: pytest.MonkeyPatch, fake: ScriptedSocket) -> ScriptedSocket:
    monkeypatch.setattr(control_client.socket, "socket", fake)
    return fake


def test_request_goes_out_as_one_json_line_and_the_reply_comes_back(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = script(monkeypatch, ScriptedSocket([b'{"ok": true, ', b'"revoked": 2}\n']))
    reply = control_request("/run/popbridge/control", {"command": "revoke", "address": "192.0.2.7"}, timeout=3)
    assert reply == {"ok": True, "revoked": 2}
    assert json.loads(fake.sent) == {"command": "revoke", "address": "192.0.2.7"}
    assert fake.sent.endswith(b"\n") and fake.sent.count(b"\n") == 1
    assert (fake.address, fake.timeout) == ("/run/popbridge/control", 3)


def test_error_reply_is_returned_for_the_caller_to_report(monkeypatch: pytest.MonkeyPatch) -> None:
    script(monkeypatch, ScriptedSocket([b'{"ok": false, "error": "no"}\n']))
    assert control_request("/s", {"command": "list"}) == {"ok": False, "error": "no"}


def test_missing_socket_is_a_control_error(tmp_path: Path) -> None:
    with pytest.raises(ControlError, match="no such control socket"):
        control_request(str(tmp_path / "absent"), {"command": "list"})


@pytest.mark.parametrize(
    ("error", "message"),
    [
        (ConnectionRefusedError(111, "refused"), "connection refused"),
        (PermissionError(13, "denied"), "permission denied"),
        (TimeoutError("timed out"), "no reply within"),
        (OSError(99, "odd"), "odd"),
    ],
)
def test_connect_failures_are_control_errors(monkeypatch: pytest.MonkeyPatch, error: OSError, message: str) -> None:
    script(monkeypatch, ScriptedSocket([], connect_error=error))
    with pytest.raises(ControlError, match=message):
        control_request("/s", {"command": "list"})


def test_slow_server_is_a_control_error(monkeypatch: pytest.MonkeyPatch) -> None:
    script(monkeypatch, ScriptedSocket([TimeoutError("timed out")]))
    with pytest.raises(ControlError, match="no reply within 10 seconds"):
        control_request("/s", {"command": "list"})


@pytest.mark.parametrize("reply", [b"not json\n", b"[1, 2]\n", b"\xff\n"])
def test_reply_that_is_not_a_json_object_is_a_control_error(monkeypatch: pytest.MonkeyPatch, reply: bytes) -> None:
    script(monkeypatch, ScriptedSocket([reply]))
    with pytest.raises(ControlError, match="not"):
        control_request("/s", {"command": "list"})


def test_connection_closed_before_a_whole_reply_is_a_control_error(monkeypatch: pytest.MonkeyPatch) -> None:
    script(monkeypatch, ScriptedSocket([b'{"ok": tr']))
    with pytest.raises(ControlError, match="closed before a complete reply"):
        control_request("/s", {"command": "list"})
