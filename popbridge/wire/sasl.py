"""Who is logging in, read from a SASL exchange (RFC 4422) without keeping any secret.

The POP3 and IMAP4 watchers hand every client response and server challenge of one
AUTH / AUTHENTICATE exchange to a `SaslUserReader`; it keeps only the login name. Passwords,
digests and tokens are decoded into locals that are dropped at once.

The recorded name is the identity the server logs the session in as: for PLAIN with an
authorisation identity (authzid) that differs from the authentication identity, that is the
authzid (a master user logging in as someone else acts as that someone). Mechanisms that do not
carry a name in the clear (GSSAPI, EXTERNAL, anything unknown) give "".
"""

import binascii
from base64 import b64decode
from collections.abc import Callable


class SaslUserReader:
    """Feed it the exchange in order; `user` is the name once it has been seen."""

    def __init__(self, mechanism: str) -> None:
        self.mechanism = mechanism.upper()
        self.user = ""
        self.responses = 0
        self._reader: Callable[[bytes], str] | None = _READERS.get(self.mechanism)

    def client_response(self, encoded: bytes) -> None:
        """One client response: base64, ``=`` for an empty initial response, ``*`` to cancel."""
        self.responses += 1
        if self._reader is None or self.responses > 1 or encoded.strip() in (b"*", b""):
            return
        decoded = _decode(encoded.strip())
        if decoded is not None:
            self.user = clean_name(self._reader(decoded))


def _decode(encoded: bytes) -> bytes | None:
    if encoded == b"=":
        return b""
    try:
        return b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        return None  # the server will refuse it; the name stays unknown


def clean_name(name: str) -> str:
    """A name fit for logs and lookups: printable, one line, bounded."""
    return "".join(c for c in name if c.isprintable())[:255]


def _text(data: bytes) -> str:
    return data.decode("utf-8", "replace")


def _plain(message: bytes) -> str:
    """RFC 4616: authzid NUL authcid NUL passwd."""
    parts = message.split(b"\0")
    if len(parts) != 3:
        return ""
    authzid, authcid = parts[0], parts[1]
    return _text(authzid or authcid)


def _login(message: bytes) -> str:
    """The LOGIN mechanism's first response is the user name (the second, the password)."""
    return _text(message)


def _cram_md5(message: bytes) -> str:
    """RFC 2195: ``user SP hex-digest``; the user may itself contain spaces."""
    user, sep, _digest = message.rpartition(b" ")
    return _text(user) if sep else ""


def _xoauth2(message: bytes) -> str:
    """Google's XOAUTH2: ``user=NAME ^A auth=Bearer TOKEN ^A ^A``."""
    for field in message.split(b"\x01"):
        if field.startswith(b"user="):
            return _text(field[5:])
    return ""


def _gs2_authzid(message: bytes) -> str:
    """OAUTHBEARER (RFC 7628) and SCRAM GS2 header: ``n,a=NAME,...`` with =2C/=3D escapes."""
    fields = message.split(b",")
    if len(fields) >= 2 and fields[1].startswith(b"a="):
        return _unescape_saslname(fields[1][2:])
    return ""


def _scram(message: bytes) -> str:
    """RFC 5802 client-first: ``gs2-header n=NAME,r=NONCE``; the authzid wins when present."""
    authzid = _gs2_authzid(message)
    if authzid:
        return authzid
    fields = message.split(b",")
    return next((_unescape_saslname(f[2:]) for f in fields[2:] if f.startswith(b"n=")), "")


def _unescape_saslname(name: bytes) -> str:
    return _text(name.replace(b"=2C", b",").replace(b"=3D", b"="))


_READERS: dict[str, Callable[[bytes], str]] = {
    "PLAIN": _plain,
    "LOGIN": _login,
    "CRAM-MD5": _cram_md5,
    "XOAUTH2": _xoauth2,
    "OAUTHBEARER": _gs2_authzid,
    "SCRAM-SHA-1": _scram,
    "SCRAM-SHA-256": _scram,
}
