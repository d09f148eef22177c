"""IMAP4 grammar pieces the login watcher needs (RFC 3501 / 9051, 7888), sans-IO.

Only what must be understood before authentication: tags, literal announcements at the end of
a line, LOGIN's astrings (atom, quoted string, literal) to read its user name, the ID parameter
list, and capability lists. Everything is bytes in, plain values out; malformed input raises
`ImapSyntaxError`, which the watcher turns into a BAD answer or a closed session.
"""

import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

CRLF = b"\r\n"

# tag = 1*<any ASTRING-CHAR except "+">: CHAR without CTL, SP, ( ) { % * " \ and +
_TAG = re.compile(rb"[\x21\x23\x24\x26\x27\x2c-\x5b\x5d-\x7a\x7c-\x7e]{1,64}")
_ATOM = re.compile(rb"[\x21\x23-\x24\x26-\x27\x2b-\x5b\x5d-\x7a\x7c-\x7e]+")  # ATOM-CHAR and "]"
_LITERAL_AT_END = re.compile(rb"\{([^{}]*)\}\Z")
_LITERAL_SPEC = re.compile(rb"(\d{1,20})(\+?)")  # RFC 7888: "{n+}"; LITERAL- is a capability, not a form
_CAPABILITY_LIST = re.compile(rb"(?i)\[CAPABILITY ([^\]]*)\]")
_HIDDEN_ID_FIELDS = (b"x-originating-", b"x-connected-")


class ImapSyntaxError(ValueError):
    """The bytes do not follow the IMAP grammar where popbridge has to read them."""


NONSYNC_LIMIT_LITERAL_MINUS = 4096  # RFC 7888: LITERAL- servers take {n+} up to this size


@dataclass(frozen=True)
class Literal:
    """A literal announced at the end of a line: ``{n}`` waits for ``+``; ``{n+}`` does not."""

    size: int
    synchronising: bool


def is_tag(candidate: bytes) -> bool:
    return _TAG.fullmatch(candidate) is not None


def literal_at_end(segment: bytes, max_literal: int) -> Literal | None:
    """The literal a line segment announces, None if it announces none.

    Anything in braces at the end that is not a valid announcement within `max_literal`
    (``{-1}``, ``{99999999999999999999}``, ``{5x}``, ``{5-}``, which is no IMAP syntax) is an
    error, never plain text: a server that read it differently from popbridge would see
    different command boundaries. So is a binary literal ``~{n}`` (RFC 3516), which no command
    before login takes.
    """
    braces = _LITERAL_AT_END.search(segment)
    if braces is None:
        return None
    if segment[braces.start() - 1 : braces.start()] == b"~":
        raise ImapSyntaxError("binary literals are not accepted before login")
    spec = _LITERAL_SPEC.fullmatch(braces.group(1))
    if spec is None:
        raise ImapSyntaxError(f"bad literal announcement {braces.group(0)[:30]!r}")
    size = int(spec.group(1))
    if size > max_literal:
        raise ImapSyntaxError(f"literal of {size} bytes over the limit of {max_literal}")
    return Literal(size, synchronising=not spec.group(2))


@dataclass(frozen=True)
class LiteralData:
    """The bytes of one literal inside an assembled command."""

    data: bytes


CommandPart = bytes | LiteralData  # line text (announcements removed) or a literal's bytes


def login_arguments(parts: list[CommandPart], complete: bool) -> list[bytes]:
    """The user and password read so far from a LOGIN command, held to RFC 3501's
    ``tag SP "LOGIN" SP astring SP astring`` exactly: one space between words, nothing else.

    `parts` may be a command still arriving (`complete` False): then it must be a prefix of
    that form. Anything else raises `ImapSyntaxError`, since servers part ways on lenient
    readings (extra blanks, unknown escapes, 8-bit atoms) and the user they log in may not be
    the one popbridge would read.
    """
    kinds: list[str] = []
    values: list[bytes] = []
    for part in parts:
        if isinstance(part, LiteralData):
            kinds.append("word")
            values.append(part.data)
            continue
        position = 0
        while position < len(part):
            if part[position] == 0x20:
                kinds.append(" ")
                position += 1
                continue
            if part[position] == 0x22:
                value, position = _quoted(part, position)
            else:
                atom = _ATOM.match(part, position)
                if atom is None:
                    raise ImapSyntaxError(f"unexpected {part[position:position + 1]!r} in LOGIN")
                value, position = atom.group(0), atom.end()
            kinds.append("word")
            values.append(value)
    form = ["word", " ", "word", " ", "word", " ", "word"]  # tag LOGIN user password
    if kinds != form[: len(kinds)] or (complete and len(kinds) != len(form)):
        raise ImapSyntaxError("LOGIN takes a user and a password, one space apart")
    return values[2:]


