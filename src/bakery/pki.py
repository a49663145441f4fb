"""Certificates: the cluster CA, per-node TLS certificates, Consul client certificates, and
Nebula host certificates (through `nebula-cert`, Nebula's own format).

Keys are ECDSA P-256: small, fast, accepted by PostgreSQL, Patroni, Consul and Go's TLS.
Node material is kept under `<state_dir>/nodes/<name>/` and reused while it still matches
(same CA, same names and addresses, more than a third of its life left), so a re-render does
not churn certificates.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .errors import BakeryError
from .files import write_file, write_private

IPv4 = ipaddress.IPv4Address


@dataclass(frozen=True)
class CertificateAuthority:
    cert: x509.Certificate
    # An existing CA (the Consul cluster's, say) may have an RSA key; None: trust only.
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | None

    @property
    def cert_pem(self) -> str:
        return self.cert.public_bytes(serialization.Encoding.PEM).decode()


@dataclass(frozen=True)
class LeafSpec:
    """What a leaf certificate says: whom it names and what it may be used for."""

    common_name: str
    dns_names: tuple[str, ...]
    ips: tuple[IPv4, ...]
    days: int
    server: bool = True
    client: bool = True


@dataclass(frozen=True)
class KeyPair:
    cert_pem: str
    key_pem: str


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def _key_usage(**allowed: bool) -> x509.KeyUsage:
    """A KeyUsage extension with only the named usages set."""
    names = (
        "digital_signature",
        "content_commitment",
        "key_encipherment",
        "data_encipherment",
        "key_agreement",
        "key_cert_sign",
        "crl_sign",
        "encipher_only",
        "decipher_only",
    )
    return x509.KeyUsage(**{name: allowed.get(name, False) for name in names})


def _ca_exists(cert_path: Path, key_path: Path) -> bool:
    """Whether a CA is there; half of one (a lost key, a stray file) is an error."""
    if cert_path.exists() and key_path.exists():
        return True
    if cert_path.exists() or key_path.exists():
        raise BakeryError(
            f"only one of {cert_path} and {key_path} exists: refusing to overwrite half a CA"
        )
    return False


def create_ca(cert_path: Path, key_path: Path, common_name: str, days: int = 3650) -> bool:
    """Create a CA at the given paths unless both exist. Returns whether one was created."""
    if _ca_exists(cert_path, key_path):
        return False
    key = _new_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            _key_usage(digital_signature=True, key_cert_sign=True, crl_sign=True),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    write_private(key_path, _key_pem(key))
    write_file(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    return True


def load_ca(cert_path: Path, key_path: Path | None, field: str) -> CertificateAuthority:
    """Load a CA; `field` names the setting for the error message."""
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except FileNotFoundError:
        raise BakeryError(
            f"{field}: CA certificate {cert_path} does not exist (create one with `invoke ca`, "
            "or point to your existing CA)"
        ) from None
    except ValueError as error:
        raise BakeryError(f"{field}: {cert_path} is not a PEM certificate ({error})") from None
    try:
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    if not is_ca:
        raise BakeryError(f"{field}: {cert_path} is not a CA certificate")
    if cert.not_valid_after_utc <= _now():
        raise BakeryError(
            f"{field}: CA certificate {cert_path} expired on {cert.not_valid_after_utc:%Y-%m-%d}"
        )
    key = None
    if key_path is not None:
        if key_path.exists() and key_path.stat().st_mode & 0o077:
            raise BakeryError(
                f"{field}: CA key {key_path} is readable by others; run: chmod 600 {key_path}"
            )
        try:
            loaded = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        except FileNotFoundError:
            raise BakeryError(f"{field}: CA key {key_path} does not exist") from None
        except (ValueError, TypeError) as error:
            raise BakeryError(
                f"{field}: {key_path} is not an unencrypted PEM key ({error})"
            ) from None
        if not isinstance(loaded, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
            raise BakeryError(f"{field}: {key_path}: only EC and RSA CA keys are supported")
        if loaded.public_key().public_numbers() != cert.public_key().public_numbers():
            raise BakeryError(f"{field}: {key_path} is not the key of {cert_path}")
        key = loaded
    return CertificateAuthority(cert, key)


def issue(ca: CertificateAuthority, spec: LeafSpec) -> KeyPair:
    """A leaf certificate signed by the CA, with the spec's SANs and TLS usages."""
    if ca.key is None:
        raise BakeryError("the CA's key is needed to sign certificates")
    key = _new_key()
    usages = [ExtendedKeyUsageOID.SERVER_AUTH] * spec.server + [
        ExtendedKeyUsageOID.CLIENT_AUTH
    ] * spec.client
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, spec.common_name)]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(min(now + dt.timedelta(days=spec.days), ca.cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            _key_usage(digital_signature=True, key_agreement=True),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName(n) for n in spec.dns_names] + [x509.IPAddress(i) for i in spec.ips]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.cert.public_key()),
            critical=False,
        )
        .sign(ca.key, hashes.SHA256())
    )
    return KeyPair(cert.public_bytes(serialization.Encoding.PEM).decode(), _key_pem(key))


