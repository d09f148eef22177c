"""Every listener's certificate, re-read on SIGHUP without touching open sessions."""

from pathlib import Path
from typing import Any

from twisted.logger import Logger

from popbridge.config_tls import TlsConfig
from popbridge.tls import ServerCertificate


class CertificateReloader:
    """Owns the ServerCertificates of all proxies; the daemon calls `reload` on SIGHUP.

    A reload only swaps the options new connections get; sessions already in TLS keep
    theirs. A certificate whose new files are bad (unreadable, expired, wrong key) keeps the
    old one, with an error in the log.
    """

    log = Logger()

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor
        self._certificates: list[ServerCertificate] = []

    def add(self, tls: TlsConfig) -> ServerCertificate | None:
        if tls.certificate is None or tls.key is None:
            return None
        certificate = ServerCertificate(Path(tls.certificate), Path(tls.key), tls.minimum_version)
        self._certificates.append(certificate)
        return certificate

    def reload(self) -> int:
        """Re-read every certificate; returns how many were replaced."""
        replaced = sum(certificate.reload() for certificate in self._certificates)
        self.log.info("SIGHUP: {replaced} of {total} certificates reloaded", replaced=replaced, total=len(self._certificates))
        return replaced
