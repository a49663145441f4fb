"""Certificates: CA creation, node certificates with the right SANs and usages, reuse."""

import ipaddress
import stat
import subprocess

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from bakery import pki
from bakery.errors import BakeryError

IP = ipaddress.IPv4Address


@pytest.fixture
def ca(tmp_path):
    assert pki.create_ca(tmp_path / "ca.pem", tmp_path / "ca.key", "test CA")
    return pki.load_ca(tmp_path / "ca.pem", tmp_path / "ca.key", "bakery.pki")


def test_ca_is_created_once_with_a_private_key(tmp_path, ca):
    assert stat.S_IMODE((tmp_path / "ca.key").stat().st_mode) == 0o600
    assert not pki.create_ca(tmp_path / "ca.pem", tmp_path / "ca.key", "again")
    assert ca.cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_half_a_ca_is_not_overwritten(tmp_path):
    (tmp_path / "ca.pem").write_text("x")
    with pytest.raises(BakeryError, match="refusing to overwrite half a CA"):
        pki.create_ca(tmp_path / "ca.pem", tmp_path / "ca.key", "x")


def test_node_certificate_has_names_addresses_and_usages(ca):
    spec = pki.LeafSpec(
        "prod1-postgresql-0", ("prod1-postgresql-0",), (IP("10.10.1.20"), IP("100.102.1.36")), 30
    )
    pair = pki.issue(ca, spec)
    cert = x509.load_pem_x509_certificate(pair.cert_pem.encode())
    cert.verify_directly_issued_by(ca.cert)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["prod1-postgresql-0"]
    assert san.get_values_for_type(x509.IPAddress) == [IP("10.10.1.20"), IP("100.102.1.36")]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature and not usage.key_cert_sign
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_certificates_are_reused_while_they_fit(tmp_path, ca):
    spec = pki.LeafSpec("n", ("n",), (IP("10.0.0.1"),), 30)
    first = pki.issue_cached(tmp_path / "node", "node", ca, spec)
    assert stat.S_IMODE((tmp_path / "node/node.key").stat().st_mode) == 0o600
    assert pki.issue_cached(tmp_path / "node", "node", ca, spec) == first
    other = pki.LeafSpec("n", ("n",), (IP("10.0.0.2"),), 30)
    moved = pki.issue_cached(tmp_path / "node", "node", ca, other)
    assert moved.cert_pem != first.cert_pem


def test_a_key_that_does_not_match_the_ca_is_refused(tmp_path, ca):
    pki.create_ca(tmp_path / "other.pem", tmp_path / "other.key", "other")
    with pytest.raises(BakeryError, match=r"^bakery\.pki: .*other\.key is not the key of"):
        pki.load_ca(tmp_path / "ca.pem", tmp_path / "other.key", "bakery.pki")


def test_missing_ca_file_names_the_field(tmp_path):
    with pytest.raises(BakeryError, match=r"^bakery\.pki: CA certificate .* does not exist"):
        pki.load_ca(tmp_path / "nope.pem", None, "bakery.pki")


def test_nebula_host_certificate_verifies_and_is_reused(tmp_path):
    crt, key = tmp_path / "neb/ca.crt", tmp_path / "neb/ca.key"
    assert pki.create_nebula_ca(crt, key, "test overlay")
    host = pki.nebula_host(tmp_path / "n", crt, key, "n1", IP("100.102.1.36"), 22, ["postgres"])
    subprocess.run(
        ["nebula-cert", "verify", "-ca", str(crt), "-crt", str(tmp_path / "n/nebula-host.crt")],
        check=True,
    )
    again = pki.nebula_host(tmp_path / "n", crt, key, "n1", IP("100.102.1.36"), 22, ["postgres"])
    assert again == host
    moved = pki.nebula_host(tmp_path / "n", crt, key, "n1", IP("100.102.1.40"), 22, ["postgres"])
    assert moved.cert_pem != host.cert_pem


def test_an_expired_ca_is_refused_with_its_date(tmp_path):
    assert pki.create_ca(tmp_path / "old.pem", tmp_path / "old.key", "old", days=0)
    with pytest.raises(BakeryError, match=r"^bakery\.pki: CA certificate .* expired on"):
        pki.load_ca(tmp_path / "old.pem", tmp_path / "old.key", "bakery.pki")


def test_a_damaged_cached_certificate_is_issued_anew(tmp_path, ca):
    spec = pki.LeafSpec("n", ("n",), (IP("10.0.0.1"),), 30)
    pki.issue_cached(tmp_path / "node", "node", ca, spec)
    (tmp_path / "node/node.pem").write_text("garbage")
    pair = pki.issue_cached(tmp_path / "node", "node", ca, spec)
    assert pair.cert_pem.startswith("-----BEGIN CERTIFICATE-----")
