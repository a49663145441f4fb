"""What a pgBackRest repository holds, read before a launch: can the restore source serve?

`invoke launch` with `cluster.restore` asks the source repository for the stanza's
`backup.info` (decrypted with the repository passphrase when encryption is on) and refuses,
before anything is created, a source without that stanza, without a backup, or without a backup
that ended before the target time (pgBackRest would restore the newest one, and recovery could
never go back to the target).
"""

from __future__ import annotations

import configparser
import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import PurePosixPath

from ..config import S3Repo, Settings
from ..errors import BakeryError, Problem
from ..secrets import Secret, SecretStore
from .s3 import S3Error, S3Location, get_object

SALTED = b"Salted__"


@dataclass(frozen=True)
class BackupSet:
    label: str
    type: str
    stop: datetime


def parse_backup_info(text: str) -> list[BackupSet]:
    """The backup sets of a `backup.info` (INI whose values are JSON), oldest first."""
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # labels keep their case
    try:
        parser.read_string(text)
    except configparser.Error as error:
        raise BakeryError(f"backup.info is not what pgBackRest writes ({error})") from None
    sets = []
    if parser.has_section("backup:current"):
        for label, raw in parser.items("backup:current"):
            try:
                data = json.loads(raw)
                stop = datetime.fromtimestamp(int(data["backup-timestamp-stop"]), UTC)
                sets.append(BackupSet(label, data["backup-type"], stop))
            except (ValueError, KeyError, TypeError):
                raise BakeryError(f"backup.info: backup {label} cannot be read") from None
    return sorted(sets, key=lambda s: s.stop)


def decrypt(data: bytes, passphrase: str) -> bytes:
    """pgBackRest's aes-256-cbc files: OpenSSL's `Salted__` format, key and IV from
    EVP_BytesToKey with SHA-1 and one round."""
    from cryptography.hazmat.primitives import padding
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    if not data.startswith(SALTED) or len(data) < 32:
        raise BakeryError("the file is not encrypted as pgBackRest encrypts")
    salt, body = data[8:16], data[16:]
    derived, block = b"", b""
    while len(derived) < 48:
        block = hashlib.sha1(block + passphrase.encode() + salt).digest()  # noqa: S324 - the format's
        derived += block
    decryptor = Cipher(algorithms.AES(derived[:32]), modes.CBC(derived[32:48])).decryptor()
    try:
        padded = decryptor.update(body) + decryptor.finalize()
        unpadder = padding.PKCS7(128).unpadder()
        return unpadder.update(padded) + unpadder.finalize()
    except ValueError:
        raise BakeryError("cannot decrypt: wrong passphrase") from None


def restore_problems(
    settings: Settings,
    environ: dict[str, str] | None = None,
    connect_to: tuple[str, int] | None = None,
) -> list[Problem]:
    """Why the restore source cannot serve `cluster.restore` (empty: it can)."""
    restore = settings.cluster.restore
    if restore is None:
        return []
    own = settings.cluster.pgbackrest
    repo = restore.repo or own.repo
    where = "bakery.cluster.restore.repo" if restore.repo else "bakery.cluster.pgbackrest.repo"
    stanza = restore.from_scope or settings.cluster.scope
    stanza_field = "bakery.cluster.restore.from_scope"
    if not isinstance(repo, S3Repo):
        return []  # a shared posix mount is not reachable from here; the node checks it
    store = SecretStore(settings.state_dir, environ)
    try:
        location = S3Location(
            repo.endpoint,
            repo.port,
            repo.region,
            repo.bucket,
            repo.uri_style,
            store.resolve(repo.key, f"{where}.key"),
            store.resolve(repo.key_secret, f"{where}.key_secret"),
            repo.ca_file,
            repo.verify_tls,
            connect_to,
        )
        passphrase = _passphrase(settings, store)
    except BakeryError as error:
        return [Problem(where, str(error))]
    key = str(PurePosixPath(repo.path) / "backup" / stanza / "backup.info")
    shown = f"s3://{repo.bucket}/{key.lstrip('/')}"
    try:
        data = get_object(location, key)
    except S3Error as error:
        hint = " (check the key and secret)" if error.status == 403 else ""
        return [Problem(where, f"reading {shown}: {error}{hint}")]
    if data is None:
        return [Problem(stanza_field, f"no stanza {stanza!r} in the repository: {shown} missing")]
    try:
        if passphrase is not None:
            data = decrypt(data, passphrase.value)
        sets = parse_backup_info(data.decode(errors="replace"))
    except BakeryError as error:
        return [Problem(where, f"{shown}: {error}")]
    if not sets:
        return [Problem(stanza_field, f"stanza {stanza!r} has no backup to restore")]
    if restore.target_time is not None:
        target = restore.target_time
        if not any(s.stop <= target for s in sets):
            oldest = sets[0]
            return [
                Problem(
                    "bakery.cluster.restore.target_time",
                    f"no backup of stanza {stanza!r} ended before {target.isoformat()}: the "
                    f"oldest, {oldest.label}, ended at {oldest.stop.isoformat()}",
                )
            ]
    return []


def _passphrase(settings: Settings, store: SecretStore) -> Secret | None:
    restore = settings.cluster.restore
    assert restore is not None
    if restore.repo is not None:
        if restore.cipher_pass is None:
            return None
        return store.resolve(restore.cipher_pass, "bakery.cluster.restore.cipher_pass")
    if not settings.cluster.pgbackrest.encryption:
        return None
    if not (store.environ.get("BAKERY_REPO_CIPHER_PASSWORD") or store.exists("repo_cipher")):
        # Never generated here: a new passphrase cannot read what the old one encrypted.
        raise BakeryError(
            f"encrypted, but no repository passphrase in {store.directory}: restore with "
            "the state directory that encrypted the backups, or give restore.repo and "
            "restore.cipher_pass"
        )
    return store.password("repo_cipher")
