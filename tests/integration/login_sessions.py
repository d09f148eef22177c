"""Login sessions for the differential check, played over a real socket: each step is one
thing a mail client (or an attacker) may do before login, and the player answers the server's
challenges as a client would (CRAM-MD5 digests, SCRAM proofs).

A step is a plain tuple so that hypothesis can draw and print it; `play_pop3` / `play_imap`
run a list of steps on one connection and stop when the session is closed.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import socket
from collections.abc import Callable

from .scripted import read_line

Step = tuple[object, ...]


def b64(data: bytes) -> bytes:
    return base64.b64encode(data)


class Closed(Exception):
    """The server (popbridge) ended the session."""


def _line(sock: socket.socket) -> bytes:
    line = read_line(sock)
    if not line.endswith(b"\n"):
        raise Closed()
    return line


# ---------------------------------------------------------------- SASL client side


def cram_md5_answer(challenge_line: bytes, user: str, password: str) -> bytes:
    challenge = base64.b64decode(challenge_line[2:].strip())
    return b64(user.encode() + b" " + hmac.new(password.encode(), challenge, hashlib.md5).hexdigest().encode())


class Scram:
    """RFC 5802 client: first message, then the proof for the server's first message."""

    def __init__(self, mechanism: str, user: str, password: str, authzid: str = "") -> None:
        self.hash = "sha1" if mechanism == "SCRAM-SHA-1" else "sha256"
        self.password = password
        self.gs2 = b"n," + (b"a=" + _saslname(authzid) if authzid else b"") + b","
        self.bare = b"n=" + _saslname(user) + b",r=" + b64(os.urandom(12))

    def first(self) -> bytes:
        return b64(self.gs2 + self.bare)

    def final(self, challenge_line: bytes) -> bytes:
        server_first = base64.b64decode(challenge_line[2:].strip())
        fields = dict(f.split(b"=", 1) for f in server_first.split(b","))
        salted = hashlib.pbkdf2_hmac(self.hash, self.password.encode(), base64.b64decode(fields[b"s"]), int(fields[b"i"]))
        client_key = hmac.new(salted, b"Client Key", self.hash).digest()
        without_proof = b"c=" + b64(self.gs2) + b",r=" + fields[b"r"]
        message = self.bare + b"," + server_first + b"," + without_proof
        signature = hmac.new(hashlib.new(self.hash, client_key).digest(), message, self.hash).digest()
        proof = bytes(a ^ b for a, b in zip(client_key, signature))
        return b64(without_proof + b",p=" + b64(proof))


def _saslname(name: str) -> bytes:
    return name.encode().replace(b"=", b"=3D").replace(b",", b"=2C")


def sasl_dialogue(
    mechanism: str, user: str, password: str, authzid: str, initial: bool
) -> tuple[bytes | None, Callable[[bytes, int], bytes]]:
    """(the initial response or None, answer(challenge line, round) -> response line)."""
    if mechanism == "PLAIN":
        message = b64(f"{authzid}\0{user}\0{password}".encode())
        return (message if initial else None), lambda challenge, n: message
    if mechanism == "LOGIN":
        first, second = b64(user.encode()), b64(password.encode())
        if initial:
            return first, lambda challenge, n: second if n == 0 else b""
        return None, lambda challenge, n: (first, second)[n] if n < 2 else b""
    if mechanism == "CRAM-MD5":
        return None, lambda challenge, n: cram_md5_answer(challenge, user, password) if n == 0 else b"*"
    scram = Scram(mechanism, user, password, authzid)
    if initial:
        return scram.first(), lambda challenge, n: scram.final(challenge) if n == 0 else b""
    return None, lambda challenge, n: (scram.first() if n == 0 else scram.final(challenge) if n == 1 else b"")


# ---------------------------------------------------------------- POP3


