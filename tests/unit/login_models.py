"""Model mail servers for the recorded-user property: they log users in from the bytes they
receive, the way real servers read them, including the lenient and the old-fashioned ones.

`ImapModel(literal_plus=False, sasl_ir=False)` behaves like Courier: a ``{n+}`` line gets an
untagged BAD and the literal's bytes are read as commands; an initial response is ignored and the
mechanism's challenge sent. `Pop3Model(sasl_ir=False)` is a pre-RFC 5034 server that ignores
initial responses. Both ignore a CRAM-MD5 initial response (Dovecot does) and read names
leniently (quoted-string escapes of any character, blanks around a USER name trimmed).
"""

import hashlib
import hmac
import re
from base64 import b64decode, b64encode

USERS = {"alice": "alice-pw", "bob": "bob-pw"}
CHALLENGE = b"<1896.697170952@model>"
LITERAL = re.compile(rb"\{(\d+)(\+?)\}\Z")


def cram_md5(user: str, password: str) -> bytes:
    digest = hmac.new(password.encode(), CHALLENGE, hashlib.md5).hexdigest()
    return b64encode(f"{user} {digest}".encode())


def _decode(line: bytes) -> bytes:
    try:
        return b64decode(line)  # lenient: junk characters are skipped
    except ValueError:
        return b"\xff"


class _Sasl:
    """One server-side SASL exchange for PLAIN, LOGIN or CRAM-MD5."""

    def __init__(self, mechanism: str) -> None:
        self.mechanism, self.user = mechanism, ""

    def first_challenge(self) -> bytes:
        return {"PLAIN": b"", "LOGIN": b"VXNlcm5hbWU6", "CRAM-MD5": b64encode(CHALLENGE)}[self.mechanism]

    def respond(self, response: bytes) -> tuple[bytes | None, str | None]:
        """(next challenge, None) or (None, user logged in or "" for a failure)."""
        message = _decode(response)
        text = message.decode("utf-8", "replace")
        if self.mechanism == "PLAIN":
            parts = text.split("\0")
            ok = len(parts) == 3 and parts[0] in ("", parts[1]) and USERS.get(parts[1]) == parts[2]
            return None, parts[1] if ok else ""
        if self.mechanism == "LOGIN" and not self.user:
            self.user = text or "\0"
            return b"UGFzc3dvcmQ6", None
        if self.mechanism == "LOGIN":
            return None, self.user if USERS.get(self.user) == text else ""
        user, _, digest = text.rpartition(" ")
        password = USERS.get(user)
        good = password is not None and hmac.new(password.encode(), CHALLENGE, hashlib.md5).hexdigest() == digest
        return None, user if good else ""


class ImapModel:
    def __init__(self, literal_plus: bool, sasl_ir: bool) -> None:
        self.literal_plus, self.sasl_ir = literal_plus, sasl_ir
        self.logged_in: list[str] = []
        self._buffer = b""
        self._parts: list[bytes | tuple[bytes]] = []  # line text and (literal,) of a command
        self._literal: int | None = None
        self._sasl: tuple[bytes, _Sasl] | None = None

    def greeting(self) -> bytes:
        caps = b"IMAP4rev1" + b" LITERAL+" * self.literal_plus + b" SASL-IR" * self.sasl_ir
        return b"* OK [CAPABILITY " + caps + b" AUTH=PLAIN AUTH=LOGIN AUTH=CRAM-MD5] model ready\r\n"

    def feed(self, data: bytes) -> bytes:
        self._buffer += data
        out = b""
        while not self.logged_in:
            if self._literal is not None:
                if len(self._buffer) < self._literal:
                    break
                self._parts.append((self._buffer[: self._literal],))
                self._buffer, self._literal = self._buffer[self._literal :], None
                continue
            end = self._buffer.find(b"\n")
            if end < 0:
                break
            line, self._buffer = self._buffer[:end].rstrip(b"\r"), self._buffer[end + 1 :]
            out += self._sasl_line(line) if self._sasl else self._line(line)
        return out

    def _line(self, line: bytes) -> bytes:
        literal = LITERAL.search(line)
        self._parts.append(line[: literal.start()] if literal else line)
        tag = self._tag()
        if literal and literal.group(2) and not self.literal_plus:
            self._parts = []  # Courier: a syntax error without a tag; what follows is read as commands
            return b"* BAD Error in IMAP command received by server.\r\n"
        if literal:
            self._literal = int(literal.group(1))
            return b"" if literal.group(2) else b"+ OK\r\n"
        parts, self._parts = self._parts, []
        words = _words(parts)
        if len(words) < 2:
            return tag + b" BAD missing command\r\n"
        verb, arguments = words[1].upper(), words[2:]
        if verb == b"LOGIN" and len(arguments) == 2:
            user, password = (w.decode("utf-8", "replace") for w in arguments)
            return self._finish(tag, user if USERS.get(user) == password else "")
        if verb == b"AUTHENTICATE" and arguments and arguments[0].upper().decode() in ("PLAIN", "LOGIN", "CRAM-MD5"):
            sasl = _Sasl(arguments[0].upper().decode())
            self._sasl = (tag, sasl)
            if len(arguments) == 2 and self.sasl_ir and sasl.mechanism != "CRAM-MD5":
                return self._sasl_line(b"" if arguments[1] == b"=" else arguments[1])
            return b"+ " + sasl.first_challenge() + b"\r\n"
        if verb in (b"NOOP", b"CAPABILITY"):
            return tag + b" OK done\r\n"
        return tag + b" BAD unknown\r\n"

    def _tag(self) -> bytes:
        first = self._parts[0]
        return first.split(b" ", 1)[0] if isinstance(first, bytes) and first else b"*"

    def _sasl_line(self, line: bytes) -> bytes:
        assert self._sasl is not None
        tag, sasl = self._sasl
        if line == b"*":
            self._sasl = None
            return tag + b" BAD aborted\r\n"
        challenge, user = sasl.respond(line)
        if challenge is not None:
            return b"+ " + challenge + b"\r\n"
        self._sasl = None
        return self._finish(tag, user or "")

    def _finish(self, tag: bytes, user: str) -> bytes:
        if not user:
            return tag + b" NO failed\r\n"
        self.logged_in.append(user)
        return tag + b" OK logged in\r\n"


