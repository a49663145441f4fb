"""Reading a pgBackRest repository before a launch: SigV4 against AWS's published example,
backup.info as pgBackRest writes it, its encryption as OpenSSL makes it; and the backup job's
own logic. The real S3 server and pgBackRest are in the cluster tier (test_backup.py)."""

import importlib.machinery
import importlib.util
import json
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest

from bakery.config import load_settings
from bakery.errors import BakeryError
from bakery.repo.info import decrypt, parse_backup_info, restore_problems
from bakery.repo.s3 import signed_headers
from tests.helpers import PROJECT, base_config, merged

BACKUP_INFO = """[backrest]
backrest-format=5
backrest-version="2.45"

[backup:current]
20261201-120000F={"backrest-format":5,"backrest-version":"2.45","backup-timestamp-start":1764590400,"backup-timestamp-stop":1764590410,"backup-type":"full"}
20261201-120000F_20261202-120000D={"backrest-format":5,"backrest-version":"2.45","backup-timestamp-start":1764676800,"backup-timestamp-stop":1764676805,"backup-type":"diff"}

[db]
db-id=1
"""


def test_sigv4_matches_the_published_get_object_example():
    # AWS's "GET Object" example of Signature Version 4 (S3 API reference).
    headers = signed_headers(
        "GET",
        "examplebucket.s3.amazonaws.com",
        "/test.txt",
        "us-east-1",
        "AKIAIOSFODNN7EXAMPLE",
        "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        datetime(2013, 5, 24, tzinfo=UTC),
        {"Range": "bytes=0-9"},
    )
    assert headers["authorization"].endswith(
        "SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, "
        "Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
    )


def test_backup_info_lists_the_sets_oldest_first():
    sets = parse_backup_info(BACKUP_INFO)
    assert [(s.label[-1], s.type) for s in sets] == [("F", "full"), ("D", "diff")]
    assert sets[0].stop == datetime(2025, 12, 1, 12, 0, 10, tzinfo=UTC)
    assert parse_backup_info("[backrest]\nbackrest-format=5\n") == []
    with pytest.raises(BakeryError, match="cannot be read"):
        parse_backup_info("[backup:current]\nx={}\n")


@pytest.mark.skipif(shutil.which("openssl") is None, reason="no openssl")
def test_decrypts_what_openssl_encrypts_the_way_pgbackrest_does(tmp_path):
    # pgBackRest's aes-256-cbc is OpenSSL's `enc` format with a SHA-1 key derivation.
    plain = tmp_path / "backup.info"
    plain.write_text(BACKUP_INFO)
    encrypted = subprocess.run(
        ["openssl", "enc", "-aes-256-cbc", "-md", "sha1", "-pass", "pass:Secr3t", "-in", plain],
        capture_output=True,
        check=True,
    ).stdout
    assert decrypt(encrypted, "Secr3t").decode() == BACKUP_INFO
    with pytest.raises(BakeryError, match="wrong passphrase"):
        decrypt(encrypted, "other")
    with pytest.raises(BakeryError, match="not encrypted"):
        decrypt(BACKUP_INFO.encode(), "Secr3t")


def unreachable_source(tmp_path) -> dict:
    """A restore from an S3 repository nobody serves (a closed port on this machine)."""
    repo = {
        "type": "s3",
        "bucket": "pg-backups",
        "endpoint": "localhost",
        "port": 1,
        "region": "r",
        "key": {"env": "K"},
        "key_secret": {"env": "S"},
    }
    return merged(
        base_config(tmp_path, dcs="etcd3"),
        **{"cluster.pgbackrest": {"repo": repo}, "cluster.restore": {"from_scope": "old"}},
    )


def test_an_unreachable_source_is_a_problem_of_the_repository(tmp_path):
    raw = unreachable_source(tmp_path)
    (problem,) = restore_problems(load_settings(raw), {"K": "k", "S": "s"})
    assert problem.field == "bakery.cluster.pgbackrest.repo"
    assert "reading s3://pg-backups/pgbackrest/backup/old/backup.info: no answer" in problem.message
    # The passphrase of an encrypted repository is never made up for a restore.
    raw = merged(raw, **{"cluster.pgbackrest.encryption": True})
    (problem,) = restore_problems(load_settings(raw), {"K": "k", "S": "s"})
    assert "no repository passphrase" in problem.message
    assert not (tmp_path / "state/secrets/repo_cipher").exists()


# -- the node's job (scripts/pgbackrest/files/bakery-pgbackrest) -------------------------------