def play_pop3(sock: socket.socket, steps: list[Step]) -> list[bytes]:
    """Run `steps` after the greeting; the lines the client saw."""
    seen = [_line(sock)]
    timestamp = re.search(rb"<[^>]+>", seen[0])

    def say(data: bytes, answers: int = 1) -> bytes:
        sock.sendall(data)
        got = b"".join(_line(sock) for _ in range(answers))
        seen.append(got)
        return got

    try:
        for step in steps:
            kind = step[0]
            if kind == "user":
                say(b"USER " + str(step[1]).encode() + b"\r\n")
            elif kind == "pass":
                say(b"PASS " + str(step[1]).encode() + b"\r\n")
            elif kind == "user+pass":  # pipelined
                say(f"USER {step[1]}\r\nPASS {step[2]}\r\n".encode(), answers=2)
            elif kind == "apop":
                stamp = timestamp.group(0) if timestamp else b"<none>"
                say(f"APOP {step[1]} ".encode() + hashlib.md5(stamp + str(step[2]).encode()).hexdigest().encode() + b"\r\n")
            elif kind == "capa":
                sock.sendall(b"CAPA\r\n")
                if _line(sock).startswith(b"+OK"):
                    while _line(sock) != b".\r\n":
                        pass
            elif kind == "raw":
                say(bytes(step[1]))  # type: ignore[arg-type]
            elif kind == "auth":
                _pop3_auth(step, say)
    except Closed:
        pass
    return seen


def _pop3_auth(step: Step, say: Callable[..., bytes]) -> None:
    _, mechanism, user, password, authzid, initial, cancel_at, bogus_ir = step
    first, answer = sasl_dialogue(str(mechanism), str(user), str(password), str(authzid), bool(initial))
    ir = bogus_ir if bogus_ir is not None else first
    reply = say(b"AUTH " + str(mechanism).encode() + (b" " + ir if ir is not None else b"") + b"\r\n")
    n = 0
    while reply.startswith(b"+ ") or reply == b"+\r\n":
        reply = say((b"*" if n == cancel_at else answer(reply, n)) + b"\r\n")
        n += 1


# ---------------------------------------------------------------- IMAP


def play_imap(sock: socket.socket, steps: list[Step]) -> list[bytes]:
    seen = [_line(sock)]

    def until(tag: bytes, continuation: bool = False) -> bytes:
        """Lines up to the tagged answer (or a continuation, when one may come)."""
        while True:
            line = _line(sock)
            seen.append(line)
            if line.startswith(tag + b" ") or (continuation and line.startswith(b"+")):
                return line

    try:
        for number, step in enumerate(steps):
            tag = b"t%d" % number
            kind = step[0]
            if kind == "login":
                _imap_login(sock, tag, step, until)
            elif kind == "raw":
                sock.sendall(tag + bytes(step[1]))  # type: ignore[arg-type]
                until(tag)
            elif kind == "pipelined-login":
                sock.sendall(tag + b" LOGIN " + str(step[1]).encode() + b" " + str(step[2]).encode() + b"\r\n" + tag + b"n NOOP\r\n")
                until(tag)
                until(tag + b"n")
            elif kind == "authenticate":
                _imap_authenticate(sock, tag, step, until)
    except Closed:
        pass
    return seen


def imap_string(value: str, form: str) -> bytes:
    data = value.encode()
    if form == "atom":
        return data
    if form == "quoted":
        return b'"' + data.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
    if form == "needless-escape":
        return b'"\\' + data + b'"'
    return b"{%d%s}\r\n" % (len(data), b"+" if form == "non-sync" else b"") + data


def _imap_login(sock: socket.socket, tag: bytes, step: Step, until: Callable[..., bytes]) -> None:
    _, user, password, user_form, password_form = step
    pieces = [tag + b" LOGIN ", imap_string(str(user), str(user_form)), b" ", imap_string(str(password), str(password_form)), b"\r\n"]
    wire = b"".join(pieces)
    # send up to each sync literal's announcement, wait for "+", then go on
    while (announcement := re.search(rb"\{\d+\}\r\n", wire)) is not None:
        sock.sendall(wire[: announcement.end()])
        wire = wire[announcement.end() :]
        if not until(tag, continuation=True).startswith(b"+"):
            return
    sock.sendall(wire)
    until(tag)


def _imap_authenticate(sock: socket.socket, tag: bytes, step: Step, until: Callable[..., bytes]) -> None:
    _, mechanism, user, password, authzid, initial, cancel_at, bogus_ir = step
    first, answer = sasl_dialogue(str(mechanism), str(user), str(password), str(authzid), bool(initial))
    ir = bogus_ir if bogus_ir is not None else first
    sock.sendall(tag + b" AUTHENTICATE " + str(mechanism).encode() + (b" " + ir if ir is not None else b"") + b"\r\n")
    n = 0
    while (reply := until(tag, continuation=True)).startswith(b"+"):
        sock.sendall((b"*" if n == cancel_at else answer(reply, n)) + b"\r\n")
        n += 1
