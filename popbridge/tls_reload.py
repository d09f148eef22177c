"""SIGHUP re-reads every listener's certificate, without touching open sessions."""

import signal
from pathlib import Path
from typing import Any

from twisted.application.service import Service
from twisted.logger import Logger

from popbridge.config_tls import TlsConfig
from popbridge.tls import ServerCertificate


class CertificateReloader(Service):
    """Owns the ServerCertificates of all proxies and reloads them on SIGHUP.

    A reload only swaps the options new connections get; sessions already in TLS keep
    theirs. A certificate whose new files are bad (unreadable, expired, wrong key) keeps the
    old one, with an error in the log.
    """

    log = Logger()

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor
        self._certificates: list[ServerCertificate] = []
        self._previous_handler: Any = None

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

    def startService(self) -> None:
        super().startService()
        if self._certificates:
            self._previous_handler = signal.signal(signal.SIGHUP, self._on_sighup)

    def stopService(self) -> None:
        super().stopService()
        if self._previous_handler is not None:
            signal.signal(signal.SIGHUP, self._previous_handler)
            self._previous_handler = None

    def _on_sighup(self, signum: int, frame: object) -> None:
        self._reactor.callFromThread(self.reload)
