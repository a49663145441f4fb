"""Backup settings: the S3 repository, archiving, schedule and restore; bad input named by its
field path with nothing written; what a node receives for its backups."""

import configparser
import json
from datetime import UTC, datetime, timedelta

import pytest
import yaml

from bakery.config import config_warnings, load_settings
from bakery.errors import ConfigError
from bakery.node import backup
from bakery.node.render import render_cluster
from tests.helpers import DELETE, base_config, invoke, merged, tree, write_config

S3_ENV = {"TEST_S3_KEY": "AKIA-unit", "TEST_S3_SECRET": "unit-secret-value"}


def s3_repo(**changes) -> dict:
    repo = {
        "type": "s3",
        "bucket": "pg-backups",
        "endpoint": "s3.example.org",
        "region": "de-west",
        "key": {"env": "TEST_S3_KEY"},
        "key_secret": {"env": "TEST_S3_SECRET"},
        **changes,
    }
    return {key: value for key, value in repo.items() if value is not DELETE}


def with_backup(tmp_path, **pgbackrest) -> dict:
    return merged(base_config(tmp_path, dcs="etcd3"), **{"cluster.pgbackrest": pgbackrest})


def problems_of(raw) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_settings(raw)
    return [str(p) for p in caught.value.problems]


def test_s3_defaults_turn_archiving_and_the_schedule_on(tmp_path):
    settings = load_settings(with_backup(tmp_path, repo=s3_repo()))
    backup_settings = settings.cluster.pgbackrest
    assert backup_settings.archiving and backup_settings.scheduled
    assert backup_settings.repo.port == 443 and backup_settings.repo.uri_style == "host"
    posix = load_settings(base_config(tmp_path)).cluster.pgbackrest
    assert not posix.archiving and not posix.scheduled


def test_a_repository_without_bucket_or_endpoint_names_the_fields(tmp_path):
    raw = with_backup(tmp_path, repo=s3_repo(bucket=DELETE, endpoint=DELETE))
    assert sorted(problems_of(raw)) == [
        "bakery.cluster.pgbackrest.repo.bucket: required, but missing",
        "bakery.cluster.pgbackrest.repo.endpoint: required, but missing",
    ]


@pytest.mark.parametrize(
    ("endpoint", "says"),
    [
        ("https://s3.example.org", "no scheme, port or path"),
        ("s3.example.org:9000", "no scheme, port or path"),
        ("10.0.0.5", "checks certificates by DNS name only"),
        ("bad_name.example", "should match pattern"),
    ],
)
def test_the_endpoint_is_a_host_name(tmp_path, endpoint, says):
    (problem,) = problems_of(with_backup(tmp_path, repo=s3_repo(endpoint=endpoint)))
    assert problem.startswith("bakery.cluster.pgbackrest.repo.endpoint: ")
    assert says in problem


def test_archiving_into_node_local_repositories_across_azs_is_refused(tmp_path):
    raw = with_backup(tmp_path, repo={"type": "posix"}, archive=True)
    (problem,) = problems_of(raw)
    assert problem.startswith("bakery.cluster.pgbackrest.archive: WAL archiving into a posix")
    assert "use an s3 repository" in problem
    # A mount every node shares, or a single AZ, is fine.
    load_settings(with_backup(tmp_path, repo={"type": "posix", "shared": True}, archive=True))
    single = merged(raw, **{"azs.b": DELETE})
    assert load_settings(single).cluster.pgbackrest.archiving


def test_a_posix_repository_in_a_multi_az_config_is_warned_about(tmp_path):
    settings = load_settings(base_config(tmp_path))
    (warning,) = [str(w) for w in config_warnings(settings)]
    assert warning.startswith("bakery.cluster.pgbackrest.repo: a posix repository does not")
    assert config_warnings(load_settings(with_backup(tmp_path, repo=s3_repo()))) == []
    unverified = load_settings(with_backup(tmp_path, repo=s3_repo(verify_tls=False)))
    assert [w.field for w in config_warnings(unverified)] == [
        "bakery.cluster.pgbackrest.repo.verify_tls"
    ]


def test_check_prints_the_warning_and_passes(tmp_path):
    config = write_config(tmp_path / "c.yaml", base_config(tmp_path))
    result = invoke("-f", str(config), "check")
    assert result.returncode == 0, result.stderr
    assert "bakery: warning: bakery.cluster.pgbackrest.repo: a posix repository" in result.stderr


def test_a_schedule_without_archiving_is_refused(tmp_path):
    raw = with_backup(tmp_path, schedule={"full": "daily"})
    assert problems_of(raw) == [
        "bakery.cluster.pgbackrest.schedule: set, but WAL archiving is off: backups need it "
        "(archive: true, with a repository every node reaches)"
    ]
    bad = with_backup(tmp_path, repo=s3_repo(), schedule={"full": "Sun 01:00\nExecStart=x"})
    (problem,) = problems_of(bad)
    assert problem.startswith("bakery.cluster.pgbackrest.schedule.full: String should match")