def _text_tokens(text: bytes) -> list[tuple[bytes, bool]]:
    """Atoms and quoted strings of `text`, each with whether it was quoted."""
    tokens, position = [], 0
    while position < len(text):
        if text[position] == 0x20:
            position += 1
        elif text[position] == 0x22:
            value, position = _quoted(text, position)
            tokens.append((value, True))
        else:
            atom = _ATOM.match(text, position)
            if atom is None:
                raise ImapSyntaxError(f"unexpected {text[position:position + 1]!r}")
            tokens.append((atom.group(0), False))
            position = atom.end()
    return tokens


def _quoted(text: bytes, start: int) -> tuple[bytes, int]:
    """Unescape the quoted string at `start`; returns it and the position after its quote."""
    value, position = bytearray(), start + 1
    while position < len(text):
        char = text[position]
        if char == 0x5C:  # backslash: only \\ and \" are valid escapes
            if position + 1 >= len(text) or text[position + 1] not in (0x5C, 0x22):
                raise ImapSyntaxError("bad escape in quoted string")
            value.append(text[position + 1])
            position += 2
        elif char == 0x22:
            return bytes(value), position + 1
        else:
            value.append(char)
            position += 1
    raise ImapSyntaxError("unterminated quoted string")


def quoted(value: bytes) -> bytes:
    """`value` as an IMAP quoted string (callers ensure it holds no CR, LF or NUL)."""
    return b'"' + value.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


def id_fields(arguments: bytes) -> list[tuple[bytes, bytes | None]]:
    """The (field, value) pairs of an ID command's argument (``NIL`` or a list of strings)."""
    arguments = arguments.strip()
    if arguments.upper() == b"NIL":
        return []
    if not (arguments.startswith(b"(") and arguments.endswith(b")")):
        raise ImapSyntaxError("ID takes NIL or a parenthesised list")
    tokens = _text_tokens(arguments[1:-1])
    if len(tokens) % 2:
        raise ImapSyntaxError("ID list has an odd number of strings")
    return [
        (field, None if not was_quoted and value.upper() == b"NIL" else value)
        for (field, _), (value, was_quoted) in zip(tokens[::2], tokens[1::2])
    ]


def id_command(tag: bytes, fields: list[tuple[bytes, bytes | None]]) -> bytes:
    """An ID command line with `fields`, quoted."""
    if not fields:
        return tag + b" ID NIL" + CRLF
    body = b" ".join(quoted(field) + b" " + (b"NIL" if value is None else quoted(value)) for field, value in fields)
    return tag + b" ID (" + body + b")" + CRLF


def without_forwarding_fields(fields: list[tuple[bytes, bytes | None]]) -> list[tuple[bytes, bytes | None]]:
    """A client's ID fields minus those only popbridge may send (x-originating-*, x-connected-*)."""
    return [(f, v) for f, v in fields if not f.lower().startswith(_HIDDEN_ID_FIELDS)]


def capabilities_in(line: bytes) -> set[bytes] | None:
    """The capabilities of a ``[CAPABILITY ...]`` response code in `line`, upper-cased."""
    code = _CAPABILITY_LIST.search(line)
    return set(code.group(1).upper().split()) if code else None


def edit_capabilities(line: bytes, keep: Callable[[bytes], bool], extra: list[bytes]) -> bytes:
    """`line` with its capability list edited: a CAPABILITY response or ``[CAPABILITY ...]`` code.

    Capabilities failing `keep` are dropped, then `extra` ones are added. Other lines are
    returned unchanged.
    """

    def edited(names: bytes) -> bytes:
        kept = [name for name in names.split() if keep(name.upper())]
        return b" ".join(kept + [name for name in extra if name not in kept])

    if line[:13].upper() == b"* CAPABILITY ":
        body, ending = line[13:].rstrip(b"\r\n"), line[len(line.rstrip(b"\r\n")) :]
        return line[:13] + edited(body) + ending
    return _CAPABILITY_LIST.sub(lambda code: b"[CAPABILITY " + edited(code.group(1)) + b"]", line)


def without_capability_code(line: bytes) -> bytes:
    """`line` without its ``[CAPABILITY ...]`` code (a list that is no longer true)."""
    return _CAPABILITY_LIST.sub(b"", line).replace(b"  ", b" ")


_MENTIONS_CAPABILITY = re.compile(rb"(?i)capability")


def client_capabilities(raw: bytes, offer_starttls: bool, locked: bool) -> bytes:
    """A backend line as the client must see it: no backend STARTTLS; popbridge's own when it
    offers one; LOGINDISABLED and no AUTH= while logins are locked until TLS."""
    if not _MENTIONS_CAPABILITY.search(raw):
        return raw  # most lines: nothing to rewrite
    return _rewritten_capabilities(raw, offer_starttls, locked)


@lru_cache(maxsize=256)  # the same greeting and answers come back session after session
def _rewritten_capabilities(raw: bytes, offer_starttls: bool, locked: bool) -> bytes:
    extra = [b"STARTTLS"] * offer_starttls + [b"LOGINDISABLED"] * locked

    def keep(name: bytes) -> bool:
        return name != b"STARTTLS" and not (locked and name.startswith(b"AUTH="))

    return edit_capabilities(raw, keep, extra)
