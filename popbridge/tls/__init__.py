"""TLS material: the certificate popbridge shows clients, and how it checks backends.

popbridge ends client TLS itself (it must read the backend's answer to the login), both for
STLS/STARTTLS and for implicit TLS on ``ssl:`` listeners. A `ServerCertificate` holds the
current `CertificateOptions`; `reload()` (on SIGHUP) swaps in freshly read files for new
connections only, so open sessions keep theirs, and a bad file keeps the old certificate.
"""

from datetime import datetime, timezone
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import crypto
from twisted.internet import ssl
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.internet.endpoints import _parse, quoteStringArgument  # _parse: Twisted's own endpoint tokenizer
from twisted.logger import Logger

from popbridge.settings import TlsConfig

TLS_VERSIONS = {"TLSv1.2": ssl.TLSVersion.TLSv1_2, "TLSv1.3": ssl.TLSVersion.TLSv1_3}
_SSL_ONLY_ARGUMENTS = ("privateKey", "certKey", "extraCertChain", "sslmethod", "dhParameters")


class TlsFileError(ValueError):
    """A certificate or key file is unusable; the message names the file."""


def load_server_options(certificate: Path, key: Path, minimum: str) -> ssl.CertificateOptions:
    """CertificateOptions for a PEM certificate (leaf first, then its chain) and key.

    Refuses expired or not-yet-valid certificates and a key that does not match, so a
    mistake shows at start or reload rather than as handshake failures for every client.
    """
    try:
        pem = Path(certificate).read_bytes()
    except OSError as e:
        raise TlsFileError(f"{certificate}: cannot read the certificate: {e.strerror}") from None
    try:
        key_pem = Path(key).read_bytes()
    except OSError as e:
        raise TlsFileError(f"{key}: cannot read the key: {e.strerror}") from None
    try:
        chain = x509.load_pem_x509_certificates(pem)
    except ValueError as e:
        raise TlsFileError(f"{certificate}: not a PEM certificate: {e}") from None
    try:
        private_key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as e:
        raise TlsFileError(f"{key}: not an unencrypted PEM private key: {e}") from None
    leaf, now = chain[0], datetime.now(timezone.utc)
    if leaf.not_valid_after_utc < now:
        raise TlsFileError(f"{certificate}: the certificate expired on {leaf.not_valid_after_utc:%Y-%m-%d}")
    if leaf.not_valid_before_utc > now:
        raise TlsFileError(f"{certificate}: the certificate is not valid before {leaf.not_valid_before_utc:%Y-%m-%d}")
    if _public_der(leaf.public_key()) != _public_der(private_key.public_key()):
        raise TlsFileError(f"{key}: the key does not belong to the certificate in {certificate}")
    return ssl.CertificateOptions(
        privateKey=crypto.PKey.from_cryptography_key(private_key),  # type: ignore[arg-type]
        certificate=crypto.X509.from_cryptography(leaf),
        extraCertChain=[crypto.X509.from_cryptography(c) for c in chain[1:]],
        raiseMinimumTo=TLS_VERSIONS[minimum],
    )


def _public_der(key: object) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)  # type: ignore[attr-defined]


class ServerCertificate:
    """The certificate for one [[proxy]]; re-read by `reload`, kept when the new files are bad."""

    log = Logger()

    def __init__(self, certificate: Path, key: Path, minimum: str) -> None:
        self._certificate, self._key, self._minimum = certificate, key, minimum
        self._options = load_server_options(certificate, key, minimum)

    def options(self) -> ssl.CertificateOptions:
        return self._options

    def reload(self) -> bool:
        try:
            self._options = load_server_options(self._certificate, self._key, self._minimum)
        except TlsFileError as e:
            self.log.error("certificate not reloaded, the old one stays in use: {error}", error=e)
            return False
        self.log.info("certificate reloaded from {path}", path=str(self._certificate))
        return True


def backend_tls_options(hostname: str, ca: Path | None, verify: bool) -> IOpenSSLClientConnectionCreator:
    """How popbridge checks a backend it speaks STARTTLS to: verified by default."""
    if not verify:
        return ssl.CertificateOptions(verify=False)
    if ca is None:
        return ssl.optionsForClientTLS(hostname)
    try:
        roots = [ssl.Certificate(crypto.X509.from_cryptography(c)) for c in x509.load_pem_x509_certificates(Path(ca).read_bytes())]
    except (OSError, ValueError) as e:
        raise TlsFileError(f"{ca}: not a readable PEM CA file: {e}") from None
    return ssl.optionsForClientTLS(hostname, trustRoot=ssl.trustRootFromCertificates(roots))


def implicit_tls_listener(description: str) -> tuple[str, dict[str, str]]:
    """The plain ``tcp:`` description for an ``ssl:`` listener, and its TLS-only arguments.

    popbridge starts TLS itself on such connections (with the reloadable certificate), so the
    socket is bound as TCP; ``privateKey=``/``certKey=`` given in the string are returned for
    use when the table has no tls_certificate/tls_key.
    """
    args, kwargs = _parse(description)
    if args[0] != "ssl":
        raise ValueError("not an ssl: endpoint")
    tls_only = {name: kwargs.pop(name) for name in _SSL_ONLY_ARGUMENTS if name in kwargs}
    if len(args) > 1:
        kwargs.setdefault("port", args[1])
    tcp = ":".join(["tcp", *(f"{name}={quoteStringArgument(value)}" for name, value in kwargs.items())])
    return tcp, tls_only


def backend_hostname(tls: TlsConfig, backend: str) -> str:
    """The name the backend's certificate must carry: backend_tls_hostname, else its host."""
    if tls.backend_hostname:
        return tls.backend_hostname
    args, kwargs = _parse(backend)
    return str(kwargs.get("host") or (args[1] if len(args) > 1 else ""))
