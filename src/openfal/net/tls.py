"""A local certificate authority and the certificate ``openfal serve --tls`` presents.

fal-client builds ``https://`` and ``wss://`` URLs itself, so the server needs a certificate
the client trusts. A private CA is created once in ``<data-dir>/tls/`` and only its
certificate has to be trusted (``SSL_CERT_FILE``); the server certificate it signs is
reissued whenever it nears expiry or the names it must cover change, without touching the
CA. Files in ``<data-dir>/tls/``:

- ``ca.key`` (0600), ``ca.pem``: the CA, valid 10 years;
- ``server.key`` (0600), ``server.pem``: the server certificate, valid 1 year, for
  127.0.0.1, ::1, localhost, this machine's host name, the fal host names and any extras;
- ``bundle.pem``: the usual public CAs plus ours. ``SSL_CERT_FILE`` *replaces* a client's
  trust store, and the client process still has to reach real HTTPS sites.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import ipaddress
import socket
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from openfal.gateway.hosts import PLATFORM_HOSTS
from openfal.net.atomic import write_atomic

CA_VALIDITY = dt.timedelta(days=3650)
SERVER_VALIDITY = dt.timedelta(days=365)
RENEW_BEFORE = dt.timedelta(days=30)
CLOCK_SKEW = dt.timedelta(hours=1)
SYSTEM_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
_PRIVATE = 0o600

Key = ec.EllipticCurvePrivateKey


@dataclass(frozen=True)
class TLSFiles:
    """Where the CA, the server certificate and the trust bundle of one data dir live."""

    directory: Path

    @property
    def ca_key(self) -> Path:
        return self.directory / "ca.key"

    @property
    def ca_cert(self) -> Path:
        return self.directory / "ca.pem"

    @property
    def server_key(self) -> Path:
        return self.directory / "server.key"

    @property
    def server_cert(self) -> Path:
        return self.directory / "server.pem"

    @property
    def bundle(self) -> Path:
        return self.directory / "bundle.pem"


def tls_files(data_dir: Path) -> TLSFiles:
    return TLSFiles(data_dir / "tls")


def trust_environment(data_dir: Path) -> dict[str, str]:
    """Environment that makes httpx (and OpenSSL) in a child process trust this server."""
    return {"SSL_CERT_FILE": str(tls_files(data_dir).bundle)}


def ensure_tls(data_dir: Path, extra_names: Sequence[str] = (),
               now: dt.datetime | None = None) -> TLSFiles:
    """Create what is missing or stale in ``<data_dir>/tls`` and return where it is.

    ``extra_names`` are more DNS names or IP addresses for the server certificate.
    """
    files = tls_files(data_dir)
    files.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    now = now or dt.datetime.now(dt.UTC)
    with _locked(files.directory / ".lock"):
        ca_key, ca_cert = _ensure_ca(files, now)
        _ensure_server_cert(files, ca_key, ca_cert, server_names(extra_names), now)
        _write_if_changed(files.bundle, _system_bundle() + b"\n# openfal local CA\n"
                          + files.ca_cert.read_bytes())
    return files


def server_names(extra: Sequence[str] = ()) -> list[x509.GeneralName]:
    """The subject alternative names the server certificate must carry, without repeats."""
    hostname = socket.gethostname().lower()
    wanted = ["127.0.0.1", "::1", "localhost",
              *([hostname] if hostname.isascii() and hostname else []),
              *sorted(PLATFORM_HOSTS), *extra]
    names: list[x509.GeneralName] = []
    for text in wanted:
        name = _general_name(text)
        if name not in names:
            names.append(name)
    return names


def _general_name(text: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(text))
    except ValueError:
        return x509.DNSName(text.lower().rstrip("."))


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Serialise servers starting on the same data dir, so a key never pairs a stale cert."""
    with path.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _ensure_ca(files: TLSFiles, now: dt.datetime) -> tuple[Key, x509.Certificate]:
    if files.ca_key.exists() and files.ca_cert.exists():
        key = _load_key(files.ca_key)
        cert = x509.load_pem_x509_certificate(files.ca_cert.read_bytes())
        if cert.not_valid_after_utc - now > RENEW_BEFORE:
            return key, cert
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _issue_ca(key, now)
    write_atomic(files.ca_key, _key_pem(key), _PRIVATE)
    write_atomic(files.ca_cert, cert.public_bytes(serialization.Encoding.PEM))
    return key, cert


def _issue_ca(key: Key, now: dt.datetime) -> x509.Certificate:
    name = x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "openfal"),
        x509.NameAttribute(NameOID.COMMON_NAME, f"openfal local CA ({socket.gethostname()})"),
    ])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    return (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW).not_valid_after(now + CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski),
                       critical=False)
        .sign(key, hashes.SHA256())
    )


def _ensure_server_cert(files: TLSFiles, ca_key: Key, ca_cert: x509.Certificate,
                        names: list[x509.GeneralName], now: dt.datetime) -> None:
    if files.server_key.exists() and files.server_cert.exists() and _server_cert_current(
            files, ca_cert, names, now):
        return
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _issue_server(key, ca_key, ca_cert, names, now)
    write_atomic(files.server_key, _key_pem(key), _PRIVATE)
    write_atomic(files.server_cert, cert.public_bytes(serialization.Encoding.PEM))


def _server_cert_current(files: TLSFiles, ca_cert: x509.Certificate,
                         names: list[x509.GeneralName], now: dt.datetime) -> bool:
    """Still usable: signed by this CA, for this key, for exactly these names, not expiring."""
    try:
        cert = x509.load_pem_x509_certificate(files.server_cert.read_bytes())
        key = _load_key(files.server_key)
        cert.verify_directly_issued_by(ca_cert)
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, TypeError, InvalidSignature, x509.ExtensionNotFound):
        return False
    return (cert.not_valid_after_utc - now > RENEW_BEFORE
            and _spki(cert.public_key()) == _spki(key.public_key())
            and set(sans) == set(names))


def _issue_server(key: Key, ca_key: Key, ca_cert: x509.Certificate,
                  names: list[x509.GeneralName], now: dt.datetime) -> x509.Certificate:
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "openfal server")]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(min(now + SERVER_VALIDITY, ca_cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    """A CA signs certificates and CRLs; a server (EC key) signs its handshakes."""
    return x509.KeyUsage(
        digital_signature=not cert_sign, content_commitment=False, key_encipherment=False,
        data_encipherment=False, key_agreement=False, key_cert_sign=cert_sign,
        crl_sign=cert_sign, encipher_only=False, decipher_only=False)


def _load_key(path: Path) -> Key:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{path} is not an EC private key")
    return key


def _key_pem(key: Key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _spki(key: CertificatePublicKeyTypes) -> bytes:
    return key.public_bytes(serialization.Encoding.DER,
                            serialization.PublicFormat.SubjectPublicKeyInfo)


def _system_bundle() -> bytes:
    """The public CAs a client normally trusts: certifi's, else the system's."""
    try:
        import certifi
    except ImportError:
        return SYSTEM_BUNDLE.read_bytes() if SYSTEM_BUNDLE.exists() else b""
    return Path(certifi.where()).read_bytes()


def _write_if_changed(path: Path, data: bytes) -> None:
    if not path.exists() or path.read_bytes() != data:
        write_atomic(path, data)
