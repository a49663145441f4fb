"""Elements run again on the built tree, through an overlay so the build stays untouched:
a second run changes nothing, and the Consul element verifies its artifact or fails closed."""

from __future__ import annotations

import hashlib
import io
import os
import zipfile
from pathlib import Path

import imagetest_harness as harness
import pytest
import yaml

from bakery.cleanup import Cleanup
from bakery.image import hostfs, localbuild
from bakery.image.definition import IMAGES_DIR, load_definition

pytestmark = pytest.mark.slow
CONSUL_VERSION = "1.20.2"


def test_second_run_of_the_elements_changes_nothing(built):
    import time

    start = time.monotonic()
    changes = localbuild.rerun_elements(
        harness.BUILD_ROOT / "local-test",
        IMAGES_DIR / "local-test.yaml",
        harness.BUILD_ROOT / "rerun",
    )
    harness.FIGURES["second run of the elements"] = (
        f"{time.monotonic() - start:.0f} s, {len(changes)} changes"
    )
    assert changes == [], "\n".join(changes)
    assert not hostfs.mounts_under(harness.BUILD_ROOT)


def fake_consul_zip(directory: Path) -> Path:
    """A stand-in release zip (Consul cannot be downloaded here): a `consul` that reports its
    version like the real one."""
    directory.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        info = zipfile.ZipInfo("consul")
        info.external_attr = 0o755 << 16
        z.writestr(info, f'#!/bin/sh\necho "Consul v{CONSUL_VERSION}"\necho "Revision fake"\n')
    path = directory / f"consul_{CONSUL_VERSION}_linux_amd64.zip"
    path.write_bytes(buffer.getvalue())
    return path


def consul_definition(tmp_path: Path, artifacts: Path, sha256: str) -> Path:
    """local-test plus Consul taken from an offline artifacts directory."""
    raw = yaml.safe_load((IMAGES_DIR / "local-test.yaml").read_text())
    raw["name"] = "consul-test"
    raw["components"]["patroni"]["lock"] = str(IMAGES_DIR / raw["components"]["patroni"]["lock"])
    raw["components"]["consul"] = {
        "version": CONSUL_VERSION,
        "sha256": {"amd64": sha256},
        "artifacts_dir": str(artifacts),
    }
    path = tmp_path / "consul-test.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_wrong_consul_checksum_fails_the_build_before_any_work(tmp_path):
    artifact = fake_consul_zip(tmp_path / "artifacts")
    wrong = "0" * 64
    definition = consul_definition(tmp_path, artifact.parent, wrong)
    with pytest.raises(localbuild.BuildError) as caught:
        localbuild.build(definition, tmp_path / "out", use_cache=False, echo=False)
    message = str(caught.value)
    assert "consul: SHA-256 MISMATCH" in message
    assert f"expected {wrong}" in message
    assert hashlib.sha256(artifact.read_bytes()).hexdigest() in message
    assert not (tmp_path / "out" / "tree").exists()


def run_consul_element(built, tmp_path: Path, sha256: str, artifacts: Path) -> list[str]:
    """Run the base/consul elements in an overlay of the built tree; return the changes."""
    loaded = load_definition(consul_definition(tmp_path, artifacts, sha256))
    builder = localbuild.Builder(loaded, tmp_path / "work", cache_dir=None, echo=False)
    builder.out.mkdir(parents=True)
    with open(builder.log_path, "w") as builder._log_file:
        cleanup = Cleanup(builder.log)
        try:
            with hostfs.overlay(built.tree, tmp_path / "overlay", cleanup) as (merged, upper):
                builder.run_elements(merged, ["consul"], cleanup)
                return hostfs.overlay_changes(built.tree, upper, merged)
        finally:
            cleanup.run()
            assert not cleanup.leftovers


def test_consul_element_installs_a_verified_artifact(built, tmp_path):
    artifact = fake_consul_zip(tmp_path / "artifacts")
    good = hashlib.sha256(artifact.read_bytes()).hexdigest()
    changes = run_consul_element(built, tmp_path, good, artifact.parent)
    joined = "\n".join(changes)
    assert "changed /usr/local/bin/consul: None -> " in joined
    assert "changed /etc/consul.d: None -> " in joined
    assert "changed /opt/consul: None -> " in joined
    log = (tmp_path / "work" / "build.log").read_text()
    assert f"consul: installed {CONSUL_VERSION} from /run/bakery/consul-artifacts/" in log


