"""The pgBackRest part of a node's bundle (docs/backups.md).

What a node receives for its backups: `pgbackrest.conf` (the repository, its TLS trust and
keys, the optional encryption passphrase, retention), WAL archiving and a `restore_command` in
Patroni's cluster-wide settings, replicas built from the repository before falling back to
`pg_basebackup`, the schedule of the image's backup timers, and, for a cluster restored from a
repository, Patroni's bootstrap method and the source repository's own configuration.

Paths on the node follow docs/node-layout.md; the job and its units come with the image
(scripts/pgbackrest/).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import PosixRepo, S3Repo, Settings
from ..errors import BakeryError
from ..secrets import Secret, SecretStore

# The image's job (stanza creation, scheduled backups, restore); it records every outcome in
# /var/lib/bakery/status/<job>.json.
JOB = "/usr/lib/bakery/pgbackrest/bakery-pgbackrest"
CONF = "/etc/pgbackrest/pgbackrest.conf"
REPO_CA = "/etc/pgbackrest/tls/repo-ca.pem"
RESTORE_CONF = "/etc/pgbackrest/restore.conf"
RESTORE_CA = "/etc/pgbackrest/tls/restore-ca.pem"
# The image's timers; the bundle sets their calendar with a drop-in.
TIMERS = {"full": "bakery-backup-full.timer", "diff": "bakery-backup-diff.timer"}
CIPHER_TYPE = "aes-256-cbc"
RESTORE_METHOD = "pgbackrest_restore"


@dataclass(frozen=True)
class RepoAccess:
    """What reading and writing one repository takes: its keys, passphrase and CA."""

    key: Secret | None = None
    key_secret: Secret | None = None
    cipher_pass: Secret | None = None
    ca_pem: str | None = None


@dataclass(frozen=True)
class BackupMaterial:
    repo: RepoAccess
    restore: RepoAccess | None  # the restore source's, when it is another repository


def prepare(settings: Settings, store: SecretStore) -> BackupMaterial:
    """Resolve the repositories' secrets and CA files: every check before anything is written.
    The passphrase is generated (into the state directory) last, by `generate`."""
    backup = settings.cluster.pgbackrest
    where = "bakery.cluster.pgbackrest.repo"
    repo = _access(backup.repo, store, where)
    restore = settings.cluster.restore
    source = None
    if restore is not None and restore.repo is not None:
        source = _access(restore.repo, store, "bakery.cluster.restore.repo")
        if restore.cipher_pass is not None:
            cipher = store.resolve(restore.cipher_pass, "bakery.cluster.restore.cipher_pass")
            source = RepoAccess(source.key, source.key_secret, cipher, source.ca_pem)
    return BackupMaterial(repo, source)


def generate(settings: Settings, store: SecretStore, material: BackupMaterial) -> BackupMaterial:
    """The repository passphrase, generated on first use and kept like the passwords."""
    if not settings.cluster.pgbackrest.encryption:
        return material
    repo = material.repo
    cipher = store.password("repo_cipher")
    return BackupMaterial(
        RepoAccess(repo.key, repo.key_secret, cipher, repo.ca_pem), material.restore
    )


def _access(repo: PosixRepo | S3Repo, store: SecretStore, where: str) -> RepoAccess:
    if repo.type == "posix":
        return RepoAccess()
    ca_pem = None
    if repo.ca_file is not None:
        ca_pem = _read_ca(repo.ca_file, f"{where}.ca_file")
    return RepoAccess(
        store.resolve(repo.key, f"{where}.key"),
        store.resolve(repo.key_secret, f"{where}.key_secret"),
        None,
        ca_pem,
    )


def _read_ca(path: Path, where: str) -> str:
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise BakeryError(f"{where}: cannot read {path} ({type(error).__name__})") from None
    if "-----BEGIN CERTIFICATE-----" not in text:
        raise BakeryError(f"{where}: {path} holds no PEM certificate")
    return text


# -- pgBackRest's options ---------------------------------------------------------------------


def repo_options(repo: PosixRepo | S3Repo, access: RepoAccess, ca_path: str) -> dict[str, str]:
    """`repo1-*` options of pgbackrest.conf for one repository."""
    if repo.type == "posix":
        options = {"repo1-path": str(repo.path)}
    else:
        options = {
            "repo1-type": "s3",
            "repo1-path": str(repo.path),
            "repo1-s3-bucket": repo.bucket,
            "repo1-s3-endpoint": repo.endpoint,
            "repo1-storage-port": str(repo.port),
            "repo1-s3-region": repo.region,
            "repo1-s3-uri-style": repo.uri_style,
        }
        if access.ca_pem is not None:
            options["repo1-storage-ca-file"] = ca_path
        if not repo.verify_tls:
            options["repo1-storage-verify-tls"] = "n"
        assert access.key is not None and access.key_secret is not None
        options["repo1-s3-key"] = access.key.value
        options["repo1-s3-key-secret"] = access.key_secret.value
    if access.cipher_pass is not None:
        options["repo1-cipher-type"] = CIPHER_TYPE
        options["repo1-cipher-pass"] = access.cipher_pass.value
    return options


def conf_context(settings: Settings, material: BackupMaterial) -> dict[str, Any]:
    """What pgbackrest.conf.j2 (and restore.conf) are rendered from."""
    backup = settings.cluster.pgbackrest
    options = repo_options(backup.repo, material.repo, REPO_CA)
    options["repo1-retention-full"] = str(backup.retention_full)
    if backup.retention_diff is not None:
        options["repo1-retention-diff"] = str(backup.retention_diff)
    context: dict[str, Any] = {"repo_options": options, "restore_options": None}
    restore = settings.cluster.restore
    if restore is not None:
        if restore.repo is None:  # this cluster's own repository
            options = repo_options(backup.repo, material.repo, REPO_CA)
        else:
            assert material.restore is not None
            options = repo_options(restore.repo, material.restore, RESTORE_CA)
        context["restore_options"] = options
        context["restore_stanza"] = source_stanza(settings)
    return context


def source_stanza(settings: Settings) -> str:
    restore = settings.cluster.restore
    assert restore is not None
    return restore.from_scope or settings.cluster.scope


# -- Patroni ----------------------------------------------------------------------------------


def cluster_parameters(settings: Settings) -> dict[str, str]:
    """WAL archiving, cluster-wide (it lives in the DCS): nothing node-specific may appear."""
    if not settings.cluster.pgbackrest.archiving:
        return {}
    scope = settings.cluster.scope
    return {"archive_mode": "on", "archive_command": f"pgbackrest --stanza={scope} archive-push %p"}


def recovery_conf(settings: Settings) -> dict[str, str]:
    """How a replica fetches WAL it can no longer stream (cluster-wide, like the above)."""
    if not settings.cluster.pgbackrest.archiving:
        return {}
    scope = settings.cluster.scope
    return {"restore_command": f'pgbackrest --stanza={scope} archive-get %f "%p"'}


def replica_methods(settings: Settings) -> tuple[list[str], dict[str, Any] | None]:
    """A new replica is restored from the newest backup in the shared repository (and catches
    up from the archive and the primary), so a node in a far AZ does not stream the whole
    database; without a backup there (a new cluster), Patroni falls back to pg_basebackup."""
    if not settings.cluster.pgbackrest.archiving:
        return ["basebackup"], None
    scope = settings.cluster.scope
    method = {
        "command": f"pgbackrest --stanza={scope} --delta restore",
        "keep_data": True,
        "no_params": True,
    }
    return ["pgbackrest", "basebackup"], method


def restore_method(settings: Settings) -> dict[str, Any] | None:
    """Patroni's custom bootstrap: the first node of a new cluster restores the source's backup
    and recovers from its archive to the target time (or to the end of the archive), then
    promotes; Patroni writes the recovery settings (pgBackRest's own are discarded)."""
    restore = settings.cluster.restore
    if restore is None:
        return None
    stanza = source_stanza(settings)
    config = f"--config={RESTORE_CONF} --stanza={stanza}"
    recovery = {"restore_command": f'pgbackrest {config} archive-get %f "%p"'}
    command = f"{JOB} restore {config}"
    if restore.target_time is not None:
        target = pg_timestamp(restore.target_time)
        # pgBackRest picks the newest backup that ended before the target.
        command += f" --type=time '--target={target}'"
        recovery |= {"recovery_target_time": target, "recovery_target_action": "promote"}
    return {"command": command, "no_params": True, "recovery_conf": recovery}


def pg_timestamp(moment) -> str:
    """A timestamp PostgreSQL and pgBackRest read alike: '2026-05-01 12:00:00.5+00:00'."""
    return moment.isoformat(sep=" ")


# -- files and services -----------------------------------------------------------------------


def timers(settings: Settings) -> list[str]:
    """The image's backup timers this node enables (on every node: the job acts on the leader)."""
    backup = settings.cluster.pgbackrest
    if not backup.scheduled:
        return []
    assert backup.schedule is not None
    return [TIMERS[kind] for kind in ("full", "diff") if getattr(backup.schedule, kind)]


def timer_dropin(timer: str) -> str:
    return f"/etc/systemd/system/{timer}.d/bakery-schedule.conf"


def schedule_dropins(settings: Settings) -> dict[str, str]:
    """Node path -> drop-in setting the configured calendar of each enabled timer."""
    schedule = settings.cluster.pgbackrest.schedule
    dropins = {}
    for kind, timer in TIMERS.items():
        if timer not in timers(settings):
            continue
        calendar = getattr(schedule, kind)
        dropins[timer_dropin(timer)] = (
            f"# {timer}: cluster.pgbackrest.schedule.{kind} of the bakery configuration.\n"
            "[Timer]\n"
            "OnCalendar=\n"
            f"OnCalendar={calendar}\n"
        )
    return dropins


def describe_restore(settings: Settings) -> str:
    """One line for `invoke render`: what the new cluster's first node does."""
    restore = settings.cluster.restore
    assert restore is not None
    target = pg_timestamp(restore.target_time) if restore.target_time else "the latest state"
    source = "restore.repo" if restore.repo else "its own repository"
    return (
        f"restore: the first node bootstraps from stanza {source_stanza(settings)!r} in "
        f"{source}, recovered to {target} (patroni.yml bootstrap.method, {RESTORE_CONF})"
    )
