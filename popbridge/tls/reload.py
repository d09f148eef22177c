"""Every listener's certificate, re-read on SIGHUP without touching open sessions."""

from collections.abc import Hashable
from pathlib import Path
from typing import Any

from twisted.logger import Logger

from popbridge.settings import TlsConfig
from popbridge.tls import ServerCertificate


class CertificateReloader:
    """Owns the ServerCertificates of all proxies; the daemon calls `reload` on SIGHUP.

    A reload only swaps the options new connections get; sessions already in TLS keep
    theirs. A certificate whose new files are bad (unreadable, expired, wrong key) keeps the
    old one, with an error in the log. Certificates are held per listener: a listener rebuilt
    by a reload replaces its entry and a removed one drops it, so files of a listener that is
    gone are never read again.
    """

    log = Logger()

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor
        self._certificates: dict[Hashable, ServerCertificate] = {}

    def add(self, listener: Hashable, tls: TlsConfig) -> ServerCertificate | None:
        """The certificate of `listener` read from its files (raises TlsFileError if unusable)."""
        if tls.certificate is None or tls.key is None:
            self._certificates.pop(listener, None)
            return None
        certificate = ServerCertificate(Path(tls.certificate), Path(tls.key), tls.minimum_version)
        self._certificates[listener] = certificate
        return certificate

    def discard(self, listener: Hashable) -> None:
        self._certificates.pop(listener, None)

    def reload(self) -> int:
        """Re-read every certificate; returns how many were replaced."""
        replaced = sum(certificate.reload() for certificate in self._certificates.values())
        self.log.info("SIGHUP: {replaced} of {total} certificates reloaded", replaced=replaced, total=len(self._certificates))
        return replaced