def _words(parts: list[bytes | tuple[bytes]]) -> list[bytes]:
    """Lenient IMAP words: any run of blanks separates, any escaped character stands for itself."""
    words: list[bytes] = []
    for part in parts:
        if isinstance(part, tuple):
            words.append(part[0])
            continue
        for quoted, atom in re.findall(rb'"((?:[^"\\]|\\.)*)"|([^ "]+)', part):
            words.append(re.sub(rb"\\(.)", rb"\1", quoted) if not atom else atom)
    return words


class Pop3Model:
    def __init__(self, sasl_ir: bool, apop: bool) -> None:
        self.sasl_ir, self.apop = sasl_ir, apop
        self.logged_in: list[str] = []
        self._buffer = b""
        self._user: str | None = None
        self._sasl: _Sasl | None = None

    def greeting(self) -> bytes:
        return b"+OK model ready" + (b" " + CHALLENGE) * self.apop + b"\r\n"

    def feed(self, data: bytes) -> bytes:
        self._buffer += data
        out = b""
        while not self.logged_in and b"\n" in self._buffer:
            line, self._buffer = self._buffer.split(b"\n", 1)
            out += self._line(line.rstrip(b"\r"))
        return out

    def _line(self, line: bytes) -> bytes:
        if self._sasl is not None:
            return self._sasl_line(line)
        verb, _, argument = line.partition(b" ")
        verb, text = verb.upper(), argument.decode("utf-8", "replace")
        if verb == b"CAPA":
            return b"+OK\r\nUSER\r\n" + b"SASL PLAIN LOGIN CRAM-MD5\r\n" * self.sasl_ir + b".\r\n"
        if verb == b"USER":
            self._user = text.strip()
            return b"+OK\r\n"
        if verb == b"PASS":
            return self._finish(self._user if self._user and USERS.get(self._user) == text else "")
        if verb == b"APOP" and self.apop:
            user, _, digest = text.strip().partition(" ")
            password = USERS.get(user, "")
            good = password and hashlib.md5(CHALLENGE + password.encode()).hexdigest() == digest.strip()
            return self._finish(user if good else "")
        if verb == b"AUTH" and argument:
            mechanism, _, initial = text.partition(" ")
            if mechanism.upper() not in ("PLAIN", "LOGIN", "CRAM-MD5"):
                return b"-ERR unknown mechanism\r\n"
            self._sasl = _Sasl(mechanism.upper())
            if initial and self.sasl_ir and self._sasl.mechanism != "CRAM-MD5":
                return self._sasl_line(b"" if initial == "=" else initial.encode())
            return b"+ " + self._sasl.first_challenge() + b"\r\n"
        return b"+OK\r\n" if verb == b"NOOP" else b"-ERR unknown command\r\n"

    def _sasl_line(self, line: bytes) -> bytes:
        assert self._sasl is not None
        if line == b"*":
            self._sasl = None
            return b"-ERR aborted\r\n"
        challenge, user = self._sasl.respond(line)
        if challenge is not None:
            return b"+ " + challenge + b"\r\n"
        self._sasl = None
        return self._finish(user or "")

    def _finish(self, user: str) -> bytes:
        if not user:
            return b"-ERR failed\r\n"
        self.logged_in.append(user)
        return b"+OK logged in\r\n"
