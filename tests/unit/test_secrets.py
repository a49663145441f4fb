"""Secrets: generated once, stored 0600, taken from the environment, never shown."""

import base64
import hashlib
import hmac
import stat

import pytest

from bakery.config import SecretSource
from bakery.errors import BakeryError
from bakery.secrets import PASSWORD_NAMES, Secret, SecretStore, scram_verifier


def test_passwords_are_generated_once_and_stored_private(tmp_path):
    store = SecretStore(tmp_path, environ={})
    first = store.passwords()
    assert set(first) == set(PASSWORD_NAMES)
    assert len({s.value for s in first.values()}) == len(PASSWORD_NAMES)
    for name, secret in first.items():
        assert len(secret.value) >= 32
        path = tmp_path / "secrets" / name
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "secrets").stat().st_mode) == 0o700
    again = SecretStore(tmp_path, environ={}).passwords()
    assert {k: v.value for k, v in again.items()} == {k: v.value for k, v in first.items()}


def test_environment_wins_and_is_not_stored(tmp_path):
    store = SecretStore(tmp_path, environ={"BAKERY_ADMIN_PASSWORD": "from-env"})
    assert store.password("admin").value == "from-env"
    assert not (tmp_path / "secrets" / "admin").exists()


def test_a_secret_never_shows_its_value():
    secret = Secret("hunter2")
    assert "hunter2" not in repr(secret) and "hunter2" not in str(secret)
    assert "hunter2" not in f"{secret}" and "hunter2" not in repr([secret])


def test_readable_secret_files_are_refused(tmp_path):
    path = tmp_path / "key"
    path.write_text("abc\n")
    path.chmod(0o644)
    store = SecretStore(tmp_path, environ={})
    with pytest.raises(BakeryError, match="chmod 600"):
        store.resolve(SecretSource(file=path), "bakery.x")
    path.chmod(0o600)
    assert store.resolve(SecretSource(file=path), "bakery.x").value == "abc"


def test_missing_sources_name_the_field(tmp_path):
    store = SecretStore(tmp_path, environ={})
    with pytest.raises(BakeryError, match=r"^bakery\.x\.token: environment variable TOKEN"):
        store.resolve(SecretSource(env="TOKEN"), "bakery.x.token")
    with pytest.raises(BakeryError, match=r"^bakery\.x: file .* does not exist"):
        store.resolve(SecretSource(file=tmp_path / "nope"), "bakery.x")


def test_scram_verifier_follows_rfc_7677():
    salt = b"0123456789abcdef"
    verifier = scram_verifier("pencil", iterations=4096, salt=salt)
    method, rest = verifier.split("$", 1)
    iterations_salt, keys = rest.split("$")
    iterations, salt_b64 = iterations_salt.split(":")
    stored_b64, server_b64 = keys.split(":")
    assert (method, iterations, base64.b64decode(salt_b64)) == ("SCRAM-SHA-256", "4096", salt)
    salted = hashlib.pbkdf2_hmac("sha256", b"pencil", salt, 4096)
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    assert base64.b64decode(stored_b64) == hashlib.sha256(client_key).digest()
    assert base64.b64decode(server_b64) == hmac.new(salted, b"Server Key", "sha256").digest()
    assert scram_verifier("pencil") != scram_verifier("pencil")  # fresh salt each time
