"""The TLS keys of a [[proxy]] table, checked as a whole (they depend on each other).

The certificate files are loaded here, at start and by `popbridge check-config`, so an
expired or mismatched certificate is a configuration error naming the file and the key.
"""

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from popbridge.config.reader import Reader
from popbridge.settings import TlsConfig
from popbridge.tls import TLS_VERSIONS, TlsFileError, backend_hostname, backend_tls_options, implicit_tls_listener, load_server_options


TLS_KEYS = (
    "tls_certificate",
    "tls_key",
    "require_tls",
    "tls_minimum_version",
    "backend_starttls",
    "backend_tls_ca",
    "backend_tls_hostname",
    "backend_tls_verify",
)


def proxy_tls(reader: Reader, where: str, table: Mapping[str, Any], listen: str) -> tuple[str, TlsConfig]:
    """The endpoint to bind and the TLS settings of one [[proxy]] table."""
    bind, from_listen = listen, dict[str, str]()
    if listen.startswith("ssl:"):
        try:
            bind, from_listen = implicit_tls_listener(listen)
        except ValueError as e:
            reader.fail(where, "listen", f"not a usable endpoint {listen!r}: {e}")
    certificate = _optional_path(reader, where, table, "tls_certificate") or from_listen.get("certKey") or from_listen.get("privateKey")
    key = _optional_path(reader, where, table, "tls_key") or from_listen.get("privateKey")
    if (certificate is None) != (key is None):
        reader.fail(where, "tls_key" if key is None else "tls_certificate", "tls_certificate and tls_key go together")
    minimum = reader.choice(where, {"tls_minimum_version": table.get("tls_minimum_version", "TLSv1.2")}, "tls_minimum_version", tuple(TLS_VERSIONS))
    if certificate is not None and key is not None:
        try:
            load_server_options(Path(certificate), Path(key), minimum)
        except TlsFileError as e:
            reader.fail(where, "tls_certificate", str(e))
    implicit = listen.startswith("ssl:")
    if implicit and certificate is None:
        reader.fail(where, "listen", "an ssl: listener needs tls_certificate and tls_key")
    tls = TlsConfig(
        certificate=certificate,
        key=key,
        implicit=implicit,
        require=reader.boolean(where, table, "require_tls", False),
        minimum_version=minimum,
        backend_starttls=reader.boolean(where, table, "backend_starttls", False),
        backend_ca=_optional_path(reader, where, table, "backend_tls_ca"),
        backend_hostname=table.get("backend_tls_hostname") and reader.string(where, table, "backend_tls_hostname"),
        backend_verify=reader.boolean(where, table, "backend_tls_verify", True),
    )
    if tls.require and certificate is None:
        reader.fail(where, "require_tls", "needs tls_certificate and tls_key (or an ssl: listener)")
    backend = table.get("backend", "")
    if not tls.backend_starttls:
        for key in ("backend_tls_ca", "backend_tls_hostname", "backend_tls_verify"):
            if key in table:
                reader.fail(where, key, "applies with backend_starttls only; a tls: backend takes "
                            "trustRoots=DIR and hostname= in its endpoint string")
    if tls.backend_starttls:
        if not isinstance(backend, str) or not backend.startswith("tcp:"):
            reader.fail(where, "backend_starttls", "needs a plain tcp: backend (a tls: backend is already encrypted)")
        try:
            backend_tls_options(backend_hostname(tls, backend), Path(tls.backend_ca) if tls.backend_ca else None, tls.backend_verify)
        except TlsFileError as e:
            reader.fail(where, "backend_tls_ca", str(e))
    return bind, tls


def _optional_path(reader: Reader, where: str, table: Mapping[str, Any], key: str) -> str | None:
    return reader.string(where, table, key) if key in table else None
