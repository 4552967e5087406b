"""Where the command line finds a remote host manager, and how it trusts its certificate.

``-Server URL`` or ``$VMIS_URL`` names the manager
(``https://host:8443``; ``host`` alone is ``https://host:8443``), ``$VMIS_TOKEN``
the API token. A manager's certificate is trusted as the system trusts
certificates, or through ``$VMIS_CA`` (a PEM file of CAs, or the manager's
self-signed certificate itself), or pinned with ``$VMIS_CERT_FINGERPRINT``
(its SHA-256, as ``vmis host serve`` logs it): then that certificate alone
is accepted, whatever its name or issuer. docs/api.md §3.

Standard library only, and ``ssl`` imported when a manager is remote: the
command lines' plain calls on the local socket must start fast
(vmis.api.client).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple
from urllib.parse import urlsplit

from vmis.errors import ConfigError, ConnectError

if TYPE_CHECKING:
    import ssl

__all__ = ["DEFAULT_PORT", "Remote"]

#: the port of a URL without one (``vmis host serve -Listen HOST`` listens there)
DEFAULT_PORT = 8443


def _hex(text: str) -> str:
    return text.replace(":", "").replace(" ", "").lower()


def _pretty(digest: str) -> str:
    return ":".join(digest[i:i + 2] for i in range(0, len(digest), 2)).upper()


class Remote(NamedTuple):
    """A host manager reached over TCP.

    A NamedTuple, not a dataclass: every command line imports this module, and
    ``dataclasses`` brings ``inspect`` (with ``ast``, ``dis``, ``tokenize``) along,
    a third of the command line's start (bench/cli_start.py).
    """

    scheme: str
    host: str
    port: int
    token: str | None = None
    #: a PEM file of the CAs (or the certificate) to trust
    ca: Path | None = None
    #: the SHA-256 of the one certificate to accept, lower-case hex
    pin: str | None = None

    @classmethod
    def parse(cls, url: str, token: str | None = None, ca: str | None = None,
              pin: str | None = None) -> Remote:
        """:raise ConfigError: For a URL that names no manager, or a pin that is no SHA-256."""
        text = url.strip()
        if "://" not in text:
            text = "https://" + text
        try:
            parts = urlsplit(text)
            port = parts.port
        except ValueError as exc:
            raise ConfigError(f"{url!r} is not a host manager's URL: {exc}") from None
        if parts.scheme not in ("http", "https") or not parts.hostname \
                or parts.path not in ("", "/"):
            raise ConfigError(f"{url!r} is not a host manager's URL: give "
                              "https://HOST:PORT (or HOST, port 8443)")
        digest = _hex(pin) if pin else None
        if digest is not None and (len(digest) != 64
                                   or any(c not in "0123456789abcdef" for c in digest)):
            raise ConfigError("$VMIS_CERT_FINGERPRINT is not a SHA-256 fingerprint "
                              "(64 hex digits, colons allowed)")
        return cls(parts.scheme, parts.hostname, port or DEFAULT_PORT, token or None,
                   Path(ca).expanduser() if ca else None, digest)

    @classmethod
    def from_environment(cls, server: str | None = None) -> Remote | None:
        """The manager of ``-Server`` (else ``$VMIS_URL``), or None: the local socket."""
        url = server or os.environ.get("VMIS_URL")
        if not url:
            return None
        return cls.parse(url, os.environ.get("VMIS_TOKEN"), os.environ.get("VMIS_CA"),
                         os.environ.get("VMIS_CERT_FINGERPRINT"))

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"

    @property
    def host_header(self) -> str:
        return self.url.split("://", 1)[1]

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def _context(self) -> ssl.SSLContext:
        import ssl

        if self.pin is not None:
            # the pin decides, after the handshake (check_pin): no name nor issuer to check
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            return context
        try:
            return ssl.create_default_context(cafile=str(self.ca) if self.ca else None)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"$VMIS_CA {self.ca}: not a file of PEM certificates: {exc}") \
                from None

    def connect(self, timeout: float) -> socket.socket:
        """A connection to the manager, TLS done and its certificate trusted.

        :raise ConnectError: When it cannot be reached or its certificate is not trusted.
        :raise ConfigError: When ``$VMIS_CA`` cannot be read.
        """
        import ssl

        try:
            sock = socket.create_connection((self.host, self.port), timeout=timeout)
        except OSError as exc:
            raise ConnectError(f"no host manager answers at {self.url}: "
                               f"{exc.strerror or exc}", exc) from exc
        if self.scheme == "http":
            return sock
        try:
            tls = self._context().wrap_socket(sock, server_hostname=self.host)
        except ssl.SSLCertVerificationError as exc:
            sock.close()
            raise self._untrusted(str(exc.verify_message or exc), timeout) from None
        except (ssl.SSLError, OSError) as exc:
            sock.close()
            raise ConnectError(f"TLS with {self.url} failed: {exc}", exc) from exc
        self.check_pin(tls)
        return tls

    def check_pin(self, tls: ssl.SSLSocket) -> None:
        """:raise ConnectError: When the certificate is not the pinned one."""
        if self.pin is None:
            return
        der = tls.getpeercert(binary_form=True) or b""
        digest = _sha256(der)
        if digest != self.pin:
            tls.close()
            raise self._mismatch(digest)

    def _mismatch(self, digest: str) -> ConnectError:
        return ConnectError(f"the certificate of {self.url} has the SHA-256 fingerprint "
                            f"{_pretty(digest)}, not the one pinned in $VMIS_CERT_FINGERPRINT "
                            f"({_pretty(self.pin or '')}); the token was not sent")

    def _untrusted(self, why: str, timeout: float) -> ConnectError:
        """What a client that does not trust the certificate is told: its fingerprint too,
        to compare with the one ``vmis host serve`` logged."""
        import ssl

        seen = ""
        try:
            der = self.peer_certificate(timeout)
            seen = f"; its SHA-256 fingerprint is {_pretty(_sha256(der))}"
        except (OSError, ssl.SSLError):
            pass
        return ConnectError(
            f"the certificate of {self.url} is not trusted ({why}){seen}. If it is the host "
            "manager's (vmis host serve logs its fingerprint), pin it with "
            "$VMIS_CERT_FINGERPRINT, or trust its CA with $VMIS_CA=FILE")

    def peer_certificate(self, timeout: float) -> bytes:
        """The server's certificate (DER), not checked: for messages and pinning."""
        import ssl

        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        with socket.create_connection((self.host, self.port), timeout=timeout) as sock, \
                context.wrap_socket(sock, server_hostname=self.host) as tls:
            return tls.getpeercert(binary_form=True) or b""

    def library_context(self, timeout: float) -> ssl.SSLContext | None:
        """An SSL context for httpx and websockets, which cannot check a pin after their
        handshake: with a pin, one that trusts the pinned certificate alone (fetched
        once and checked here), whatever its name.

        :raise ConnectError: When the certificate is not the pinned one.
        """
        import ssl

        if self.scheme == "http":
            return None
        if self.pin is None:
            return self._context()
        try:
            der = self.peer_certificate(timeout)
        except (OSError, ssl.SSLError) as exc:
            raise ConnectError(f"no host manager answers at {self.url}: {exc}", exc) from exc
        digest = _sha256(der)
        if digest != self.pin:
            raise self._mismatch(digest)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN  # the leaf as its own anchor
        context.load_verify_locations(cadata=ssl.DER_cert_to_PEM_cert(der))
        return context


def _sha256(der: bytes) -> str:
    # imported here: OpenSSL's hashlib costs every command line 3 ms to load
    import hashlib

    return hashlib.sha256(der).hexdigest()
