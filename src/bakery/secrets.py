"""Secrets: generated on first use, stored 0600 in the state directory, never printed.

Passwords bakery owns (superuser, replication, rewind, REST API, admin, monitor; the pgBackRest
repository passphrase when encryption is on) come from
BAKERY_<NAME>_PASSWORD when set, else from `<state_dir>/secrets/<name>`, created on first use.
Secrets the user owns (Consul gossip key, ACL token, S3 keys) come from the environment variable
or file the config names. A Secret's repr never shows its value, so it cannot leak into a log
or a traceback by accident.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import stat
from dataclasses import dataclass, field
from pathlib import Path

from .config import SecretSource
from .errors import BakeryError
from .files import write_private

PASSWORD_NAMES = ("superuser", "replication", "rewind", "restapi", "admin", "monitor")
# Generated like the passwords, but only when the configuration asks for them.
OPTIONAL_NAMES = ("repo_cipher",)  # pgBackRest's repository passphrase (pgbackrest.encryption)
PASSWORD_LENGTH = 40


@dataclass(frozen=True)
class Secret:
    value: str = field(repr=False)

    def __repr__(self) -> str:
        return "Secret(***)"

    __str__ = __repr__


def generate_password() -> str:
    # Letters and digits only: safe in every file format and shell, ~238 bits of entropy.
    alphabet = "ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789"
    return "".join(secrets.choice(alphabet) for _ in range(PASSWORD_LENGTH))


class SecretStore:
    def __init__(self, state_dir: Path, environ: dict[str, str] | None = None):
        self.directory = state_dir / "secrets"
        self.environ = os.environ if environ is None else environ

    def password(self, name: str) -> Secret:
        if name not in PASSWORD_NAMES + OPTIONAL_NAMES:
            raise ValueError(f"unknown password {name!r}")
        from_env = self.environ.get(f"BAKERY_{name.upper()}_PASSWORD")
        if from_env:
            return Secret(from_env)
        path = self.directory / name
        if path.exists():
            return Secret(read_private(path))
        value = generate_password()
        write_private(path, value + "\n")
        return Secret(value)

    def exists(self, name: str) -> bool:
        """Whether a generated secret has been stored (without creating it)."""
        return (self.directory / name).exists()

    def scram_verifier(self, name: str) -> str:
        """The password's SCRAM verifier, kept beside it so that re-renders do not change it."""
        password = self.password(name).value
        path = self.directory / f"{name}.scram"
        if path.exists():
            stored = read_private(path)
            try:
                salt = base64.b64decode(stored.split("$")[1].split(":")[1])
            except (IndexError, ValueError):
                salt = None  # damaged: made anew below
            if salt is not None and scram_verifier(password, salt=salt) == stored:
                return stored
        verifier = scram_verifier(password)
        write_private(path, verifier + "\n")
        return verifier

    def passwords(self) -> dict[str, Secret]:
        return {name: self.password(name) for name in PASSWORD_NAMES}

    def resolve(self, source: SecretSource, field_path: str) -> Secret:
        """A secret the user owns, from the environment variable or the file the config names."""
        if source.env is not None:
            value = (self.environ.get(source.env) or "").strip()
            if not value:
                raise BakeryError(
                    f"{field_path}: environment variable {source.env} is not set or empty"
                )
            return Secret(value)
        assert source.file is not None
        if not source.file.exists():
            raise BakeryError(f"{field_path}: file {source.file} does not exist")
        return Secret(read_private(source.file))


def read_private(path: Path) -> str:
    """Read a secret file, refusing one that others can read."""
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            raise BakeryError(
                f"{path}: mode {mode:04o} lets others read a secret; run: chmod 600 {path}"
            )
        value = path.read_text().strip()
    except (OSError, UnicodeDecodeError) as error:
        raise BakeryError(f"{path}: cannot read the secret ({type(error).__name__})") from None
    if not value:
        raise BakeryError(f"{path}: empty secret file")
    return value


def scram_verifier(password: str, iterations: int = 4096, salt: bytes | None = None) -> str:
    """A PostgreSQL SCRAM-SHA-256 verifier (RFC 5802/7677): what CREATE ROLE ... PASSWORD
    accepts in place of the password, so the plain password never reaches the server."""
    salt = salt if salt is not None else secrets.token_bytes(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", "sha256").digest()

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"
