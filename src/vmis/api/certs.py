"""The TLS certificate of the API's TCP listener: the administrator's, or a self-signed pair.

``vmis host serve -Listen ... -SelfSignedCertificate`` makes a pair on
first use and keeps it in the manager's data directory (``tls/``, 0700,
the key 0600), so its fingerprint stays the same across restarts and
clients that pinned it keep trusting it. Clients trust it by that SHA-256
fingerprint (``$VMIS_CERT_FINGERPRINT``), or by the certificate file as a
CA (``$VMIS_CA``); docs/api.md §3.
"""

from __future__ import annotations

import hashlib
import ipaddress
import socket
import ssl
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from vmis.errors import ConfigError, LocalFileError
from vmis.host.private import private_dir, write_private

__all__ = ["TlsFiles", "fingerprint", "self_signed"]

#: how long a self-signed certificate lasts: clients pin it, so a short life
#: would only make them re-pin; replace it by deleting the files
VALIDITY = timedelta(days=3650)


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """A certificate (PEM, its chain after it) and its private key (PEM)."""

    cert: Path
    key: Path

    def check(self) -> None:
        """:raise ConfigError: When either file cannot be read, or they do not fit."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            context.load_cert_chain(self.cert, self.key)
        except FileNotFoundError as exc:
            raise ConfigError(f"no such file: {exc.filename}") from None
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(f"cannot use the certificate {self.cert} with the key "
                              f"{self.key}: {exc}") from None


def fingerprint(cert: Path) -> str:
    """The SHA-256 fingerprint of a PEM certificate's first certificate, as
    ``AB:CD:...`` (what ``openssl x509 -fingerprint -sha256`` prints).

    :raise ConfigError: When the file holds no certificate.
    """
    try:
        der = ssl.PEM_cert_to_DER_cert(cert.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{cert} is not a PEM certificate: {exc}") from None
    return ":".join(f"{b:02X}" for b in hashlib.sha256(der).digest())


def _names(host: str) -> tuple[list[str], list[str]]:
    """DNS names and IP addresses the certificate is for: this machine's and *host*."""
    dns = {"localhost", socket.gethostname(), socket.getfqdn()}
    ips = {"127.0.0.1", "::1"}
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if host:
            dns.add(host)
    else:
        if not ipaddress.ip_address(host).is_unspecified:
            ips.add(host)
    return sorted(n for n in dns if n), sorted(ips)


def self_signed(data_dir: Path, host: str = "") -> TlsFiles:
    """The self-signed pair in ``<data_dir>/tls``, made now if missing.

    :param host: the address or name the listener was given, put in the
        certificate beside this machine's names.
    :raise LocalFileError: When the files cannot be written.
    """
    directory = data_dir / "tls"
    files = TlsFiles(directory / "api-cert.pem", directory / "api-key.pem")
    if files.cert.exists() and files.key.exists():
        return files
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    dns, ips = _names(host)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"vmis host manager {dns[-1]}")])
    now = datetime.now(UTC)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + VALIDITY)
        .add_extension(x509.SubjectAlternativeName(
            [x509.DNSName(n) for n in dns]
            + [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, key_encipherment=False, content_commitment=False,
            data_encipherment=False, key_agreement=True, key_cert_sign=False,
            crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                       critical=False)
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
    try:
        private_dir(directory)
        write_private(files.key, key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()).decode())
        write_private(files.cert, cert.public_bytes(serialization.Encoding.PEM).decode())
    except OSError as exc:
        raise LocalFileError(f"cannot write the API's certificate into {directory}: "
                             f"{exc.strerror or exc}") from None
    return files