@pytest.mark.parametrize("value", ["yesterday", "2026-13-01 00:00:00+00:00", "12:00"])
def test_a_restore_target_that_is_not_a_timestamp_is_refused(tmp_path, value):
    raw = merged(
        with_backup(tmp_path, repo=s3_repo()), **{"cluster.restore": {"target_time": value}}
    )
    (problem,) = problems_of(raw)
    assert problem.startswith("bakery.cluster.restore.target_time: ")
    assert repr(value) in problem


def test_a_restore_target_needs_an_offset_and_must_be_past(tmp_path):
    raw = merged(
        with_backup(tmp_path, repo=s3_repo()),
        **{"cluster.restore": {"target_time": "2026-01-01 12:00:00"}},
    )
    (problem,) = problems_of(raw)
    assert "timezone" in problem
    future = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    raw = merged(raw, **{"cluster.restore": {"target_time": future}})
    (problem,) = problems_of(raw)
    assert problem.startswith("bakery.cluster.restore.target_time: ")
    assert "in the future" in problem


def test_a_restore_from_node_local_disks_is_refused(tmp_path):
    raw = merged(base_config(tmp_path), **{"cluster.restore": {"from_scope": "old"}})
    (problem,) = problems_of(raw)
    assert problem.startswith("bakery.cluster.restore: the source is a posix repository")
    raw = merged(
        with_backup(tmp_path, repo=s3_repo()),
        **{"cluster.restore": {"cipher_pass": {"env": "X"}}},
    )
    assert problems_of(raw)[0].startswith("bakery.cluster.restore.cipher_pass: set, but")


def test_a_secret_written_inline_is_never_echoed(tmp_path):
    raw = merged(
        with_backup(tmp_path, repo=s3_repo()),
        **{"cluster.restore": {"repo": s3_repo(), "cipher_pass": "hunter2-inline"}},
    )
    (problem,) = problems_of(raw)
    assert problem.startswith("bakery.cluster.restore.cipher_pass: ")
    assert "hunter2" not in problem


def render(tmp_path, raw, environ=S3_ENV):
    from bakery.ca import create_missing

    settings = load_settings(raw)
    create_missing(settings)
    return settings, render_cluster(settings, [], dict(environ))


def files_of(bundle) -> dict:
    return {f.path: f for f in bundle.files}


def test_an_s3_node_archives_builds_replicas_from_the_repository_and_schedules(tmp_path):
    ca = tmp_path / "s3-ca.pem"
    raw = with_backup(
        tmp_path,
        repo=s3_repo(ca_file=str(ca), uri_style="path", port=9443),
        encryption=True,
        retention_diff=4,
        schedule={"full": "Sat *-*-* 02:00:00", "diff": None},
    )
    from bakery import pki

    pki.create_ca(ca, tmp_path / "s3-ca.key", "s3 test CA")
    settings, bundles = render(tmp_path, raw)
    bundle = bundles[0]
    files = files_of(bundle)
    conf = configparser.ConfigParser(interpolation=None)
    conf.read_string(files[backup.CONF].content)
    cipher = (tmp_path / "state/secrets/repo_cipher").read_text().strip()
    assert dict(conf["global"]) | {} == {
        "repo1-type": "s3",
        "repo1-path": "/pgbackrest",
        "repo1-s3-bucket": "pg-backups",
        "repo1-s3-endpoint": "s3.example.org",
        "repo1-storage-port": "9443",
        "repo1-s3-region": "de-west",
        "repo1-s3-uri-style": "path",
        "repo1-storage-ca-file": backup.REPO_CA,
        "repo1-s3-key": "AKIA-unit",
        "repo1-s3-key-secret": "unit-secret-value",
        "repo1-cipher-type": "aes-256-cbc",
        "repo1-cipher-pass": cipher,
        "repo1-retention-full": "2",
        "repo1-retention-diff": "4",
        "start-fast": "y",
        "log-level-console": "info",
        "log-level-file": "off",
    }
    assert len(cipher) == 40
    assert files[backup.REPO_CA].content == ca.read_text()
    assert files[backup.CONF].mode == "0600"
    patroni = yaml.safe_load(files["/etc/patroni/patroni.yml"].content)
    dcs = patroni["bootstrap"]["dcs"]["postgresql"]
    assert dcs["parameters"]["archive_command"] == "pgbackrest --stanza=patroni42 archive-push %p"
    assert dcs["recovery_conf"] == {
        "restore_command": 'pgbackrest --stanza=patroni42 archive-get %f "%p"'
    }
    assert patroni["postgresql"]["create_replica_methods"] == ["pgbackrest", "basebackup"]
    assert patroni["postgresql"]["pgbackrest"]["keep_data"] is True
    assert "method" not in patroni["bootstrap"]
    # Only the full timer: the differential one is off.
    assert [s for s in bundle.services if s.endswith(".timer")] == ["bakery-backup-full.timer"]
    dropin = files["/etc/systemd/system/bakery-backup-full.timer.d/bakery-schedule.conf"]
    assert dropin.content.endswith("[Timer]\nOnCalendar=\nOnCalendar=Sat *-*-* 02:00:00\n")
    assert (dropin.owner, dropin.mode) == ("root:root", "0644")
    post = files["/etc/patroni/post-bootstrap.sh"].content
    assert f"{backup.JOB} stanza || true" in post