def issue_cached(directory: Path, stem: str, ca: CertificateAuthority, spec: LeafSpec) -> KeyPair:
    """Like `issue`, but reuse `<directory>/<stem>.{pem,key}` while it still fits the spec."""
    cert_path, key_path = directory / f"{stem}.pem", directory / f"{stem}.key"
    if cert_path.exists() and key_path.exists():
        try:
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        except ValueError:
            cert = None  # damaged: issued anew below
        if cert is not None and _still_fits(cert, ca, spec):
            return KeyPair(cert_path.read_text(), key_path.read_text())
    pair = issue(ca, spec)
    write_private(key_path, pair.key_pem)
    write_file(cert_path, pair.cert_pem)
    return pair


def _still_fits(cert: x509.Certificate, ca: CertificateAuthority, spec: LeafSpec) -> bool:
    if cert.issuer != ca.cert.subject:
        return False
    try:
        cert.verify_directly_issued_by(ca.cert)
    except (ValueError, TypeError, InvalidSignature):
        return False
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    if sorted(san.get_values_for_type(x509.DNSName)) != sorted(spec.dns_names):
        return False
    if sorted(san.get_values_for_type(x509.IPAddress)) != sorted(spec.ips):
        return False
    life = cert.not_valid_after_utc - cert.not_valid_before_utc
    return cert.not_valid_after_utc - _now() > life / 3


# --- Nebula ---------------------------------------------------------------------------------


def nebula_cert_binary() -> str:
    path = shutil.which("nebula-cert")
    if path is None:
        raise BakeryError(
            "nebula-cert not found: the Nebula overlay needs it to sign host certificates "
            "(Debian/Ubuntu: apt-get install nebula)"
        )
    return path


def create_nebula_ca(cert_path: Path, key_path: Path, name: str, days: int = 3650) -> bool:
    if _ca_exists(cert_path, key_path):
        return False
    cert_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    key_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    _run_nebula_cert(
        "ca",
        "-name",
        name,
        "-duration",
        f"{days * 24}h",
        "-out-crt",
        str(cert_path),
        "-out-key",
        str(key_path),
    )
    key_path.chmod(0o600)
    return True


def nebula_host(
    directory: Path,
    ca_cert: Path,
    ca_key: Path,
    name: str,
    address: IPv4,
    prefix_length: int,
    groups: Sequence[str],
) -> KeyPair:
    """A Nebula host certificate for `address`, reused while the CA, address and groups match."""
    crt, key = directory / "nebula-host.crt", directory / "nebula-host.key"
    wanted = {"ip": f"{address}/{prefix_length}", "groups": sorted(groups), "name": name}
    if crt.exists() and key.exists() and _nebula_matches(crt, ca_cert, wanted):
        return KeyPair(crt.read_text(), key.read_text())
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    for stale in (crt, key):
        stale.unlink(missing_ok=True)
    _run_nebula_cert(
        "sign",
        "-ca-crt",
        str(ca_cert),
        "-ca-key",
        str(ca_key),
        "-name",
        name,
        "-ip",
        wanted["ip"],
        "-groups",
        ",".join(groups),
        "-out-crt",
        str(crt),
        "-out-key",
        str(key),
    )
    key.chmod(0o600)
    return KeyPair(crt.read_text(), key.read_text())


def _nebula_matches(crt: Path, ca_cert: Path, wanted: dict) -> bool:
    verify = subprocess.run(
        [nebula_cert_binary(), "verify", "-ca", str(ca_cert), "-crt", str(crt)],
        capture_output=True,
        text=True,
        check=False,
    )
    if verify.returncode != 0:
        return False
    details = json.loads(_run_nebula_cert("print", "-json", "-path", str(crt)))["details"]
    return (
        details["name"] == wanted["name"]
        and details["ips"] == [wanted["ip"]]
        and sorted(details["groups"]) == wanted["groups"]
    )


def _run_nebula_cert(*args: str) -> str:
    result = subprocess.run(
        [nebula_cert_binary(), *args], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise BakeryError(f"nebula-cert {args[0]} failed: {result.stderr.strip() or result.stdout}")
    return result.stdout