def test_consul_element_fails_closed_on_a_checksum_mismatch(built, tmp_path):
    artifact = fake_consul_zip(tmp_path / "artifacts")
    wrong = "f" * 64
    with pytest.raises(localbuild.BuildError) as caught:
        run_consul_element(built, tmp_path, wrong, artifact.parent)
    log = (tmp_path / "work" / "build.log").read_text()
    assert "consul: SHA-256 MISMATCH for /run/bakery/consul-artifacts/" in log
    assert f"expected {wrong}, got {hashlib.sha256(artifact.read_bytes()).hexdigest()}" in log
    assert "refusing to install it" in log
    assert "FAILED consul/24-install-consul.sh" in str(caught.value) or "FAILED" in log
    assert not hostfs.mounts_under(tmp_path)


@pytest.mark.parametrize("signal_name", ["SIGINT", "SIGTERM"])
def test_interrupted_build_releases_mounts_and_loop_devices(built, tmp_path, signal_name):
    """Ctrl-C (or a stop) while the elements run in the chroot: exit 130 (143), nothing left."""
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "out"
    loops_before = subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout
    proc = subprocess.Popen(
        [sys.executable, "-m", "bakery.image.localbuild", "--definition",
         str(IMAGES_DIR / "local-test.yaml"), "--out", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        log = out / "build.log"
        while time.monotonic() < deadline:
            if log.exists() and "run-elements: >>> base/11-install-packages.sh" in log.read_text():
                break
            assert proc.poll() is None, proc.stderr.read()
            time.sleep(0.5)
        else:
            pytest.fail("the build never reached the elements")
        assert hostfs.mounts_under(out), "expected chroot mounts while elements run"
        os.kill(proc.pid, getattr(signal, signal_name))
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            # The test was interrupted: SIGTERM lets the build release its mounts; SIGKILL would
            # leave them.
            proc.terminate()
            try:
                proc.wait(120)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    how, code = {"SIGINT": ("interrupted", 130), "SIGTERM": ("terminated", 143)}[signal_name]
    assert proc.returncode == code, stderr
    assert f"bakery: {how}; mounts and loop devices were released" in stderr
    assert hostfs.mounts_under(out) == []
    assert subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout == loops_before
    assert not (out / "tree" / "usr/sbin/policy-rc.d").exists()
    assert (out / "tree" / "etc/resolv.conf").is_symlink()


def test_built_tree_is_generalized_and_complete(built):
    """What generalization leaves, and what the image must carry, checked on the tree."""
    tree = built.tree
    assert (tree / "etc/machine-id").read_text() == ""
    assert not list((tree / "etc/ssh").glob("ssh_host_*"))
    assert not (tree / "var/lib/cloud").exists() or not any((tree / "var/lib/cloud").iterdir())
    assert [p.name for p in (tree / "var/lib/apt/lists").iterdir()] in ([], ["partial"])
    assert not list((tree / "var/cache/apt").glob("*.bin"))
    assert not list((tree / "var/cache/apt/archives").glob("*.deb"))
    for log in (tree / "var/log").rglob("*"):
        if log.is_file():
            assert log.stat().st_size == 0, log
    assert (tree / "etc/hostname").read_text() == "localhost\n"
    data = tree / "var/lib/postgresql/15/patroni"
    assert data.is_dir() and not any(data.iterdir())
    st = data.stat()
    assert (st.st_mode & 0o777, st.st_uid) == (0o700, _uid(tree, "postgres"))
    assert not (tree / "etc/postgresql/15/main").exists()
    assert (tree / "usr/local/bin/patronictl").readlink() == Path("/opt/patroni/bin/patronictl")
    for unit in ("patroni", "consul", "nebula"):
        text = (tree / f"etc/systemd/system/{unit}.service").read_text()
        assert "ConditionPathExists=" in text
        assert not _wanted(tree, f"{unit}.service")
    patroni_unit = (tree / "etc/systemd/system/patroni.service").read_text()
    assert "EnvironmentFile=-/etc/patroni/patroni.env" in patroni_unit
    assert "ConditionPathExists=/etc/patroni/patroni.yml" in patroni_unit
    assert not _wanted(tree, "postgresql.service")
    assert (tree / "etc/bakery/manifest.json").exists()
    # The reporter is enabled, waits for the bundle, and patroni's stop hands over.
    assert _wanted(tree, "bakery-reporter.service") == ["multi-user.target.wants"]
    reporter = (tree / "etc/systemd/system/bakery-reporter.service").read_text()
    assert "ConditionPathExists=/etc/bakery/node.env" in reporter
    assert "ExecStop=-/usr/lib/bakery/bakery-node handover" in patroni_unit
    assert os.access(tree / "usr/lib/bakery/bakery-node", os.X_OK)
    status = tree / "var/lib/bakery/status"
    assert (status.stat().st_mode & 0o777, status.stat().st_gid) == (
        0o775,
        _gid(tree, "postgres"),
    )
    # Build-time swaps were put back.
    assert (tree / "etc/resolv.conf").is_symlink()
    assert not (tree / "usr/sbin/policy-rc.d").exists()
    assert not list(tree.rglob("*.bakery-saved"))


def _wanted(tree: Path, unit: str) -> list[str]:
    """The .wants directories that enable `unit`. Their links point to /etc/... and dangle
    outside the image, and Path.glob does not list a dangling link: iterdir does."""
    system = tree / "etc/systemd/system"
    return sorted(
        d.name for d in system.glob("*.wants") for link in d.iterdir() if link.name == unit
    )


def _gid(tree: Path, group: str) -> int:
    for line in (tree / "etc/group").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == group:
            return int(fields[2])
    raise AssertionError(f"no group {group} in the image")


def test_built_tree_has_the_backup_job_and_its_disabled_timers(built):
    tree = built.tree
    job = (tree / "usr/lib/bakery/pgbackrest/bakery-pgbackrest").stat()
    assert (job.st_mode & 0o777, job.st_uid) == (0o755, 0)
    for unit in ("bakery-backup@.service", "bakery-backup-full.timer", "bakery-backup-diff.timer"):
        assert (tree / "etc/systemd/system" / unit).is_file(), unit
        assert not _wanted(tree, unit)
    status = (tree / "var/lib/bakery/status").stat()
    postgres_gid = int(_passwd_line(tree, "postgres")[3])
    assert (status.st_mode & 0o777, status.st_uid, status.st_gid) == (0o775, 0, postgres_gid)
    assert not any((tree / "var/lib/bakery/status").iterdir())


def _passwd_line(tree: Path, user: str) -> list[str]:
    for line in (tree / "etc/passwd").read_text().splitlines():
        if line.split(":")[0] == user:
            return line.split(":")
    raise AssertionError(f"no user {user} in the image")


def _uid(tree: Path, user: str) -> int:
    for line in (tree / "etc/passwd").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == user:
            return int(fields[2])
    raise AssertionError(f"no user {user} in the image")


def signed_repository(root: Path, suite: str, signer: str = "repo") -> tuple[Path, str]:
    """A tiny apt repository (no packages) like pgdg's layout, signed by a throwaway key, and
    that key exported as `key.asc`; returns the key file and its fingerprint. With
    signer="other" the index is signed by a second key that is not the one exported."""
    import os
    import subprocess

    root.mkdir(parents=True)
    home = root.parent / f"{root.name}-gnupg"
    home.mkdir(mode=0o700, parents=True)
    env = {**os.environ, "GNUPGHOME": str(home)}

    def gpg(*args: str, **kwargs) -> str:
        return subprocess.run(
            ["gpg", "--batch", "--quiet", *args],
            env=env,
            check=True,
            capture_output=True,
            text=True,
            **kwargs,
        ).stdout

    try:
        return _sign_repository(root, suite, gpg, signer)
    finally:
        # gpg started an agent for key generation: stop it (by its home, ours alone).
        subprocess.run(["gpgconf", "--kill", "gpg-agent"], env=env, check=False)


def _sign_repository(root: Path, suite: str, gpg, signer: str) -> tuple[Path, str]:
    fingerprints = {}
    for name in ("repo", "other"):
        gpg("--passphrase", "", "--quick-gen-key", f"bakery test {name}", "ed25519", "sign", "1d")
        fingerprints[name] = next(
            line.split(":")[9]
            for line in gpg("--with-colons", "--list-keys", f"bakery test {name}").splitlines()
            if line.startswith("fpr:")
        )
    fingerprint = fingerprints["repo"]
    key = root / "key.asc"
    key.write_text(gpg("--armor", "--export", fingerprint))
    packages = root / "repo" / "dists" / suite / "main" / "binary-amd64" / "Packages"
    packages.parent.mkdir(parents=True)
    packages.write_text("")
    release = (
        f"Origin: bakery-test\nSuite: {suite}\nCodename: {suite}\nArchitectures: amd64\n"
        "Components: main\nDate: Thu, 01 Jan 2026 00:00:00 UTC\nSHA256:\n"
        f" {hashlib.sha256(b'').hexdigest()} 0 main/binary-amd64/Packages\n"
    )
    dists = root / "repo" / "dists" / suite
    (dists / "Release").write_text(release)
    gpg("--local-user", fingerprints[signer], "--clearsign", "--output", str(dists / "InRelease"),
        str(dists / "Release"))  # fmt: skip
    return key, fingerprint


def run_postgresql_pgdg(built, tmp_path: Path, repo_root: Path, fingerprint: str) -> Path:
    """The postgresql element with source pgdg against a local repository, in an overlay.
    Returns the overlay's upper layer (what the run wrote)."""
    loaded = load_definition(IMAGES_DIR / "local-test.yaml")
    builder = localbuild.Builder(loaded, tmp_path / "work", cache_dir=None, echo=False)
    builder.out.mkdir(parents=True)
    staged = "/run/bakery/extra"
    env = {
        "BAKERY_PG_MAJOR": "15",
        "BAKERY_PG_SOURCE": "pgdg",
        "BAKERY_PGDG_MIRROR": f"file://{staged}/repo",
        "BAKERY_PGDG_KEY_URL": f"file://{staged}/key.asc",
        "BAKERY_PGDG_KEY_FINGERPRINT": fingerprint,
    }
    with open(builder.log_path, "w") as builder._log_file:
        cleanup = Cleanup(builder.log)
        try:
            with hostfs.overlay(built.tree, tmp_path / "overlay", cleanup) as (merged, upper):
                builder.run_elements(merged, ["postgresql"], cleanup, env=env, extra=repo_root)
                return upper
        finally:
            cleanup.run()
            assert not cleanup.leftovers


def test_pgdg_repository_is_added_with_a_checked_signed_by_keyring(built, tmp_path):
    key, fingerprint = signed_repository(tmp_path / "pgdg", "bookworm-pgdg")
    upper = run_postgresql_pgdg(built, tmp_path, tmp_path / "pgdg", fingerprint)
    sources = (upper / "etc/apt/sources.list.d/pgdg.sources").read_text()
    assert "Suites: bookworm-pgdg" in sources
    assert "Signed-By: /etc/apt/keyrings/pgdg.gpg" in sources
    assert (upper / "etc/apt/keyrings/pgdg.gpg").stat().st_size > 0
    log = (tmp_path / "work" / "build.log").read_text()
    assert "bookworm-pgdg InRelease" in log  # apt fetched and verified the signed index


def test_pgdg_key_with_another_fingerprint_is_refused(built, tmp_path):
    key, fingerprint = signed_repository(tmp_path / "pgdg", "bookworm-pgdg")
    wrong = "0" * 40
    with pytest.raises(localbuild.BuildError):
        run_postgresql_pgdg(built, tmp_path, tmp_path / "pgdg", wrong)
    log = (tmp_path / "work" / "build.log").read_text()
    assert f"does not have fingerprint {wrong}; refusing it" in log


def test_pgdg_index_signed_by_another_key_is_refused_by_apt(built, tmp_path):
    """Signed-By binds the repository to the pinned key: an index signed otherwise fails."""
    key, fingerprint = signed_repository(tmp_path / "pgdg", "bookworm-pgdg", signer="other")
    with pytest.raises(localbuild.BuildError):
        run_postgresql_pgdg(built, tmp_path, tmp_path / "pgdg", fingerprint)
    log = (tmp_path / "work" / "build.log").read_text()
    assert "NO_PUBKEY" in log or "not signed" in log, log[-2000:]
    assert "FAILED postgresql/15-add-pgdg-repository.sh" in log