@pytest.fixture
def job(tmp_path, monkeypatch):
    path = PROJECT / "scripts/pgbackrest/files/bakery-pgbackrest"
    loader = importlib.machinery.SourceFileLoader("bakery_pgbackrest_job", str(path))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    monkeypatch.setattr(module, "STATUS_DIR", tmp_path)
    monkeypatch.setattr(module, "LOCK", tmp_path / "lock")
    conf = tmp_path / "pgbackrest.conf"
    conf.write_text("[global]\nrepo1-path=/x\n\n[patroni42]\npg1-path=/d\n")
    monkeypatch.setattr(module, "PGBACKREST_CONF", conf)
    return module


def test_the_job_records_its_outcome_as_the_contract_says(job, tmp_path, capsys):
    assert job.run_job("stanza", lambda: "stanza patroni42 ready") == 0
    record = json.loads((tmp_path / "stanza.json").read_text())
    assert record["ok"] is True and record["detail"] == "stanza patroni42 ready"
    assert datetime.strptime(record["at"], "%Y-%m-%dT%H:%M:%SZ")

    def fails():
        raise job.JobError("stanza-create: [039]: HTTP request failed with 403 (Forbidden)\n" * 9)

    assert job.run_job("stanza", fails) == 1
    record = json.loads((tmp_path / "stanza.json").read_text())
    assert record["ok"] is False and len(record["detail"]) <= job.DETAIL_MAX
    assert "\n" not in record["detail"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    assert "stanza failed: stanza-create: [039]" in capsys.readouterr().err


def test_pgbackrests_error_line_is_the_detail(job):
    output = (
        "P00   INFO: stanza-create command begin 2.45: --repo1-s3-key=<redacted>\n"
        "ERROR: [095]: unable to verify certificate presented by 's3.example.org:443': [20] "
        "unable to get local issuer certificate\n"
    )
    assert job.error_line(output, 95).startswith("[095]: unable to verify certificate")
    assert job.error_line("nothing useful", 3) == "pgbackrest exited with 3"


def test_the_backup_job_does_nothing_on_a_replica_and_says_why(job, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(job, "roles", lambda: ("node-b", "node-a"))
    monkeypatch.setattr(job, "pgbackrest", lambda *a, **k: pytest.fail("pgbackrest ran"))
    assert job.main(["backup", "full"]) == 0
    record = json.loads((tmp_path / "backup.json").read_text())
    assert record == record | {
        "ok": True,
        "detail": "skipped: node-b is not the leader (node-a is)",
    }
    assert "nothing to do" in capsys.readouterr().out


def test_the_job_finds_the_one_stanza_and_refuses_unknown_commands(job, tmp_path):
    assert job.stanza_name() == "patroni42"
    assert job.main(["backup", "incr"]) == 2
    assert job.main([]) == 2
    job.PGBACKREST_CONF.write_text("[global]\n[a]\n[b]\n")
    with pytest.raises(job.JobError, match="2 stanzas"):
        job.stanza_name()


def test_the_units_start_the_job_the_element_installs():
    files = PROJECT / "scripts/pgbackrest/files"
    service = (files / "bakery-backup@.service").read_text()
    assert "ExecStart=/usr/lib/bakery/pgbackrest/bakery-pgbackrest backup %i\n" in service
    assert "User=postgres\n" in service and "Type=oneshot\n" in service
    for kind in ("full", "diff"):
        timer = (files / f"bakery-backup-{kind}.timer").read_text()
        assert f"Unit=bakery-backup@{kind}.service\n" in timer
    element = (PROJECT / "scripts/pgbackrest/27-install-backup-job.sh").read_text()
    assert "/usr/lib/bakery/pgbackrest/bakery-pgbackrest root:root 0755" in element
    assert "-o root -g postgres -m 0775 /var/lib/bakery/status" in element
    assert Path(files / "bakery-pgbackrest").stat().st_mode & 0o111


def test_launch_checks_the_restore_source_before_any_cloud(tmp_path, monkeypatch):
    from bakery.cloud import launch as launching
    from bakery.cloud.api import PreflightError

    def no_cloud(*args, **kwargs):
        raise AssertionError("a cloud was contacted")

    monkeypatch.setattr(launching, "connect", no_cloud)
    raw = unreachable_source(tmp_path)
    monkeypatch.setenv("K", "k")
    monkeypatch.setenv("S", "s")
    with pytest.raises(PreflightError, match="bakery.cluster.pgbackrest.repo: reading s3://"):
        launching.launch(load_settings(raw), ["a"], log=lambda line: None)


def test_a_status_that_cannot_be_written_fails_the_job_with_a_line(job, tmp_path, capsys):
    job.STATUS_DIR = tmp_path / "missing"
    assert job.run_job("backup", lambda: "full backup taken") == 1
    assert "cannot record backup in" in capsys.readouterr().err
