"""Who is logging in, read from a SASL exchange (RFC 4422) without keeping any secret.

The POP3 and IMAP4 watchers hand every client response of one AUTH / AUTHENTICATE exchange
to a `SaslUserReader`; it keeps only the login name. Passwords, digests and tokens are decoded
into locals that are dropped at once.

The name is read from the mechanism's first client message only, and only where that message
can mean one thing to any server that follows the mechanism's RFC. Where it cannot, the reader
says why and the watcher refuses it before the backend sees it (an initial response: the
protocol's error; a later response: a ``*`` that cancels the exchange):

- an initial response for a mechanism whose first message is the server's (CRAM-MD5,
  DIGEST-MD5): servers ignore it and read the user from the answer to their challenge;
- an empty initial response (``=``) for a mechanism that carries a name: servers that do not
  know RFC 4959 / 5034 read ``=`` as "no initial response" and ask again;
- a first message that is not valid base64 or not well-formed for its mechanism (a lenient
  server might still make a user of it), or whose name is not a clean printable name of at
  most 255 characters (the recorded name would not be the one the server saw).

The recorded name is the identity the server logs the session in as: for PLAIN, SCRAM and
OAUTHBEARER with an authorisation identity (authzid) that differs from the authentication
identity, that is the authzid. RFC 4616 / 5802 / 7628 leave a server two answers only: act as
the authzid, or fail; so a success means the authzid (Dovecot master users log in this way).
Mechanisms that do not carry a name in the clear (GSSAPI, EXTERNAL, NTLM, DIGEST-MD5,
anything unknown) give "".
"""

import binascii
import re
from base64 import b64decode
from collections.abc import Callable

SERVER_FIRST = frozenset({"CRAM-MD5", "DIGEST-MD5", "KERBEROS_V4"})  # no initial response allowed
MAX_NAME = 255
_MECHANISM = re.compile(rb"[A-Z0-9_-]{1,20}")  # RFC 4422 sasl-mech, upper-cased


class AmbiguousLogin(ValueError):
    """The client's message could name different users to different servers: refuse it."""


class SaslUserReader:
    """Feed it the exchange in order; `user` is the name once it has been seen."""

    def __init__(self, mechanism: str) -> None:
        self.mechanism = mechanism.upper()
        self.user = ""
        self.responses = 0
        self.cancelled = False  # the client, or popbridge on its behalf, sent "*"
        self._reader: Callable[[bytes], str] | None = _READERS.get(self.mechanism)

    @property
    def names_user(self) -> bool:
        """Whether this mechanism's first client message carries the login name."""
        return self._reader is not None

    def initial_response(self, encoded: bytes) -> str | None:
        """Read an initial response; returns why it must be refused, or None to let it go."""
        if self.mechanism in SERVER_FIRST:
            return f"{self.mechanism} takes no initial response"
        if encoded == b"=" and self._reader is not None:
            return f"an empty initial response is not accepted for {self.mechanism}"
        return self.client_response(encoded)

    def client_response(self, encoded: bytes) -> str | None:
        """One client response: base64, ``=`` for an empty initial response, ``*`` to cancel.

        Returns why the first message must be refused (the exchange is then cancelled), or None.
        """
        self.responses += 1
        if encoded == b"*":
            self.cancelled = True
            return None
        if self._reader is None or self.responses > 1:
            return None
        try:
            self.user = checked_name(self._reader(_decode(encoded)))
        except AmbiguousLogin as e:
            self.cancelled = True
            return str(e)
        return None


def _decode(encoded: bytes) -> bytes:
    if encoded == b"=":
        return b""
    try:
        return b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise AmbiguousLogin("the SASL response is not valid base64") from None


def valid_mechanism(name: bytes) -> bool:
    return _MECHANISM.fullmatch(name.upper()) is not None


def clean_name(name: str) -> str:
    """A name fit for logs and lookups: printable, one line, bounded."""
    return "".join(c for c in name if c.isprintable())[:MAX_NAME]


def checked_name(name: str) -> str:
    """`name` itself if it is fit to record as it is; a name that cleaning would change is
    refused, since the recorded name would then not be the one the server was sent."""
    if clean_name(name) != name:
        raise AmbiguousLogin(f"user names must be printable and at most {MAX_NAME} characters")
    return name


def _text(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise AmbiguousLogin("the user name is not UTF-8") from None


def _plain(message: bytes) -> str:
    """RFC 4616: authzid NUL authcid NUL passwd."""
    parts = message.split(b"\0")
    if len(parts) != 3 or not parts[1]:
        raise AmbiguousLogin("malformed PLAIN message")
    authzid, authcid = parts[0], parts[1]
    return _text(authzid or authcid)


def _login(message: bytes) -> str:
    """The LOGIN mechanism's first response is the user name (the second, the password)."""
    return _text(message)


def _cram_md5(message: bytes) -> str:
    """RFC 2195: ``user SP hex-digest``; the user may itself contain spaces."""
    user, sep, digest = message.rpartition(b" ")
    if not sep or not user or re.fullmatch(rb"[0-9a-fA-F]{32}", digest) is None:
        raise AmbiguousLogin("malformed CRAM-MD5 response")
    return _text(user)


def _xoauth2(message: bytes) -> str:
    """Google's XOAUTH2: ``user=NAME ^A auth=Bearer TOKEN ^A ^A``; exactly one user field."""
    users = [field[5:] for field in message.split(b"\x01") if field.startswith(b"user=")]
    if len(users) != 1:
        raise AmbiguousLogin("an XOAUTH2 message needs exactly one user field")
    return _text(users[0])


def _gs2_authzid(message: bytes) -> str:
    """OAUTHBEARER (RFC 7628) and SCRAM GS2 header: ``n,a=NAME,...`` with =2C/=3D escapes."""
    fields = message.split(b",")
    if len(fields) < 2 or (fields[0] not in (b"n", b"y") and not fields[0].startswith(b"p=")):
        raise AmbiguousLogin("malformed GS2 header")
    if fields[1].startswith(b"a="):
        return _unescape_saslname(fields[1][2:])
    if fields[1]:
        raise AmbiguousLogin("malformed GS2 header")
    return ""


def _scram(message: bytes) -> str:
    """RFC 5802 client-first: ``gs2-header n=NAME,r=NONCE``; the authzid wins when present."""
    authzid = _gs2_authzid(message)
    fields = message.split(b",")
    if len(fields) < 4 or not fields[2].startswith(b"n="):
        raise AmbiguousLogin("malformed SCRAM client-first message")
    return authzid or _unescape_saslname(fields[2][2:])


def _unescape_saslname(name: bytes) -> str:
    """RFC 5802 saslname: "," and "=" only as =2C and =3D; any other "=" is malformed."""
    if re.search(rb"=(?!2C|3D)", name):
        raise AmbiguousLogin("malformed saslname")
    return _text(name.replace(b"=2C", b",").replace(b"=3D", b"="))


_READERS: dict[str, Callable[[bytes], str]] = {
    "PLAIN": _plain,
    "LOGIN": _login,
    "CRAM-MD5": _cram_md5,
    "XOAUTH2": _xoauth2,
    "OAUTHBEARER": _gs2_authzid,
    "SCRAM-SHA-1": _scram,
    "SCRAM-SHA-256": _scram,
    "SCRAM-SHA-1-PLUS": _scram,
    "SCRAM-SHA-256-PLUS": _scram,
}