def test_a_restored_cluster_bootstraps_from_the_source(tmp_path):
    raw = merged(
        with_backup(tmp_path, repo=s3_repo()),
        **{
            "cluster.restore": {
                "from_scope": "old-cluster",
                "target_time": "2026-03-01T12:30:00+01:00",
                "repo": s3_repo(bucket="other-backups", key={"env": "OLD_KEY"}),
                "cipher_pass": {"env": "OLD_CIPHER"},
            }
        },
    )
    env = S3_ENV | {"OLD_KEY": "AKIA-old", "OLD_CIPHER": "old-passphrase"}
    _, bundles = render(tmp_path, raw, env)
    files = files_of(bundles[0])
    patroni = yaml.safe_load(files["/etc/patroni/patroni.yml"].content)
    assert patroni["bootstrap"]["method"] == "pgbackrest_restore"
    method = patroni["bootstrap"]["pgbackrest_restore"]
    config = f"--config={backup.RESTORE_CONF} --stanza=old-cluster"
    assert method == {
        "command": f"{backup.JOB} restore {config} --type=time "
        "'--target=2026-03-01 12:30:00+01:00'",
        "no_params": True,
        "recovery_conf": {
            "restore_command": f'pgbackrest {config} archive-get %f "%p"',
            "recovery_target_time": "2026-03-01 12:30:00+01:00",
            "recovery_target_action": "promote",
        },
    }
    source = configparser.ConfigParser(interpolation=None)
    source.read_string(files[backup.RESTORE_CONF].content)
    assert source["global"]["repo1-s3-bucket"] == "other-backups"
    assert source["global"]["repo1-s3-key"] == "AKIA-old"
    assert source["global"]["repo1-cipher-pass"] == "old-passphrase"
    assert "repo1-retention-full" not in source["global"]  # read only
    assert source["old-cluster"]["pg1-path"] == "/var/lib/postgresql/14/patroni"
    assert files[backup.RESTORE_CONF].mode == "0600"
    # Archiving goes on into the new cluster's own stanza and repository.
    own = configparser.ConfigParser(interpolation=None)
    own.read_string(files[backup.CONF].content)
    assert own["global"]["repo1-s3-bucket"] == "pg-backups" and own.has_section("patroni42")


def test_render_says_what_a_restoring_node_does_and_shows_no_secret(tmp_path):
    raw = merged(
        with_backup(tmp_path, repo=s3_repo(), encryption=True),
        **{"cluster.scope": "newer", "cluster.restore": {"from_scope": "patroni42"}},
    )
    config = write_config(tmp_path / "c.yaml", raw)
    out = tmp_path / "out"
    result = invoke("-f", str(config), "ca", "render", "--out", str(out), env=S3_ENV)
    assert result.returncode == 0, result.stderr
    assert (
        "restore: the first node bootstraps from stanza 'patroni42' in its own repository, "
        "recovered to the latest state" in result.stdout
    )
    cipher = (tmp_path / "state/secrets/repo_cipher").read_text().strip()
    for secret in (cipher, *S3_ENV.values()):
        assert secret not in result.stdout + result.stderr
        assert secret not in (out / "manifest.json").read_text()
    manifest = json.loads((out / "manifest.json").read_text())
    paths = {f["path"] for f in manifest["nodes"][0]["files"]}
    assert backup.RESTORE_CONF in paths


def test_missing_key_and_unreadable_ca_change_nothing(tmp_path):
    raw = with_backup(tmp_path, repo=s3_repo(ca_file=str(tmp_path / "missing.pem")))
    config = write_config(tmp_path / "c.yaml", raw)
    assert invoke("-f", str(config), "ca").returncode == 0
    before = tree(tmp_path / "state")
    result = invoke("-f", str(config), "render", "--out", str(tmp_path / "out"), env=S3_ENV)
    assert result.returncode == 1
    assert "bakery.cluster.pgbackrest.repo.ca_file: cannot read" in result.stderr
    assert "Traceback" not in result.stderr
    assert tree(tmp_path / "state") == before and not (tmp_path / "out").exists()
    (tmp_path / "missing.pem").write_text("not a certificate\n")
    result = invoke("-f", str(config), "render", "--out", str(tmp_path / "out"), env=S3_ENV)
    assert "repo.ca_file: " in result.stderr and "holds no PEM certificate" in result.stderr
    config = write_config(tmp_path / "c.yaml", with_backup(tmp_path, repo=s3_repo()))
    result = invoke("-f", str(config), "render", "--out", str(tmp_path / "out"))
    assert "bakery.cluster.pgbackrest.repo.key: environment variable TEST_S3_KEY" in result.stderr
    assert tree(tmp_path / "state") == before and not (tmp_path / "out").exists()
